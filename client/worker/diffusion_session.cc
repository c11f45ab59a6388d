#include "pagoda/client/diffusion_session.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "pagoda/kvstore/prefix.h"

namespace pagoda {

DiffusionSession::DiffusionSession(Store* store, const DiffusionSessionOptions& options)
    : store_(store), options_(options) {}

DiffusionSession::~DiffusionSession() = default;

absl::StatusOr<std::unique_ptr<DiffusionSession>> DiffusionSession::Create(
    Store* store, std::unique_ptr<WorkerBackend> backend, const DiffusionSessionOptions& options) {
  if (store == nullptr) return absl::InvalidArgumentError("store is null");
  if (backend == nullptr) return absl::InvalidArgumentError("backend is null");
  if (backend->device() != Device::kCpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DiffusionSession takes host spans and needs a host backend, not ", backend->name()));
  }
  if (options.tenant.empty()) return absl::InvalidArgumentError("tenant is empty");
  if (absl::Status s = options.layout.Validate(); !s.ok()) return s;
  const int32_t page_tokens = static_cast<int32_t>(options.layout.page_tokens);
  if (options.block_tokens < page_tokens || options.block_tokens % page_tokens != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_tokens ", options.block_tokens,
                     " must be a positive multiple of layout.page_tokens ", page_tokens));
  }
  if (options.max_pages < 1) return absl::InvalidArgumentError("max_pages must be >= 1");
  const int32_t block_pages = options.block_tokens / page_tokens;
  DecodeWorkerOptions w;
  w.tenant = options.tenant;
  w.model_id = options.model_id;
  w.layout = options.layout;
  w.q_heads = options.q_heads;
  w.num_layers = 1;
  w.first_layer = options.layer;
  w.selector = options.selector;
  w.pool_slots_per_head = options.pool_pages;
  w.summary_slots = options.max_pages;
  w.select_threads = 1;
  if (options.sparse) {
    if (options.policy == retriever::Policy::kBoundary) {
      return absl::InvalidArgumentError(
          "policy louiskv builds its cluster layout once, from the whole prompt: it does not serve "
          "a diffusion LM's growing context (use a page policy)");
    }
    retriever::SelectorOptions sel = options.selector;
    sel.kv_heads = static_cast<int>(options.layout.kv_heads);
    sel.q_heads = options.q_heads;
    sel.head_dim = static_cast<int>(options.layout.head_dim);
    sel.page_tokens = page_tokens;
    sel.dtype = KernelDType(options.layout.dtype);
    if (absl::Status s = retriever::ValidateOptions(sel); !s.ok()) return s;
    const int64_t need = sel.budget_tokens / page_tokens + block_pages;
    if (options.pool_pages < need) {
      return absl::InvalidArgumentError(
          absl::StrCat("pool_pages ", options.pool_pages,
                       " cannot hold one step (budget pages + block pages = ", need, ")"));
    }
    w.policy = options.policy;
  } else {
    if (options.pool_pages < block_pages + 1) {
      return absl::InvalidArgumentError(absl::StrCat("pool_pages ", options.pool_pages,
                                                     " cannot hold a block and a prompt page"));
    }
    // Every cached page: a budget over the whole sequence (the worker then selects nothing).
    w.policy = retriever::Policy::kStreaming;
    w.selector.budget_tokens = static_cast<int64_t>(options.max_pages) * page_tokens;
  }
  auto worker = DecodeWorker::Create(store, std::move(backend), w);
  if (!worker.ok()) return worker.status();
  auto session = std::unique_ptr<DiffusionSession>(new DiffusionSession(store, options));
  session->worker_ = std::move(*worker);
  session->kv_heads_ = static_cast<int>(options.layout.kv_heads);
  session->head_dim_ = static_cast<int>(options.layout.head_dim);
  session->page_tokens_ = page_tokens;
  session->block_pages_ = block_pages;
  session->page_bytes_ = options.layout.PageBytes();
  return session;
}

absl::Status DiffusionSession::CheckFinite(absl::Span<const uint16_t> x, const char* what) const {
  const uint16_t mask = options_.layout.dtype == DType::kBf16 ? 0x7f80 : 0x7c00;
  for (uint16_t e : x) {
    if ((e & mask) == mask) return absl::InvalidArgumentError(absl::StrCat(what, " is not finite"));
  }
  return absl::OkStatus();
}

void DiffusionSession::PackBlock(absl::Span<const uint16_t> k, absl::Span<const uint16_t> v,
                                 uint8_t* dst) const {
  const int64_t n = options_.block_tokens;
  const int64_t run = int64_t{page_tokens_} * head_dim_;  // one head's rows of one page
  for (int64_t p = 0; p < block_pages_; ++p) {
    uint16_t* page = reinterpret_cast<uint16_t*>(dst + p * page_bytes_);
    for (int h = 0; h < kv_heads_; ++h) {
      const int64_t src = (h * n + p * page_tokens_) * head_dim_;
      std::memcpy(page + h * run, k.data() + src, run * sizeof(uint16_t));
      std::memcpy(page + (kv_heads_ + h) * run, v.data() + src, run * sizeof(uint16_t));
    }
  }
}

