#include "pagoda/client/diffusion_session.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kvstore/prefix.h"

namespace pagoda {
namespace {

using Clock = std::chrono::steady_clock;
// How long a fetch holds its read leases (the gather is synchronous; expiry only matters to a
// stalled process, and the head checksums catch bytes recycled under an expired lease).
constexpr absl::Duration kLease = absl::Seconds(1);
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

DiffusionSession::DiffusionSession(Store* store, std::unique_ptr<WorkerBackend> backend,
                                   const DiffusionSessionOptions& options)
    : store_(store), backend_(std::move(backend)), options_(options) {}

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
  const int32_t block_pages = options.block_tokens / page_tokens;
  retriever::SelectorOptions sel = options.selector;
  sel.kv_heads = static_cast<int>(options.layout.kv_heads);
  sel.q_heads = options.q_heads;
  sel.head_dim = static_cast<int>(options.layout.head_dim);
  sel.page_tokens = page_tokens;
  sel.dtype = KernelDType(options.layout.dtype);
  std::unique_ptr<retriever::Selector> selector;
  if (options.sparse) {
    if (options.policy == retriever::Policy::kBoundary) {
      return absl::InvalidArgumentError(
          "policy louiskv addresses a cluster-ordered layout, not store pages");
    }
    if (absl::Status s = retriever::ValidateOptions(sel); !s.ok()) return s;
    const int64_t need = int64_t{sel.kv_heads} * (sel.budget_tokens / page_tokens) + block_pages;
    if (options.pool_pages < need) {
      return absl::InvalidArgumentError(
          absl::StrCat("pool_pages ", options.pool_pages,
                       " cannot hold one step (kv_heads x budget + block pages = ", need, ")"));
    }
    auto made = retriever::MakeSelector(options.policy, sel);
    if (!made.ok()) return made.status();
    selector = std::move(*made);
  } else if (options.pool_pages < block_pages + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool_pages ", options.pool_pages, " cannot hold a block and a prompt page"));
  }
  auto session =
      std::unique_ptr<DiffusionSession>(new DiffusionSession(store, std::move(backend), options));
  session->options_.selector = sel;
  session->selector_ = std::move(selector);
  session->kv_heads_ = sel.kv_heads;
  session->head_dim_ = sel.head_dim;
  session->page_tokens_ = page_tokens;
  session->block_pages_ = block_pages;
  session->page_bytes_ = options.layout.PageBytes();
  session->half_bytes_ = int64_t{page_tokens} * sel.head_dim * 2;
  session->page_of_slot_.assign(options.pool_pages, -1);
  session->slot_used_.assign(options.pool_pages, -1);
  if (absl::Status s = session->backend_->Init(options.layout, options.q_heads, options.pool_pages);
      !s.ok()) {
    return s;
  }
  // The gather's source. A store without a host tier has none: every fetch is then a store read.
  const HostArena arena = store->HostArenaInfo();
  if (arena.base != nullptr && arena.size > 0) {
    if (absl::Status s =
            session->backend_->RegisterSource(arena.base, static_cast<int64_t>(arena.size));
        !s.ok()) {
      return s;
    }
    session->registered_ = true;
  }
  return session;
}

absl::Status DiffusionSession::CheckFinite(absl::Span<const uint16_t> x, const char* what) const {
  const uint16_t mask = options_.layout.dtype == DType::kBf16 ? 0x7f80 : 0x7c00;
  for (uint16_t e : x) {
    if ((e & mask) == mask) return absl::InvalidArgumentError(absl::StrCat(what, " is not finite"));
  }
  return absl::OkStatus();
}

void DiffusionSession::PackPages(absl::Span<const uint16_t> k, absl::Span<const uint16_t> v,
                                 int64_t n, int64_t first, int64_t pages, uint8_t* dst) const {
  const int64_t run = int64_t{page_tokens_} * head_dim_;  // one head's rows of one page
  for (int64_t p = 0; p < pages; ++p) {
    uint16_t* page = reinterpret_cast<uint16_t*>(dst + p * page_bytes_);
    for (int h = 0; h < kv_heads_; ++h) {
      const int64_t src = (h * n + first + p * page_tokens_) * head_dim_;
      std::memcpy(page + h * run, k.data() + src, run * sizeof(uint16_t));
      std::memcpy(page + (kv_heads_ + h) * run, v.data() + src, run * sizeof(uint16_t));
    }
  }
}

absl::Status DiffusionSession::PutPage(const PageKey& key, absl::Span<const uint8_t> bytes,
                                       bool* reused, std::vector<uint64_t>* sums) {
  absl::Status s = store_->Put(options_.tenant, key, options_.layout, bytes);
  *reused = absl::IsAlreadyExists(s);  // the same prefix is stored already: chained keys commit
  if (!*reused && !s.ok()) return s;
  const uint8_t* page = bytes.data();
  std::vector<uint8_t> stored;
  if (*reused) {  // later fetches read the stored copy: check against its bytes
    stored.resize(page_bytes_);
    auto info = store_->Get(options_.tenant, key, absl::MakeSpan(stored));
    if (!info.ok()) return info.status();
    if (info->layout != options_.layout) {
      return absl::FailedPreconditionError(
          absl::StrCat("page ", key.Hex(), " is stored with another layout"));
    }
    page = stored.data();
  }
  for (int h = 0; h < kv_heads_; ++h) {
    sums->push_back(kernels::HeadPageChecksum(page + h * half_bytes_,
                                              page + (kv_heads_ + h) * half_bytes_, half_bytes_));
  }
  return absl::OkStatus();
}

void DiffusionSession::HeadBytes(const uint8_t* page, uint8_t* dst) const {
  for (int h = 0; h < kv_heads_; ++h) {
    std::memcpy(dst + 2 * h * half_bytes_, page + h * half_bytes_, half_bytes_);
    std::memcpy(dst + (2 * h + 1) * half_bytes_, page + (kv_heads_ + h) * half_bytes_, half_bytes_);
  }
}

absl::Status DiffusionSession::FetchPages(absl::Span<const int32_t> pages,
                                          absl::Span<const int32_t> slots,
                                          DiffusionStepStats* stats) {
  // The gather: every page that can be leased in the host tier (an SSD page is promoted by the
  // lease), each head checked against its checksum as it lands in the pool.
  std::vector<HeadFetch> fetches;
  std::vector<int64_t> lease_ids;
  std::vector<int> leased_from(pages.size(), -1);  // tier of the leased page; -1: not leased
  for (size_t i = 0; i < pages.size(); ++i) {
    if (!registered_) break;
    auto lease = store_->AcquireRead(options_.tenant, page_keys_[pages[i]], kLease);
    if (!lease.ok()) continue;  // the store read below answers (or reports) it
    lease_ids.push_back(static_cast<int64_t>(lease->lease_id));
    if (lease->layout != options_.layout) continue;
    leased_from[i] = static_cast<int>(lease->found_in);
    const int64_t base = static_cast<int64_t>(lease->arena_offset);
    for (int h = 0; h < kv_heads_; ++h) {
      fetches.push_back(HeadFetch{HeadSlot{h, slots[i]}, base + h * half_bytes_,
                                  base + (kv_heads_ + h) * half_bytes_,
                                  sums_[static_cast<size_t>(pages[i]) * kv_heads_ + h]});
    }
  }
  std::vector<uint8_t> bad(fetches.size(), 0);
  absl::Status gathered = backend_->Gather(fetches, absl::MakeSpan(bad));
  if (gathered.ok()) gathered = backend_->Sync();
  for (int64_t id : lease_ids) (void)store_->ReleaseRead(static_cast<uint64_t>(id));
  if (!gathered.ok()) return gathered;
  std::vector<bool> done(pages.size(), false);
  for (size_t i = 0, f = 0; i < pages.size(); ++i) {
    if (leased_from[i] < 0) continue;
    bool ok = true;
    for (int h = 0; h < kv_heads_; ++h) ok = ok && bad[f++] == 0;
    if (!ok) continue;
    done[i] = true;
    stats->bytes_from_tier[leased_from[i]] += page_bytes_;
  }
  // The rest: a store read (checksummed by the store, from whichever tier holds the page), each
  // head checked as above, written with WriteHeads.
  std::vector<uint8_t> page(page_bytes_);
  for (size_t i = 0; i < pages.size(); ++i) {
    if (done[i]) continue;
    const int32_t p = pages[i];
    auto info = store_->Get(options_.tenant, page_keys_[p], absl::MakeSpan(page));
    if (!info.ok()) {
      return absl::Status(info.status().code(),
                          absl::StrCat("page ", p, ": ", info.status().message()));
    }
    if (info->layout != options_.layout) {
      return absl::FailedPreconditionError(absl::StrCat("page ", p, " has another layout"));
    }
    std::vector<HeadSlot> dst;
    for (int h = 0; h < kv_heads_; ++h) {
      const uint64_t want = sums_[static_cast<size_t>(p) * kv_heads_ + h];
      if (kernels::HeadPageChecksum(page.data() + h * half_bytes_,
                                    page.data() + (kv_heads_ + h) * half_bytes_,
                                    half_bytes_) != want) {
        return absl::DataLossError(absl::StrCat("page ", p, " head ", h,
                                                ": no copy matches the checksum taken at commit"));
      }
      dst.push_back(HeadSlot{h, slots[i]});
    }
    heads_.resize(page_bytes_);
    HeadBytes(page.data(), heads_.data());
    if (absl::Status s = backend_->WriteHeads(dst, heads_); !s.ok()) return s;
    stats->bytes_from_tier[static_cast<int>(info->tier)] += page_bytes_;
  }
  return absl::OkStatus();
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
  if (selector_ != nullptr) {
    if (absl::Status s = selector_->Prefill(keys, n); !s.ok()) return s;
  }
  const int64_t pages = n / page_tokens_;
  std::vector<uint8_t> bytes(pages * page_bytes_);
  PackPages(keys, values, n, 0, pages, bytes.data());
  const PageKeyExtra extra{options_.model_id, options_.layer, {}};
  for (int64_t p = 0; p < pages; ++p) {
    const PageKey key = ChainPageKey(p == 0 ? PageKey{} : page_keys_.back(),
                                     token_ids.subspan(p * page_tokens_, page_tokens_), extra);
    bool reused = false;
    if (absl::Status s = PutPage(
            key, absl::MakeConstSpan(bytes.data() + p * page_bytes_, page_bytes_), &reused, &sums_);
        !s.ok()) {
      failed_ = true;
      return s;
    }
    page_keys_.push_back(key);
    owned_.push_back(!reused);
    if (selector_ != nullptr) {
      const uint16_t* k = reinterpret_cast<const uint16_t*>(bytes.data() + p * page_bytes_);
      cached_k_.insert(cached_k_.end(), k, k + int64_t{kv_heads_} * page_tokens_ * head_dim_);
    }
  }
  prefilled_ = true;
  return absl::OkStatus();
}

absl::Status DiffusionSession::SelectRows(absl::Span<const uint16_t> q, DiffusionStepStats* stats) {
  const int32_t cached = cached_pages();
  std::vector<std::vector<int32_t>> rows(kv_heads_);
  const int64_t budget_pages = options_.selector.budget_tokens / page_tokens_;
  if (selector_ != nullptr && budget_pages < cached) {
    // One selection for the whole block: the mean of its queries (every query of the block then
    // reads the same pages, each page once).
    const int nq = options_.q_heads * head_dim_;
    const bool bf16 = options_.layout.dtype == DType::kBf16;
    std::vector<float> mean(nq, 0.f);
    for (int32_t i = 0; i < options_.block_tokens; ++i) {
      for (int j = 0; j < nq; ++j) {
        const uint16_t x = q[static_cast<size_t>(i) * nq + j];
        mean[j] += bf16 ? kernels::Bf16ToFloat(x) : kernels::HalfToFloat(x);
      }
    }
    std::vector<uint16_t> q_mean(nq);
    for (int j = 0; j < nq; ++j) {
      const float m = mean[j] / static_cast<float>(options_.block_tokens);
      q_mean[j] = bf16 ? kernels::FloatToBf16(m) : kernels::FloatToHalf(m);
    }
    auto sel = selector_->Select(q_mean);
    if (!sel.ok()) return sel.status();
    for (int r = 0; r < kv_heads_; ++r) {
      rows[r].assign(sel->pages.indices.begin() + sel->pages.indptr[r],
                     sel->pages.indices.begin() + sel->pages.indptr[r + 1]);
    }
    stats->selected = true;
    stats->summary_bytes = static_cast<uint64_t>(sel->summary_bytes);
  } else {
    for (auto& row : rows) {
      for (int32_t p = 0; p < cached; ++p) row.push_back(p);
    }
  }
  std::vector<int32_t> all;
  for (auto& row : rows) {
    for (int32_t j = 0; j < block_pages_; ++j) row.push_back(cached + j);
    std::sort(row.begin(), row.end());
    row.erase(std::unique(row.begin(), row.end()), row.end());
    if (row.front() < 0 || row.back() != cached + block_pages_ - 1) {
      return absl::InternalError("selection names a page outside the sequence");
    }
    all.insert(all.end(), row.begin(), row.end());
  }
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  if (static_cast<int64_t>(all.size()) > options_.pool_pages) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "one step needs ", all.size(), " pages; the pool holds ", options_.pool_pages));
  }
  stats->attended_pages = static_cast<int32_t>(all.size());
  stats->reused_pages = stats->attended_pages - block_pages_;
  stats->bytes_reused = static_cast<uint64_t>(stats->reused_pages) * page_bytes_;
  rows_ = std::move(rows);
  return absl::OkStatus();
}

