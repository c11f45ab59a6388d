// The decode worker per layer at Llama-3-8B layer shapes (32 query / 8 KV heads, head_dim 128,
// bf16, 16-token pages), synthetic K/V, the whole context in the store's host tier and a pool a
// few times one step's need, so selection changes fetch pages every step. For each (context,
// batch) case: prefill every sequence through DecodeWorker::Prefill (device tensors on CUDA),
// then decode steps (Plan, Attend one layer, Finish) with queries that drift slowly (a random
// walk, so consecutive selections overlap as on real text) and report the step's median time
// and its phases. Baselines, measured in the same bench/gpu/run.sh call: torch SDPA with the
// whole context resident in HBM and torch gather-then-SDPA over the same budget
// (bench/gpu/sdpa_baseline.py lines "sdpa B CTX MS" / "gather_sdpa B CTX MS", passed as --sdpa).
// "worker host" is the step less the time inside backend calls (kernels, copies, syncs: a
// TimedBackend) and the bench's own tensor staging: the worker's host work, the floor of a step
// on any device.
//
//   worker_layer_bench --backend cuda --cases 32768x1,131072x8 --sdpa sdpa.txt
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/kernels/dtype.h"
#include "tensor_stage.h"
#include "timed_backend.h"

namespace pagoda {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Args {
  std::string backend = "cuda";
  std::string cases = "32768x1,32768x8,32768x32,131072x1,131072x8";
  std::string policy = "quest";
  std::string sdpa;  // sdpa_baseline.py output
  int64_t budget = 4096;
  int steps = 20;
  int warmup = 3;
  bool trigger = false;
  // Capturable steps (quest between retrievals) captured in a CUDA graph and replayed.
  bool graphs = false;
  float threshold = 0.9f;
  bool trigger_late = true;    // louiskv: selector.trigger_late (q / k read back a step late)
  bool retrieve_late = false;  // louiskv: selector.retrieve_late (every step after the first late)
  // Layers of the worker: each step runs them in turn (Plan, Attend per layer, Finish), so the
  // host can run ahead of the device across layers; times are per layer-step.
  int layers = 1;
  double rescore_factor = 4.0;  // louiskv (the selector's default: every resident page)
  float drift = 0.05f;          // query random-walk step, relative to the query's norm
  int64_t chunk = 8192;
  // Prefill through DecodeWorker::PrefillAttend (the chunk's attention over the context and
  // itself, random queries) instead of Prefill (writes only); streaming_heads of the 8 KV heads
  // (0, 2, 4, ... first) use sink 64 + window 1024 tokens, as bench/gpu/prefill_bench.
  bool prefill_attend = false;
  int streaming_heads = 0;
  std::string sdpa_prefill;  // sdpa_prefill.py output ("sdpa_causal T MS" lines)
  // Prepare the host tier's segments at Create (DecodeWorkerOptions::prepare_host_bytes = -1)
  // instead of inside the prefill's first writes to each segment.
  bool prepare_host = true;
  int select_threads = 0;  // DecodeWorkerOptions::select_threads
  int64_t pool_slots = 0;  // per KV head; 0: twice one step's worst case
  bool prefill_to_pool = false;
};

constexpr int kQ = 32, kKv = 8, kD = 128, kP = 16;

// "sdpa B CTX MS" lines by (kind, B, CTX).
std::map<std::tuple<std::string, int, int64_t>, double> ReadBaselines(const std::string& path) {
  std::map<std::tuple<std::string, int, int64_t>, double> out;
  std::ifstream f(path);
  std::string kind;
  int b;
  int64_t ctx;
  double ms;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    if (is >> kind >> b >> ctx >> ms) out[{kind, b, ctx}] = ms;
  }
  return out;
}

std::vector<uint16_t> Random(std::mt19937& rng, int64_t n, float scale) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = kernels::FloatToBf16(nd(rng));
  return v;
}

