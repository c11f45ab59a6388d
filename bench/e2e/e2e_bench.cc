// End-to-end sparse decode over attention traces, served by an embedded Pagoda Store.
//
// For each (doc, layer) of a trace directory (format: ../shared/data/traces/README.md): the
// prompt (positions before the first traced query) is prefilled into a Store (host tier of
// --host-pages pages, the rest spilling to an SSD tier under --ssd-dir), then every traced query
// is one DecodeSession::Step (selection with the LouisKV boundary trigger, verified fetch into the
// pool, sparse decode, page commit) on the CPU backend. The baseline, measured in the same run,
// is dense decode over the whole context with the same CPU kernel (SparseDecodeReference over
// every page). Reported per layer: output error against dense (relative L2 per query head, mean
// and p99 over steps x heads), bytes per step by tier, step time split and the ratio to dense.
// DecodeSession runs the decode worker's path (decode_worker.h) with a batch of one on the CPU
// backend; bench/e2e/worker_bench.cc runs the worker itself over a batch of documents.
//
// --mode picks LouisKV's scenarios: long-short (the above: a long prompt, the traced queries as
// decode steps), short-long (a 512-token prompt, then every later position decoded token by
// token, so the pages committed while decoding are what later steps retrieve) and long-long (a
// prompt of half the trace, the rest decoded). The traces hold queries for their last positions
// only: a step before them uses the position's own key as a stand-in query (each query head takes
// its KV head's key) and is not scored; error and the per-step columns cover the traced steps,
// and a second line sums up the whole generation. --mode diffusion: diffusion_mode.cc.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "diffusion_mode.h"
#include "npy.h"
#include "pagoda/client/decode_session.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/reference.h"
#include "trace.h"

namespace pagoda {
namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string traces = "../shared/data/traces";
  std::string ssd_dir = "/tmp/pagoda_e2e_ssd";
  std::string policy = "quest";
  int64_t budget_tokens = 512;
  int pool_pages = 0;  // 0: kv_heads x budget pages x 2 + 1
  int host_pages = 128;
  float threshold = 0.9f;
  double louis_rate = 0;  // > 0: calibrate the threshold on the first 256 queries for this rate
  bool trigger = true;
  int64_t steps = 0;  // 0: every traced query
  int window_pages = 1;
  int sink_pages = 1;
  std::string backend = "cpu";      // cpu | cuda | cuda-mapped
  std::string mode = "long-short";  // long-short | short-long | long-long | diffusion
};