int32_t DiffusionSession::TakeSlot(const std::vector<bool>& busy) {
  int32_t best = -1;
  for (int32_t s = 0; s < options_.pool_pages; ++s) {
    if (busy[s]) continue;
    if (best < 0 || slot_used_[s] < slot_used_[best]) best = s;
  }
  if (best >= 0 && page_of_slot_[best] >= 0) slot_of_page_[page_of_slot_[best]] = -1;
  return best;
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

  DiffusionStepStats stats;
  stats.queries = static_cast<int32_t>(b);
  stats.cached_pages = cached_pages();
  const Clock::time_point t0 = Clock::now();
  // Selection and the pool check change nothing when they fail (rows_ is set on success only).
  if (absl::Status s = SelectRows(q, &stats); !s.ok()) {
    if (absl::IsResourceExhausted(s) || absl::IsInvalidArgument(s)) return s;
    failed_ = true;
    return s;
  }
  const Clock::time_point t1 = Clock::now();
  auto fail = [this](absl::Status s) {
    failed_ = true;
    return s;
  };

  // Transfer: cached pages missing from the pool come from the store (FetchPages); block pages
  // whose bytes changed since the last step are rewritten (one WriteHeads).
  ++step_;
  const int32_t cached = cached_pages();
  const int32_t total = cached + block_pages_;
  if (slot_of_page_.size() < static_cast<size_t>(total)) slot_of_page_.resize(total, -1);
  std::vector<bool> busy(options_.pool_pages, false);
  std::vector<int32_t> missing;
  for (const auto& row : rows_) {
    for (int32_t p : row) {
      const int32_t slot = slot_of_page_[p];
      if (slot >= 0) {
        busy[slot] = true;
        slot_used_[slot] = step_;
      } else if (p < cached) {
        missing.push_back(p);
      }
    }
  }
  std::sort(missing.begin(), missing.end());
  missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
  fresh_.resize(static_cast<size_t>(block_pages_) * page_bytes_);
  PackPages(k, v, b, 0, block_pages_, fresh_.data());
  const bool have_block = block_.size() == fresh_.size();
  std::vector<int32_t> changed;
  for (int32_t j = 0; j < block_pages_; ++j) {
    const bool resident = slot_of_page_[cached + j] >= 0;
    if (!resident || !have_block ||
        std::memcmp(fresh_.data() + j * page_bytes_, block_.data() + j * page_bytes_,
                    page_bytes_) != 0) {
      changed.push_back(j);
    }
  }
  auto place = [&](int32_t page) -> int32_t {
    int32_t slot = slot_of_page_[page];
    if (slot < 0) {
      slot = TakeSlot(busy);
      if (slot < 0) return -1;
      slot_of_page_[page] = slot;
      page_of_slot_[slot] = page;
    }
    busy[slot] = true;
    slot_used_[slot] = step_;
    return slot;
  };
  std::vector<int32_t> fetch_slots;
  for (int32_t p : missing) {
    fetch_slots.push_back(place(p));
    if (fetch_slots.back() < 0) return fail(absl::InternalError("no free pool slot"));
  }
  if (absl::Status s = FetchPages(missing, fetch_slots, &stats); !s.ok()) return fail(s);
  // Changed block pages: one WriteHeads of every head of each.
  std::vector<HeadSlot> dst;
  heads_.resize(changed.size() * page_bytes_);
  for (size_t i = 0; i < changed.size(); ++i) {
    const int32_t j = changed[i];
    const int32_t slot = place(cached + j);
    if (slot < 0) return fail(absl::InternalError("no free pool slot"));
    for (int h = 0; h < kv_heads_; ++h) dst.push_back(HeadSlot{h, slot});
    HeadBytes(fresh_.data() + j * page_bytes_, heads_.data() + i * page_bytes_);
  }
  if (!dst.empty()) {
    if (absl::Status s = backend_->WriteHeads(dst, heads_); !s.ok()) return fail(s);
  }
  block_.swap(fresh_);
  block_open_ = true;
  stats.fetched_pages = static_cast<int32_t>(missing.size());
  stats.rewritten_pages = static_cast<int32_t>(changed.size());
  stats.bytes_rewritten = changed.size() * page_bytes_;
  stats.bytes_uploaded = (missing.size() + changed.size()) * page_bytes_;
  const Clock::time_point t2 = Clock::now();

  // Attention, one backend call: the block's queries are the batch and every query's row of head h
  // lists the same slots (whole pages: bidirectional, no causal mask).
  std::vector<int32_t> indptr{0}, indices, last_len;
  for (int64_t i = 0; i < b; ++i) {
    for (const auto& row : rows_) {
      for (int32_t p : row) indices.push_back(slot_of_page_[p]);
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last_len.push_back(page_tokens_);
    }
  }
  kernels::PageTable table;
  table.num_rows = static_cast<int32_t>(b) * kv_heads_;
  table.indptr = indptr.data();
  table.indices = indices.data();
  table.last_page_len = last_len.data();
  const DType dt = options_.layout.dtype;
  const TensorView qv =
      TensorView::Contiguous(const_cast<uint16_t*>(q.data()), dt, {b, options_.q_heads, head_dim_});
  const TensorView ov = TensorView::Contiguous(out.data(), dt, {b, options_.q_heads, head_dim_});
  if (absl::Status s = backend_->Attend(qv, table, ov); !s.ok()) return fail(s);
  const Clock::time_point t3 = Clock::now();
  stats.select_s = Seconds(t0, t1);
  stats.transfer_s = Seconds(t1, t2);
  stats.attention_s = Seconds(t2, t3);
  return stats;
}

