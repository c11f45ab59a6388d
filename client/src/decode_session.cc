#include "pagoda/client/decode_session.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kvstore/prefix.h"

namespace pagoda {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

DecodeSession::DecodeSession(Store* store, std::unique_ptr<DecodeBackend> backend,
                             const DecodeSessionOptions& options)
    : store_(store), backend_(std::move(backend)), options_(options) {}

DecodeSession::~DecodeSession() {
  for (int32_t p = 0; p < prefix_pages_; ++p) {
    (void)store_->Unpin(options_.tenant, page_keys_[p]);
  }
  if (options_.stream.has_value()) (void)store_->CloseStream(options_.tenant, options_.stream_id);
}

absl::StatusOr<std::unique_ptr<DecodeSession>> DecodeSession::Create(
    Store* store, std::unique_ptr<DecodeBackend> backend, const DecodeSessionOptions& options) {
  if (store == nullptr) return absl::InvalidArgumentError("store is null");
  if (backend == nullptr) return absl::InvalidArgumentError("backend is null");
  if (options.tenant.empty()) return absl::InvalidArgumentError("tenant is empty");
  if (absl::Status s = options.layout.Validate(); !s.ok()) return s;
  if (options.policy == retriever::Policy::kBoundary) {
    return absl::InvalidArgumentError(
        "policy louiskv addresses a cluster-ordered layout, not store pages; use a page policy "
        "with boundary_trigger (LouisKV's trigger)");
  }
  if (options.boundary_threshold < -1.f || options.boundary_threshold > 1.f) {
    return absl::InvalidArgumentError("boundary_threshold must be in [-1, 1]");
  }
  retriever::SelectorOptions sel = options.selector;
  sel.kv_heads = static_cast<int>(options.layout.kv_heads);
  sel.q_heads = options.q_heads;
  sel.head_dim = static_cast<int>(options.layout.head_dim);
  sel.page_tokens = static_cast<int>(options.layout.page_tokens);
  sel.dtype = KernelDType(options.layout.dtype);
  if (absl::Status s = retriever::ValidateOptions(sel); !s.ok()) return s;
  const int64_t budget_pages = sel.budget_tokens / sel.page_tokens;
  const int64_t need = int64_t{sel.kv_heads} * budget_pages + 1;
  if (options.pool_pages < need) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool_pages ", options.pool_pages,
                     " cannot hold one step (kv_heads x budget + 1 = ", need, " pages)"));
  }
  if (options.stream.has_value()) {
    if (options.policy != retriever::Policy::kStreaming ||
        static_cast<uint32_t>(sel.sink_pages) != options.stream->sink_pages ||
        static_cast<uint32_t>(sel.window_pages) > options.stream->window_pages) {
      return absl::InvalidArgumentError(
          "stream mode needs policy streaming with selector.sink_pages == stream.sink_pages and "
          "selector.window_pages <= stream.window_pages");
    }
  }
  auto selector = retriever::MakeSelector(options.policy, sel);
  if (!selector.ok()) return selector.status();

  auto session =
      std::unique_ptr<DecodeSession>(new DecodeSession(store, std::move(backend), options));
  session->options_.selector = sel;
  session->selector_ = std::move(*selector);
  // Stream pages leave the store with the window: a reused selection could name a dropped page.
  if (options.boundary_trigger && !options.stream.has_value()) {
    auto trigger = retriever::BoundaryTrigger::Create(options.q_heads, sel.head_dim,
                                                      options.boundary_threshold);
    if (!trigger.ok()) return trigger.status();
    session->trigger_.emplace(std::move(*trigger));
  }
  session->kv_heads_ = sel.kv_heads;
  session->head_dim_ = sel.head_dim;
  session->page_tokens_ = sel.page_tokens;
  session->page_bytes_ = options.layout.PageBytes();
  session->tail_.assign(session->page_bytes_, 0);
  session->page_of_slot_.assign(options.pool_pages, -1);
  session->slot_used_.assign(options.pool_pages, -1);
  if (absl::Status s = session->backend_->Init(options.layout, options.q_heads, options.pool_pages);
      !s.ok()) {
    return s;
  }
  if (options.stream.has_value()) {
    if (absl::Status s = store->OpenStream(options.tenant, options.stream_id, *options.stream);
        !s.ok()) {
      session->options_.stream.reset();  // not ours to close
      return s;
    }
  }
  return session;
}

absl::Status DecodeSession::CheckFinite(absl::Span<const uint16_t> x, const char* what) const {
  const uint16_t mask = options_.layout.dtype == DType::kBf16 ? 0x7f80 : 0x7c00;
  for (uint16_t e : x) {
    if ((e & mask) == mask) return absl::InvalidArgumentError(absl::StrCat(what, " is not finite"));
  }
  return absl::OkStatus();
}

