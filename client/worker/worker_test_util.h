// Test helpers of the decode worker's tests (decode_worker_test.cc, sequence_edit_test.cc, and
// the scaffolding of prefill_attend_test.cc and the sessions' tests): a
// real embedded Store, a shadow model whose K, V and q are functions of (layer, position, token
// id), so equal prompts give equal pages and the exact attention every output must match can be
// computed, and a Driver that runs a worker and keeps each sequence's token ids.
#ifndef PAGODA_CLIENT_WORKER_WORKER_TEST_UTIL_H_
#define PAGODA_CLIENT_WORKER_WORKER_TEST_UTIL_H_

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/retriever/selector.h"

namespace pagoda::worker_test {

inline constexpr int kKv = 2, kQ = 4, kDim = 16, kPage = 4, kLayers = 2;

class TempDir {
 public:
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "worker_test_XXXXXX").string();
    path_ = mkdtemp(t.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline PageLayout Layout() { return PageLayout{DType::kFp16, kKv, kDim, kPage}; }

// A store under `dir` (its SSD tier there) whose host tier holds host_pages pages in segments of
// segment_pages pages.
inline std::unique_ptr<Store> OpenStore(const std::string& dir, uint64_t host_pages = 4096,
                                        uint64_t segment_pages = 16) {
  StoreOptions o;
  o.layouts = {Layout()};
  o.host_capacity_bytes = host_pages * Layout().PageBytes();
  o.segment_bytes = segment_pages * Layout().PageBytes();
  o.data_dir = dir;
  auto s = Store::Open(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return std::move(*s);
}

inline DecodeWorkerOptions Options(retriever::Policy policy, int64_t budget, int32_t slots) {
  DecodeWorkerOptions o;
  o.tenant = "t";
  o.layout = Layout();
  o.q_heads = kQ;
  o.num_layers = kLayers;
  o.policy = policy;
  o.selector.budget_tokens = budget;
  o.selector.sink_pages = 1;
  o.selector.window_pages = 1;
  o.selector.cluster_tokens = 4;
  o.pool_slots_per_head = slots;
  return o;
}

// A deterministic value in [-1, 1] of its arguments.
inline float Value(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  uint64_t x = a * 0x9e3779b97f4a7c15ULL ^ (b + 0x632be59bd9b4e019ULL) * 0xc2b2ae3d27d4eb4fULL ^
               (c + 7) * 0x165667b19e3779f9ULL ^ (d + 13) * 0xd6e8feb86659fd93ULL;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return static_cast<float>(static_cast<double>(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
inline uint16_t Half(float f) { return kernels::FloatToHalf(f); }
inline double D(uint16_t h) { return kernels::HalfToFloat(h); }

// K or V (which = 0 / 1) of (layer, position, token) for KV head h, dim d.
inline uint16_t KV(int which, int layer, int64_t pos, int32_t tok, int h, int d) {
  return Half(Value(which * 1000 + layer, static_cast<uint64_t>(pos), static_cast<uint64_t>(tok),
                    static_cast<uint64_t>(h * kDim + d)));
}
inline uint16_t Q(int layer, int64_t pos, int32_t tok, int h, int d) {
  return Half(2.5f * Value(5000 + layer, static_cast<uint64_t>(pos), static_cast<uint64_t>(tok),
                           static_cast<uint64_t>(h * kDim + d)));
}

// [n, kKv, kDim] of tokens [from, from + n).
inline std::vector<uint16_t> Rows(int which, int layer, const std::vector<int32_t>& toks,
                                  int64_t from, int64_t n) {
  std::vector<uint16_t> out;
  for (int64_t t = from; t < from + n; ++t) {
    for (int h = 0; h < kKv; ++h) {
      for (int d = 0; d < kDim; ++d) out.push_back(KV(which, layer, t, toks[t], h, d));
    }
  }
  return out;
}

// Exact attention of the query at position qpos (query head qh) over the listed positions of
// its KV head (a block's queries attend positions past their own).
inline std::vector<double> QueryAttention(int layer, const std::vector<int32_t>& toks, int64_t qpos,
                                          int qh, const std::vector<int64_t>& positions) {
  const int kvh = qh / (kQ / kKv);
  std::vector<double> logits;
  double m = -1e300;
  for (int64_t t : positions) {
    double dot = 0;
    for (int d = 0; d < kDim; ++d) {
      dot += D(Q(layer, qpos, toks[qpos], qh, d)) * D(KV(0, layer, t, toks[t], kvh, d));
    }
    logits.push_back(dot / std::sqrt(double{kDim}));
    m = std::max(m, logits.back());
  }
  double sum = 0;
  std::vector<double> o(kDim, 0);
  for (size_t i = 0; i < positions.size(); ++i) {
    const double w = std::exp(logits[i] - m);
    sum += w;
    for (int d = 0; d < kDim; ++d)
      o[d] += w * D(KV(1, layer, positions[i], toks[positions[i]], kvh, d));
  }
  for (double& x : o) x /= sum;
  return o;
}

// The same for the last token's query.
inline std::vector<double> Attention(int layer, const std::vector<int32_t>& toks, int qh,
                                     const std::vector<int64_t>& positions) {
  return QueryAttention(layer, toks, static_cast<int64_t>(toks.size()) - 1, qh, positions);
}

inline std::vector<int64_t> AllPositions(int64_t n) {
  std::vector<int64_t> p;
  for (int64_t t = 0; t < n; ++t) p.push_back(t);
  return p;
}

inline std::vector<int32_t> Prompt(int n, int32_t seed) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(seed * 100 + i);
  return t;
}

using RefSelectors = std::vector<std::unique_ptr<retriever::Selector>>;

// Keys [kv, n, dim] of tokens [from, from + n) of `toks` in layer l, as a selector takes them.
inline std::vector<uint16_t> KeyRows(int l, const std::vector<int32_t>& toks, int64_t from,
                                     int64_t n) {
  std::vector<uint16_t> out;
  for (int h = 0; h < kKv; ++h) {
    for (int64_t t = from; t < from + n; ++t) {
      for (int d = 0; d < kDim; ++d) out.push_back(KV(0, l, t, toks[t], h, d));
    }
  }
  return out;
}

// The retriever's own selectors for `policy` (one per layer, the worker's options), fed all of
// `toks` as their prompt: the reference the worker's selections are checked against.
inline RefSelectors ReferenceSelectors(retriever::Policy policy, const DecodeWorkerOptions& o,
                                       const std::vector<int32_t>& toks) {
  retriever::SelectorOptions so = o.selector;
  so.kv_heads = kKv;
  so.q_heads = kQ;
  so.head_dim = kDim;
  so.page_tokens = kPage;
  so.dtype = kernels::DType::kFloat16;
  RefSelectors sels;
  for (int l = 0; l < kLayers; ++l) {
    auto sel = retriever::MakeSelector(policy, so);
    EXPECT_TRUE(sel.ok()) << sel.status();
    const int64_t n = static_cast<int64_t>(toks.size());
    EXPECT_TRUE((*sel)->Prefill(KeyRows(l, toks, 0, n), n).ok());
    sels.push_back(std::move(*sel));
  }
  return sels;
}

// The newest token of `toks` joins reference selector `sel` of layer l, which selects for its
// query.
inline absl::StatusOr<retriever::Selection> ReferenceStep(retriever::Selector& sel, int l,
                                                          const std::vector<int32_t>& toks) {
  const int64_t pos = static_cast<int64_t>(toks.size()) - 1;
  if (absl::Status s = sel.Append(KeyRows(l, toks, pos, 1), 1); !s.ok()) return s;
  std::vector<uint16_t> q;
  for (int h = 0; h < kQ; ++h) {
    for (int d = 0; d < kDim; ++d) q.push_back(Q(l, pos, toks[pos], h, d));
  }
  return sel.Select(q);
}

// A backend that passes every call to another (tests derive from it to change one call).
class ForwardingBackend : public WorkerBackend {
 public:
  explicit ForwardingBackend(std::unique_ptr<WorkerBackend> inner) : inner_(std::move(inner)) {}
  const char* name() const override { return inner_->name(); }
  absl::Status Init(const PageLayout& l, int q, int32_t s) override {
    return inner_->Init(l, q, s);
  }
  Device device() const override { return inner_->device(); }
  absl::Status RegisterSource(const uint8_t* b, int64_t n) override {
    return inner_->RegisterSource(b, n);
  }
  absl::Status Gather(absl::Span<const HeadFetch> f, absl::Span<uint8_t> bad) override {
    return inner_->Gather(f, bad);
  }
  absl::Status WriteTokens(const TensorView& k, const TensorView& v, absl::Span<const int32_t> s,
                           absl::Span<const int32_t> p) override {
    return inner_->WriteTokens(k, v, s, p);
  }
  absl::Status WriteHeads(absl::Span<const HeadSlot> d, absl::Span<const uint8_t> b) override {
    return inner_->WriteHeads(d, b);
  }
  absl::Status ReadHeads(absl::Span<const HeadSlot> s, absl::Span<uint8_t> b) override {
    return inner_->ReadHeads(s, b);
  }
  absl::Status CopyHeads(absl::Span<const HeadSlot> s, absl::Span<const HeadSlot> d) override {
    return inner_->CopyHeads(s, d);
  }
  absl::Status AssemblePages(const TensorView& k, const TensorView& v,
                             absl::Span<const int64_t> offsets,
                             absl::Span<uint64_t> sums) override {
    return inner_->AssemblePages(k, v, offsets, sums);
  }
  absl::Status AttendPrefill(const TensorView& q, const kernels::PageTable& t, const PrefillMask& m,
                             const TensorView& o) override {
    return inner_->AttendPrefill(q, t, m, o);
  }
  absl::Status Attend(const TensorView& q, const kernels::PageTable& t,
                      const TensorView& o) override {
    return inner_->Attend(q, t, o);
  }
  absl::Status ScorePages(const TensorView& q, absl::Span<const int32_t> ip,
                          absl::Span<const int32_t> sl, absl::Span<const int32_t> len,
                          kernels::GroupReduce r, absl::Span<float> mass) override {
    return inner_->ScorePages(q, ip, sl, len, r, mass);
  }
  absl::Status AttendBestByMass(const TensorView& q, const MassAttendRequest& req, int tag,
                                const TensorView& o) override {
    return inner_->AttendBestByMass(q, req, tag, o);
  }
  void DropSlotList(int64_t id) override { inner_->DropSlotList(id); }
  absl::StatusOr<absl::Span<const int32_t>> FinishChoices(int tag) override {
    return inner_->FinishChoices(tag);
  }
  absl::Status CopyToHost(const TensorView& t, absl::Span<uint16_t> out) override {
    return inner_->CopyToHost(t, out);
  }
  absl::Status StartCopyToHost(const TensorView& t, int tag) override {
    return inner_->StartCopyToHost(t, tag);
  }
  absl::StatusOr<absl::Span<const uint16_t>> FinishCopyToHost(int tag) override {
    return inner_->FinishCopyToHost(tag);
  }
  absl::Status StartReadHeads(absl::Span<const HeadSlot> s, int tag) override {
    return inner_->StartReadHeads(s, tag);
  }
  absl::Status InitSummaries(int64_t n) override { return inner_->InitSummaries(n); }
  absl::Status WriteSummaries(absl::Span<const int32_t> s, absl::Span<const uint16_t> mn,
                              absl::Span<const uint16_t> mx, absl::Span<const int32_t> c) override {
    return inner_->WriteSummaries(s, mn, mx, c);
  }
  absl::Status UpdateSummaries(absl::Span<const int32_t> s, absl::Span<const int32_t> p,
                               absl::Span<const int32_t> o, absl::Span<const int32_t> n) override {
    return inner_->UpdateSummaries(s, p, o, n);
  }
  absl::Status CopySummaries(absl::Span<const int32_t> s, absl::Span<const int32_t> d) override {
    return inner_->CopySummaries(s, d);
  }
  absl::Status SummarizeTokens(const TensorView& k, absl::Span<const int32_t> s) override {
    return inner_->SummarizeTokens(k, s);
  }
  absl::Status SelectQuest(const TensorView& q, const QuestRequest& r, std::vector<int32_t>& ip,
                           std::vector<int32_t>& ix) override {
    return inner_->SelectQuest(q, r, ip, ix);
  }
  absl::Status KMeans(const kernels::KMeansParams& p, int iterations) override {
    return inner_->KMeans(p, iterations);
  }
  absl::StatusOr<uint64_t> StageLayers(absl::Span<const StagedLayer> layers) override {
    return inner_->StageLayers(layers);
  }
  absl::Status AttendStaged(int layer, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& o) override {
    return inner_->AttendStaged(layer, q, k, v, o);
  }
  absl::Status Sync() override { return inner_->Sync(); }

 protected:
  std::unique_ptr<WorkerBackend> inner_;
};

// What a CUDA graph does, on the CPU: while `capturing`, AttendStaged calls are recorded, not run
// (a stream capture runs nothing); Launch runs the recorded calls again, with the same tensors
// and whatever the backend has staged by then. A worker whose staged Attend left host work
// undone, or whose staging missed something a layer needs, gives other outputs under replay.
class ReplayBackend final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  absl::Status AttendStaged(int layer, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& o) override {
    if (!capturing) return inner_->AttendStaged(layer, q, k, v, o);
    graph_.push_back({layer, q, k, v, o});
    return absl::OkStatus();
  }
  void BeginCapture() {
    graph_.clear();
    capturing = true;
  }
  absl::Status Launch() {
    for (const Call& c : graph_) {
      if (absl::Status s = inner_->AttendStaged(c.layer, c.q, c.k, c.v, c.o); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  bool capturing = false;

 private:
  struct Call {
    int layer;
    TensorView q, k, v, o;
  };
  std::vector<Call> graph_;
};

// Drives a worker and keeps every sequence's token ids (the shadow model's input).
class Driver {
 public:
  explicit Driver(DecodeWorker* w) : w_(w) {}

  // Opens and prefills (all layers, in `chunk`-token chunks; `strided`: rows padded apart, as a
  // slice of a wider tensor would be).
  SequenceId Open(const std::vector<int32_t>& prompt, int64_t* cached = nullptr, int chunk = 7,
                  bool strided = false) {
    auto opened = w_->Open(prompt);
    EXPECT_TRUE(opened.ok()) << opened.status();
    if (cached != nullptr) *cached = opened->cached_tokens;
    const int64_t row = kKv * kDim, pad = strided ? 8 : 0;
    auto view = [&](std::vector<uint16_t>& rows, std::vector<uint16_t>& buf, int64_t n) {
      buf.assign(n * (row + pad), 0x7e00);  // NaN in the padding: it must never be read
      for (int64_t i = 0; i < n; ++i) {
        std::copy_n(rows.begin() + i * row, row, buf.begin() + i * (row + pad));
      }
      TensorView t = TensorView::Contiguous(buf.data(), DType::kFp16, {n, kKv, kDim});
      t.strides[0] = row + pad;
      return t;
    };
    for (int l = 0; l < kLayers; ++l) {
      for (int64_t t = opened->cached_tokens; t < static_cast<int64_t>(prompt.size()); t += chunk) {
        const int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(prompt.size()) - t);
        std::vector<uint16_t> k = Rows(0, l, prompt, t, n), v = Rows(1, l, prompt, t, n), kb, vb;
        absl::Status s = w_->Prefill(opened->id, l, view(k, kb, n), view(v, vb, n));
        EXPECT_TRUE(s.ok()) << s;
      }
    }
    toks_[opened->id] = prompt;
    return opened->id;
  }
  void Forked(SequenceId parent, SequenceId child) { toks_[child] = toks_[parent]; }
  // Tokens the worker took or dropped outside a step (Extend, Truncate).
  void Extended(SequenceId id, const std::vector<int32_t>& more) {
    toks_[id].insert(toks_[id].end(), more.begin(), more.end());
  }
  void Truncated(SequenceId id, int64_t n) { toks_[id].resize(n); }

  // Runs capturable steps as an engine with CUDA graphs would (over ReplayBackend): the first
  // one of a graph_key is captured (its Attend calls recorded) and launched, later ones replayed
  // (Replayed instead of Attend). The layers' tensors then live in fixed buffers.
  void UseGraphs(ReplayBackend* graphs) { graphs_ = graphs; }
  int captures() const { return captures_; }
  int replays() const { return replays_; }

  // One step for `ids` with new tokens `next`; outputs per layer [B, kQ, kDim].
  absl::StatusOr<WorkerStepStats> Step(const std::vector<SequenceId>& ids,
                                       const std::vector<int32_t>& next,
                                       std::vector<std::vector<uint16_t>>* outs = nullptr) {
    auto plan = w_->Plan(ids, next);
    if (!plan.ok()) return plan.status();
    const int64_t B = static_cast<int64_t>(ids.size());
    for (size_t b = 0; b < ids.size(); ++b) toks_[ids[b]].push_back(next[b]);
    if (outs != nullptr) outs->assign(kLayers, {});
    bufs_.resize(kLayers);
    for (int l = 0; l < kLayers; ++l) {  // the engine's tensors of every layer, in place
      Tensors& x = bufs_[l];
      x.q.resize(B * kQ * kDim);
      x.k.resize(B * kKv * kDim);
      x.v.resize(B * kKv * kDim);
      x.o.assign(B * kQ * kDim, 0xffff);
      for (int64_t b = 0; b < B; ++b) {
        const auto& t = toks_[ids[b]];
        const int64_t pos = static_cast<int64_t>(t.size()) - 1;
        for (int h = 0; h < kQ; ++h) {
          for (int d = 0; d < kDim; ++d) x.q[(b * kQ + h) * kDim + d] = Q(l, pos, t[pos], h, d);
        }
        std::vector<uint16_t> kr = Rows(0, l, t, pos, 1), vr = Rows(1, l, t, pos, 1);
        std::copy(kr.begin(), kr.end(), x.k.begin() + b * kKv * kDim);
        std::copy(vr.begin(), vr.end(), x.v.begin() + b * kKv * kDim);
      }
    }
    const bool graph = graphs_ != nullptr && plan->capturable;
    if (graph && captured_ && plan->graph_key == graph_key_) {
      if (absl::Status s = graphs_->Launch(); !s.ok()) return s;
      if (absl::Status s = w_->Replayed(*plan); !s.ok()) return s;
      ++replays_;
    } else {
      if (graph) graphs_->BeginCapture();
      for (int l = 0; l < kLayers; ++l) {
        Tensors& x = bufs_[l];
        absl::Status s =
            w_->Attend(*plan, l, TensorView::Contiguous(x.q.data(), DType::kFp16, {B, kQ, kDim}),
                       TensorView::Contiguous(x.k.data(), DType::kFp16, {B, kKv, kDim}),
                       TensorView::Contiguous(x.v.data(), DType::kFp16, {B, kKv, kDim}),
                       TensorView::Contiguous(x.o.data(), DType::kFp16, {B, kQ, kDim}));
        if (!s.ok()) return s;
      }
      if (graph) {
        graphs_->capturing = false;
        captured_ = true;
        graph_key_ = plan->graph_key;
        ++captures_;
        if (absl::Status s = graphs_->Launch(); !s.ok()) return s;
      }
    }
    if (outs != nullptr) {
      for (int l = 0; l < kLayers; ++l) (*outs)[l] = bufs_[l].o;
    }
    return w_->Finish(*plan);
  }

  // Max abs difference between the worker's output of sequence b and exact attention over the
  // positions the worker says it attended (or every token when `dense`): the shadow model's K / V
  // at those positions, so a page holding other tokens than its row claims cannot pass.
  double Error(SequenceId id, int b, int layer, const std::vector<uint16_t>& o, bool dense) {
    const auto& t = toks_[id];
    const int64_t n = static_cast<int64_t>(t.size());
    auto attended = w_->AttendedPositions(id, layer);
    if (!attended.ok() || attended->size() != static_cast<size_t>(kKv)) {
      ADD_FAILURE() << "no rows for sequence " << id << " layer " << layer
                    << " (did its step fail?)";
      return 1e9;
    }
    double err = 0;
    for (int qh = 0; qh < kQ; ++qh) {
      const std::vector<int64_t> pos = dense ? AllPositions(n) : (*attended)[qh / (kQ / kKv)];
      const std::vector<double> ref = Attention(layer, t, qh, pos);
      for (int d = 0; d < kDim; ++d) {
        err = std::max(err, std::abs(D(o[(b * kQ + qh) * kDim + d]) - ref[d]));
      }
    }
    return err;
  }
  const std::vector<int32_t>& tokens(SequenceId id) { return toks_[id]; }

 private:
  DecodeWorker* w_;
  std::map<SequenceId, std::vector<int32_t>> toks_;
  struct Tensors {
    std::vector<uint16_t> q, k, v, o;
  };
  std::vector<Tensors> bufs_;  // per layer (a replay reads the captured ones' addresses)
  ReplayBackend* graphs_ = nullptr;
  bool captured_ = false;
  uint64_t graph_key_ = 0;
  int captures_ = 0, replays_ = 0;
};

inline constexpr double kTol = 2e-3;  // fp16 output rounding of values in [-1, 1]

}  // namespace pagoda::worker_test

#endif  // PAGODA_CLIENT_WORKER_WORKER_TEST_UTIL_H_