// DecodeSession takes host spans, so it runs on the CPU worker backend; the CUDA path (device
// tensors through DecodeWorker) is measured by the GPU benches.
absl::StatusOr<std::unique_ptr<WorkerBackend>> MakeBackend(const std::string& name) {
  if (name == "cpu") return MakeCpuWorkerBackend();
  return absl::InvalidArgumentError(
      "--backend: cpu (CUDA runs DecodeWorker on device tensors: bench/gpu)");
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

int RunLayer(const Args& a, const bench::TraceFiles& files) {
  auto tr = bench::LoadTrace(files);
  if (!tr.ok()) {
    std::fprintf(stderr, "%s\n", tr.status().ToString().c_str());
    return 1;
  }
  if (tr->v.empty()) {
    std::fprintf(stderr, "%s L%d: no values file, skipped\n", tr->doc.c_str(), tr->layer);
    return 0;
  }
  const int kv = tr->kv_heads, qh = tr->q_heads, hd = tr->head_dim, P = 16;
  const int64_t T = tr->tokens, first = tr->first_query();
  // The prompt: everything before the traced queries, a short one, or half the trace.
  const int64_t prompt = a.mode == "short-long"  ? std::min<int64_t>(512, first)
                         : a.mode == "long-long" ? std::min<int64_t>(T / 2, first)
                                                 : first;
  const int64_t steps = a.steps > 0 ? std::min(a.steps, tr->queries) : tr->queries;
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>(t);  // positions if no ids file
  const std::string ids_path =
      std::filesystem::path(files.q_path).parent_path().string() + "/doc" + tr->doc + "_ids.npy";
  if (auto arr = bench::ReadNpy(ids_path);
      arr.ok() && arr->descr == "<i4" && arr->elements() == T) {
    std::memcpy(ids.data(), arr->data.data(), T * 4);
  }

  const PageLayout layout{DType::kFp16, static_cast<uint32_t>(kv), static_cast<uint32_t>(hd),
                          static_cast<uint32_t>(P)};
  const std::string ssd = a.ssd_dir + "/" + tr->doc + "_L" + std::to_string(tr->layer);
  std::filesystem::remove_all(ssd);
  StoreOptions so;
  so.layouts = {layout};
  so.host_capacity_bytes = static_cast<uint64_t>(a.host_pages) * layout.PageBytes();
  so.segment_bytes = layout.PageBytes() * 16;
  so.data_dir = ssd;
  auto store = Store::Open(so);
  if (!store.ok()) {
    std::fprintf(stderr, "store: %s\n", store.status().ToString().c_str());
    return 1;
  }
  DecodeSessionOptions o;
  o.layout = layout;
  o.q_heads = qh;
  o.layer = static_cast<uint32_t>(tr->layer);
  o.model_id = "trace:" + tr->doc;
  auto policy = retriever::ParsePolicy(a.policy);
  if (!policy.ok()) {
    std::fprintf(stderr, "%s\n", policy.status().ToString().c_str());
    return 1;
  }
  o.policy = *policy;
  o.selector.budget_tokens = a.budget_tokens;
  o.selector.sink_pages = a.sink_pages;
  o.selector.window_pages = a.window_pages;
  o.boundary_trigger = a.trigger;
  o.boundary_threshold = a.threshold;
  if (a.louis_rate > 0) {  // as bench/retriever does: calibrate on the first 256 queries
    const int64_t n = std::min<int64_t>(256, tr->queries);
    std::vector<float> qs(static_cast<size_t>(n) * qh * hd);
    for (int64_t i = 0; i < n; ++i) {
      for (int h = 0; h < qh; ++h) {
        for (int d = 0; d < hd; ++d) {
          qs[(i * qh + h) * hd + d] = kernels::HalfToFloat(tr->q[(h * tr->queries + i) * hd + d]);
        }
      }
    }
    auto th = retriever::CalibrateBoundaryThreshold(qs, n, qh, hd, a.louis_rate);
    if (!th.ok()) {
      std::fprintf(stderr, "calibrate: %s\n", th.status().ToString().c_str());
      return 1;
    }
    o.boundary_threshold = *th;
  }
  o.pool_pages =
      a.pool_pages > 0 ? a.pool_pages : static_cast<int32_t>(2 * (a.budget_tokens / P) + 1);
  auto backend = MakeBackend(a.backend);
  if (!backend.ok()) {
    std::fprintf(stderr, "backend: %s\n", backend.status().ToString().c_str());
    return 1;
  }
  auto session = DecodeSession::Create(store->get(), std::move(*backend), o);
  if (!session.ok()) {
    std::fprintf(stderr, "session: %s\n", session.status().ToString().c_str());
    return 1;
  }
  // Prompt [kv, prompt, hd] from the trace's [kv, T, hd].
  std::vector<uint16_t> pk(static_cast<size_t>(kv) * prompt * hd), pv(pk.size());
  for (int h = 0; h < kv; ++h) {
    std::memcpy(&pk[h * prompt * hd], &tr->k[h * T * hd], prompt * hd * 2);
    std::memcpy(&pv[h * prompt * hd], &tr->v[h * T * hd], prompt * hd * 2);
  }
  if (absl::Status s = (*session)->Prefill(absl::MakeConstSpan(ids).subspan(0, prompt), pk, pv);
      !s.ok()) {
    std::fprintf(stderr, "prefill: %s\n", s.ToString().c_str());
    return 1;
  }

  // Dense baseline: every page of the trace packed in the store layout.
  const int64_t pages = (T + P - 1) / P;
  std::vector<uint16_t> dense_pool(static_cast<size_t>(pages) * 2 * kv * P * hd, 0);
  for (int64_t t = 0; t < T; ++t) {
    for (int h = 0; h < kv; ++h) {
      uint16_t* page = &dense_pool[(t / P) * 2 * kv * P * hd];
      std::memcpy(page + (h * P + t % P) * hd, &tr->k[(h * T + t) * hd], hd * 2);
      std::memcpy(page + ((kv + h) * P + t % P) * hd, &tr->v[(h * T + t) * hd], hd * 2);
    }
  }
  std::vector<double> err;
  double sel = 0, xfer = 0, attn = 0, app = 0, dense_s = 0;
  uint64_t bytes[kNumTiers] = {0, 0, 0}, uploaded = 0, committed = 0, summary = 0;
  int64_t retrieved = 0, attended_tokens = 0;
  std::vector<uint16_t> q(static_cast<size_t>(qh) * hd), k(kv * hd), v(kv * hd), out(q.size()),
      ref(q.size());
  double gen_s = 0;  // every generated step, traced or not
  uint64_t gen_tier[kNumTiers] = {0, 0, 0}, gen_uploaded = 0, gen_committed = 0;
  for (int64_t i = prompt - first; i < steps; ++i) {
    const int64_t t = first + i;
    for (int h = 0; h < qh; ++h) {
      const uint16_t* src =
          i >= 0 ? &tr->q[(h * tr->queries + i) * hd] : &tr->k[((h / (qh / kv)) * T + t) * hd];
      std::memcpy(&q[h * hd], src, hd * 2);
    }
    for (int h = 0; h < kv; ++h) {
      std::memcpy(&k[h * hd], &tr->k[(h * T + t) * hd], hd * 2);
      std::memcpy(&v[h * hd], &tr->v[(h * T + t) * hd], hd * 2);
    }
    auto st = (*session)->Step(ids[t], q, k, v, absl::MakeSpan(out));
    if (!st.ok()) {
      std::fprintf(stderr, "step %ld: %s\n", static_cast<long>(i), st.status().ToString().c_str());
      return 1;
    }
    gen_s += st->select_s + st->transfer_s + st->attention_s + st->append_s;
    for (int j = 0; j < kNumTiers; ++j) gen_tier[j] += st->bytes_from_tier[j];
    gen_uploaded += static_cast<uint64_t>(st->fetched_pages) * layout.PageBytes() / kv;
    gen_committed += st->bytes_committed;
    if (i < 0) continue;  // no traced query: not scored
    sel += st->select_s;
    xfer += st->transfer_s;
    attn += st->attention_s;
    app += st->append_s;
    for (int j = 0; j < kNumTiers; ++j) bytes[j] += st->bytes_from_tier[j];
    uploaded += static_cast<uint64_t>(st->fetched_pages) * layout.PageBytes() / kv;
    committed += st->bytes_committed;
    summary += static_cast<uint64_t>(st->verify_failures);
    retrieved += st->retrieved ? 1 : 0;
    attended_tokens += st->attended_tokens;

    // Dense decode over the whole context [0, t].
    const int32_t cur = static_cast<int32_t>(t / P);
    std::vector<int32_t> indptr{0}, indices, last;
    for (int h = 0; h < kv; ++h) {
      for (int32_t p = 0; p <= cur; ++p) indices.push_back(p);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back(static_cast<int32_t>(t % P + 1));
    }
    kernels::DecodeParams dp;
    dp.kv = kernels::PackedPagedKV(kernels::DType::kFloat16, static_cast<int32_t>(pages), P, kv, hd,
                                   dense_pool.data());
    dp.table = kernels::PageTable{kv, indptr.data(), indices.data(), last.data()};
    dp.batch = 1;
    dp.num_qo_heads = qh;
    dp.q = q.data();
    dp.o = ref.data();
    const auto d0 = Clock::now();
    if (absl::Status s = kernels::SparseDecodeReference(dp); !s.ok()) {
      std::fprintf(stderr, "dense: %s\n", s.ToString().c_str());
      return 1;
    }
    dense_s += std::chrono::duration<double>(Clock::now() - d0).count();
    for (int h = 0; h < qh; ++h) {
      double num = 0, den = 0;
      for (int d = 0; d < hd; ++d) {
        const double a0 = kernels::HalfToFloat(out[h * hd + d]);
        const double b0 = kernels::HalfToFloat(ref[h * hd + d]);
        num += (a0 - b0) * (a0 - b0);
        den += b0 * b0;
      }
      err.push_back(std::sqrt(num / std::max(den, 1e-30)));
    }
  }
  double mean_err = 0;
  for (double e : err) mean_err += e;
  mean_err /= std::max<size_t>(err.size(), 1);
  const double n = static_cast<double>(steps);
  const double step_us = (sel + xfer + attn + app) / n * 1e6;
  std::printf(
      "%-9s L%02d steps=%ld ctx=%ld..%ld budget=%ld pool=%d thr=%.3f | err mean=%.4f p99=%.4f | "
      "retrieved=%.1f%% attended_tok/row=%.0f | KiB/step ssd=%.1f host=%.1f gpu=%.1f "
      "fetched=%.1f commit=%.2f verify_failures=%.0f | us/step select=%.1f transfer=%.1f attn=%.1f "
      "append=%.1f total=%.1f | dense attn=%.1f us | sparse/dense=%.3f\n",
      tr->doc.c_str(), tr->layer, static_cast<long>(steps), static_cast<long>(first + 1),
      static_cast<long>(first + steps), static_cast<long>(a.budget_tokens), o.pool_pages,
      o.boundary_trigger ? o.boundary_threshold : 0.f, mean_err, Percentile(err, 0.99),
      100.0 * retrieved / n, attended_tokens / n / kv,
      bytes[static_cast<int>(Tier::kSsd)] / n / 1024,
      bytes[static_cast<int>(Tier::kHost)] / n / 1024,
      bytes[static_cast<int>(Tier::kGpu)] / n / 1024, uploaded / n / 1024, committed / n / 1024,
      static_cast<double>(summary), sel / n * 1e6, xfer / n * 1e6, attn / n * 1e6, app / n * 1e6,
      step_us, dense_s / n * 1e6, step_us / (dense_s / n * 1e6));
  if (prompt < first) {
    const double g = static_cast<double>(steps + first - prompt);
    std::printf(
        "  %s: prompt %ld, generated %ld tokens | KiB/step ssd=%.1f host=%.1f fetched=%.1f "
        "commit=%.2f | us/step total=%.1f\n",
        a.mode.c_str(), static_cast<long>(prompt), static_cast<long>(g),
        gen_tier[static_cast<int>(Tier::kSsd)] / g / 1024,
        gen_tier[static_cast<int>(Tier::kHost)] / g / 1024, gen_uploaded / g / 1024,
        gen_committed / g / 1024, gen_s / g * 1e6);
  }
  std::fflush(stdout);
  session->reset();
  store->reset();
  std::filesystem::remove_all(ssd);
  return 0;
}

}  // namespace
}  // namespace pagoda