void DecodeSession::WriteToken(const uint16_t* k, const uint16_t* v, int64_t head_stride,
                               int64_t token) {
  uint16_t* page = reinterpret_cast<uint16_t*>(tail_.data());
  const int64_t v_off = int64_t{kv_heads_} * page_tokens_ * head_dim_;
  for (int h = 0; h < kv_heads_; ++h) {
    const int64_t dst = (int64_t{h} * page_tokens_ + tail_tokens_) * head_dim_;
    const int64_t src = h * head_stride + token * head_dim_;
    std::memcpy(page + dst, k + src, head_dim_ * sizeof(uint16_t));
    std::memcpy(page + v_off + dst, v + src, head_dim_ * sizeof(uint16_t));
  }
  ++tail_tokens_;
}

absl::Status DecodeSession::CommitPage(int32_t page, absl::Span<const int32_t> ids,
                                       DecodeStepStats* stats) {
  const PageKeyExtra extra{options_.model_id, options_.layer, {}};
  const PageKey key = ChainPageKey(page == 0 ? PageKey{} : page_keys_[page - 1], ids, extra);
  WriteOptions wo;
  if (options_.stream.has_value()) wo.stream_id = options_.stream_id;
  wo.pin = options_.pin_prefix && !prefilled_;
  absl::Status s = store_->Put(options_.tenant, key, options_.layout, tail_, wo);
  if (absl::IsAlreadyExists(s)) {
    // The same prefix is already stored (chained keys commit to it): reuse it.
    s = wo.pin ? store_->Pin(options_.tenant, key) : absl::OkStatus();
  } else if (s.ok() && stats != nullptr) {
    stats->bytes_committed += page_bytes_;
  }
  if (!s.ok()) return s;
  page_keys_.push_back(key);
  return absl::OkStatus();
}

absl::Status DecodeSession::Prefill(absl::Span<const int32_t> token_ids,
                                    absl::Span<const uint16_t> keys,
                                    absl::Span<const uint16_t> values) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (prefilled_) return absl::FailedPreconditionError("Prefill was already called");
  const int64_t n = static_cast<int64_t>(token_ids.size());
  const size_t expect = static_cast<size_t>(n) * kv_heads_ * head_dim_;
  if (n < 1) return absl::InvalidArgumentError("the prompt is empty");
  if (keys.size() != expect || values.size() != expect) {
    return absl::InvalidArgumentError(absl::StrCat("keys / values must hold kv_heads x ", n,
                                                   " x head_dim = ", expect, " elements"));
  }
  if (absl::Status s = CheckFinite(keys, "a prompt key"); !s.ok()) return s;
  if (absl::Status s = CheckFinite(values, "a prompt value"); !s.ok()) return s;
  if (absl::Status s = selector_->Prefill(keys, n); !s.ok()) return s;

  for (int64_t t = 0; t < n; ++t) {
    WriteToken(keys.data(), values.data(), n * head_dim_, t);
    tail_ids_.push_back(token_ids[t]);
    if (tail_tokens_ == page_tokens_) {
      if (absl::Status s = CommitPage(static_cast<int32_t>(t / page_tokens_), tail_ids_, nullptr);
          !s.ok()) {
        failed_ = true;
        return s;
      }
      if (options_.pin_prefix) prefix_pages_ = static_cast<int32_t>(page_keys_.size());
      tail_tokens_ = 0;
      tail_ids_.clear();
    }
  }
  num_tokens_ = n;
  prefilled_ = true;
  return absl::OkStatus();
}

