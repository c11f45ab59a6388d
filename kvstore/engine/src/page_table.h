// The page table: (tenant, key) -> entry, with one intrusive LRU list per tier.
//
// Entries live in a slab (a vector indexed by 32-bit entry numbers); the hash index stores only
// entry numbers and hashes/compares through the slab, so the per-page cost is one 64-byte entry
// plus ~5 bytes of index. Entry numbers are reused; `version` changes on every reuse so that a
// stale reference (a lease, a stream window, a reservation) can tell.
//
// Thread safety: none; the store calls it with its lock held.
#ifndef PAGODA_KVSTORE_PAGE_TABLE_H_
#define PAGODA_KVSTORE_PAGE_TABLE_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

inline constexpr uint32_t kNil = 0xFFFFFFFFu;

enum class PageState : uint8_t {
  kFree = 0,     // on the slab's free list
  kWriting = 1,  // reserved, not yet committed: invisible to readers
  kReady = 2,    // committed and readable
  kDoomed = 3,   // removed from the index while copies of it run; freed by the last reader
};

struct PageEntry {
  PageKey key;
  uint64_t checksum = 0;
  uint64_t lease_deadline_ms = 0;  // latest expiry of its leases, ms since the store's epoch
  uint32_t tenant = 0;
  uint32_t slot = 0;  // memory tiers: offset / SlabAllocator::kSlotAlign
  uint32_t prev = kNil;
  uint32_t next = kNil;  // LRU neighbours (or the free-list link when kFree)
  uint32_t version = 0;
  uint16_t cls = 0;  // layout class
  uint16_t pins = 0;
  uint16_t leases = 0;
  uint16_t readers = 0;  // copies in flight outside the store lock
  Tier tier = Tier::kHost;
  PageState state = PageState::kFree;
  bool linked : 1 = false;  // on its tier's LRU list
  // A page in a memory tier whose SSD record holds the same bytes (written by a checkpoint, or
  // kept by a promotion): evicting it costs no write, and a crash or stop does not lose it.
  bool ssd_copy : 1 = false;
};
static_assert(sizeof(PageEntry) <= 64, "keep per-page metadata small");

class PageTable {
 public:
  PageTable();
  // The index's functors point at slab_: a table never moves.
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;

  // Entry number of (tenant, key) in the index, or kNil.
  uint32_t Find(uint32_t tenant, const PageKey& key) const;
  // Hints for a batch of lookups (no effect on results): start loading the index bucket of
  // (tenant, key), or entry idx with its LRU neighbours, into the cache.
  void PrefetchIndex(uint32_t tenant, const PageKey& key) const {
    index_.prefetch(Lookup{tenant, key});
  }
  // The next stage: probes the (prefetched) bucket and starts loading the entries it holds whose
  // hash tag matches (normally just the one sought), without waiting for any of them.
  void PrefetchCandidates(uint32_t tenant, const PageKey& key) const {
    (void)index_.find(Probe{tenant, key});
  }
  void PrefetchEntry(uint32_t idx) const {
    const PageEntry& e = slab_[idx];
    __builtin_prefetch(&e);
    if (e.prev != kNil) __builtin_prefetch(&slab_[e.prev]);
    if (e.next != kNil) __builtin_prefetch(&slab_[e.next]);
  }
  // Adds a new entry for (tenant, key) (which must not be in the index) and returns its number.
  uint32_t Insert(uint32_t tenant, const PageKey& key);
  // Removes an entry from the index (it stays allocated; see Release).
  void Unindex(uint32_t idx);
  // Returns an entry (unlinked from its LRU list and the index) to the free list.
  void Release(uint32_t idx);

  PageEntry& at(uint32_t idx) { return slab_[idx]; }
  const PageEntry& at(uint32_t idx) const { return slab_[idx]; }

  // LRU lists, one per tier: front = most recently used.
  void LinkFront(uint32_t idx);  // links into the list of at(idx).tier
  void Unlink(uint32_t idx);
  void Touch(uint32_t idx);  // move to the front of its list
  uint32_t Tail(Tier tier) const { return tail_[static_cast<int>(tier)]; }
  uint32_t Prev(uint32_t idx) const { return slab_[idx].prev; }

  size_t size() const { return index_.size(); }
  void Reserve(size_t n);
  // Memory of the slab, the free list and the index.
  uint64_t MetadataBytes() const;

 private:
  struct Lookup {
    uint32_t tenant;
    PageKey key;
  };
  // A lookup that never matches: each candidate the probe compares it with is prefetched instead.
  struct Probe {
    uint32_t tenant;
    PageKey key;
  };
  struct Hash {
    using is_transparent = void;
    const std::vector<PageEntry>* slab;
    size_t operator()(uint32_t idx) const {
      const PageEntry& e = (*slab)[idx];
      return (*this)(Lookup{e.tenant, e.key});
    }
    size_t operator()(const Lookup& l) const { return absl::HashOf(l.tenant, l.key.hi, l.key.lo); }
    size_t operator()(const Probe& p) const { return absl::HashOf(p.tenant, p.key.hi, p.key.lo); }
  };
  struct Eq {
    using is_transparent = void;
    const std::vector<PageEntry>* slab;
    bool operator()(uint32_t a, uint32_t b) const { return a == b; }
    bool operator()(uint32_t a, const Lookup& l) const {
      const PageEntry& e = (*slab)[a];
      return e.tenant == l.tenant && e.key == l.key;
    }
    bool operator()(const Lookup& l, uint32_t a) const { return (*this)(a, l); }
    bool operator()(uint32_t a, const Probe&) const {
      __builtin_prefetch(&(*slab)[a]);
      return false;
    }
    bool operator()(const Probe& p, uint32_t a) const { return (*this)(a, p); }
  };

  std::vector<PageEntry> slab_;
  uint32_t free_head_ = kNil;
  absl::flat_hash_set<uint32_t, Hash, Eq> index_;
  uint32_t head_[kNumTiers];
  uint32_t tail_[kNumTiers];
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_PAGE_TABLE_H_