int RunCase(const Args& a, int64_t ctx, int B,
            const std::map<std::tuple<std::string, int, int64_t>, double>& base) {
  const PageLayout layout{DType::kBf16, kKv, kD, kP};
  StoreOptions so;
  so.layouts = {layout};
  // louiskv writes a cluster-ordered layout page per clustered prompt page besides the natural
  // ones: room for both (there is no SSD tier to demote to).
  const int L = a.layers;
  const int64_t pages = int64_t{L} * B * (ctx / kP + 2) * (a.policy == "louiskv" ? 2 : 1);
  so.host_capacity_bytes = static_cast<uint64_t>(pages + 64 * L * (B + 1)) * layout.PageBytes();
  so.segment_bytes = layout.PageBytes() * 64;
  so.watermarks[static_cast<int>(Tier::kHost)] = Watermarks{1.0, 1.0};  // no SSD: keep every page
  auto store = Store::Open(so);
  if (!store.ok()) {
    std::fprintf(stderr, "store: %s\n", store.status().ToString().c_str());
    return 1;
  }
  auto policy = retriever::ParsePolicy(a.policy);
  if (!policy.ok()) {
    std::fprintf(stderr, "%s\n", policy.status().ToString().c_str());
    return 1;
  }
  DecodeWorkerOptions o;
  o.tenant = "bench";
  o.layout = layout;
  o.q_heads = kQ;
  o.num_layers = L;
  o.policy = *policy;
  o.selector.budget_tokens = a.budget;
  o.boundary_trigger = a.trigger;
  o.capturable_steps = a.graphs;
  o.boundary_threshold = a.threshold;
  o.selector.boundary_threshold = a.threshold;  // louiskv's own trigger
  o.selector.trigger_late = a.trigger_late;
  o.selector.retrieve_late = a.retrieve_late;
  o.prefetch = false;                         // everything is in the host tier
  o.summary_slots = L * B * (ctx / kP + 64);  // quest selects on the device over these
  o.selector.rescore_factor = a.rescore_factor;
  // Twice one step's worst case, so most of a context is not resident and selections fetch.
  const int64_t row_pages = std::max<int64_t>(
      a.budget / kP, retriever::MaxScoredPages(*policy, o.selector, a.budget / kP));
  o.pool_slots_per_head = static_cast<int32_t>(L * (2 * B * (row_pages + 8) + 2 * B) + 64);
  if (a.prefill_attend) {  // a dense head reads every page of its sequence's layer at once
    o.pool_slots_per_head =
        std::max<int32_t>(o.pool_slots_per_head, static_cast<int32_t>(ctx / kP + 2 * B + 64));
    std::vector<int> streaming;
    for (int i = 0; i < a.streaming_heads; ++i) streaming.push_back((2 * i) % kKv + (2 * i) / kKv);
    o.layer_streaming_heads = {streaming};
    o.streaming_sink_pages = 64 / kP;
    o.streaming_window_pages = 1024 / kP;
  }
  std::unique_ptr<bench::StepGraph> graph;
  if (a.graphs) {
    auto g = bench::MakeStepGraph();
    if (!g.ok()) {
      std::fprintf(stderr, "graphs: %s\n", g.status().ToString().c_str());
      return 1;
    }
    graph = std::move(*g);
  }
  auto made = bench::MakeWorkerBackend(a.backend, graph != nullptr ? graph->stream() : nullptr);
  if (!made.ok()) {
    std::fprintf(stderr, "backend: %s\n", made.status().ToString().c_str());
    return 1;
  }
  bench::TimedBackend* timer = nullptr;
  std::unique_ptr<WorkerBackend> backend = bench::MakeTimedBackend(std::move(*made), &timer);
  WorkerBackend* device = backend.get();  // owned by the worker; the clock ends on its Sync
  auto stage = bench::MakeTensorStage(backend->device());
  if (!stage.ok()) {
    std::fprintf(stderr, "tensors: %s\n", stage.status().ToString().c_str());
    return 1;
  }
  bench::TensorStage& st = **stage;
  o.prepare_host_bytes = a.prepare_host ? -1 : 0;
  o.select_threads = a.select_threads;
  if (a.pool_slots > 0) {
    o.pool_slots_per_head = std::max(
        o.pool_slots_per_head, static_cast<int32_t>(std::min<int64_t>(a.pool_slots, INT32_MAX)));
  }
  o.prefill_to_pool = a.prefill_to_pool;
  const auto created = std::chrono::steady_clock::now();
  auto worker = DecodeWorker::Create(store->get(), std::move(backend), o);
  if (!worker.ok()) {
    std::fprintf(stderr, "worker: %s\n", worker.status().ToString().c_str());
    return 1;
  }
  const double create_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - created).count();
  DecodeWorker& w = **worker;

  // Prefill: distinct token ids per sequence (no shared prefix), K/V windows of one random block.
  std::mt19937 rng(1234);
  const int64_t block = std::min<int64_t>(ctx, 65536);
  const std::vector<uint16_t> kblock = Random(rng, (block + a.chunk) * kKv * kD, 1.0f);
  const std::vector<uint16_t> vblock = Random(rng, (block + a.chunk) * kKv * kD, 1.0f);
  const std::vector<uint16_t> qblock =
      a.prefill_attend ? Random(rng, a.chunk * kQ * kD, 1.0f) : std::vector<uint16_t>{};
  std::vector<uint16_t> o_prefill(a.prefill_attend ? a.chunk * kQ * kD : 0);
  Clock::time_point tp = Clock::now();
  bench::ResetBackendSeconds(*timer);
  std::vector<SequenceId> seqs;
  for (int b = 0; b < B; ++b) {
    std::vector<int32_t> ids(ctx);
    for (int64_t t = 0; t < ctx; ++t) ids[t] = static_cast<int32_t>(b * 1000003 + t);
    auto opened = w.Open(ids);
    if (!opened.ok()) {
      std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
      return 1;
    }
    seqs.push_back(opened->id);
    for (int64_t i = 0, chunks = (ctx + a.chunk - 1) / a.chunk; i < L * chunks; ++i) {
      const int layer = static_cast<int>(i / chunks);
      const int64_t t0 = (i % chunks) * a.chunk;
      const int64_t n = std::min(a.chunk, ctx - t0);
      const int64_t off = ((t0 + b * 4099 + layer * 7919) % block) * kKv * kD;
      auto kd = st.In(0, &kblock[off], DType::kBf16, n, kKv, kD);
      auto vd = st.In(1, &vblock[off], DType::kBf16, n, kKv, kD);
      absl::Status s = !kd.ok() ? kd.status() : !vd.ok() ? vd.status() : absl::OkStatus();
      if (s.ok() && a.prefill_attend) {
        auto qd = st.In(6, qblock.data(), DType::kBf16, n, kQ, kD);
        auto od = st.Out(7, o_prefill.data(), DType::kBf16, n, kQ, kD);
        s = !qd.ok()   ? qd.status()
            : !od.ok() ? od.status()
                       : w.PrefillAttend(opened->id, layer, *qd, *kd, *vd, *od);
        if (s.ok() && t0 + n == ctx) s = st.Back(*od, o_prefill.data());  // the sequence's last
      } else if (s.ok()) {
        s = w.Prefill(opened->id, layer, *kd, *vd);
      }
      if (!s.ok()) {
        std::fprintf(stderr, "prefill: %s\n", s.ToString().c_str());
        return 1;
      }
    }
  }
  // Where prefill time goes: inside backend calls, waiting for the committer, the worker's own.
  const double prefill_backend_s = bench::BackendSeconds(*timer);
  Clock::time_point tf = Clock::now();
  if (absl::Status s = w.Flush(); !s.ok()) {
    std::fprintf(stderr, "flush: %s\n", s.ToString().c_str());
    return 1;
  }
  const double prefill_flush_s = Seconds(tf);
  const double prefill_s = Seconds(tp);

  // Decode steps.
  std::vector<float> qf(static_cast<size_t>(B) * kQ * kD);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (float& x : qf) x = nd(rng);
  std::vector<uint16_t> q(qf.size());
  std::vector<std::vector<uint16_t>> o_h(L, std::vector<uint16_t>(qf.size()));
  std::vector<double> step_s, host_s, ph[6], split[3];
  double fetched = 0, attended = 0, retrievals = 0, late = 0;
  int failures = 0, captures = 0, replays = 0;
  bool captured = false;
  uint64_t graph_key = 0;
  for (int s = 0; s < a.warmup + a.steps; ++s) {
    for (size_t i = 0; i < qf.size(); ++i) {
      qf[i] = qf[i] * std::sqrt(1 - a.drift * a.drift) + a.drift * nd(rng);
      q[i] = kernels::FloatToBf16(qf[i]);
    }
    std::vector<std::vector<uint16_t>> kn(L), vn(L);
    for (int l = 0; l < L; ++l) {
      kn[l] = Random(rng, int64_t{B} * kKv * kD, 1.0f);
      vn[l] = Random(rng, int64_t{B} * kKv * kD, 1.0f);
    }
    std::vector<int32_t> next(B, 7);
    // Every layer's inputs and outputs staged first, off the clock (an engine has them on its
    // device already; one slot each), so the layers then run back to back as in a model's
    // forward pass (the query is the same in every layer). The clock covers Plan, the layers'
    // Attend, Finish and a backend Sync (the device's work done): the outputs are read back after.
    std::vector<TensorView> qd(L), kd(L), vd(L), od(L);
    absl::Status as;
    for (int l = 0; l < L && as.ok(); ++l) {
      auto qs = st.In(10 + 4 * l, q.data(), DType::kBf16, B, kQ, kD);
      auto ks = st.In(11 + 4 * l, kn[l].data(), DType::kBf16, B, kKv, kD);
      auto vs = st.In(12 + 4 * l, vn[l].data(), DType::kBf16, B, kKv, kD);
      auto os = st.Out(13 + 4 * l, o_h[l].data(), DType::kBf16, B, kQ, kD);
      as = !qs.ok()   ? qs.status()
           : !ks.ok() ? ks.status()
           : !vs.ok() ? vs.status()
           : !os.ok() ? os.status()
                      : absl::OkStatus();
      if (as.ok()) std::tie(qd[l], kd[l], vd[l], od[l]) = std::tie(*qs, *ks, *vs, *os);
    }
    if (!as.ok()) {
      std::fprintf(stderr, "stage: %s\n", as.ToString().c_str());
      return 1;
    }
    Clock::time_point t1 = Clock::now();
    bench::ResetBackendSeconds(*timer);
    if (s == a.warmup) bench::ResetBackendBreakdown(*timer);
    auto plan = w.Plan(seqs, next);
    if (!plan.ok()) {
      std::fprintf(stderr, "plan: %s\n", plan.status().ToString().c_str());
      return 1;
    }
    auto layers = [&] {
      absl::Status r;
      for (int l = 0; l < L && r.ok(); ++l) r = w.Attend(*plan, l, qd[l], kd[l], vd[l], od[l]);
      return r;
    };
    if (graph != nullptr && plan->capturable && captured && plan->graph_key == graph_key) {
      as = graph->Launch();  // the step's layers: one launch, no host work
      if (as.ok()) as = w.Replayed(*plan);
      ++replays;
    } else if (graph != nullptr && plan->capturable) {
      as = graph->Capture(layers);
      captured = as.ok();
      graph_key = plan->graph_key;
      ++captures;
    } else {
      as = layers();
    }
    if (!as.ok()) {
      std::fprintf(stderr, "attend: %s\n", as.ToString().c_str());
      return 1;
    }
    auto stats = w.Finish(*plan);
    if (!stats.ok()) {
      std::fprintf(stderr, "finish: %s\n", stats.status().ToString().c_str());
      return 1;
    }
    const double host_end = Seconds(t1);  // the host's last call returned
    const double in_backend = bench::BackendSeconds(*timer);
    if (absl::Status ss = device->Sync(); !ss.ok()) return 1;
    const double took = Seconds(t1);
    for (int l = 0; l < L; ++l) {
      if (absl::Status bs = st.Back(od[l], o_h[l].data()); !bs.ok()) return 1;
    }
    for (const absl::Status& x : stats->sequence_status) failures += x.ok() ? 0 : 1;
    if (s < a.warmup) continue;
    step_s.push_back(took / L);
    host_s.push_back((host_end - in_backend) / L);
    const double p[6] = {stats->append_s, stats->select_s, stats->fetch_s,
                         stats->verify_s, stats->attend_s, stats->commit_s};
    for (int i = 0; i < 6; ++i) ph[i].push_back(p[i] / L);
    const double f[3] = {stats->resolve_s, stats->lease_s, stats->gather_s};
    for (int i = 0; i < 3; ++i) split[i].push_back(f[i] / L);
    fetched += stats->fetched_head_pages;
    attended += stats->attended_head_pages;
    retrievals += stats->retrievals;
    late += stats->late_reads;
  }
  const double step_ms = Median(step_s) * 1e3;
  auto find = [&](const char* kind) {
    auto it = base.find({kind, B, ctx});
    return it == base.end() ? 0.0 : it->second;
  };
  const double sdpa = find("sdpa"), gather = find("gather_sdpa");
  std::printf(
      "| %lld | %d | %s%s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f | %.2f | ",
      static_cast<long long>(ctx), B, a.policy.c_str(), a.trigger ? "+trigger" : "", step_ms,
      Median(host_s) * 1e3, Median(ph[1]) * 1e3, Median(ph[2]) * 1e3, Median(ph[3]) * 1e3,
      Median(ph[4]) * 1e3, Median(ph[0]) * 1e3 + Median(ph[5]) * 1e3,
      fetched / (a.steps * L * B * kKv), retrievals / (a.steps * L * B));
  if (sdpa > 0) {
    std::printf("%.3f | %.2fx | ", sdpa, step_ms / sdpa);
  } else {
    std::printf("- | - | ");
  }
  if (gather > 0) {
    std::printf("%.3f | %.2fx |", gather, step_ms / gather);
  } else {
    std::printf("- | - |");
  }
  std::printf(" %.1f s | %d | %.2f |\n", prefill_s, failures, late / (a.steps * L * B));
  if (graph != nullptr) {
    std::printf("CUDA graphs: %d captured, %d replayed (of %d steps)\n", captures, replays,
                a.warmup + a.steps);
  }
  std::printf(
      "fetch per layer-step, ms: resolve slots %.3f, store leases %.3f, gather + wait %.3f\n",
      Median(split[0]) * 1e3, Median(split[1]) * 1e3, Median(split[2]) * 1e3);
  std::printf("backend calls per step, ms (wall time in each, syncs included): %s\n",
              bench::BackendBreakdown(*timer, a.steps).c_str());
  {
    double causal = 0;
    std::ifstream f(a.sdpa_prefill);
    std::string kind, line;
    int64_t t = 0;
    double ms = 0;
    while (std::getline(f, line)) {
      std::istringstream is(line);
      if (is >> kind >> t >> ms && kind == "sdpa_causal" && t == ctx) causal = ms;
    }
    const double per = prefill_s * 1e3 / B;
    std::printf(
        "prefill through %s: context %lld, chunks of %lld, %d/%d streaming KV heads: "
        "%.1f ms per sequence-layer (K/V writes, commits%s: backend calls %.1f, "
        "waiting for commits %.1f, the worker's own %.1f)",
        a.prefill_attend ? "PrefillAttend" : "Prefill", static_cast<long long>(ctx),
        static_cast<long long>(a.chunk), a.prefill_attend ? a.streaming_heads : 0, kKv, per,
        a.prefill_attend ? " and attention" : "", prefill_backend_s * 1e3 / B,
        prefill_flush_s * 1e3 / B, (prefill_s - prefill_backend_s - prefill_flush_s) * 1e3 / B);
    if (causal > 0 && a.prefill_attend)
      std::printf("; torch SDPA causal %.1f ms: SDPA / ours %.2fx", causal, causal / per);
    std::printf("; worker Create %.1f ms (%s)", create_s * 1e3,
                a.prepare_host ? "host tier prepared there" : "host tier prepared on demand");
    std::printf("\n");
  }
  std::fflush(stdout);
  return 0;
}

