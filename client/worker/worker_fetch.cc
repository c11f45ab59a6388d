// The decode worker's pool-slot resolution and verified fetch (DecodeWorker::Impl): every page a
// layer's rows attend (or louiskv scores) is resolved to a slot of its KV head's sub-pool, one
// select thread per head; what is not resident is gathered into its slot by verified backend
// gathers whose verdicts are all read before the layer attends. A page is read where the worker
// last saw it in the store's host arena (its own reservation or an earlier lease) without a lease,
// under one hold of the arena per fetch, when that segment has not changed owner since; the rest
// are leased (one lease per page, in a few chunks per layer: a chunk's leases overlap the gather
// before). A head-page that fails its checksum (a page moved or evicted under a hint, a torn or
// corrupt copy) is re-read from the store once, else its sequence's step fails with DataLoss: it
// is never attended.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "decode_worker_impl.h"
#include "pagoda/kernels/head_checksum.h"
#include "worker_state.h"

namespace pagoda {

using worker_internal::Clock;
using worker_internal::HeadPool;
using worker_internal::kGatherChunk;
using worker_internal::kGatherChunks;
using worker_internal::kInFlightWait;
using worker_internal::LayerState;
using worker_internal::Since;

namespace {

// Slot resolution loads a page's pool record (or index bucket) this many pages ahead, and its
// LayerState::seen entry twice as far ahead.
constexpr size_t kResolveAhead = 12;

// Loads, while page i of one KV head's row is resolved, what resolving later pages will read
// (resolution is bound by memory latency once the pool outgrows the caches): the seen entry of
// page i + 2 kResolveAhead, and for page i + kResolveAhead its slot record when seen before, else
// its key's index bucket. The open page `cur` is skipped (its slot is the row's own).
class ResolveAhead {
 public:
  ResolveAhead(const HeadPool& pool, const LayerState& ls, int h, const std::vector<int32_t>& row,
               int32_t cur)
      : pool_(pool), ls_(ls), h_(h), row_(row), cur_(cur) {
    for (size_t i = 0; i < 2 * kResolveAhead; ++i) Far(i);
    for (size_t i = 0; i < kResolveAhead; ++i) Near(i);
  }
  void Load(size_t i) {
    Far(i + 2 * kResolveAhead);
    Near(i + kResolveAhead);
  }

