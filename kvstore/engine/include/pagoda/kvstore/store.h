// The tiered page store: a page table over GPU / host / SSD tiers with two-phase writes,
// bounded read leases, pins, quotas, LRU eviction and per-stream rolling windows.
//
// Pages are immutable once committed: a key is written once (reserve, fill, commit) and read many
// times until it is removed or evicted. Every page is identified by (tenant, key); tenants never
// see each other's pages, even under the same key. Bad input (unknown layout, wrong size, a key
// already stored or being written, over quota, SSD failure, a corrupt SSD record) gets a clear
// error and leaves the store unchanged.
//
// Thread safety: Store is safe for concurrent use without external synchronization. Bulk copies of
// host pages (Put, Get) run outside the page-table lock.
#ifndef PAGODA_KVSTORE_STORE_H_
#define PAGODA_KVSTORE_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "pagoda/kvstore/options.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

// A page being written (phase one of a two-phase write). The caller fills exactly `size` bytes at
// `arena_offset` of the host arena (through HostArenaInfo().base in-process, or at the same offset
// of a mapping of TenantArenaFd(tenant) in another process), then calls Commit() or Abort(). Until
// Commit() the page is invisible: Get/Exists/AcquireRead report NotFound and a second Reserve of
// the key fails.
struct Reservation {
  uint64_t id = 0;  // identifies the reservation in Commit / Abort
  PageKey key;
  PageLayout layout;
  uint64_t arena_offset = 0;  // where to write, in bytes from the start of the host arena
  uint64_t size = 0;          // == layout.PageBytes()
};

// A zero-copy read of a page in the host arena. The bytes at [arena_offset, arena_offset + size)
// are the page's until `expiry`; after that the store may reuse the slot. Because of that, a reader
// copies the bytes out and then checks PageChecksum(copy) == checksum; a mismatch means the lease
// ran out mid-copy and the copy must be thrown away. Release with ReleaseRead() when done.
struct ReadLease {
  uint64_t lease_id = 0;
  PageKey key;
  PageLayout layout;
  uint64_t arena_offset = 0;
  uint64_t size = 0;
  uint64_t checksum = 0;  // PageChecksum of the page's bytes
  absl::Time expiry;
  Tier found_in = Tier::kHost;  // where the page was before the read brought it to the host tier
};

// What the store knows of one committed page.
struct PageInfo {
  PageLayout layout;
  uint64_t size = 0;
  uint64_t checksum = 0;
  Tier tier = Tier::kHost;  // where the page was when it was found
  uint32_t pins = 0;
};

// The store's own view of the host arena (for in-process zero-copy). Every tenant's pages lie in
// it; another process maps only one tenant's part (TenantArenaFd).
struct HostArena {
  uint64_t size = 0;           // bytes
  uint64_t segment_bytes = 0;  // a tenant's pages lie in whole segments of this size
  uint8_t* base = nullptr;     // the store's own mapping; ranges that hold no page are inaccessible
  // -1, or the CUDA device for which every assigned segment is page-locked and mapped at its own
  // address (MapHostTierForGpu): kernels there may read pages through base + arena_offset.
  int gpu_device = -1;
};

struct TierStats {
  bool present = false;  // false: the machine or the options lack this tier
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;  // committed pages + open reservations, in page bytes
  uint64_t pages = 0;
  uint64_t hits = 0;  // reads that found their page in this tier
  uint64_t evictions =
      0;  // pages demoted out of this tier (eviction or Demote) or, on SSD, dropped
  uint64_t promotions = 0;  // pages moved into this tier from a lower tier
  uint64_t bytes_in = 0;    // page bytes moved into this tier from other tiers
  uint64_t bytes_out = 0;   // page bytes moved out of this tier to other tiers
};

