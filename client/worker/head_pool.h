// Internal: slot bookkeeping of the decode worker's head-granular attention pool.
//
// kv_heads sub-pools of `slots` slots. A slot is free, cached (the copy of head h of a store page,
// found by its key, evictable in LRU order) or owned (an open page of one sequence: never evicted,
// freed or adopted by its owner). Slots used in the current epoch (one layer of one step) are
// never chosen as victims, so everything one attention call reads stays put.
//
// Thread safety: not synchronized (the worker's thread).
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

  // The cached slot of (key, head), marked used in `epoch`; -1 when not resident.
  int32_t Find(const PageKey& key, int head, uint64_t epoch);
  // Find for a slot the caller remembers: `slot` when it still caches (key, head) (marked used
  // in `epoch`), else -1. No hashing: the worker's per-page hint makes a step's lookups cheap.
  int32_t Touch(const PageKey& key, int head, int32_t slot, uint64_t epoch);
  // A slot for (key, head), not resident yet (the caller fills it): a free slot, else the least
  // recently used cached slot not used in `epoch` (its page is forgotten). -1 when none.
  int32_t Insert(const PageKey& key, int head, uint64_t epoch);
  // Forgets a cached (key, head) (its bytes could not be verified); the slot becomes free.
  void Forget(const PageKey& key, int head);
  // A private slot for an open page; -1 when none can be had.
  int32_t AllocOwned(int head, uint64_t epoch);
  // Frees an owned slot.
  void ReleaseOwned(int head, int32_t slot);
  // An owned slot now holds head `head` of the committed page `key`: it becomes that page's cached
  // copy. When (key, head) is already cached (another sequence committed the same page) the owned
  // slot is freed and the existing one kept. Returns the page's slot.
  int32_t Adopt(int head, int32_t slot, const PageKey& key, uint64_t epoch);
  // Slots of head `head` that are not owned (free or cached: what one step can use).
  int32_t Available(int head) const { return slots_ - owned_[head]; }
  int64_t used() const;  // cached + owned, all heads
  int64_t evictions() const { return evictions_; }

 private:
  enum class State : uint8_t { kFree, kCached, kOwned };
  struct Slot {
    State state = State::kFree;
    PageKey key;
    uint64_t epoch = 0;
    int32_t prev = -1, next = -1;  // LRU list of cached slots (head: least recent)
  };
  struct Sub {
    std::vector<Slot> slots;
    std::vector<int32_t> free;
    absl::flat_hash_map<PageKey, int32_t> cached;
    int32_t lru = -1, mru = -1;
  };
  void Unlink(Sub& sub, int32_t s);
  void PushMru(Sub& sub, int32_t s);
  int32_t TakeFree(Sub& sub, uint64_t epoch);

  int32_t slots_;
  std::vector<Sub> subs_;
  std::vector<int32_t> owned_;
  int64_t evictions_ = 0;
};

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_HEAD_POOL_H_