absl::StatusOr<DiffusionCommitStats> DiffusionSession::CommitBlock(
    absl::Span<const int32_t> token_ids) {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (!block_open_) {
    return absl::FailedPreconditionError("no open block: Denoise the block before CommitBlock");
  }
  if (static_cast<int64_t>(token_ids.size()) != options_.block_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("CommitBlock needs block_tokens = ", options_.block_tokens, " token ids, got ",
                     token_ids.size()));
  }
  DiffusionCommitStats stats;
  stats.pages = block_pages_;
  const PageKeyExtra extra{options_.model_id, options_.layer, {}};
  std::vector<PageKey> keys;
  std::vector<bool> owned;
  std::vector<uint64_t> sums;
  for (int32_t j = 0; j < block_pages_; ++j) {
    const PageKey key = ChainPageKey(keys.empty() ? page_keys_.back() : keys.back(),
                                     token_ids.subspan(j * page_tokens_, page_tokens_), extra);
    bool reused = false;
    if (absl::Status s = PutPage(
            key, absl::MakeConstSpan(block_.data() + j * page_bytes_, page_bytes_), &reused, &sums);
        !s.ok()) {
      failed_ = true;
      return s;
    }
    keys.push_back(key);
    owned.push_back(!reused);
    if (reused) {
      ++stats.reused_pages;
    } else {
      stats.bytes_committed += page_bytes_;
    }
  }
  if (selector_ != nullptr) {
    // The block's keys [kv_heads, block_tokens, head_dim] for the selector; the page copies of
    // the keys for a later rebuild (ReopenBlock).
    const int64_t b = options_.block_tokens;
    const int64_t run = int64_t{page_tokens_} * head_dim_;
    std::vector<uint16_t> bk(static_cast<size_t>(kv_heads_) * b * head_dim_);
    for (int32_t j = 0; j < block_pages_; ++j) {
      const uint16_t* page = reinterpret_cast<const uint16_t*>(block_.data() + j * page_bytes_);
      for (int h = 0; h < kv_heads_; ++h) {
        std::memcpy(&bk[(h * b + int64_t{j} * page_tokens_) * head_dim_], page + h * run,
                    run * sizeof(uint16_t));
      }
      cached_k_.insert(cached_k_.end(), page, page + kv_heads_ * run);
    }
    if (absl::Status s = selector_->Append(bk, b); !s.ok()) {
      failed_ = true;
      return s;
    }
  }
  page_keys_.insert(page_keys_.end(), keys.begin(), keys.end());
  owned_.insert(owned_.end(), owned.begin(), owned.end());
  sums_.insert(sums_.end(), sums.begin(), sums.end());
  block_sizes_.push_back(block_pages_);
  block_open_ = false;
  return stats;
}