struct StoreStats {
  TierStats tiers[kNumTiers];  // indexed by static_cast<int>(Tier)
  uint64_t pages = 0;          // committed pages, all tiers
  uint64_t misses = 0;         // reads of keys the store does not hold
  uint64_t puts = 0;           // commits
  uint64_t removes = 0;
  uint64_t dropped = 0;             // pages evicted out of the last tier (gone from the store)
  uint64_t window_dropped = 0;      // pages that left through a stream's rolling window
  uint64_t checksum_failures = 0;   // corrupt pages detected (and dropped)
  uint64_t ssd_write_failures = 0;  // failed SSD batches (their pages stayed where they were)
  uint64_t active_leases = 0;
  uint64_t pinned_bytes = 0;
  uint64_t metadata_bytes = 0;  // memory of the page table and its indexes (not page bytes)
  // Pages in memory tiers (open reservations included) with no SSD copy: what a crash would lose.
  uint64_t memory_only_pages = 0;
  // Bytes on SSD that are copies of pages living in memory tiers (kept by a promotion or written
  // by Checkpoint). They count against the SSD tier's capacity, not in tiers[kSsd].used_bytes.
  uint64_t ssd_copy_bytes = 0;
  // Disk the SSD tier takes (segment files, dead space included) and the most it may take:
  // ssd_capacity_bytes, or less once the file system ran out of space first (ssd_full times);
  // it grows back when the file system has room again (ssd_regrown times).
  uint64_t ssd_disk_bytes = 0;
  uint64_t ssd_limit_bytes = 0;  // 0: unbounded
  uint64_t ssd_full = 0;
  uint64_t ssd_regrown = 0;
  uint64_t checkpoints = 0;          // completed Checkpoint() calls (background ones included)
  uint64_t checkpoint_failures = 0;  // Checkpoint() calls that returned an error
  // When the last Checkpoint() that succeeded and skipped nothing began: every page committed
  // before then has a durable copy on SSD (unless removed or dropped since). InfinitePast: none.
  absl::Time last_checkpoint_start = absl::InfinitePast();
};

// What one Checkpoint() did.
struct CheckpointResult {
  uint64_t pages_written = 0;  // memory-only pages whose bytes now also sit on SSD
  uint64_t pages_skipped = 0;  // memory-only pages left unwritten: no room on SSD for them
};

class Store {
 public:
  // Opens a store: maps the host arena, creates the GPU pool when asked and available (a GPU tier
  // that cannot be created is an error: ask for none with gpu_capacity_bytes = 0), opens or creates
  // the SSD tier under data_dir and rebuilds the page table from its metadata (page bytes are not
  // read; a corrupt page is found when read). InvalidArgument for bad options.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);

  // Stops the background checkpoints and flushes the SSD tier. Pages only in memory tiers are lost
  // (call Checkpoint() first to keep them); pages on SSD survive.
  virtual ~Store() = default;

  // ---- Writes -------------------------------------------------------------------------------
  // Phase one: reserves a host slot for (tenant, key). Errors: InvalidArgument (empty tenant,
  // unregistered layout, unknown stream), AlreadyExists (key stored or being written),
  // ResourceExhausted (over the tenant's host quota, or no slot can be freed because every
  // candidate is pinned, leased or being read).
  virtual absl::StatusOr<Reservation> Reserve(std::string_view tenant, const PageKey& key,
                                              const PageLayout& layout,
                                              const WriteOptions& options = {}) = 0;
  // Phase two: checksums the slot and publishes the page. NotFound for an unknown (or already
  // committed / aborted) reservation id; ResourceExhausted when options.pin is over the pin quota
  // (the reservation is then aborted).
  virtual absl::Status Commit(uint64_t reservation_id) = 0;
  // Frees a reservation's slot; the key becomes writable again. NotFound for an unknown id.
  virtual absl::Status Abort(uint64_t reservation_id) = 0;
  // Reserve + copy + Commit. InvalidArgument when bytes.size() != layout.PageBytes().
  virtual absl::Status Put(std::string_view tenant, const PageKey& key, const PageLayout& layout,
                           absl::Span<const uint8_t> bytes, const WriteOptions& options = {}) = 0;