int Run(const Args& a) {
  const auto base = ReadBaselines(a.sdpa);
  std::printf(
      "decode worker per layer (Llama-3-8B shapes: %d q / %d kv heads, d %d, bf16, page %d), "
      "%s backend, budget %lld tokens/KV head, %d steps of %d layer(s) after %d warm-up, query "
      "drift %.2f%s; times per layer-step\n",
      kQ, kKv, kD, kP, a.backend.c_str(), static_cast<long long>(a.budget), a.steps, a.layers,
      a.warmup, a.drift,
      a.trigger_late ? (a.retrieve_late ? ", louiskv's trigger and retrievals a step late"
                                        : ", louiskv's trigger a step late")
                     : "");
  std::printf(
      "| context | batch | policy | step ms | worker host | select | fetch | verify | attend | "
      "append+commit | "
      "head-pages fetched / seq-head | retrievals / seq | SDPA dense ms | step / SDPA | "
      "gather+SDPA ms | step / gather+SDPA | prefill | failed | read late / seq |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  const std::vector<std::string> cases = absl::StrSplit(a.cases, ',');
  for (const std::string& c : cases) {
    std::vector<std::string> parts = absl::StrSplit(c, 'x');
    int64_t ctx = 0;
    int b = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &ctx) || !absl::SimpleAtoi(parts[1], &b) ||
        ctx < kP || b < 1) {
      std::fprintf(stderr, "bad case '%s' (want CONTEXTxBATCH)\n", c.c_str());
      return 2;
    }
    if (int rc = RunCase(a, ctx, b, base); rc != 0) return rc;
  }
  return 0;
}

}  // namespace
}  // namespace pagoda