absl::Status DecodeSession::SelectRows(absl::Span<const uint16_t> q, DecodeStepStats* stats) {
  const retriever::SelectorOptions& sel = options_.selector;
  const int32_t cur_page = static_cast<int32_t>((num_tokens_ - 1) / page_tokens_);
  const int64_t budget_pages = sel.budget_tokens / page_tokens_;
  rows_.assign(kv_heads_, {});
  if (budget_pages * page_tokens_ > num_tokens_) {  // the budget covers everything: dense
    for (auto& row : rows_) {
      for (int32_t p = 0; p <= cur_page; ++p) row.push_back(p);
    }
    stats->retrieved = true;
    retrieved_.clear();
    return absl::OkStatus();
  }
  bool fire = retrieved_.empty() || !trigger_.has_value();
  if (trigger_.has_value()) {
    qf_.resize(q.size());
    for (size_t i = 0; i < q.size(); ++i) {
      qf_[i] = options_.layout.dtype == DType::kBf16 ? kernels::Bf16ToFloat(q[i])
                                                     : kernels::HalfToFloat(q[i]);
    }
    auto observed = trigger_->Observe(qf_);
    if (!observed.ok()) return observed.status();
    fire = fire || *observed;
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (fire) {
      auto s = selector_->Select(q);
      if (!s.ok()) return s.status();
      retrieved_.assign(kv_heads_, {});
      for (int r = 0; r < kv_heads_; ++r) {
        retrieved_[r].assign(s->pages.indices.begin() + s->pages.indptr[r],
                             s->pages.indices.begin() + s->pages.indptr[r + 1]);
      }
      prefetch_ = s->prefetch;
      stats->retrieved = true;
      stats->summary_bytes = static_cast<uint64_t>(s->summary_bytes);
    }
    std::vector<int32_t> all;
    for (int r = 0; r < kv_heads_; ++r) {
      std::vector<int32_t>& row = rows_[r];
      row = retrieved_[r];
      for (int32_t p = std::max(0, cur_page - sel.window_pages + 1); p <= cur_page; ++p) {
        row.push_back(p);
      }
      for (int32_t p = 0; p < prefix_pages_; ++p) row.push_back(p);
      std::sort(row.begin(), row.end());
      row.erase(std::unique(row.begin(), row.end()), row.end());
      if (row.empty() || row.back() != cur_page || row.front() < 0) {
        return absl::InternalError("selection does not end at the open page");
      }
      all.insert(all.end(), row.begin(), row.end());
    }
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    if (static_cast<int64_t>(all.size()) <= options_.pool_pages) return absl::OkStatus();
    if (fire) break;
    fire = true;  // a reused selection grew past the pool: retrieve afresh
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("one step needs more pages than the pool holds (", options_.pool_pages, ")"));
}

int32_t DecodeSession::TakeSlot() {
  int32_t best = -1;
  for (int32_t s = 0; s < options_.pool_pages; ++s) {
    if (slot_used_[s] == step_) continue;
    if (best < 0 || slot_used_[s] < slot_used_[best]) best = s;
  }
  if (best >= 0 && page_of_slot_[best] >= 0) slot_of_page_[page_of_slot_[best]] = -1;
  return best;
}

absl::Status DecodeSession::FetchRows(DecodeStepStats* stats) {
  ++step_;
  const int32_t cur_page = static_cast<int32_t>((num_tokens_ - 1) / page_tokens_);
  if (slot_of_page_.size() <= static_cast<size_t>(cur_page)) {
    slot_of_page_.resize(cur_page + 1, -1);
  }
  std::vector<int32_t> missing;
  for (const auto& row : rows_) {
    for (int32_t p : row) {
      const int32_t slot = slot_of_page_[p];
      if (slot >= 0) {
        slot_used_[slot] = step_;
      } else if (p != cur_page) {
        missing.push_back(p);
      }
    }
  }
  std::sort(missing.begin(), missing.end());
  missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
  if (slot_of_page_[cur_page] >= 0) slot_used_[slot_of_page_[cur_page]] = step_;
  const size_t n_up = missing.size() + 1;  // + the open page
  // Stage straight into the backend's upload buffer (pinned memory on the GPU) where it has one.
  auto staged = backend_->StagingBuffer(n_up * page_bytes_);
  if (!staged.ok()) return staged.status();
  uint8_t* staging = staged->data();
  if (staged->empty()) {
    staging_.resize(n_up * page_bytes_);
    staging = staging_.data();
  }
  std::vector<int32_t> slots;
  slots.reserve(n_up);
  for (size_t i = 0; i < missing.size(); ++i) {
    const int32_t p = missing[i];
    auto info = store_->Get(options_.tenant, page_keys_[p],
                            absl::MakeSpan(staging + i * page_bytes_, page_bytes_));
    if (!info.ok()) {
      return absl::Status(info.status().code(),
                          absl::StrCat("page ", p, ": ", info.status().message()));
    }
    stats->bytes_from_tier[static_cast<int>(info->tier)] += page_bytes_;
    const int32_t slot = TakeSlot();
    if (slot < 0) return absl::ResourceExhaustedError("no free pool slot");
    slot_of_page_[p] = slot;
    page_of_slot_[slot] = p;
    slot_used_[slot] = step_;
    slots.push_back(slot);
  }
  int32_t tail_slot = slot_of_page_[cur_page];
  if (tail_slot < 0) {
    tail_slot = TakeSlot();
    if (tail_slot < 0) return absl::ResourceExhaustedError("no free pool slot");
    slot_of_page_[cur_page] = tail_slot;
    page_of_slot_[tail_slot] = cur_page;
    slot_used_[tail_slot] = step_;
  }
  slots.push_back(tail_slot);
  std::memcpy(staging + missing.size() * page_bytes_, tail_.data(), page_bytes_);
  if (absl::Status s = backend_->Upload(slots, absl::MakeConstSpan(staging, n_up * page_bytes_));
      !s.ok()) {
    return s;
  }
  stats->fetched_pages = static_cast<int32_t>(missing.size());
  stats->bytes_uploaded = n_up * page_bytes_;

  if (options_.prefetch && stats->retrieved && !prefetch_.empty()) {
    std::vector<PageKey> keys;
    for (const auto& hints : prefetch_) {
      for (int32_t p : hints) {
        if (p >= 0 && static_cast<size_t>(p) < page_keys_.size() && slot_of_page_[p] < 0) {
          keys.push_back(page_keys_[p]);
        }
      }
    }
    // Best effort: a full host tier only means the hint is not followed.
    if (!keys.empty()) (void)store_->Prefetch(options_.tenant, keys, Tier::kHost);
  }
  return absl::OkStatus();
}

