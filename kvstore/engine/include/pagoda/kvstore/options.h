// Options of the page store. Every field has a default that works for a single-node host + SSD
// store; the comment gives the trade-off.
#ifndef PAGODA_KVSTORE_OPTIONS_H_
#define PAGODA_KVSTORE_OPTIONS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/ssd_env.h"

namespace pagoda {

// Watermarks of one tier, as fractions of its capacity. When a commit or a promotion takes the
// tier's used bytes above `high`, least-recently-used unpinned pages are demoted (the SSD tier:
// deleted) until used bytes are at or below `low`.
struct Watermarks {
  double high = 0.95;  // higher keeps more pages resident, lower leaves headroom for bursts
  double low = 0.85;   // the gap sets how many pages one eviction round moves (batched I/O)
};

// Byte quotas of one tenant, per tier. 0 means "no quota" (only the tier capacity bounds it).
struct TenantQuota {
  uint64_t tier_bytes[kNumTiers] = {0, 0, 0};  // indexed by static_cast<int>(Tier)
  uint64_t pinned_bytes = 0;                   // 0: StoreOptions::default_pin_quota_bytes
};

struct StoreOptions {
  // Directory of the SSD tier (page bytes in append-only segment files under segments/, page
  // metadata in a RocksDB database; see ssd_tier.h for the format). Empty: no SSD tier; pages
  // evicted from the host tier are then dropped. A directory of another on-disk format version is
  // refused (FailedPrecondition) rather than misread.
  std::string data_dir;

  // Capacity of each tier in bytes. The host tier is one memfd arena of exactly this size.
  // 0 for the GPU tier (the default) means no GPU tier; 0 for the SSD tier means unbounded.
  uint64_t gpu_capacity_bytes = 0;
  uint64_t host_capacity_bytes = 1ULL << 30;  // 1 GiB
  uint64_t ssd_capacity_bytes = 0;
  int gpu_device = 0;  // CUDA device of the GPU tier

  // Layouts the store accepts in writes. Each layout is a class with its own fixed-size slots; a
  // write with a layout not listed here fails with InvalidArgument. Must not be empty.
  std::vector<PageLayout> layouts = {PageLayout{}};

  // Memory tiers are carved into segments of this size; a segment belongs to one layout class
  // and is cut into slots of that class's page size (rounded up to 256 bytes). Raised to the
  // largest slot when smaller. Larger segments waste less at class boundaries but strand more
  // capacity in a class that stops being used.
  uint64_t segment_bytes = 4ULL << 20;

  Watermarks watermarks[kNumTiers];  // indexed by static_cast<int>(Tier)

  // A Get() or AcquireRead() that finds a page on SSD moves it to the host tier. AcquireRead()
  // always does (a lease points into the host arena). Off: Get() reads SSD pages in place.
  bool promote_on_hit = true;

  // Read leases last at most this long; a longer request is clamped. An expired lease never keeps
  // a page from being evicted, so a reader that stalls cannot pin memory forever.
  absl::Duration max_lease_duration = absl::Seconds(5);
  absl::Duration default_lease_duration = absl::Seconds(1);

  // Pinned bytes (all tiers) one tenant may hold unless its TenantQuota says otherwise. Pins are
  // never evicted, so this bounds how much of the store one tenant can lock down.
  uint64_t default_pin_quota_bytes = 256ULL << 20;

  // Per-tenant quotas by tenant id; tenants not listed have none (besides the pin quota).
  absl::flat_hash_map<std::string, TenantQuota> tenant_quotas;

  // Durability of the SSD tier. Metadata always goes through RocksDB's WAL (a crash replays it
  // in order: a page's record never outlives a later delete of it). Off (the default): the WAL and
  // segment bytes are synced by Checkpoint(), Flush() and close, so a crash (kill -9, power loss)
  // loses at most what was written since the last of those; a record whose bytes did not reach the
  // disk reads as DataLoss (dropped), never as other bytes. On: each SSD batch fdatasyncs its
  // segment bytes and syncs the WAL before it counts (two syncs per demotion batch).
  bool ssd_sync_writes = false;
  // Write SSD batches whose bytes are 4 KiB-aligned (host slots of common layouts are) with
  // O_DIRECT: no page-cache copy of demoted pages, whose cache is the host tier. Off (the default):
  // buffered writes, so pages read soon after demotion may still come from the page cache.
  bool ssd_direct_writes = false;
  // Run Checkpoint() this often in the background (0: never; call it yourself). With it, a page
  // committed more than about checkpoint_interval plus one checkpoint's duration ago survives a
  // crash. Needs an SSD tier (ignored without one).
  absl::Duration checkpoint_interval = absl::ZeroDuration();
  // Fault seam of the SSD tier (null: the default SsdEnv). Not owned; must outlive the store.
  SsdEnv* ssd_env = nullptr;
};

// A per-stream rolling window (streaming audio/video generation): the stream keeps its first
// `sink_pages` pages (attention sinks) and pages pinned by the caller, plus its last
// `window_pages` pages; an older page leaves the store when a newer one is committed.
struct StreamOptions {
  uint32_t window_pages = 64;  // must be >= 1
  uint32_t sink_pages = 4;     // may be 0
};

// Options of one write (Reserve / Put).
struct WriteOptions {
  // Stream the page belongs to (see Store::OpenStream); 0 means none.
  uint64_t stream_id = 0;
  // Pin the page on commit (counts against the tenant's pin quota).
  bool pin = false;
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_OPTIONS_H_
