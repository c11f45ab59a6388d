// The decode worker over attention traces: a batch of documents through every traced layer.
//
// Each document of a trace directory (format: ../shared/data/traces/README.md) is one sequence;
// the traced layers of a document are the worker's layers (all docs must trace the same layers).
// Its prompt (every position before the first traced query) is prefilled layer by layer through
// DecodeWorker::Prefill (pages committed to an embedded Store: host tier of --host-pages pages
// spilling to an SSD tier), then every traced query is one batched step: Plan, then per layer
// Attend (append, select, verified fetch, sparse decode, commit), then Finish, on the CPU backend
// (--backend cuda: the CUDA backend with device tensors; the error columns must match the CPU's).
//
// Measured in the same run:
//  - dense: exact attention over the whole causal context with the same CPU kernel (the baseline
//    of time and error);
//  - quality: output error against dense (relative L2 per query head), and group recall: per
//    (step, KV head) the attention mass of the group's query heads on the tokens the worker
//    attended / the mass of the best budget-pages page set for that group (the group-consistent
//    oracle of bench/retriever), every --recall-stride-th step;
//  - bytes: head-pages attended and fetched per step, retrievals per token;
//  - with --compare-session (page policies): DecodeSession, the one-sequence x one-layer path,
//    over the same (doc, layer) with the same options: its error and step time.
// louiskv thresholds are calibrated per layer on the first --calib-steps queries (pooled over
// documents) for --louis-rate retrievals per token; every reported number covers only the steps
// after those (tuned on the first queries, reported on the rest).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "npy.h"
#include "pagoda/client/decode_session.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kernels/reference.h"
#include "pagoda/retriever/boundary_trigger.h"
#include "tensor_stage.h"
#include "trace.h"