 private:
  void Far(size_t i) const {
    if (i >= row_.size() || static_cast<size_t>(h_) >= ls_.seen.size()) return;
    const std::vector<LayerState::Residency>& v = ls_.seen[h_];
    if (static_cast<size_t>(row_[i]) < v.size()) __builtin_prefetch(&v[row_[i]]);
  }
  void Near(size_t i) const {
    if (i >= row_.size() || row_[i] == cur_) return;
    if (const LayerState::Residency* r = ls_.SeenAt(h_, row_[i]); r != nullptr) {
      pool_.PrefetchSlot(h_, r->slot);
    } else {
      pool_.PrefetchKey(ls_.KeyOf(row_[i]), h_);
    }
  }
  const HeadPool& pool_;
  const LayerState& ls_;
  const int h_;
  const std::vector<int32_t>& row_;
  const int32_t cur_;
};

}  // namespace

void DecodeWorker::Impl::HeadResolve::Reset(int64_t rows) {
  slots.resize(rows);
  for (std::vector<int32_t>& s : slots) s.clear();
  failed.assign(rows, 0);
  fetches.clear();
  origins.clear();
  hits = 0;
}

int32_t DecodeWorker::Impl::ResolvePage(HeadResolve& w, int h, LayerState& ls, int32_t p,
                                        int32_t row, const LayerState::Residency* seen) {
  int32_t slot = -1;
  if (seen != nullptr) slot = pool_.Touch(h, seen->slot, seen->gen, epoch_, row);
  if (slot < 0) slot = pool_.Find(ls.KeyOf(p), h, epoch_, row);
  if (slot >= 0) {
    ++w.hits;
    return slot;
  }
  slot = pool_.Insert(ls.KeyOf(p), h, epoch_, row);
  if (slot < 0) return -1;
  w.fetches.push_back({{h, slot}, 0, 0, ls.SumOf(p, h, kv_)});
  w.origins.push_back({row, ls.KeyOf(p), &ls, p});
  return slot;
}

bool DecodeWorker::Impl::ResolveRow(HeadResolve& w, int h, LayerState& ls,
                                    const std::vector<int32_t>& pages, int32_t row,
                                    std::vector<int32_t>& slots) {
  const int32_t cur = static_cast<int32_t>((ls.tokens - 1) / P_);
  const size_t first = slots.size();
  slots.reserve(first + pages.size());
  LayerState::RowMemo& memo = ls.memo[h];
  if (memo.lost == pool_.lost(h) && memo.tail == ls.tail[h] && memo.pages == pages) {
    // No cached head-page of this head lost its slot since the row last resolved this list: the
    // same slots, each used in this epoch (never a victim while the layer reads it) as a lookup
    // would.
    for (size_t i = 0; i < pages.size(); ++i) {
      if (i + kResolveAhead < pages.size()) pool_.PrefetchSlot(h, memo.slots[i + kResolveAhead]);
      if (pages[i] == cur) continue;
      pool_.Use(h, memo.slots[i], epoch_, row);
      ++w.hits;
    }
    slots.insert(slots.end(), memo.slots.begin(), memo.slots.end());
    return true;
  }
  ResolveAhead ahead(pool_, ls, h, pages, cur);
  for (size_t i = 0; i < pages.size(); ++i) {
    ahead.Load(i);
    const int32_t p = pages[i];
    if (p == cur) {
      slots.push_back(ls.tail[h]);
      continue;
    }
    const int32_t slot = ResolvePage(w, h, ls, p, row, ls.SeenAt(h, p));
    if (slot < 0) return false;
    ls.Remember(h, p, slot, pool_.Generation(h, slot));
    slots.push_back(slot);
  }
  // Every slot of the list is used in this epoch: none was lost while the rest resolved.
  memo.pages = pages;
  memo.slots.assign(slots.begin() + static_cast<std::ptrdiff_t>(first), slots.end());
  memo.tail = ls.tail[h];
  memo.lost = pool_.lost(h);
  return true;
}

void DecodeWorker::Impl::JoinHeads(WorkerStepStats& stats, std::vector<HeadFetch>& fetches,
                                   std::vector<FetchOrigin>& origins) const {
  for (const HeadResolve& w : head_res_) {
    stats.pool_hits += w.hits;
    fetches.insert(fetches.end(), w.fetches.begin(), w.fetches.end());
    origins.insert(origins.end(), w.origins.begin(), w.origins.end());
  }
}

int64_t DecodeWorker::Impl::RowHeadPages(int layer, const std::vector<absl::Status>& status) {
  int64_t head_pages = 0;
  for (size_t b = 0; b < plan_seqs_.size(); ++b) {
    if (!status[b].ok() || steady_[b]) continue;  // closed-form rows resolved as scored pages
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    ls.SizeResidency(kv_);
    for (const auto& row : ls.rows) head_pages += static_cast<int64_t>(row.size());
  }
  return head_pages;
}

void DecodeWorker::Impl::ResolveRows(int layer, int h, const std::vector<absl::Status>& status,
                                     HeadResolve& w) {
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  w.Reset(B);
  for (int64_t b = 0; b < B; ++b) {
    if (!status[b].ok() || steady_[b]) continue;
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    if (!ResolveRow(w, h, ls, ls.rows[h], static_cast<int32_t>(b), w.slots[b])) {
      w.failed[b] = 1;
      return;  // the step fails whole
    }
  }
}

absl::Status DecodeWorker::Impl::JoinLayer(WorkerStepStats& stats, std::vector<HeadFetch>& fetches,
                                           std::vector<FetchOrigin>& origins) {
  for (const HeadResolve& w : head_res_) {
    if (std::find(w.failed.begin(), w.failed.end(), 1) != w.failed.end()) {
      return absl::InternalError("pool overcommitted despite the plan");
    }
  }
  fetches.clear();
  origins.clear();
  JoinHeads(stats, fetches, origins);
  return absl::OkStatus();
}

absl::Status DecodeWorker::Impl::ResolveLayer(int layer, const std::vector<absl::Status>& status,
                                              WorkerStepStats& stats,
                                              std::vector<HeadFetch>& fetches,
                                              std::vector<FetchOrigin>& origins) {
  const int64_t head_pages = RowHeadPages(layer, status);
  head_res_.resize(kv_);
  RunHeads(head_pages, [&](int64_t h) {  // the heads' sub-pools are independent
    ResolveRows(layer, static_cast<int>(h), status, head_res_[h]);
  });
  return JoinLayer(stats, fetches, origins);
}

void DecodeWorker::Impl::ScoreRequests(int layer, const TensorView& q,
                                       const std::vector<retriever::ScoreRequest>& requests,
                                       std::vector<absl::Status>& status,
                                       std::vector<std::vector<std::vector<float>>>& masses,
                                       WorkerStepStats& stats) {
  const int64_t B = static_cast<int64_t>(requests.size());
  // 1. Slots: the open page's own, cached ones, or new ones filled by one verified gather. The KV
  // heads' sub-pools are independent, so each head is resolved on its own select thread for the
  // whole batch; the results are joined in head order.
  Clock::time_point t0 = Clock::now();
  int64_t head_pages = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (!status[b].ok() || requests[b].empty()) continue;
    seqs_[plan_seqs_[b]].layers[layer].SizeResidency(kv_);
    for (const auto& pages : requests[b].pages) head_pages += static_cast<int64_t>(pages.size());
  }
  head_res_.resize(kv_);
  RunHeads(head_pages, [&](int64_t hh) {
    const int h = static_cast<int>(hh);
    HeadResolve& w = head_res_[h];
    w.Reset(B);
    for (int64_t b = 0; b < B; ++b) {
      const retriever::ScoreRequest& req = requests[b];
      if (!status[b].ok() || req.empty()) continue;
      LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
      if (!ResolveRow(w, h, ls, req.pages[h], static_cast<int32_t>(b), w.slots[b])) {
        w.failed[b] = 1;
      }
    }
  });
  std::vector<HeadFetch> fetches;
  std::vector<FetchOrigin> origins;
  JoinHeads(stats, fetches, origins);
  for (const HeadResolve& w : head_res_) {
    for (int64_t b = 0; b < B; ++b) {
      if (w.failed[b] && status[b].ok()) {
        status[b] = absl::InternalError("pool overcommitted despite the plan (rescoring)");
      }
    }
  }
  // Closed-form rows keep their slots for AttendChosen (head_res_ is reused by the rows' step).
  steady_slots_.resize(B * kv_);
  for (int64_t b = 0; b < B; ++b) {
    if (!steady_[b]) continue;
    for (int h = 0; h < kv_; ++h) steady_slots_[b * kv_ + h].swap(head_res_[h].slots[b]);
  }
  const double resolved_in = Since(t0);
  stats.fetch_s += resolved_in;
  stats.resolve_s += resolved_in;
  if (!fetches.empty()) Fetch(layer, origins, fetches, status, stats);
  for (int64_t b = 0; b < B; ++b) {
    if (steady_[b] && status[b].ok()) HoldCandidates(b, layer, requests[b]);
  }

