// DecodeSession: one sequence x one layer over the decode worker (a batch of one, one layer).
#include "pagoda/client/decode_session.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace pagoda {

DecodeSession::~DecodeSession() {
  if (seq_ != 0) (void)worker_->Close(seq_);  // unpins the prefix, closes the stream
}

absl::StatusOr<std::unique_ptr<DecodeSession>> DecodeSession::Create(
    Store* store, std::unique_ptr<WorkerBackend> backend, const DecodeSessionOptions& options) {
  if (absl::Status s = options.layout.Validate(); !s.ok()) return s;
  const int64_t P = options.layout.page_tokens;
  const int64_t need = options.selector.budget_tokens / P + options.selector.window_pages + 2;
  if (options.pool_pages < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool_pages ", options.pool_pages,
                     " cannot hold one step (budget + window pages + 2 = ", need, ")"));
  }
  if (options.stream.has_value() && options.stream_id == 0) {
    return absl::InvalidArgumentError("stream_id must not be 0");
  }
  DecodeWorkerOptions w;
  w.tenant = options.tenant;
  w.model_id = options.model_id;
  w.layout = options.layout;
  w.q_heads = options.q_heads;
  w.num_layers = 1;
  w.first_layer = options.layer;
  w.policy = options.policy;
  w.selector = options.selector;
  // Stream pages leave the store with the window: a reused selection could name a dropped page.
  w.boundary_trigger = options.boundary_trigger && !options.stream.has_value();
  w.boundary_threshold = options.boundary_threshold;
  if (options.policy == retriever::Policy::kBoundary) {
    w.selector.boundary_threshold = options.boundary_threshold;
  }
  w.pool_slots_per_head = options.pool_pages;
  w.pin_prompt = options.pin_prefix;
  w.stream = options.stream;
  w.stream_base = options.stream_id - 1;  // the session's sequence is the worker's first (id 1)
  w.prefetch = options.prefetch;
  auto worker = DecodeWorker::Create(store, std::move(backend), w);
  if (!worker.ok()) return worker.status();
  return std::unique_ptr<DecodeSession>(new DecodeSession(std::move(*worker), options));
}

absl::Status DecodeSession::Prefill(absl::Span<const int32_t> token_ids,
                                    absl::Span<const uint16_t> keys,
                                    absl::Span<const uint16_t> values) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (seq_ != 0) return absl::FailedPreconditionError("Prefill was already called");
  const int64_t n = static_cast<int64_t>(token_ids.size());
  const int64_t kv = options_.layout.kv_heads, d = options_.layout.head_dim;
  if (n < 1) return absl::InvalidArgumentError("the prompt is empty");
  const size_t expect = static_cast<size_t>(n * kv * d);
  if (keys.size() != expect || values.size() != expect) {
    return absl::InvalidArgumentError(absl::StrCat("keys / values must hold kv_heads x ", n,
                                                   " x head_dim = ", expect, " elements"));
  }
  // Check the whole prompt before the worker sees any of it: a bad value changes nothing.
  const uint16_t mask = options_.layout.dtype == DType::kBf16 ? 0x7f80 : 0x7c00;
  for (auto span : {keys, values}) {
    for (uint16_t e : span) {
      if ((e & mask) == mask)
        return absl::InvalidArgumentError("a prompt key or value is not finite");
    }
  }
  auto opened = worker_->Open(token_ids);
  if (!opened.ok()) return opened.status();
  const int64_t cached = opened->cached_tokens, rows = n - cached;
  // [kv_heads, n, d] seen as [n, kv_heads, d] from token `cached` on: strides, no copy.
  auto view = [&](absl::Span<const uint16_t> x) {
    TensorView t = TensorView::Contiguous(const_cast<uint16_t*>(x.data()) + cached * d,
                                          options_.layout.dtype, {rows, kv, d});
    t.strides[0] = d;
    t.strides[1] = n * d;
    return t;
  };
  absl::Status s = worker_->Prefill(opened->id, 0, view(keys), view(values));
  if (s.ok()) s = worker_->Flush();
  if (!s.ok()) {
    (void)worker_->Close(opened->id);
    if (!absl::IsInvalidArgument(s)) failed_ = true;
    return s;
  }
  seq_ = opened->id;
  return absl::OkStatus();
}

