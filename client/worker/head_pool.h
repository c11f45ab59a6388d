// Internal: slot bookkeeping of the decode worker's head-granular attention pool.
//
// kv_heads sub-pools of `slots` slots. A slot is free, cached (the copy of head h of a store page,
// found by its key, evicted in CLOCK order: an approximation of LRU whose hit costs one write,
// which matters at thousands of lookups per layer; a held cached slot is never evicted) or owned
// (an open page of one sequence: never evicted, freed or adopted by its owner). Slots used in the
// current epoch (one layer of one step) are never chosen as victims, so everything one attention
// call reads stays put.
//
// Thread safety: not synchronized, but the KV heads' sub-pools share nothing: calls naming
// distinct heads may run on distinct threads at once (the worker resolves a layer's heads in
// parallel); used(), evictions() and shared() need every head's calls finished.
#ifndef PAGODA_CLIENT_WORKER_HEAD_POOL_H_
#define PAGODA_CLIENT_WORKER_HEAD_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "pagoda/kvstore/page.h"

namespace pagoda::worker_internal {

class HeadPool {
 public:
  HeadPool(int kv_heads, int32_t slots);

  // A slot's identity: it changes whenever the slot is freed, evicted or given another page, so
  // (slot, generation) names one residency of one head-page.
  uint32_t Generation(int head, int32_t slot) const { return subs_[head].hot[slot].gen; }

  // Using a slot in `epoch` (one layer of one step) from batch row `row` (-1: no row). A second
  // distinct row in the same epoch counts once in shared().
  void Use(int head, int32_t slot, uint64_t epoch, int32_t row) {
    Hot& x = subs_[head].hot[slot];
    x.referenced = 1;
    if (row > kMaxRow) row = -1;  // rows past kMaxRow are not told apart (no sharing counted)
    if (x.epoch != epoch) {
      x.epoch = epoch;
      x.first_row = static_cast<int16_t>(row);
    } else if (x.first_row >= 0 && row >= 0 && x.first_row != row) {
      x.first_row = -1;
      ++subs_[head].shared;
    }
  }

  // The cached slot of (key, head), used in `epoch` by `row`; -1 when not resident.
  int32_t Find(const PageKey& key, int head, uint64_t epoch, int32_t row = -1);
  // Find for a slot the caller remembers with its generation: `slot` when it still holds that
  // residency (used in `epoch` by `row`), else -1. No hashing and no key compare: one compact
  // record per slot, so a layer's thousands of lookups stay in cache.
  int32_t Touch(int head, int32_t slot, uint32_t gen, uint64_t epoch, int32_t row = -1) {
    // Every change of a slot's state renews its generation, so a match is the same cached page.
    if (slot < 0 || slot >= slots_ || subs_[head].hot[slot].gen != gen) return -1;
    Use(head, slot, epoch, row);
    return slot;
  }
  // Loads what resolving a page will read, ahead of it (resolution is bound by memory latency
  // once the pool outgrows the caches): a remembered slot's record, or a key's index bucket.
  void PrefetchSlot(int head, int32_t slot) const {
    if (slot >= 0 && slot < slots_) __builtin_prefetch(&subs_[head].hot[slot]);
  }
  void PrefetchKey(const PageKey& key, int head) const { subs_[head].cached.prefetch(key); }
  // A slot for (key, head), not resident yet (the caller fills it): a free slot, else a cached
  // slot not used in `epoch` and not referenced since the CLOCK hand last passed it (its page is
  // forgotten). -1 when none.
  int32_t Insert(const PageKey& key, int head, uint64_t epoch, int32_t row = -1);
  // Forgets a cached (key, head) (its bytes could not be verified); the slot becomes free. A held
  // slot (verified when it came in) is kept.
  void Forget(const PageKey& key, int head);
  // A private slot for an open page; -1 when none can be had.
  int32_t AllocOwned(int head, uint64_t epoch);
  // Frees an owned slot.
  void ReleaseOwned(int head, int32_t slot);
  // An owned slot now holds head `head` of the committed page `key`: it becomes that page's cached
  // copy. When (key, head) is already cached (another sequence committed the same page) the owned
  // slot is freed and the existing one kept. Returns the page's slot.
  int32_t Adopt(int head, int32_t slot, const PageKey& key, uint64_t epoch);
  // Holds a cached slot (a resident set kept between steps): it is never evicted until every
  // hold on it is released. Holds count per slot; a slot that is not cached is not held (false).
  bool Hold(int head, int32_t slot);
  void Unhold(int head, int32_t slot);
  // Slots of head `head` held at least once.
  int32_t held(int head) const { return held_[head]; }
  // Slots of head `head` that are not owned (free or cached: what one step can use).
  int32_t Available(int head) const { return slots_ - owned_[head]; }
  // Slots of head `head` that hold nothing (Insert takes one of these before evicting).
  int32_t Free(int head) const { return static_cast<int32_t>(subs_[head].free.size()); }
  int64_t used() const;  // cached + owned, all heads
  int64_t evictions() const;
  // Counts the times a cached head-page of head `head` lost its slot (evicted, forgotten; a call
  // to Forget counts even when it keeps the slot): while it is unchanged, every cached slot of
  // the head still holds the page it held. Safe on head `head`'s thread.
  int64_t lost(int head) const { return subs_[head].lost; }
  // Slot-epochs in which a second batch row used the slot (head-pages shared by sequences).
  int64_t shared() const;

 private:
  enum class State : uint8_t { kFree, kCached, kOwned };
  // What every lookup reads and writes: 16 bytes per slot, one cache access per lookup.
  static constexpr int32_t kMaxRow = 32767;
  struct Hot {
    uint64_t epoch = 0;
    uint32_t gen = 0;
    int16_t first_row = -1;  // the batch row that used the slot first in `epoch`; -1: several
    uint8_t referenced = 0;  // used since the CLOCK hand last passed
  };
  // What only misses, evictions and adoptions read.
  struct Cold {
    State state = State::kFree;
    PageKey key;
    uint32_t holds = 0;  // only a cached slot is held (a slot becomes cached with none)
  };
  struct Sub {
    std::vector<Hot> hot;
    std::vector<Cold> cold;
    std::vector<int32_t> free;
    absl::flat_hash_map<PageKey, int32_t> cached;
    int32_t hand = 0;  // CLOCK position
    int64_t evictions = 0;
    int64_t lost = 0;
    int64_t shared = 0;
  };
  int32_t TakeFree(Sub& sub, uint64_t epoch);
  // A new residency of `s` (freed, evicted, filled, adopted, owned).
  static void Renew(Sub& sub, int32_t s) { ++sub.hot[s].gen; }

  int32_t slots_;
  std::vector<Sub> subs_;
  std::vector<int32_t> owned_;
  std::vector<int32_t> held_;
};

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_HEAD_POOL_H_
