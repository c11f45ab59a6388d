// The Store implementation: one page table under one lock, memory tiers, the SSD tier.
//
// Locking: mu_ guards the page table and every piece of bookkeeping. Bulk copies of host and GPU
// pages (Put, Get), SSD reads and checkpoint writes run outside mu_; while one runs, the entry's
// `readers` count keeps its slot (or SSD record) from being freed, evicted or moved. Demotion
// writes and deletes run under mu_ (a known serialization point: demotion batches amortize it;
// checkpoints make most demotions free, as a page with an SSD copy is demoted without a write).
// checkpoint_mu_ serializes checkpoints and is taken before mu_, never while holding it.
#ifndef PAGODA_KVSTORE_STORE_IMPL_H_
#define PAGODA_KVSTORE_STORE_IMPL_H_

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "memory_tier.h"
#include "page_table.h"
#include "pagoda/kvstore/store.h"
#include "slab_allocator.h"
#include "ssd_tier.h"

namespace pagoda {

class StoreImpl final : public Store {
 public:
  explicit StoreImpl(const StoreOptions& options);
  ~StoreImpl() override;
  absl::Status Init();

  absl::StatusOr<Reservation> Reserve(std::string_view tenant, const PageKey& key,
                                      const PageLayout& layout,
                                      const WriteOptions& options) override;
  absl::Status Commit(uint64_t reservation_id) override;
  absl::Status Abort(uint64_t reservation_id) override;
  absl::Status Put(std::string_view tenant, const PageKey& key, const PageLayout& layout,
                   absl::Span<const uint8_t> bytes, const WriteOptions& options) override;
  absl::StatusOr<PageInfo> Get(std::string_view tenant, const PageKey& key,
                               absl::Span<uint8_t> out) override;
  absl::StatusOr<ReadLease> AcquireRead(std::string_view tenant, const PageKey& key,
                                        absl::Duration duration) override;
  std::vector<absl::StatusOr<ReadLease>> AcquireReads(std::string_view tenant,
                                                      absl::Span<const PageKey> keys,
                                                      absl::Duration duration) override;
  absl::Status ReleaseRead(uint64_t lease_id) override;
  absl::Status ReleaseReads(absl::Span<const uint64_t> lease_ids) override;
  absl::Status HoldHostArena() override;
  void ReleaseHostArena() override;
  uint32_t HostSegmentGeneration(uint64_t arena_offset) const override;
  bool Exists(std::string_view tenant, const PageKey& key) override;
  absl::StatusOr<PageInfo> Stat(std::string_view tenant, const PageKey& key) override;
  size_t LongestCachedPrefix(std::string_view tenant, absl::Span<const PageKey> keys) override;
  absl::Status Remove(std::string_view tenant, const PageKey& key) override;
  absl::Status Pin(std::string_view tenant, const PageKey& key) override;
  absl::Status Unpin(std::string_view tenant, const PageKey& key) override;
  absl::StatusOr<size_t> Prefetch(std::string_view tenant, absl::Span<const PageKey> keys,
                                  Tier tier) override;
  absl::StatusOr<size_t> Demote(std::string_view tenant, absl::Span<const PageKey> keys,
                                Tier tier) override;
  absl::Status OpenStream(std::string_view tenant, uint64_t stream_id,
                          const StreamOptions& options) override;
  absl::Status CloseStream(std::string_view tenant, uint64_t stream_id) override;
  absl::Status Flush() override;
  absl::StatusOr<CheckpointResult> Checkpoint() override;
  StoreStats Stats() override;
  HostArena HostArenaInfo() const override;
  absl::StatusOr<uint64_t> PrepareHostTier(std::string_view tenant, const PageLayout& layout,
                                           uint64_t bytes) override;
  absl::Status MapHostTierForGpu(int device) override;
  absl::StatusOr<int> TenantArenaFd(std::string_view tenant) override;
  bool HasTier(Tier tier) const override;