  // 2. One scoring call over the sequences still standing (rows of failed ones left empty).
  Clock::time_point t1 = Clock::now();
  std::vector<int32_t> indptr = {0}, entry_slots, page_len;
  bool any = false;
  for (int64_t b = 0; b < B; ++b) {
    const retriever::ScoreRequest& req = requests[b];
    for (int h = 0; h < kv_; ++h) {
      if (status[b].ok() && !req.empty() && !steady_[b]) {
        any = true;
        const std::vector<int32_t>& slots = head_res_[h].slots[b];
        entry_slots.insert(entry_slots.end(), slots.begin(), slots.end());
        for (int32_t p : req.pages[h]) {
          const int64_t first = int64_t{p} * P_;
          page_len.push_back(
              static_cast<int32_t>(std::min<int64_t>(req.tokens, first + P_) - first));
        }
      }
      indptr.push_back(static_cast<int32_t>(entry_slots.size()));
    }
  }
  if (!any) return;
  std::vector<float> flat(entry_slots.size());
  absl::Status scored = backend_->ScorePages(q, indptr, entry_slots, page_len,
                                             o_.selector.group_reduce, absl::MakeSpan(flat));
  stats.select_s += Since(t1);
  for (int64_t b = 0; b < B; ++b) {
    const retriever::ScoreRequest& req = requests[b];
    if (!status[b].ok() || req.empty() || steady_[b]) continue;
    if (!scored.ok()) {
      status[b] = scored;
      continue;
    }
    masses[b].resize(kv_);
    for (int h = 0; h < kv_; ++h) {
      const int64_t r = b * kv_ + h;
      masses[b][h].assign(flat.begin() + indptr[r], flat.begin() + indptr[r + 1]);
    }
  }
}