int main(int argc, char** argv) {
  pagoda::Args a;
  CLI::App app{"End-to-end sparse decode over attention traces, served by an embedded Store"};
  app.add_option("--traces", a.traces, "trace directory");
  app.add_option("--ssd-dir", a.ssd_dir, "scratch directory of the SSD tier (wiped per layer)");
  app.add_option("--policy", a.policy, "quest | hierarchical | ann | streaming | oracle");
  app.add_option("--budget-tokens", a.budget_tokens,
                 "tokens per KV head, kept pages included (diffusion: 0 = dense)");
  app.add_option("--pool-pages", a.pool_pages, "pool slots per KV head (0: 2 x budget + 1)");
  app.add_option("--host-pages", a.host_pages, "host tier capacity in pages (rest on SSD)");
  app.add_option("--threshold", a.threshold, "boundary trigger threshold");
  app.add_option(
      "--louis-rate", a.louis_rate,
      "> 0: calibrate the trigger threshold for this retrieval rate (first 256 queries)");
  app.add_option("--trigger", a.trigger, "use the LouisKV boundary trigger (else every step)");
  app.add_option("--steps", a.steps, "decode steps per layer (0: all traced queries)");
  app.add_option("--sink-pages", a.sink_pages, "always-kept first pages");
  app.add_option("--window-pages", a.window_pages, "always-kept last pages");
  app.add_option("--backend", a.backend, "cpu (DecodeSession takes host spans)");
  app.add_option("--mode", a.mode, "long-short | short-long | long-long | diffusion");
  pagoda::bench::DiffusionArgs d;
  app.add_option("--block-tokens", d.block_tokens, "diffusion: tokens per block");
  app.add_option("--denoise-steps", d.denoise_steps, "diffusion: denoising steps per block");
  app.add_option("--blocks", d.blocks, "diffusion: generated blocks");
  app.add_option("--noise", d.noise, "diffusion: masked K/V noise (x rms), fading over the steps");
  app.add_option("--unmask", d.unmask, "diffusion: order tokens become final: ltr | random");
  CLI11_PARSE(app, argc, argv);
  std::printf("backend %s (dense baseline: the same CPU kernel, whole context resident)\n",
              a.backend.c_str());
  if (a.mode != "long-short" && a.mode != "short-long" && a.mode != "long-long" &&
      a.mode != "diffusion") {
    std::fprintf(stderr, "--mode: unknown mode %s\n", a.mode.c_str());
    return 1;
  }
  if (a.mode == "diffusion" && a.backend != "cpu") {
    std::fprintf(stderr, "--mode diffusion runs on the CPU backend only\n");
    return 1;
  }
  d.ssd_dir = a.ssd_dir;
  d.policy = a.policy;
  d.budget_tokens = a.budget_tokens;
  d.pool_pages = a.pool_pages;
  d.host_pages = a.host_pages;
  d.sink_pages = a.sink_pages;
  d.window_pages = a.window_pages;
  auto files = pagoda::bench::FindTraces(a.traces);
  if (!files.ok()) {
    std::fprintf(stderr, "%s\n", files.status().ToString().c_str());
    return 1;
  }
  for (const auto& f : *files) {
    const int rc =
        a.mode == "diffusion" ? pagoda::bench::RunDiffusionLayer(d, f) : pagoda::RunLayer(a, f);
    if (rc != 0) return rc;
  }
  return 0;
}