 private:
  struct LayoutClass {
    PageLayout layout;
    uint64_t bytes = 0;
    bool accepted = false;  // listed in StoreOptions::layouts (else only found on SSD)
  };
  struct TenantState {
    std::string name;
    TenantQuota quota;
    uint64_t used[kNumTiers] = {0, 0, 0};
    uint64_t pinned = 0;
    bool on_ssd = false;  // its name is stored in the SSD tier
  };
  struct PendingWrite {
    uint32_t idx;
    uint32_t version;
    WriteOptions options;
  };
  struct LeaseRecord {
    uint32_t idx;
    uint32_t version;
    uint64_t deadline_ms;
  };
  struct EntryRef {
    uint32_t idx;
    uint32_t version;
  };
  struct StreamState {
    StreamOptions options;
    uint32_t sinks_taken = 0;
    std::deque<EntryRef> window;
  };
  struct Counters {
    uint64_t hits[kNumTiers] = {0, 0, 0};
    uint64_t evictions[kNumTiers] = {0, 0, 0};
    uint64_t promotions[kNumTiers] = {0, 0, 0};
    uint64_t bytes_in[kNumTiers] = {0, 0, 0};
    uint64_t bytes_out[kNumTiers] = {0, 0, 0};
    uint64_t misses = 0, puts = 0, removes = 0, dropped = 0, window_dropped = 0;
    uint64_t checksum_failures = 0, ssd_write_failures = 0;
    uint64_t checkpoints = 0, checkpoint_failures = 0, ssd_full = 0, ssd_regrown = 0;
  };

  static int MemIndex(Tier t) { return t == Tier::kGpu ? 0 : 1; }
  uint64_t NowMs() const;
  static absl::Status CheckTenant(std::string_view tenant);
  uint64_t PageBytes(const PageEntry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return classes_[e.cls].bytes;
  }
  uint64_t SlotOffset(const PageEntry& e) const {
    return static_cast<uint64_t>(e.slot) * SlabAllocator::kSlotAlign;
  }
  bool Present(Tier t) const {
    return t == Tier::kSsd ? ssd_ != nullptr : mem_[MemIndex(t)] != nullptr;
  }