absl::Status DiffusionSession::RebuildSelector() {
  auto made = retriever::MakeSelector(options_.policy, options_.selector);
  if (!made.ok()) return made.status();
  const int64_t pages = cached_pages();
  const int64_t n = pages * page_tokens_;
  const int64_t run = int64_t{page_tokens_} * head_dim_;
  std::vector<uint16_t> keys(static_cast<size_t>(kv_heads_) * n * head_dim_);
  for (int64_t p = 0; p < pages; ++p) {
    for (int h = 0; h < kv_heads_; ++h) {
      std::memcpy(&keys[(h * n + p * page_tokens_) * head_dim_],
                  &cached_k_[(p * kv_heads_ + h) * run], run * sizeof(uint16_t));
    }
  }
  if (absl::Status s = (*made)->Prefill(keys, n); !s.ok()) return s;
  selector_ = std::move(*made);
  return absl::OkStatus();
}

absl::Status DiffusionSession::ReopenBlock() {
  if (failed_) return absl::FailedPreconditionError("session failed earlier");
  if (block_open_) return absl::FailedPreconditionError("a block is open: commit it first");
  if (block_sizes_.empty()) return absl::FailedPreconditionError("no block was committed");
  const int32_t pages = block_sizes_.back();
  const size_t first = page_keys_.size() - pages;
  for (size_t p = first; p < page_keys_.size(); ++p) {
    if (!owned_[p]) continue;
    absl::Status s = store_->Remove(options_.tenant, page_keys_[p]);
    if (!s.ok() && !absl::IsNotFound(s)) {  // NotFound: the page was evicted out of the store
      failed_ = true;
      return s;
    }
  }
  page_keys_.resize(first);
  owned_.resize(first);
  sums_.resize(first * kv_heads_);
  block_sizes_.pop_back();
  block_open_ = true;  // block_ still holds the block's bytes: unchanged pages stay resident
  if (selector_ != nullptr) {
    cached_k_.resize(first * kv_heads_ * page_tokens_ * head_dim_);
    if (absl::Status s = RebuildSelector(); !s.ok()) {
      failed_ = true;
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace pagoda