namespace pagoda {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

struct Args {
  std::string traces = "../shared/data/traces";
  std::string ssd_dir = "/tmp/pagoda_worker_bench";
  std::string policy = "louiskv";
  std::string backend = "cpu";  // cpu | cuda
  int budget_den = 16;          // budget = context / den tokens (whole pages)
  int page_tokens = 16;
  int host_pages = 4096;
  int32_t pool_slots = 0;  // 0: enough for every page of every sequence and layer
  int64_t steps = 0;       // 0: every traced query
  // Recall every n-th step; a stride that divides a reuse period (lserve: 4) would only see fresh
  // selections.
  int recall_stride = 1;
  int64_t calib_steps = 256;
  int64_t report_from = 0;  // steps before this are run but not reported (e.g. a profile's calib)
  double louis_rate = 0.2;
  double resident_factor = 4.0;
  int cluster_window = -1;  // -1: the selector's default
  int select_threads = 0;
  double rescore_factor = 4.0;  // the selector's default: every resident page
  bool trigger_late = true;     // louiskv: selector.trigger_late (the worker's default)
  bool retrieve_late = false;   // louiskv: selector.retrieve_late
  bool trigger = false;         // boundary trigger for page policies
  float threshold = 0.9f;
  bool verify = true;
  bool compare_session = false;
  std::string streaming_profile;  // a profile file (bench/retriever/streaming_profile)
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

struct Doc {
  std::string name;
  std::vector<bench::TraceLayer> layers;
  std::vector<int32_t> ids;
};

// Dense attention of one step over the whole causal context of one (doc, layer): the baseline.
absl::Status Dense(const bench::TraceLayer& tr, int P, int64_t t, const uint16_t* q, uint16_t* o,
                   std::vector<int32_t>& indptr, std::vector<int32_t>& idx,
                   std::vector<int32_t>& last) {
  kernels::PagedKV kv;
  kv.dtype = kernels::DType::kFloat16;
  kv.num_pages = static_cast<int32_t>(tr.tokens / P);
  kv.page_size = P;
  kv.num_kv_heads = tr.kv_heads;
  kv.head_dim = tr.head_dim;
  kv.k = tr.k.data();
  kv.v = tr.v.data();
  kv.stride_token = tr.head_dim;
  kv.stride_page = int64_t{P} * tr.head_dim;
  kv.stride_head = tr.tokens * tr.head_dim;
  const int32_t pages = static_cast<int32_t>(t / P + 1);
  indptr.assign(1, 0);
  idx.clear();
  last.clear();
  for (int h = 0; h < tr.kv_heads; ++h) {
    for (int32_t p = 0; p < pages; ++p) idx.push_back(p);
    indptr.push_back(static_cast<int32_t>(idx.size()));
    last.push_back(static_cast<int32_t>(t % P + 1));
  }
  kernels::DecodeParams dp;
  dp.kv = kv;
  dp.table = {tr.kv_heads, indptr.data(), idx.data(), last.data()};
  dp.batch = 1;
  dp.num_qo_heads = tr.q_heads;
  dp.q = q;
  dp.o = o;
  return kernels::SparseDecodeReference(dp);
}

// Group recall of one (step, KV head): attended mass / best-budget-pages mass of the group
// (natural pages; `attended` are token positions, as louiskv's layout pages hold any tokens).
double GroupRecall(const bench::TraceLayer& tr, int P, int64_t t, int64_t s, int h,
                   const std::vector<int64_t>& attended, int64_t budget_pages) {
  const int group = tr.q_heads / tr.kv_heads, d = tr.head_dim;
  const int64_t pages = t / P + 1;
  std::vector<double> mass(pages, 0.0), logits(t + 1), token_mass(t + 1, 0.0);
  for (int g = 0; g < group; ++g) {
    const int qh = h * group + g;
    double m = -1e300;
    for (int64_t x = 0; x <= t; ++x) {
      double dot = 0;
      const uint16_t* qv = &tr.q[(int64_t{qh} * tr.queries + s) * d];
      const uint16_t* kv = &tr.k[(int64_t{h} * tr.tokens + x) * d];
      for (int i = 0; i < d; ++i) dot += kernels::HalfToFloat(qv[i]) * kernels::HalfToFloat(kv[i]);
      logits[x] = dot / std::sqrt(double(d));
      m = std::max(m, logits[x]);
    }
    double sum = 0;
    for (int64_t x = 0; x <= t; ++x) sum += (logits[x] = std::exp(logits[x] - m));
    for (int64_t x = 0; x <= t; ++x) {
      mass[x / P] += logits[x] / sum;
      token_mass[x] += logits[x] / sum;
    }
  }
  double got = 0;
  for (int64_t x : attended) got += token_mass[x];
  std::sort(mass.begin(), mass.end(), std::greater<>());
  double best = 0;
  for (int64_t i = 0; i < std::min<int64_t>(budget_pages, pages); ++i) best += mass[i];
  return best > 0 ? std::min(1.0, got / best) : 1.0;
}

// DecodeSession (one sequence x one layer per object) over the same docs, layers, steps and
// options: its output error against dense, per-step time (all docs and layers, summed), and the
// largest difference between its outputs' errors and the worker's.
int CompareSession(const Args& a, const std::vector<Doc>& docs, const DecodeWorkerOptions& wo,
                   int64_t steps, int64_t calib, const std::vector<double>& worker_err) {
  const int B = static_cast<int>(docs.size()), L = wo.num_layers;
  const int qh = wo.q_heads, kvh = static_cast<int>(wo.layout.kv_heads);
  const int hd = static_cast<int>(wo.layout.head_dim), P = static_cast<int>(wo.layout.page_tokens);
  const int64_t T = docs[0].layers[0].tokens, first = docs[0].layers[0].first_query();
  StoreOptions so;
  so.layouts = {wo.layout};
  so.host_capacity_bytes = static_cast<uint64_t>(a.host_pages) * wo.layout.PageBytes();
  so.segment_bytes = wo.layout.PageBytes() * 64;
  so.data_dir = a.ssd_dir + "_session";
  std::filesystem::remove_all(so.data_dir);
  auto store = Store::Open(so);
  if (!store.ok()) return 1;
  std::vector<std::unique_ptr<DecodeSession>> sessions;
  for (const Doc& doc : docs) {
    for (int l = 0; l < L; ++l) {
      DecodeSessionOptions o;
      o.tenant = "bench";
      o.layout = wo.layout;
      o.q_heads = qh;
      o.model_id = "trace-session";
      o.layer = static_cast<uint32_t>(l);
      o.policy = wo.policy;
      o.selector = wo.selector;
      o.boundary_trigger = wo.boundary_trigger;
      // louiskv's threshold is its selector's; per-layer thresholds (calibrated) win.
      o.boundary_threshold = wo.policy == retriever::Policy::kBoundary
                                 ? wo.selector.boundary_threshold
                                 : wo.boundary_threshold;
      if (!wo.layer_thresholds.empty()) o.boundary_threshold = wo.layer_thresholds[l];
      o.pool_pages = static_cast<int32_t>(T / P + 2);
      auto s = DecodeSession::Create(store->get(), MakeCpuWorkerBackend(), o);
      if (!s.ok()) {
        std::fprintf(stderr, "session: %s\n", s.status().ToString().c_str());
        return 1;
      }
      const auto& tr = doc.layers[l];
      std::vector<uint16_t> k(kvh * first * hd), v(kvh * first * hd);
      for (int h = 0; h < kvh; ++h) {
        std::memcpy(&k[int64_t{h} * first * hd], &tr.k[int64_t{h} * T * hd], first * hd * 2);
        std::memcpy(&v[int64_t{h} * first * hd], &tr.v[int64_t{h} * T * hd], first * hd * 2);
      }
      if (absl::Status st = (*s)->Prefill(absl::MakeConstSpan(doc.ids).subspan(0, first), k, v);
          !st.ok()) {
        std::fprintf(stderr, "session prefill: %s\n", st.ToString().c_str());
        return 1;
      }
      sessions.push_back(std::move(*s));
    }
  }
  std::vector<double> step_s, err;
  std::vector<uint16_t> q(qh * hd), k(kvh * hd), v(kvh * hd), o(qh * hd), od(qh * hd);
  std::vector<int32_t> indptr, idx, last;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = first + s;
    double took = 0;
    for (int b = 0; b < B; ++b) {
      for (int l = 0; l < L; ++l) {
        const auto& tr = docs[b].layers[l];
        for (int h = 0; h < qh; ++h) {
          std::memcpy(&q[h * hd], &tr.q[(int64_t{h} * tr.queries + s) * hd], hd * 2);
        }
        for (int h = 0; h < kvh; ++h) {
          std::memcpy(&k[h * hd], &tr.k[(int64_t{h} * T + t) * hd], hd * 2);
          std::memcpy(&v[h * hd], &tr.v[(int64_t{h} * T + t) * hd], hd * 2);
        }
        Clock::time_point t1 = Clock::now();
        auto st = sessions[b * L + l]->Step(docs[b].ids[t], q, k, v, absl::MakeSpan(o));
        took += Seconds(t1);
        if (!st.ok()) {
          std::fprintf(stderr, "session step: %s\n", st.status().ToString().c_str());
          return 1;
        }
        if (s < calib) continue;
        if (!Dense(tr, P, t, q.data(), od.data(), indptr, idx, last).ok()) return 1;
        for (int h = 0; h < qh; ++h) {
          double num = 0, den = 0;
          for (int d = 0; d < hd; ++d) {
            const double x = kernels::HalfToFloat(o[h * hd + d]);
            const double y = kernels::HalfToFloat(od[h * hd + d]);
            num += (x - y) * (x - y);
            den += y * y;
          }
          err.push_back(std::sqrt(num / std::max(den, 1e-30)));
        }
      }
    }
    if (s >= calib) step_s.push_back(took);
  }
  // The worker's errors were pushed in (step, layer, doc, head) order, the session's in (step,
  // doc, layer, head) order: compare the means and the sorted distributions.
  std::vector<double> we = worker_err, se = err;
  std::sort(we.begin(), we.end());
  std::sort(se.begin(), se.end());
  double max_diff = 0;
  for (size_t i = 0; i < std::min(we.size(), se.size()); ++i) {
    max_diff = std::max(max_diff, std::abs(we[i] - se[i]));
  }
  std::printf("| DecodeSession out err mean / p99 | %.4f / %.4f |\n",
              std::accumulate(err.begin(), err.end(), 0.0) / std::max<size_t>(1, err.size()),
              Percentile(err, 0.99));
  std::printf("| max |worker err - session err| (sorted) | %.2e |\n", max_diff);
  std::printf("| DecodeSession step median (%d docs x %d layers, one object each) | %.3f ms |\n", B,
              L, Median(step_s) * 1e3);
  return 0;
}

// What verification adds to a fetch, measured in the same run: the verified gather of 4096
// head-pages (copy + checksum of what landed, the CPU reference) against plain copies of the same
// bytes (memcpy), medians of 5.
void VerifyCost(const PageLayout& layout) {
  const int64_t half = int64_t{layout.page_tokens} * layout.head_dim * 2;
  const int32_t n = 4096, heads = static_cast<int32_t>(layout.kv_heads);
  const int32_t slots = n / heads + 1;
  std::vector<uint8_t> src(static_cast<size_t>(2 * n * half), 7), pool(heads * slots * 2 * half);
  std::vector<int64_t> k(n), v(n);
  std::vector<int32_t> head(n), slot(n);
  std::vector<uint64_t> sums(n);
  std::vector<uint8_t> bad(n);
  for (int32_t i = 0; i < n; ++i) {
    k[i] = 2 * i * half;
    v[i] = k[i] + half;
    head[i] = i % heads;
    slot[i] = i / heads;
    sums[i] = kernels::HeadPageChecksum(&src[k[i]], &src[v[i]], half);
  }
  kernels::HeadGatherParams p{src.data(),  static_cast<int64_t>(src.size()),
                              pool.data(), heads,
                              slots,       half,
                              n,           k.data(),
                              v.data(),    head.data(),
                              slot.data(), sums.data(),
                              bad.data()};
  std::vector<double> verified, plain;
  for (int r = 0; r < 5; ++r) {
    Clock::time_point t0 = Clock::now();
    if (!kernels::GatherHeadPagesReference(p).ok()) return;
    verified.push_back(Seconds(t0));
    t0 = Clock::now();
    for (int32_t i = 0; i < n; ++i) {
      uint8_t* dst = &pool[(int64_t{head[i]} * slots + slot[i]) * 2 * half];
      std::memcpy(dst, &src[k[i]], half);
      std::memcpy(dst + half, &src[v[i]], half);
    }
    plain.push_back(Seconds(t0));
  }
  const double gib = 2.0 * n * half / (1 << 30);
  std::printf(
      "| verified gather vs plain copy (4096 head-pages, CPU) | %.2f vs %.2f GiB/s (%.2fx "
      "the time) |\n",
      gib / Median(verified), gib / Median(plain), Median(verified) / Median(plain));
}

int Run(const Args& a) {
  auto found = bench::FindTraces(a.traces);
  if (!found.ok()) {
    std::fprintf(stderr, "%s\n", found.status().ToString().c_str());
    return 1;
  }
  std::map<std::string, Doc> by_doc;
  for (const auto& f : *found) {
    auto tr = bench::LoadTrace(f);
    if (!tr.ok() || tr->v.empty()) {
      std::fprintf(stderr, "%s L%d: skipped (%s)\n", f.doc.c_str(), f.layer,
                   tr.ok() ? "no values" : tr.status().ToString().c_str());
      continue;
    }
    Doc& doc = by_doc[f.doc];
    doc.name = f.doc;
    doc.layers.push_back(std::move(*tr));
  }
  std::vector<Doc> docs;
  for (auto& [name, doc] : by_doc) docs.push_back(std::move(doc));
  if (docs.empty()) return 1;
  const bench::TraceLayer& t0 = docs[0].layers[0];
  const int L = static_cast<int>(docs[0].layers.size());
  for (const Doc& doc : docs) {
    if (static_cast<int>(doc.layers.size()) != L || doc.layers[0].tokens != t0.tokens ||
        doc.layers[0].queries != t0.queries) {
      std::fprintf(stderr, "every document must trace the same layers and lengths\n");
      return 1;
    }
  }
  const int P = a.page_tokens, kvh = t0.kv_heads, qh = t0.q_heads, hd = t0.head_dim;
  const int64_t T = t0.tokens, first = t0.first_query();
  const int64_t steps = a.steps > 0 ? std::min(a.steps, t0.queries) : t0.queries;
  const int64_t calib =
      std::max<int64_t>(a.policy == "louiskv" ? std::min(a.calib_steps, steps - 1) : 0,
                        std::min(a.report_from, steps - 1));
  const int B = static_cast<int>(docs.size());
  for (Doc& doc : docs) {
    doc.ids.resize(T);
    for (int64_t t = 0; t < T; ++t) doc.ids[t] = static_cast<int32_t>(t);
    auto arr = bench::ReadNpy(a.traces + "/doc" + doc.name + "_ids.npy");
    if (arr.ok() && arr->descr == "<i4" && arr->elements() == T) {
      std::memcpy(doc.ids.data(), arr->data.data(), T * 4);
    }
  }
  const int64_t budget = (T / a.budget_den) / P * P;

  const PageLayout layout{DType::kFp16, static_cast<uint32_t>(kvh), static_cast<uint32_t>(hd),
                          static_cast<uint32_t>(P)};
  std::filesystem::remove_all(a.ssd_dir);
  StoreOptions so;
  so.layouts = {layout};
  so.host_capacity_bytes = static_cast<uint64_t>(a.host_pages) * layout.PageBytes();
  so.segment_bytes = layout.PageBytes() * 64;
  so.data_dir = a.ssd_dir;
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
  o.model_id = "trace";
  o.layout = layout;
  o.q_heads = qh;
  o.num_layers = L;
  o.policy = *policy;
  o.selector.budget_tokens = budget;
  o.selector.resident_factor = a.resident_factor;
  if (a.cluster_window >= 0) o.selector.cluster_window_tokens = a.cluster_window;
  o.select_threads = a.select_threads;
  o.selector.rescore_factor = a.rescore_factor;
  o.selector.trigger_late = a.trigger_late;
  o.selector.retrieve_late = a.retrieve_late;
  o.boundary_trigger = a.trigger;
  o.boundary_threshold = a.threshold;
  o.verify = a.verify;
  o.pool_slots_per_head =
      a.pool_slots > 0 ? a.pool_slots : static_cast<int32_t>(B * L * (T / P + 2) + 8);
  if (*policy == retriever::Policy::kBoundary) {  // per layer, pooled over docs, first queries
    for (int l = 0; l < L; ++l) {
      std::vector<float> qs;
      for (const Doc& doc : docs) {
        const auto& tr = doc.layers[l];
        for (int64_t i = 0; i < calib; ++i) {
          for (int h = 0; h < qh; ++h) {
            for (int d = 0; d < hd; ++d) {
              qs.push_back(kernels::HalfToFloat(tr.q[(int64_t{h} * tr.queries + i) * hd + d]));
            }
          }
        }
      }
      auto th = retriever::CalibrateBoundaryThreshold(qs, calib * B, qh, hd, a.louis_rate);
      if (!th.ok()) {
        std::fprintf(stderr, "calibration: %s\n", th.status().ToString().c_str());
        return 1;
      }
      o.layer_thresholds.push_back(*th);
    }
  }
  if (!a.streaming_profile.empty()) {
    auto profile = retriever::LoadStreamingProfile(a.streaming_profile);
    if (!profile.ok()) {
      std::fprintf(stderr, "profile: %s\n", profile.status().ToString().c_str());
      return 1;
    }
    // Worker layer l is the l-th traced layer of the docs; the profile is by model layer.
    o.layer_streaming_heads.assign(L, {});
    for (int l = 0; l < L; ++l) {
      o.layer_streaming_heads[l] =
          StreamingHeadsFromProfile(*profile, static_cast<uint32_t>(docs[0].layers[l].layer), 1)[0];
    }
    o.streaming_sink_pages = (profile->sink_tokens + P - 1) / P;
    o.streaming_window_pages = std::max(1, (profile->window_tokens + P - 1) / P);
  }
  auto made = bench::MakeWorkerBackend(a.backend);
  if (!made.ok()) {
    std::fprintf(stderr, "backend: %s\n", made.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<WorkerBackend> backend = std::move(*made);
  const Device device = backend->device();
  auto stage = bench::MakeTensorStage(device);
  if (!stage.ok()) {
    std::fprintf(stderr, "tensors: %s\n", stage.status().ToString().c_str());
    return 1;
  }
  bench::TensorStage& st = **stage;
  auto worker = DecodeWorker::Create(store->get(), std::move(backend), o);
  if (!worker.ok()) {
    std::fprintf(stderr, "worker: %s\n", worker.status().ToString().c_str());
    return 1;
  }
  DecodeWorker& w = **worker;

  // Prefill: the prompt of every doc, layer by layer ([n, kv, d] rows from the [kv, T, d] trace).
  Clock::time_point tp = Clock::now();
  std::vector<SequenceId> seqs;
  for (const Doc& doc : docs) {
    auto opened = w.Open(absl::MakeConstSpan(doc.ids).subspan(0, first));
    if (!opened.ok()) {
      std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
      return 1;
    }
    seqs.push_back(opened->id);
    for (int l = 0; l < L; ++l) {
      const auto& tr = doc.layers[l];
      const int64_t n = first - opened->cached_tokens;
      std::vector<uint16_t> k(n * kvh * hd), v(n * kvh * hd);
      for (int64_t t = 0; t < n; ++t) {
        for (int h = 0; h < kvh; ++h) {
          const int64_t src = (int64_t{h} * T + opened->cached_tokens + t) * hd;
          std::memcpy(&k[(t * kvh + h) * hd], &tr.k[src], hd * 2);
          std::memcpy(&v[(t * kvh + h) * hd], &tr.v[src], hd * 2);
        }
      }
      auto kd = st.In(0, k.data(), DType::kFp16, n, kvh, hd);
      auto vd = st.In(1, v.data(), DType::kFp16, n, kvh, hd);
      absl::Status s = !kd.ok()   ? kd.status()
                       : !vd.ok() ? vd.status()
                                  : w.Prefill(opened->id, l, *kd, *vd);
      if (!s.ok()) {
        std::fprintf(stderr, "prefill: %s\n", s.ToString().c_str());
        return 1;
      }
    }
  }
  if (absl::Status s = w.Flush(); !s.ok()) {
    std::fprintf(stderr, "flush: %s\n", s.ToString().c_str());
    return 1;
  }
  const double prefill_s = Seconds(tp);

  // Decode.
  std::vector<double> step_s, dense_s, err, recall, phase[6];
  int64_t retrievals = 0, attended = 0, fetched = 0, measured = 0, failures = 0, late = 0;
  int64_t quiet = 0;  // steps in which no (sequence, layer) retrieved
  std::vector<uint16_t> q(B * qh * hd), k(B * kvh * hd), v(B * kvh * hd), o_w(B * qh * hd),
      o_d(static_cast<size_t>(L) * B * qh * hd);
  std::vector<int32_t> indptr, idx, last;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = first + s;
    std::vector<int32_t> next;
    for (const Doc& doc : docs) next.push_back(doc.ids[t]);
    Clock::time_point t1 = Clock::now();
    auto plan = w.Plan(seqs, next);
    if (!plan.ok()) {
      std::fprintf(stderr, "plan: %s\n", plan.status().ToString().c_str());
      return 1;
    }
    std::vector<std::vector<uint16_t>> outs(L);
    for (int l = 0; l < L; ++l) {
      for (int b = 0; b < B; ++b) {
        const auto& tr = docs[b].layers[l];
        for (int h = 0; h < qh; ++h) {
          std::memcpy(&q[(b * qh + h) * hd], &tr.q[(int64_t{h} * tr.queries + s) * hd], hd * 2);
        }
        for (int h = 0; h < kvh; ++h) {
          std::memcpy(&k[(b * kvh + h) * hd], &tr.k[(int64_t{h} * T + t) * hd], hd * 2);
          std::memcpy(&v[(b * kvh + h) * hd], &tr.v[(int64_t{h} * T + t) * hd], hd * 2);
        }
      }
      auto qd = st.In(2, q.data(), DType::kFp16, B, qh, hd);
      auto kd = st.In(3, k.data(), DType::kFp16, B, kvh, hd);
      auto vd = st.In(4, v.data(), DType::kFp16, B, kvh, hd);
      auto od = st.Out(5, o_w.data(), DType::kFp16, B, qh, hd);
      absl::Status as = !qd.ok()   ? qd.status()
                        : !kd.ok() ? kd.status()
                        : !vd.ok() ? vd.status()
                        : !od.ok() ? od.status()
                                   : w.Attend(*plan, l, *qd, *kd, *vd, *od);
      if (as.ok()) as = st.Back(*od, o_w.data());
      if (!as.ok()) {
        std::fprintf(stderr, "attend: %s\n", as.ToString().c_str());
        return 1;
      }
      outs[l] = o_w;
    }
    auto stats = w.Finish(*plan);
    if (!stats.ok()) {
      std::fprintf(stderr, "finish: %s\n", stats.status().ToString().c_str());
      return 1;
    }
    const double took = Seconds(t1);
    for (const absl::Status& st : stats->sequence_status) failures += st.ok() ? 0 : 1;
    if (s < calib) continue;  // the calibration queries are not reported
    ++measured;
    step_s.push_back(took);
    const double ph[6] = {stats->append_s, stats->select_s, stats->fetch_s,
                          stats->verify_s, stats->attend_s, stats->commit_s};
    for (int i = 0; i < 6; ++i) phase[i].push_back(ph[i]);
    retrievals += stats->retrievals;
    quiet += stats->retrievals == 0 ? 1 : 0;
    late += stats->late_reads;
    attended += stats->attended_head_pages;
    fetched += stats->fetched_head_pages;
    // The dense baseline and the errors.
    Clock::time_point t2 = Clock::now();
    for (int l = 0; l < L; ++l) {
      for (int b = 0; b < B; ++b) {
        const auto& tr = docs[b].layers[l];
        std::vector<uint16_t> qb(qh * hd);
        for (int h = 0; h < qh; ++h) {
          std::memcpy(&qb[h * hd], &tr.q[(int64_t{h} * tr.queries + s) * hd], hd * 2);
        }
        uint16_t* od = &o_d[(int64_t{l} * B + b) * qh * hd];
        if (!Dense(tr, P, t, qb.data(), od, indptr, idx, last).ok()) return 1;
      }
    }
    dense_s.push_back(Seconds(t2));
    for (int l = 0; l < L; ++l) {
      for (int b = 0; b < B; ++b) {
        const auto& tr = docs[b].layers[l];
        const uint16_t* od = &o_d[(int64_t{l} * B + b) * qh * hd];  // the timed pass's output
        for (int h = 0; h < qh; ++h) {
          double num = 0, den = 0;
          for (int d = 0; d < hd; ++d) {
            const double x = kernels::HalfToFloat(outs[l][(b * qh + h) * hd + d]);
            const double y = kernels::HalfToFloat(od[h * hd + d]);
            num += (x - y) * (x - y);
            den += y * y;
          }
          err.push_back(std::sqrt(num / std::max(den, 1e-30)));
        }
        if ((s - calib) % a.recall_stride == 0) {
          auto rows = w.AttendedPositions(seqs[b], l);
          for (int h = 0; h < kvh; ++h) {
            recall.push_back(GroupRecall(tr, P, t, s, h, (*rows)[h], budget / P));
          }
        }
      }
    }
  }
  const double tokens = static_cast<double>(measured) * B;  // decoded tokens (each all layers)
  const double head_page_kib = 2.0 * P * hd * 2 / 1024;
  std::printf(
      "decode worker, %s backend: %d docs x %d layers, context %lld, %lld steps "
      "reported (of %lld; %lld calibration), policy %s, budget %lld tokens (1/%d), "
      "pool %d slots/head, verify %s\n",
      a.backend.c_str(), B, L, static_cast<long long>(T), static_cast<long long>(measured),
      static_cast<long long>(steps), static_cast<long long>(calib), a.policy.c_str(),
      static_cast<long long>(budget), a.budget_den, o.pool_slots_per_head, a.verify ? "on" : "off");
  if (!o.layer_thresholds.empty()) {
    std::printf("louiskv thresholds per layer:");
    for (float th : o.layer_thresholds) std::printf(" %.4f", th);
    std::printf("\n");
  }
  std::printf("prefill %.3f s (%d docs x %lld tokens x %d layers)\n", prefill_s, B,
              static_cast<long long>(first), L);
  std::printf("| metric | value |\n| --- | --- |\n");
  std::printf("| out err (rel L2) mean / p99 | %.4f / %.4f |\n",
              std::accumulate(err.begin(), err.end(), 0.0) / std::max<size_t>(1, err.size()),
              Percentile(err, 0.99));
  std::printf(
      "| group recall mean / p5 | %.4f / %.4f |\n",
      std::accumulate(recall.begin(), recall.end(), 0.0) / std::max<size_t>(1, recall.size()),
      Percentile(recall, 0.05));
  std::printf("| retrievals per token (per layer) | %.3f |\n", retrievals / (tokens * L));
  // A step can be planned whole (DecodeWorkerOptions::capturable_steps, quest) only when none of
  // its B x L (sequence, layer) rows retrieves; were the rows' retrievals independent, that
  // would be the product of their rates.
  const double rate = retrievals / (tokens * L);
  std::printf(
      "| steps without a retrieval in any (sequence, layer) | %.3f (independent rows: %.3f) |\n",
      quiet / std::max(1.0, static_cast<double>(measured)), std::pow(1.0 - rate, B * L));
  std::printf("| steps reading q / k late (per layer-token) | %.3f |\n", late / (tokens * L));
  std::printf("| head-pages attended per token-layer-head | %.1f (%.1f KiB) |\n",
              attended / (tokens * L * kvh), attended / (tokens * L * kvh) * head_page_kib);
  std::printf("| head-pages fetched per token-layer-head | %.2f (%.2f KiB) |\n",
              fetched / (tokens * L * kvh), fetched / (tokens * L * kvh) * head_page_kib);
  std::printf("| failed sequence-steps | %lld |\n", static_cast<long long>(failures));
  const WorkerStats ws = w.Stats();
  const double page_mib = static_cast<double>(layout.PageBytes()) / (1 << 20);
  std::printf(
      "| resident at the end: pool / summary table / host selectors | %.1f / %.1f / %.1f MiB "
      "(context KV %.1f MiB) |\n",
      static_cast<double>(ws.pool_bytes) / (1 << 20),
      static_cast<double>(ws.summary_table_bytes) / (1 << 20),
      static_cast<double>(ws.selector_host_bytes) / (1 << 20),
      static_cast<double>(B) * L * (T)*kvh * hd * 2 * 2 / (1 << 20));
  const int64_t natural = ws.pages_committed + ws.pages_reused - ws.layout_pages;
  std::printf("| store pages: natural / layout (louiskv) | %lld / %lld (%.1f / %.1f MiB) |\n",
              static_cast<long long>(natural), static_cast<long long>(ws.layout_pages),
              static_cast<double>(natural) * page_mib,
              static_cast<double>(ws.layout_pages) * page_mib);
  const char* names[6] = {"append", "select", "fetch", "verify", "attend", "commit"};
  const double step_med = Median(step_s), dense_med = Median(dense_s);
  std::printf("| step median (batch %d, %d layers) | %.3f ms |\n", B, L, step_med * 1e3);
  for (int i = 0; i < 6; ++i) {
    std::printf("| - %s median | %.3f ms |\n", names[i], Median(phase[i]) * 1e3);
  }
  std::printf("| dense step median (same kernel, whole context) | %.3f ms |\n", dense_med * 1e3);
  std::printf("| worker step / dense step | %.2fx |\n", step_med / std::max(dense_med, 1e-12));
  VerifyCost(layout);
  if (a.compare_session) return CompareSession(a, docs, o, steps, calib, err);
  return 0;
}

}  // namespace
}  // namespace pagoda