  // Tenants and layouts.
  uint32_t InternTenant(std::string_view name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t FindTenant(std::string_view name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int ClassOf(LayoutId id, bool add) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ready entry of (tenant, key) or kNil.
  uint32_t FindReady(std::string_view tenant, const PageKey& key) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  PageInfo InfoOf(const PageEntry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Accounting of an entry entering / leaving a tier.
  void Charge(const PageEntry& e, Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Uncharge(const PageEntry& e, Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool OverQuota(uint32_t tenant, Tier t, uint64_t bytes) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Accounting of an SSD copy of a memory-tier page (e.ssd_copy) appearing / going.
  void ChargeCopy(PageEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnchargeCopy(PageEntry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes `bytes` more fit in the tenant's quota of tier t by evicting its own least-recently-used
  // evictable pages of that tier (demoted, or dropped from the last tier). Returns whether they
  // fit now (always true without a quota); evicts nothing when eviction cannot make them fit.
  bool MakeTenantRoom(uint32_t tenant, Tier t, uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // While a checkpoint batch writes pages to SSD it holds them (readers): they can be neither
  // evicted nor moved, so room refused then may be there a moment later. When a batch is in
  // flight, waits until none is (mu_ released meanwhile: the caller checks its state again), at
  // most kCheckpointWait, and returns true; returns false at once when none is.
  bool AwaitCheckpointBatches() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool NoCheckpointBatch() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return checkpoint_batches_ == 0;
  }
  // Bytes the SSD tier holds: its pages plus copies of memory-tier pages.
  uint64_t SsdBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return used_[static_cast<int>(Tier::kSsd)] + ssd_copy_bytes_;
  }
  // Disk the SSD tier takes: its segment files (dead space and padding included), or its page
  // bytes when more.
  uint64_t SsdDiskBytes() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops least-recently-used SSD pages until `extra` more bytes fit in the SSD limit (disk use
  // counted as SsdDiskBytes). Returns whether they fit (always true for an unbounded SSD tier).
  bool MakeSsdRoom(uint64_t extra) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The file system ran out of space before the configured capacity: the SSD limit becomes a
  // little less than what the segment files take now.
  void LearnSsdFull() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The other way: after LearnSsdFull, when the store is at its limit and what the segments could
  // take (their files + the file system's free bytes) grew by an eighth since (another process
  // freed space), the limit grows back towards the configured capacity, leaving LearnSsdFull's
  // margin. A full file system thus costs capacity only while it lasts.
  void RegrowSsdLimit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ssd_->WriteBatch, and on a full file system (ResourceExhausted) one retry after dropping the
  // oldest SSD pages to make room.
  absl::Status WriteSsdBatch(absl::Span<const SsdPageWrite> writes,
                             absl::Span<const std::pair<uint32_t, std::string>> tenants,
                             uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a ready entry lives only in a memory tier.
  static bool MemoryOnly(const PageEntry& e) {
    return e.state == PageState::kReady && e.tier != Tier::kSsd && !e.ssd_copy;
  }
  // Drops entries of dirty_ that are no longer memory-only once it grows past twice the pages in
  // memory tiers.
  void PruneDirty() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes one batch of memory-only pages from the front of dirty_ (at most `*budget` entries of
  // it are looked at; the count is decremented). Returns false when nothing was left to look at.
  absl::StatusOr<bool> CheckpointBatch(size_t* budget, CheckpointResult* result)
      ABSL_LOCKS_EXCLUDED(mu_);
  void CheckpointLoop();

  // Whether eviction may move or drop the entry now.
  bool Evictable(const PageEntry& e, uint64_t now_ms) const;
  // Allocates a slot of class `cls` for a page of `tenant` in memory tier t, evicting when full.
  // Host slots of a tenant lie in segments of that tenant only (see SlabAllocator).
  absl::StatusOr<uint64_t> AllocateSlot(Tier t, int cls, uint32_t tenant)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pages of tier t whose eviction frees a slot of allocator class `ac`: the least-recently-used
  // evictable page of that class, or else all pages of the segment whose newest page is the
  // oldest among fully evictable segments (the segment then goes to `ac`; not when
  // own_class_only). Empty: none.
  std::vector<uint32_t> SlotVictims(Tier t, int ac, bool own_class_only)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Demotes (or, from the last tier, drops) `victims` of tier `from`, batching SSD writes.
  absl::Status EvictBatch(Tier from, const std::vector<uint32_t>& victims)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Evicts LRU pages of tier t down to its low watermark when above its high watermark.
  void EnforceWatermarks(Tier t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Frees an entry everywhere (slot or SSD record, pins, accounting, index).
  void FreeEntry(uint32_t idx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes a ready entry now, or dooms it while readers run.
  void RemoveEntry(uint32_t idx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a copy that ran outside the lock; frees the entry if it was doomed meanwhile.
  void EndRead(uint32_t idx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops a page found corrupt.
  void DropCorrupt(uint32_t idx, uint32_t version) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Moves a ready entry from memory tier `from` to memory tier `to` (either direction).
  absl::Status MoveBetweenMemory(uint32_t idx, Tier to) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Installs SSD bytes (already verified) of entry idx into memory tier `to`.
  absl::Status PromoteFromSsd(uint32_t idx, Tier to, const std::string& bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads and verifies an SSD page outside the lock. On return the lock is held again; the entry
  // may have changed (check its version). DataLoss drops the page; Aborted means another reader
  // moved the page meanwhile (look it up again); NotFound that it was removed.
  absl::Status ReadSsdUnlocked(uint32_t idx, std::string* bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::StatusOr<PageInfo> GetLocked(std::string_view tenant, const PageKey& key,
                                     absl::Span<uint8_t> out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Phase one under the lock: validates, allocates a host slot and inserts a kWriting entry.
  // Refused for room while a checkpoint batch holds pages, it waits for the batch (releasing mu_)
  // and tries once more.
  absl::StatusOr<uint32_t> ReserveLocked(std::string_view tenant, const PageKey& key,
                                         const PageLayout& layout, const WriteOptions& options)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<uint32_t> ReserveOnceLocked(std::string_view tenant, const PageKey& key,
                                             const PageLayout& layout, const WriteOptions& options)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Phase two under the lock: publishes a kWriting entry whose bytes have `checksum`.
  absl::Status CommitLocked(uint32_t idx, const WriteOptions& options, uint64_t checksum)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddToStream(uint32_t idx, uint64_t stream_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SweepLeases(uint64_t now_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One lease of AcquireReads for tenant id `tid` (kNil: unknown, NotFound) at clock `now` (ms
  // since epoch_; updated when it drops mu_ to read the page from SSD).
  absl::StatusOr<ReadLease> LeaseLocked(uint32_t tid, const PageKey& key, uint64_t lease_ms,
                                        uint64_t& now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Rebuild() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StoreOptions options_;
  const absl::Time epoch_;
  std::unique_ptr<MemoryTier> mem_[2];  // [0] GPU, [1] host; null when absent
  std::unique_ptr<SsdTier> ssd_;
  uint64_t host_segment_bytes_ = 0;  // set by Init
  // Lease-free readers of the host arena (HoldHostArena) and the segments' generations. A
  // segment changes owner only with no holds: the reclaim raises arena_reclaim_, then waits for
  // arena_holds_ to drain; a hold counts itself, then backs out if the flag is up.
  std::atomic<int64_t> arena_holds_{0};
  std::atomic<bool> arena_reclaim_{false};
  std::unique_ptr<std::atomic<uint32_t>[]> host_segment_gen_;  // set by Init
  uint64_t host_segments_ = 0;

  mutable absl::Mutex mu_;
  std::unique_ptr<SlabAllocator> alloc_[2] ABSL_GUARDED_BY(mu_);
  std::atomic<int> host_gpu_device_{-1};  // MapHostTierForGpu (set under mu_)
  PageTable table_ ABSL_GUARDED_BY(mu_);
  std::vector<LayoutClass> classes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<LayoutId, int> class_by_id_ ABSL_GUARDED_BY(mu_);
  std::vector<TenantState> tenants_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> tenant_ids_ ABSL_GUARDED_BY(mu_);
  uint64_t used_[kNumTiers] ABSL_GUARDED_BY(mu_) = {0, 0, 0};
  uint64_t pages_[kNumTiers] ABSL_GUARDED_BY(mu_) = {0, 0, 0};
  absl::flat_hash_map<uint64_t, PendingWrite> reservations_ ABSL_GUARDED_BY(mu_);
  uint64_t next_reservation_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, LeaseRecord> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 1;
  size_t lease_sweep_at_ ABSL_GUARDED_BY(mu_) = 4096;
  absl::flat_hash_map<std::pair<uint32_t, uint64_t>, StreamState> streams_ ABSL_GUARDED_BY(mu_);
  uint64_t pinned_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  Counters counters_ ABSL_GUARDED_BY(mu_);
  // Pages committed and not yet known to have an SSD copy, oldest first (may hold stale refs:
  // entries since evicted, removed or copied; Checkpoint and PruneDirty skip those).
  std::deque<EntryRef> dirty_ ABSL_GUARDED_BY(mu_);
  uint64_t ssd_copy_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ssd_copy_pages_ ABSL_GUARDED_BY(mu_) = 0;
  // Bytes the SSD tier may take on disk: ssd_capacity_bytes, lowered when the file system fills
  // first (LearnSsdFull); 0 = unbounded.
  uint64_t ssd_limit_ ABSL_GUARDED_BY(mu_) = 0;
  // Segment files + free file system bytes when the file system last filled (LearnSsdFull) or the
  // limit last grew back (RegrowSsdLimit).
  uint64_t ssd_room_at_full_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_checkpoint_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int checkpoint_batches_ ABSL_GUARDED_BY(mu_) = 0;  // batches holding pages while they write

  absl::Mutex checkpoint_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex loop_mu_;
  bool stopping_ ABSL_GUARDED_BY(loop_mu_) = false;
  std::thread checkpointer_;  // runs CheckpointLoop when options_.checkpoint_interval > 0
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_STORE_IMPL_H_