TensorView DiffusionSession::TokenRows(const uint16_t* x, int64_t total, int64_t first,
                                       int64_t n) const {
  TensorView t = TensorView::Contiguous(const_cast<uint16_t*>(x) + first * head_dim_,
                                        options_.layout.dtype, {n, kv_heads_, head_dim_});
  t.strides[0] = head_dim_;          // the next token of the same head
  t.strides[1] = total * head_dim_;  // the same token of the next head
  return t;
}

absl::Status DiffusionSession::Fail(absl::Status s) {
  failed_ = true;
  return s;
}

absl::Status DiffusionSession::Prefill(absl::Span<const int32_t> token_ids,
                                       absl::Span<const uint16_t> keys,
                                       absl::Span<const uint16_t> values) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (prefilled_) return absl::FailedPreconditionError("Prefill was already called");
  const int64_t n = static_cast<int64_t>(token_ids.size());
  if (n < 1 || n % page_tokens_ != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt holds ", n, " tokens; it must be a positive multiple of page_tokens ",
        page_tokens_, " (blocks start on a page boundary)"));
  }
  const size_t expect = static_cast<size_t>(n) * kv_heads_ * head_dim_;
  if (keys.size() != expect || values.size() != expect) {
    return absl::InvalidArgumentError(absl::StrCat("keys / values must hold kv_heads x ", n,
                                                   " x head_dim = ", expect, " elements"));
  }
  if (absl::Status s = CheckFinite(keys, "a prompt key"); !s.ok()) return s;
  if (absl::Status s = CheckFinite(values, "a prompt value"); !s.ok()) return s;
  if (n / page_tokens_ + block_pages_ > options_.max_pages) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt and a block exceed max_pages ", options_.max_pages));
  }
  auto opened = worker_->Open(token_ids);
  if (!opened.ok()) return Fail(opened.status());
  seq_ = opened->id;
  const int64_t cached = opened->cached_tokens;
  absl::Status s = worker_->Prefill(seq_, 0, TokenRows(keys.data(), n, cached, n - cached),
                                    TokenRows(values.data(), n, cached, n - cached));
  if (s.ok()) s = worker_->Flush();  // every prompt page is in the store when this returns
  if (!s.ok()) return Fail(s);
  auto page_keys = worker_->PageKeys(seq_, 0);
  if (!page_keys.ok()) return Fail(page_keys.status());
  page_keys_ = *std::move(page_keys);
  owned_.assign(page_keys_.size(), false);  // the prompt's pages are never removed
  prefilled_ = true;
  return absl::OkStatus();
}

absl::StatusOr<DiffusionStepStats> DiffusionSession::Denoise(absl::Span<const uint16_t> q,
                                                             absl::Span<const uint16_t> k,
                                                             absl::Span<const uint16_t> v,
                                                             absl::Span<uint16_t> out) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (!prefilled_) return absl::FailedPreconditionError("Denoise before Prefill");
  const int64_t b = options_.block_tokens;
  const size_t nq = static_cast<size_t>(b) * options_.q_heads * head_dim_;
  const size_t nkv = static_cast<size_t>(kv_heads_) * b * head_dim_;
  if (q.size() != nq || out.size() != nq) {
    return absl::InvalidArgumentError(
        absl::StrCat("q and out must hold block_tokens x q_heads x head_dim = ", nq, " elements"));
  }
  if (k.size() != nkv || v.size() != nkv) {
    return absl::InvalidArgumentError(
        absl::StrCat("k and v must hold kv_heads x block_tokens x head_dim = ", nkv, " elements"));
  }
  if (absl::Status s = CheckFinite(q, "q"); !s.ok()) return s;
  if (absl::Status s = CheckFinite(k, "k"); !s.ok()) return s;
  if (absl::Status s = CheckFinite(v, "v"); !s.ok()) return s;

  // The pages whose bytes equal what the worker holds from the last step are kept there.
  fresh_.resize(static_cast<size_t>(block_pages_) * page_bytes_);
  PackBlock(k, v, fresh_.data());
  std::vector<uint8_t> keep(block_pages_, 0);
  int32_t rewritten = block_pages_;
  if (block_.size() == fresh_.size()) {
    rewritten = 0;
    for (int32_t j = 0; j < block_pages_; ++j) {
      keep[j] = std::memcmp(fresh_.data() + j * page_bytes_, block_.data() + j * page_bytes_,
                            page_bytes_) == 0;
      rewritten += keep[j] ? 0 : 1;
    }
  }
  const DType dt = options_.layout.dtype;
  const TensorView qv =
      TensorView::Contiguous(const_cast<uint16_t*>(q.data()), dt, {b, options_.q_heads, head_dim_});
  const TensorView ov = TensorView::Contiguous(out.data(), dt, {b, options_.q_heads, head_dim_});
  auto w = worker_->AttendBlock(seq_, 0, qv, TokenRows(k.data(), b, 0, b),
                                TokenRows(v.data(), b, 0, b), ov, keep);
  if (!w.ok()) {
    // Refusals change nothing; anything else failed the sequence in the worker.
    if (absl::IsResourceExhausted(w.status()) || absl::IsInvalidArgument(w.status())) {
      return w.status();
    }
    return Fail(w.status());
  }
  auto rows = worker_->LastRows(seq_, 0);
  if (!rows.ok()) return Fail(rows.status());
  rows_ = *std::move(rows);
  block_.swap(fresh_);
  block_open_ = true;

  const uint64_t head_bytes = page_bytes_ / kv_heads_;
  DiffusionStepStats st;
  st.queries = static_cast<int32_t>(b);
  st.cached_pages = cached_pages();
  st.attended_head_pages = w->attended_head_pages;
  st.reused_head_pages = w->attended_head_pages - int64_t{block_pages_} * kv_heads_;
  st.fetched_head_pages = w->fetched_head_pages;
  st.pool_hits = w->pool_hits;
  st.rewritten_pages = rewritten;
  st.bytes_reused = static_cast<uint64_t>(st.reused_head_pages) * head_bytes;
  for (int t = 0; t < kNumTiers; ++t) st.bytes_from_tier[t] = w->bytes_from_tier[t];
  st.bytes_rewritten = static_cast<uint64_t>(rewritten) * page_bytes_;
  st.bytes_uploaded = w->bytes_fetched + st.bytes_rewritten;
  st.selected = w->retrievals > 0;
  st.select_s = w->select_s;
  st.transfer_s = w->append_s + w->fetch_s + w->verify_s;
  st.attention_s = w->attend_s;
  return st;
}