absl::StatusOr<DecodeStepStats> DecodeSession::Step(int32_t token_id, absl::Span<const uint16_t> q,
                                                    absl::Span<const uint16_t> k,
                                                    absl::Span<const uint16_t> v,
                                                    absl::Span<uint16_t> out) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (seq_ == 0) return absl::FailedPreconditionError("Step before Prefill");
  const int64_t qh = options_.q_heads, kv = options_.layout.kv_heads;
  const int64_t d = options_.layout.head_dim;
  if (q.size() != static_cast<size_t>(qh * d) || out.size() != static_cast<size_t>(qh * d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("q and out must hold q_heads x head_dim = ", qh * d, " elements"));
  }
  if (k.size() != static_cast<size_t>(kv * d) || v.size() != static_cast<size_t>(kv * d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("k and v must hold kv_heads x head_dim = ", kv * d, " elements"));
  }
  const DType dt = options_.layout.dtype;
  auto host = [&](absl::Span<const uint16_t> x, int64_t heads) {
    return TensorView::Contiguous(const_cast<uint16_t*>(x.data()), dt, {1, heads, d});
  };
  // Validate what the worker would refuse before planning, so a refused step changes nothing.
  const uint16_t mask = dt == DType::kBf16 ? 0x7f80 : 0x7c00;
  for (auto [x, what] : {std::pair{q, "q"}, std::pair{k, "k"}, std::pair{v, "v"}}) {
    for (uint16_t e : x) {
      if ((e & mask) == mask)
        return absl::InvalidArgumentError(absl::StrCat(what, " is not finite"));
    }
  }
  auto plan = worker_->Plan({seq_}, {token_id});
  if (!plan.ok()) {
    if (!absl::IsInvalidArgument(plan.status())) failed_ = true;
    return plan.status();
  }
  out_.resize(out.size());
  absl::Status s = worker_->Attend(*plan, 0, host(q, qh), host(k, kv), host(v, kv),
                                   TensorView::Contiguous(out_.data(), dt, {1, qh, d}));
  auto finished = worker_->Finish(*plan);
  if (s.ok()) s = finished.status();
  if (s.ok()) s = finished->sequence_status[0];
  if (!s.ok()) {
    failed_ = true;
    return s;
  }
  const WorkerStepStats& w = *finished;
  DecodeStepStats st;
  st.retrieved = w.retrievals > 0;
  st.fetched_pages = static_cast<int32_t>(w.fetched_head_pages);
  for (int t = 0; t < kNumTiers; ++t) st.bytes_from_tier[t] = w.bytes_from_tier[t];
  st.bytes_committed = w.bytes_committed;
  st.verify_failures = static_cast<int32_t>(w.verify_failures);
  st.append_s = w.append_s + w.commit_s;
  st.select_s = w.select_s;
  st.transfer_s = w.fetch_s + w.verify_s;
  st.attention_s = w.attend_s;
  const auto rows = last_rows();
  std::vector<int32_t> all;
  const int32_t tail = last_page_tokens();
  for (const auto& row : rows) {
    all.insert(all.end(), row.begin(), row.end());
    st.attended_tokens +=
        static_cast<int32_t>(row.size() - 1) * static_cast<int32_t>(options_.layout.page_tokens) +
        tail;
  }
  std::sort(all.begin(), all.end());
  st.attended_pages = static_cast<int32_t>(std::unique(all.begin(), all.end()) - all.begin());
  std::copy(out_.begin(), out_.end(), out.begin());
  return st;
}

int64_t DecodeSession::num_tokens() const { return seq_ == 0 ? 0 : *worker_->Length(seq_, 0); }

std::vector<PageKey> DecodeSession::page_keys() const {
  if (seq_ == 0) return {};
  return *worker_->PageKeys(seq_, 0);
}

std::vector<std::vector<int32_t>> DecodeSession::last_rows() const {
  if (seq_ == 0) return {};
  return *worker_->LastRows(seq_, 0);
}

int32_t DecodeSession::last_page_tokens() const {
  const int64_t n = num_tokens();
  return n == 0 ? 0 : static_cast<int32_t>((n - 1) % options_.layout.page_tokens + 1);
}

}  // namespace pagoda