int main(int argc, char** argv) {
  pagoda::Args a;
  CLI::App app{"decode worker over attention traces"};
  app.add_option("--backend", a.backend, "cpu | cuda (device tensors)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--traces", a.traces, "trace directory");
  app.add_option("--ssd-dir", a.ssd_dir, "SSD tier directory (wiped)");
  app.add_option("--policy", a.policy, "quest | lserve | louiskv | streaming | oracle | ann");
  app.add_option("--budget-den", a.budget_den, "budget = context / this")
      ->check(CLI::Range(1, 4096));
  app.add_option("--page-tokens", a.page_tokens, "tokens per page")
      ->check(CLI::IsMember({16, 32, 64}));
  app.add_option("--host-pages", a.host_pages, "host tier pages")->check(CLI::Range(16, 1 << 24));
  app.add_option("--pool-slots", a.pool_slots, "pool slots per KV head (0: everything)");
  app.add_option("--steps", a.steps, "decode steps (0: every traced query)");
  app.add_option("--recall-stride", a.recall_stride, "measure recall every n-th step")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--calib-steps", a.calib_steps, "louiskv calibration queries (not reported)");
  app.add_option("--report-from", a.report_from, "report only steps from this one on");
  app.add_option("--louis-rate", a.louis_rate, "louiskv target retrievals per token");
  app.add_option("--resident-factor", a.resident_factor, "louiskv resident factor");
  app.add_option("--select-threads", a.select_threads,
                 "host selection threads (0: the machine's cores, at most 8)");
  app.add_option("--cluster-window", a.cluster_window,
                 "louiskv clustering window in tokens (0: whole prompt; default: the selector's)");
  app.add_option("--rescore-factor", a.rescore_factor, "louiskv rescore factor");
  app.add_option("--retrieve-late", a.retrieve_late,
                 "louiskv with --trigger-late 1: retrievals take effect a step after the trigger "
                 "fires, so every step after the first reads q / k late (1) or not (0, default)");
  app.add_option("--trigger-late", a.trigger_late,
                 "louiskv: the trigger sees each query a step late, q / k read back late (1, the "
                 "worker's default) or on time (0)");
  app.add_flag("--trigger", a.trigger, "boundary trigger for page policies");
  app.add_option("--threshold", a.threshold, "trigger threshold for page policies");
  app.add_option("--verify", a.verify, "verify gathered head-pages (1/0)");
  app.add_flag("--compare-session", a.compare_session, "also run DecodeSession (page policies)");
  app.add_option("--streaming-profile", a.streaming_profile,
                 "streaming-head profile: those heads attend sinks + window only");
  CLI11_PARSE(app, argc, argv);
  return pagoda::Run(a);
}