absl::StatusOr<DiffusionCommitStats> DiffusionSession::CommitBlock(
    absl::Span<const int32_t> token_ids) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (!block_open_) {
    return absl::FailedPreconditionError("no open block: Denoise the block before CommitBlock");
  }
  if (block_.empty()) {
    return absl::FailedPreconditionError("the reopened block has no K/V yet: Denoise it first");
  }
  if (static_cast<int64_t>(token_ids.size()) != options_.block_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("CommitBlock needs block_tokens = ", options_.block_tokens, " token ids, got ",
                     token_ids.size()));
  }
  if (cached_pages() + block_pages_ > options_.max_pages) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "committing the block would take the sequence past max_pages ", options_.max_pages));
  }
  // Which of the block's keys the store holds already (someone else's: never removed by
  // ReopenBlock), before the worker commits.
  const PageKeyExtra extra{options_.model_id, options_.layer, {}};
  std::vector<PageKey> keys;
  DiffusionCommitStats stats;
  stats.pages = block_pages_;
  std::vector<bool> owned;
  for (int32_t j = 0; j < block_pages_; ++j) {
    keys.push_back(ChainPageKey(keys.empty() ? page_keys_.back() : keys.back(),
                                token_ids.subspan(j * page_tokens_, page_tokens_), extra));
    owned.push_back(!store_->Exists(options_.tenant, keys.back()));
    if (owned.back()) {
      stats.bytes_committed += page_bytes_;
    } else {
      ++stats.reused_pages;
    }
  }
  absl::Status s = worker_->Extend(seq_, token_ids);
  if (s.ok()) s = worker_->CommitBlock(seq_, 0);
  if (s.ok()) s = worker_->Flush();  // the block's pages are in the store when this returns
  if (!s.ok()) return Fail(s);
  auto page_keys = worker_->PageKeys(seq_, 0);
  if (!page_keys.ok()) return Fail(page_keys.status());
  if (!std::equal(keys.begin(), keys.end(), page_keys->end() - block_pages_)) {
    return Fail(absl::InternalError("the worker chained the block under other keys"));
  }
  page_keys_ = *std::move(page_keys);
  owned_.insert(owned_.end(), owned.begin(), owned.end());
  block_sizes_.push_back(block_pages_);
  block_open_ = false;
  block_.clear();  // the worker's block slots are the committed pages' now
  return stats;
}

absl::Status DiffusionSession::ReopenBlock() {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (block_open_) return absl::FailedPreconditionError("a block is open: commit it first");
  if (block_sizes_.empty()) return absl::FailedPreconditionError("no block was committed");
  const int32_t pages = block_sizes_.back();
  const size_t first = page_keys_.size() - pages;
  if (absl::Status s = worker_->Truncate(seq_, static_cast<int64_t>(first) * page_tokens_);
      !s.ok()) {
    return Fail(s);
  }
  for (size_t p = first; p < page_keys_.size(); ++p) {
    if (!owned_[p]) continue;
    absl::Status s = store_->Remove(options_.tenant, page_keys_[p]);
    if (!s.ok() && !absl::IsNotFound(s)) return Fail(s);  // NotFound: evicted out of the store
  }
  page_keys_.resize(first);
  owned_.resize(first);
  block_sizes_.pop_back();
  block_open_ = true;
  return absl::OkStatus();
}

}  // namespace pagoda