absl::StatusOr<DecodeStepStats> DecodeSession::Step(int32_t token_id, absl::Span<const uint16_t> q,
                                                    absl::Span<const uint16_t> k,
                                                    absl::Span<const uint16_t> v,
                                                    absl::Span<uint16_t> out) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (!prefilled_) return absl::FailedPreconditionError("Step before Prefill");
  const size_t nq = static_cast<size_t>(options_.q_heads) * head_dim_;
  const size_t nkv = static_cast<size_t>(kv_heads_) * head_dim_;
  if (q.size() != nq || out.size() != nq) {
    return absl::InvalidArgumentError(
        absl::StrCat("q and out must hold q_heads x head_dim = ", nq, " elements"));
  }
  if (k.size() != nkv || v.size() != nkv) {
    return absl::InvalidArgumentError(
        absl::StrCat("k and v must hold kv_heads x head_dim = ", nkv, " elements"));
  }
  if (absl::Status s = CheckFinite(q, "q"); !s.ok()) return s;
  if (absl::Status s = CheckFinite(k, "k"); !s.ok()) return s;
  if (absl::Status s = CheckFinite(v, "v"); !s.ok()) return s;

  DecodeStepStats stats;
  auto fail = [this](absl::Status s) {
    failed_ = true;
    return s;
  };
  Clock::time_point t0 = Clock::now();
  // The new token joins the open page and the summaries before selection (causal: the query
  // sees its own token).
  WriteToken(k.data(), v.data(), head_dim_, 0);
  tail_ids_.push_back(token_id);
  ++num_tokens_;
  if (absl::Status s = selector_->Append(k, 1); !s.ok()) return fail(s);
  Clock::time_point t1 = Clock::now();
  if (absl::Status s = SelectRows(q, &stats); !s.ok()) return fail(s);
  Clock::time_point t2 = Clock::now();
  if (absl::Status s = FetchRows(&stats); !s.ok()) return fail(s);
  Clock::time_point t3 = Clock::now();

  std::vector<int32_t> indptr{0}, indices, last_len;
  std::vector<bool> seen(slot_of_page_.size(), false);
  for (const auto& row : rows_) {
    for (int32_t p : row) {
      indices.push_back(slot_of_page_[p]);
      if (!seen[p]) ++stats.attended_pages;
      seen[p] = true;
    }
    indptr.push_back(static_cast<int32_t>(indices.size()));
    last_len.push_back(tail_tokens_);
    stats.attended_tokens += static_cast<int32_t>(row.size() - 1) * page_tokens_ + tail_tokens_;
  }
  kernels::PageTable table;
  table.num_rows = kv_heads_;
  table.indptr = indptr.data();
  table.indices = indices.data();
  table.last_page_len = last_len.data();
  if (absl::Status s = backend_->Attend(q, table, out); !s.ok()) return fail(s);
  last_page_tokens_ = tail_tokens_;
  Clock::time_point t4 = Clock::now();

  if (tail_tokens_ == page_tokens_) {
    const int32_t page = static_cast<int32_t>((num_tokens_ - 1) / page_tokens_);
    if (absl::Status s = CommitPage(page, tail_ids_, &stats); !s.ok()) return fail(s);
    tail_tokens_ = 0;
    tail_ids_.clear();
  }
  Clock::time_point t5 = Clock::now();
  stats.append_s = Seconds(t0, t1) + Seconds(t4, t5);
  stats.select_s = Seconds(t1, t2);
  stats.transfer_s = Seconds(t2, t3);
  stats.attention_s = Seconds(t3, t4);
  return stats;
}

}  // namespace pagoda