void DecodeWorker::Impl::Fetch(int layer, const std::vector<FetchOrigin>& origins,
                               std::vector<HeadFetch>& fetches, std::vector<absl::Status>& status,
                               WorkerStepStats& stats) {
  Clock::time_point t0 = Clock::now();
  const size_t n = fetches.size();
  // Gathers enqueued, in order: entry j filled fetch ready_of[j], its verdict in ready_bad[j] (a
  // head-page is gathered at most twice: under a stale hint, then leased).
  std::vector<size_t> ready_of;
  constexpr size_t kStale = SIZE_MAX;  // in ready_of: a copy gathered under a stale hint
  std::vector<uint8_t> ready_bad(2 * n, 1);
  std::vector<uint64_t> lease_ids;  // taken, released after the last verdict
  std::vector<HeadFetch> ready;
  absl::Status gathered;
  // Points fetch i at head h of the page at arena offset `at` and queues it for the next gather.
  const auto ready_from = [&](size_t i, uint64_t at) {
    const int h = fetches[i].dst.head;
    fetches[i].src_k = static_cast<int64_t>(at) + h * half_;
    fetches[i].src_v = static_cast<int64_t>(at) + (kv_ + h) * half_;
    ready.push_back(fetches[i]);
    ready_of.push_back(i);
  };
  // Enqueues one verified gather of `ready` (fetches ready_of[first...]); a failed enqueue
  // leaves them ungathered, and the fetch enqueues nothing more.
  const auto gather = [&](size_t first) {
    Clock::time_point tg = Clock::now();
    gathered = backend_->Gather(ready, absl::MakeSpan(ready_bad).subspan(first, ready.size()));
    stats.gather_s += Since(tg);
    if (!gathered.ok()) ready_of.resize(first);
  };
  // Leased pages: one lease per page, however many heads and rows read it, in chunks: a chunk's
  // new pages are leased (one store call, which also brings pages up from SSD), then its
  // head-pages gathered (enqueued), so the store's work on a chunk overlaps the gather of the
  // one before. Each lease renews its page's hint.
  const auto lease_and_gather = [&](const std::vector<size_t>& idx) {
    absl::flat_hash_map<PageKey, int32_t> lease_of;  // page -> index into `keys`
    std::vector<PageKey> keys;
    std::vector<int32_t> lease_of_fetch(idx.size());
    for (size_t j = 0; j < idx.size(); ++j) {
      const PageKey& key = origins[idx[j]].key;
      auto [it, inserted] = lease_of.try_emplace(key, static_cast<int32_t>(keys.size()));
      if (inserted) keys.push_back(key);
      lease_of_fetch[j] = it->second;
    }
    std::vector<absl::StatusOr<ReadLease>> leases;
    leases.reserve(keys.size());
    const size_t chunk =
        std::max<size_t>(kGatherChunk, (idx.size() + kGatherChunks - 1) / kGatherChunks);
    for (size_t begin = 0; begin < idx.size() && gathered.ok(); begin += chunk) {
      const size_t end = std::min(idx.size(), begin + chunk);
      // Keys are numbered in order of first use, so the chunk's new ones are the next run.
      size_t keys_end = leases.size();
      for (size_t j = begin; j < end; ++j) {
        keys_end = std::max(keys_end, static_cast<size_t>(lease_of_fetch[j]) + 1);
      }
      if (keys_end > leases.size()) {
        Clock::time_point tl = Clock::now();
        std::vector<absl::StatusOr<ReadLease>> more = store_->AcquireReads(
            o_.tenant, absl::MakeConstSpan(keys).subspan(leases.size(), keys_end - leases.size()),
            absl::Seconds(o_.lease_seconds));
        stats.lease_s += Since(tl);
        for (const absl::StatusOr<ReadLease>& lease : more) {
          if (lease.ok()) lease_ids.push_back(lease->lease_id);
        }
        std::move(more.begin(), more.end(), std::back_inserter(leases));
      }
      ready.clear();
      const size_t first = ready_of.size();
      for (size_t j = begin; j < end; ++j) {
        const absl::StatusOr<ReadLease>& lease = leases[lease_of_fetch[j]];
        if (!lease.ok()) continue;  // answered by the fallback below
        const size_t i = idx[j];
        stats.bytes_from_tier[static_cast<int>(lease->found_in)] += 2 * half_;
        ready_from(i, lease->arena_offset);
        // Leased: the segment cannot change owner now, so its generation is the page's.
        if (const FetchOrigin& at = origins[i]; at.ls != nullptr) {
          at.ls->SetHint(at.page,
                         {lease->arena_offset, store_->HostSegmentGeneration(lease->arena_offset)});
        }
      }
      gather(first);
    }
  };
  // Every verdict back (the gathers' reads of the arena are done), then the hold and the leases
  // end. False when no verdict came back: then nothing counts as gathered.
  const auto settle = [&](bool held) {
    Clock::time_point tg = Clock::now();
    const bool synced = backend_->Sync().ok();
    stats.gather_s += Since(tg);
    Clock::time_point tl = Clock::now();
    if (held) store_->ReleaseHostArena();
    if (!lease_ids.empty()) (void)store_->ReleaseReads(lease_ids);
    lease_ids.clear();
    stats.lease_s += Since(tl);
    return synced;
  };

  // 1. Pages whose hint still names a segment of the same owner go without a lease (only when
  // verifying: the verdicts are what make that safe); the rest are leased.
  std::vector<size_t> by_lease, by_hint;
  for (size_t i = 0; i < n; ++i) {
    const FetchOrigin& at = origins[i];
    const LayerState::ArenaHint hint =
        at.ls != nullptr ? at.ls->HintOf(at.page) : LayerState::ArenaHint{};
    const bool usable =
        o_.verify && hint.gen != 0 && store_->HostSegmentGeneration(hint.offset) == hint.gen;
    (usable ? by_hint : by_lease).push_back(i);
  }
  if (!by_lease.empty()) lease_and_gather(by_lease);
  // 2. Hinted pages: under one hold of the arena (no store call until it ends), each read where
  // its hint says if its segment still has the hint's generation. Without the hold (a segment is
  // changing owner) they are leased too.
  bool held = false;
  std::vector<uint8_t> unleased(n, 0);  // read (or meant to be read) under a hint
  if (!by_hint.empty() && gathered.ok()) {
    Clock::time_point tl = Clock::now();
    held = store_->HoldHostArena().ok();
    stats.lease_s += Since(tl);
    if (!held) {
      lease_and_gather(by_hint);
    } else {
      ready.clear();
      const size_t first = ready_of.size();
      for (size_t i : by_hint) {
        unleased[i] = 1;
        const LayerState::ArenaHint hint = origins[i].ls->HintOf(origins[i].page);
        if (store_->HostSegmentGeneration(hint.offset) != hint.gen) continue;  // stale already
        ready_from(i, hint.offset);
      }
      gather(first);
    }
  }
  const auto verdicts = [&](bool synced, std::vector<uint8_t>& bad, std::vector<uint8_t>& got) {
    bad.assign(n, 1);  // not gathered, not verified, or (verify off) its verdict ignored
    got.assign(n, 0);
    if (!synced) return;
    for (size_t j = 0; j < ready_of.size(); ++j) {
      if (ready_of[j] == kStale) continue;
      got[ready_of[j]] = 1;
      bad[ready_of[j]] = o_.verify ? ready_bad[j] : 0;
    }
  };
  std::vector<uint8_t> bad, was_gathered;
  verdicts(settle(held), bad, was_gathered);
  // 3. Hints gone stale (the page was evicted, demoted or moved since): leased now, in one batch
  // (SSD pages come up together), and gathered again; their hints renewed.
  std::vector<size_t> stale;
  for (size_t& i : ready_of) {  // a stale copy's verdict is not the fetch's
    if (unleased[i] && bad[i]) i = kStale;
  }
  for (size_t i = 0; i < n; ++i) {
    if (unleased[i] && bad[i]) {
      stale.push_back(i);
      origins[i].ls->SetHint(origins[i].page, {});
    } else if (unleased[i]) {
      stats.bytes_from_tier[static_cast<int>(Tier::kHost)] += 2 * half_;
      ++stats.unleased_head_pages;
    }
  }
  if (!stale.empty() && gathered.ok()) {
    stats.stale_hints += static_cast<int64_t>(stale.size());
    lease_and_gather(stale);
    verdicts(settle(false), bad, was_gathered);
  }
  stats.fetch_s += Since(t0);
  stats.fetched_head_pages += static_cast<int64_t>(n);
  stats.bytes_fetched += n * 2 * half_;

  // Anything not verified: one store read of the page (checksummed end to end by the store, from
  // whichever tier holds it), the head checked against the checksum taken at commit.
  Clock::time_point t1 = Clock::now();
  struct Reread {
    absl::Status status;
    std::vector<uint8_t> page;
  };
  absl::flat_hash_map<PageKey, Reread> reread;
  const absl::Time in_flight_deadline = absl::Now() + kInFlightWait;
  for (size_t i = 0; i < fetches.size(); ++i) {
    if (!bad[i]) continue;
    if (was_gathered[i]) ++stats.verify_failures;
    const int h = fetches[i].dst.head;
    const FetchOrigin& at = origins[i];
    if (at.ls != nullptr) at.ls->SetHint(at.page, {});  // wherever the page is, not there
    auto [it, inserted] = reread.try_emplace(at.key);
    Reread& r = it->second;
    if (inserted) {
      ++stats.fallback_reads;
      r.page.resize(o_.layout.PageBytes());
      auto info = store_->Get(o_.tenant, at.key, absl::MakeSpan(r.page));
      // A page of the chain that another writer reserved first (two workers prefilling one
      // prefix at once: this one only checksummed it) cannot be read until that writer commits.
      // Wait for it, a bounded time per call, before calling it lost.
      while (absl::IsNotFound(info.status()) && absl::Now() < in_flight_deadline) {
        absl::SleepFor(absl::Milliseconds(1));
        info = store_->Get(o_.tenant, at.key, absl::MakeSpan(r.page));
      }
      r.status = info.status();
      // The store reads the whole page (every head), once.
      if (info.ok()) stats.bytes_from_tier[static_cast<int>(info->tier)] += o_.layout.PageBytes();
    }
    absl::Status s = r.status;
    if (s.ok()) {
      std::vector<uint8_t> head(2 * half_);
      std::memcpy(head.data(), r.page.data() + h * half_, half_);
      std::memcpy(head.data() + half_, r.page.data() + (kv_ + h) * half_, half_);
      if (kernels::HeadPageChecksum(head.data(), head.data() + half_, half_) !=
          fetches[i].checksum) {
        s = absl::DataLossError("the stored page does not match the checksum taken at commit");
      } else {
        s = backend_->WriteHeads({&fetches[i].dst, 1}, head);
      }
    }
    if (!s.ok()) {
      pool_.Forget(at.key, h);
      absl::Status& st = status[at.row];
      if (st.ok()) {
        st = absl::DataLossError(absl::StrCat("layer ", layer, ": no verified copy of page ",
                                              at.key.Hex(), " head ", h, ": ", s.message()));
      }
    }
  }
  stats.verify_s += Since(t1);
}

}  // namespace pagoda