  // ---- Reads --------------------------------------------------------------------------------
  // Copies a page into `out` (which must hold at least PageBytes bytes) and verifies its checksum.
  // NotFound for a missing key (counted as a miss); InvalidArgument for a short `out`; DataLoss
  // for a corrupt page (it is dropped from the store and never served).
  virtual absl::StatusOr<PageInfo> Get(std::string_view tenant, const PageKey& key,
                                       absl::Span<uint8_t> out) = 0;
  // Zero-copy read: brings the page into the host tier (from SSD or GPU) and leases its slot for
  // min(duration, max_lease_duration) (duration <= 0: the default). See ReadLease.
  virtual absl::StatusOr<ReadLease> AcquireRead(std::string_view tenant, const PageKey& key,
                                                absl::Duration duration = absl::ZeroDuration()) = 0;
  // AcquireRead of every key under one lock (a decode step's fetch list): result i answers keys[i]
  // as AcquireRead would, each key on its own (one missing key does not fail the others).
  virtual std::vector<absl::StatusOr<ReadLease>> AcquireReads(
      std::string_view tenant, absl::Span<const PageKey> keys,
      absl::Duration duration = absl::ZeroDuration()) = 0;
  // Ends a lease. Idempotent: OK for any id the store issued, also when the lease was released
  // before, already expired, or its page is gone. NotFound for an id the store never issued.
  virtual absl::Status ReleaseRead(uint64_t lease_id) = 0;
  // ReleaseRead of every id under one lock; every id is released, the first error is returned.
  virtual absl::Status ReleaseReads(absl::Span<const uint64_t> lease_ids) = 0;

  // ---- Reads without a lease, by a reader that verifies every byte --------------------------
  // A reader that checks what it reads against checksums of its own (the decode worker's
  // verified gather) may read a host-tier page where it last saw it (the arena_offset of its
  // Reservation or ReadLease) without leasing it again. While it holds the arena, no host
  // segment leaves its owner (none is unmapped, unpinned for the GPU or given to another tenant),
  // so reading HostArenaInfo().base + offset, from the host or the device, is memory-safe for
  // every offset whose segment still has the generation the reader saw with the page. The page's
  // bytes are NOT held: it may be evicted, moved or its slot reused meanwhile; the reader's
  // checksums catch that and it falls back to AcquireRead or Get. Holds are for one fetch: the
  // holder makes no other call to this store until it releases (a write that needs another
  // owner's empty segment waits for the holds to end, at most kMaxArenaHoldWait, and then fails
  // with ResourceExhausted; it waits holding the store's lock, so a hold kept past one fetch
  // stalls every store call that long per such write). Holds nest across threads. Unavailable while
  // such a write waits (the reader leases instead); then nothing is held.
  static constexpr absl::Duration kMaxArenaHoldWait = absl::Milliseconds(200);
  virtual absl::Status HoldHostArena() = 0;
  // Ends one successful HoldHostArena.
  virtual void ReleaseHostArena() = 0;
  // The generation of the host segment holding byte `arena_offset`: odd while the segment is
  // given to an owner, changed each time it is given or taken back; 0 outside the arena. Read it
  // while the page at arena_offset is reserved or leased (its segment cannot change owner then).
  // Lock-free.
  virtual uint32_t HostSegmentGeneration(uint64_t arena_offset) const = 0;

  virtual bool Exists(std::string_view tenant, const PageKey& key) = 0;
  virtual absl::StatusOr<PageInfo> Stat(std::string_view tenant, const PageKey& key) = 0;
  // Number of leading keys of `keys` the store holds for `tenant` (any tier), in one call.
  virtual size_t LongestCachedPrefix(std::string_view tenant, absl::Span<const PageKey> keys) = 0;

  // ---- Management ---------------------------------------------------------------------------
  // Deletes a page from every tier. NotFound when absent. Outstanding leases of the page expire
  // into stale bytes (their checksum check catches reuse).
  virtual absl::Status Remove(std::string_view tenant, const PageKey& key) = 0;
  // Pins / unpins a page: pinned pages are never evicted (they may still be moved by Prefetch /
  // Demote). Pins nest. ResourceExhausted over the pin quota (first pin of a page only);
  // FailedPrecondition for Unpin of an unpinned page; NotFound for a missing page.
  virtual absl::Status Pin(std::string_view tenant, const PageKey& key) = 0;
  virtual absl::Status Unpin(std::string_view tenant, const PageKey& key) = 0;
  // Moves the pages of `keys` that sit below `tier` up into it (missing keys are skipped).
  // Returns how many pages moved. Stops at the first error (capacity, quota, SSD read) and
  // returns it; pages moved before stay moved.
  virtual absl::StatusOr<size_t> Prefetch(std::string_view tenant, absl::Span<const PageKey> keys,
                                          Tier tier) = 0;
  // Moves the pages of `keys` that sit above `tier` down into it. Returns how many moved.
  virtual absl::StatusOr<size_t> Demote(std::string_view tenant, absl::Span<const PageKey> keys,
                                        Tier tier) = 0;