int main(int argc, char** argv) {
  pagoda::Args a;
  CLI::App app{"decode worker per layer at Llama-3-8B shapes"};
  app.add_option("--backend", a.backend, "cuda | cpu")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--cases", a.cases, "CONTEXTxBATCH,...");
  app.add_option("--policy", a.policy, "quest | louiskv | lserve | streaming | oracle");
  app.add_option("--sdpa", a.sdpa, "sdpa_baseline.py output (baselines)");
  app.add_option("--budget", a.budget, "tokens per KV head")->check(CLI::Range(16, 1 << 20));
  app.add_option("--steps", a.steps, "measured steps")->check(CLI::Range(1, 100000));
  app.add_option("--warmup", a.warmup, "unmeasured first steps")->check(CLI::Range(0, 1000));
  app.add_flag("--trigger", a.trigger, "boundary trigger (selections reused while it holds)");
  app.add_flag("--graphs", a.graphs,
               "capture capturable steps (quest between retrievals) in a CUDA graph, replay them");
  app.add_option("--threshold", a.threshold, "trigger threshold");
  app.add_option("--retrieve-late", a.retrieve_late,
                 "louiskv with --trigger-late 1: retrievals take effect a step after the trigger "
                 "fires, so every step after the first reads q / k late (1) or not (0, default)");
  app.add_option("--trigger-late", a.trigger_late,
                 "louiskv: the trigger sees each query a step late, q / k read back without a sync "
                 "(1, the worker's default) or on time (0)");
  app.add_option("--layers", a.layers, "layers per step (run back to back)")
      ->check(CLI::Range(1, 64));
  app.add_option("--rescore-factor", a.rescore_factor,
                 "louiskv rescore factor (>= its resident factor 4: every resident page)")
      ->check(CLI::Range(0.0, 64.0));
  app.add_option("--drift", a.drift, "query random-walk step")->check(CLI::Range(0.0, 1.0));
  app.add_option("--chunk", a.chunk, "prefill chunk tokens")->check(CLI::Range(16, 1 << 20));
  app.add_flag("--prefill-attend", a.prefill_attend, "prefill with attention (PrefillAttend)");
  app.add_option("--prepare-host", a.prepare_host,
                 "prepare the host tier's segments at Create (1) or on demand (0)");
  app.add_option("--pool-slots", a.pool_slots,
                 "GPU pool slots per KV head (0: twice one step's worst case; never less)");
  app.add_flag("--prefill-to-pool", a.prefill_to_pool,
               "the worker's prefill fills the pool's free slots (prefill_to_pool)");
  app.add_option("--select-threads", a.select_threads,
                 "threads that select and resolve pool slots (0: the machine's cores, at most 8)")
      ->check(CLI::Range(0, 256));
  app.add_option("--streaming-heads", a.streaming_heads, "streaming KV heads in prefill")
      ->check(CLI::Range(0, pagoda::kKv));
  app.add_option("--sdpa-prefill", a.sdpa_prefill, "sdpa_prefill.py output (baselines)");
  CLI11_PARSE(app, argc, argv);
  return pagoda::Run(a);
}