  // Opens a rolling-window stream. AlreadyExists when open; InvalidArgument for stream_id 0 or
  // window_pages 0.
  virtual absl::Status OpenStream(std::string_view tenant, uint64_t stream_id,
                                  const StreamOptions& options) = 0;
  // Closes a stream; its pages stay in the store as ordinary pages. NotFound when not open.
  virtual absl::Status CloseStream(std::string_view tenant, uint64_t stream_id) = 0;

  // Makes everything written to the SSD tier durable (RocksDB flush). OK without an SSD tier.
  virtual absl::Status Flush() = 0;

  // Writes every page committed before the call whose only copy is in a memory tier (however it
  // got there: a commit, a promotion, a prefetch) to the SSD tier, leaving it where it is, then
  // makes the SSD tier durable: segment bytes fdatasync'd, then RocksDB's WAL synced. After an OK
  // return such a page survives a crash of the process or the machine (until it is removed or
  // evicted from the last tier). Pages for which the SSD tier has no room, even after dropping its
  // least-recently-used pages, are skipped and counted. Copies are written in batches of a few
  // MiB outside the page-table lock; the pages of a batch are not evictable while it is written.
  // Safe to call concurrently with everything (calls are serialized); StoreOptions::
  // checkpoint_interval runs it in the background. OK (nothing written) without an SSD tier;
  // the first SSD write or sync error is returned (what was written before stays written).
  virtual absl::StatusOr<CheckpointResult> Checkpoint() = 0;

  virtual StoreStats Stats() = 0;
  virtual HostArena HostArenaInfo() const = 0;
  // Makes the host arena readable by kernels on CUDA `device` (a decode worker's gather reads
  // pages there straight from host memory): every segment that holds pages now is page-locked and
  // mapped at its own address, and from then on a segment that cannot be is never used (the write
  // that needed it fails), so a page's arena_offset is always readable from the device.
  // Idempotent; FailedPrecondition once mapped for another device; Unavailable without CUDA or
  // the device; Unimplemented where the device cannot read host memory at host addresses;
  // Internal when the driver refuses (e.g. RLIMIT_MEMLOCK). Nothing changes on error beyond
  // segments pinned before the failing one.
  virtual absl::Status MapHostTierForGpu(int device) = 0;
  // Gives free host-tier segments to `tenant`'s pages of `layout` ahead of its writes, until
  // `bytes` of slots are prepared or no segment is free (segments holding pages are never
  // taken). A segment's first use maps the tenant's memory there (faulted in) and, once the tier
  // is mapped for a GPU, page-locks it; prepared now, a later Reserve or Put does not pay that
  // (measured on a cold store: most of a prefill's host time). Takes the store's lock once per
  // segment, so other calls interleave. Prepared segments that stay empty still go to other
  // tenants and layouts when the tier has no free segment left. Returns the slot bytes prepared
  // (at most the tenant's host quota); InvalidArgument for a bad tenant id or a layout the store
  // does not accept; Internal when a segment could not be mapped (or pinned).
  virtual absl::StatusOr<uint64_t> PrepareHostTier(std::string_view tenant,
                                                   const PageLayout& layout, uint64_t bytes) = 0;
  // The memfd of one tenant's host pages, for a process of that tenant to mmap MAP_SHARED (size
  // HostArenaInfo().size; the page of a Reservation or ReadLease of this tenant is at its
  // arena_offset). It holds this tenant's pages only: the store places each tenant's host pages in
  // segments of their own, backed by this file. Sealed (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL):
  // ftruncate by a holder fails. Owned by the store, valid until it is destroyed; created on first
  // use. InvalidArgument for an empty tenant; Internal when memfd_create fails.
  virtual absl::StatusOr<int> TenantArenaFd(std::string_view tenant) = 0;
  // Whether a tier is present (capacity configured and the machine has it).
  virtual bool HasTier(Tier tier) const = 0;
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_STORE_H_
