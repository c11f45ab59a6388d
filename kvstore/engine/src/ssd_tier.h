// The SSD tier: page bytes in append-only segment files of our own, page metadata in RocksDB, so
// that a page costs one pwrite on demotion and one pread on read, and a restart rebuilds the page
// table by reading metadata only.
//
// On-disk format, version 2 (version 1 kept page bytes as RocksDB blob values; Open refuses it and
// any other version with FailedPrecondition rather than misread it):
//   <dir>/segments/<id>.seg   page bytes, appended batch by batch and never rewritten in place;
//                             each batch starts 4 KiB-aligned (zero padding is dead space); ids
//                             grow and are never reused; a new active segment at every open.
//   <dir> (RocksDB)           page keys are tenant u32 | key.hi u64 | key.lo u64, big-endian so
//                             they sort by tenant, then key ("PK" below, 20 bytes).
//     default CF: "format_version" -> u32 LE (2).
//     CF "meta": 'P' + PK -> layout id u32 | size u32 | checksum u64 | segment u32 | offset u32
//                (LE, 24 bytes); 'T' + tenant u32 -> tenant name.
//     CF "locations": 'L' + segment u32 BE + offset u32 BE -> PK | size u32 LE: the pages of a
//                segment in file order, for compaction and for rebuilding live bytes at open.
// Writes are two-phase: a batch's bytes are appended (one pwritev) and, with sync_writes,
// fdatasync'd; only then its 'P' and 'L' records commit in one RocksDB WriteBatch. A crash between
// the two leaves bytes no record points to: dead space, reclaimed by compaction, or at open when a
// whole segment is unreferenced. A failed append or sync truncates the segment back to its previous
// tail. RocksDB's WAL is always on (replayed in order after a crash, so a delete is never undone
// by an older record); without sync_writes it is synced by Sync(), Flush() and close, so a machine
// crash may lose the records written since the last of those, and a record whose segment bytes
// were not synced yet reads as DataLoss (the store drops the page), never as other bytes. A kill
// of the process alone loses no record: the WAL and segment bytes are in the page cache.
// Segments are fdatasync'd before any RocksDB flush (Flush() and an event listener on background
// flushes), so a durable record's bytes are durable too. Every read is checked by the caller
// against the page's XXH3 checksum; a record pointing past a segment's end or into a missing
// segment reads as DataLoss.
//
// Space: each segment's live bytes (rebuilt from the 'L' records at open) are kept in memory, per
// segment, not per page. A sealed segment with no live bytes is unlinked; one whose dead fraction
// reaches SsdTierOptions::compact_dead_fraction is compacted (its live pages appended to the active
// segment, their records repointed and flushed, then the old file unlinked) by a background thread
// that a delete wakes; it reads old bytes without the write lock and appends a few MiB at a time.
// At open, segment files no record refers to go.
//
// Thread safety: Read() may run concurrently with everything. Writes, deletes and Flush are called
// with the store's lock held (SsdEnv relies on that); the tier also serializes them itself.
#ifndef PAGODA_KVSTORE_SSD_TIER_H_
#define PAGODA_KVSTORE_SSD_TIER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/ssd_env.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class WriteBatch;
class EventListener;
}  // namespace rocksdb

namespace pagoda {

struct SsdPageMeta {
  uint32_t tenant = 0;
  PageKey key;
  LayoutId layout = 0;
  uint32_t size = 0;
  uint64_t checksum = 0;
};

struct SsdPageWrite {
  SsdPageMeta meta;
  const uint8_t* bytes = nullptr;  // meta.size bytes, valid during WriteBatch
};

class SegmentSet;
struct SegmentLocation;

struct SsdTierOptions {
  // Fault seam (null: the default SsdEnv). Not owned; must outlive the tier.
  SsdEnv* env = nullptr;
  // fdatasync segment bytes before their metadata commits, and commit metadata with a synced WAL.
  // Off: a machine crash may lose the pages written since the last Sync or Flush (never tear one).
  bool sync_writes = false;
  // A segment is sealed once the next batch would take it past this size. Larger: fewer files;
  // smaller: space of deleted pages comes back in finer steps.
  uint64_t segment_bytes = 256ULL << 20;
  // A sealed segment whose dead (unreferenced) bytes reach this fraction of its size is compacted.
  // Lower: less dead space on disk, more bytes rewritten.
  double compact_dead_fraction = 0.5;
  // Write 4 KiB-aligned batches with O_DIRECT: no page-cache copy of demoted pages (the host tier
  // is the cache), at the price of reads that miss the page cache right after a demotion.
  bool direct_writes = false;
};

class SsdTier {
 public:
  // Opens or creates the tier under `dir`. FailedPrecondition when `dir` holds another on-disk
  // format version. Deletes segment files that no metadata refers to.
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(const std::string& dir,
                                                       const SsdTierOptions& options);
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(const std::string& dir, SsdEnv* env,
                                                       bool sync_writes) {
    SsdTierOptions o;
    o.env = env;
    o.sync_writes = sync_writes;
    return Open(dir, o);
  }
  ~SsdTier();

  // Writes pages (and tenant names not yet on disk) atomically: all or nothing. Page bytes are
  // appended first, then the metadata commits; on any failure before the commit (SsdEnv, short
  // write, ENOSPC, failed sync) the segment is truncated back and nothing changes.
  absl::Status WriteBatch(absl::Span<const SsdPageWrite> pages,
                          absl::Span<const std::pair<uint32_t, std::string>> tenants);
  // Reads a page's bytes into *out with one pread. NotFound when absent; DataLoss when its record
  // is corrupt or points into a missing segment or past a segment's end. The caller verifies the
  // checksum.
  absl::Status Read(uint32_t tenant, const PageKey& key, std::string* out);
  // Deletes pages' records in one batch; unlinks segments left with no live page, and queues at
  // most one segment whose dead fraction crossed the threshold for the background compaction
  // (whose errors are not the delete's: the segment is kept and queued again by a later delete).
  absl::Status Delete(absl::Span<const std::pair<uint32_t, PageKey>> pages);
  // Calls fn for every page's metadata (no page bytes are read). A malformed metadata record is
  // passed to bad(key bytes) and skipped.
  absl::Status ForEachPage(const std::function<void(const SsdPageMeta&)>& fn,
                           const std::function<void(std::string_view)>& bad);
  absl::Status ForEachTenant(const std::function<void(uint32_t, std::string_view)>& fn);
  // Deletes a raw metadata key reported by ForEachPage's `bad`.
  absl::Status DeleteRawMeta(std::string_view meta_key);
  // Estimated number of page records (for reserving the page table on rebuild).
  uint64_t EstimatePages();
  // Syncs the segments written since their last sync, then flushes RocksDB's memtables.
  absl::Status Flush();
  // Syncs the segments written since their last sync, then RocksDB's WAL: every batch written
  // before the call is then durable (cheaper than Flush: no memtable flush).
  absl::Status Sync();
  // Rewrites a sealed segment's live pages into the active segment and unlinks it, now (the
  // background compaction does the same for segments deletes queue).
  absl::Status CompactSegment(uint32_t segment);
  // The file system holds only about `limit` bytes of segments: smaller segments from now on,
  // and the active one sealed so that deleting its pages gives its space back.
  void ShrinkSegments(uint64_t limit);
  // A full file system can stop RocksDB itself, and then no page can be deleted to make room. A
  // ballast file (a few MiB allocated at open, <dir>/segments/ballast) is given up on ENOSPC so
  // that deletes go through, and taken again once there is room.
  void ReleaseBallast();
  void RestoreBallast();
  // Waits until the background compaction has nothing queued (tests, benchmarks).
  void WaitForCompactions();
  struct SpaceUsage {
    uint64_t segments = 0;
    uint64_t file_bytes = 0;  // sum of segment file sizes
    uint64_t live_bytes = 0;  // bytes of pages whose metadata points at them
  };
  SpaceUsage Space() const;
  // Bytes an unprivileged writer can still allocate on the file system the segments live on
  // (statvfs; 0 when it cannot be asked).
  uint64_t FileSystemFreeBytes() const;
  // The store's bound on segment file bytes (0: none). Compaction copies a sealed segment's live
  // pages into the active one before it deletes the old file, so for a moment both hold them: it
  // moves a batch only while that fits under the bound and otherwise leaves the segment as it is
  // (its dead space still counts, and the store makes room by dropping its oldest pages).
  void SetDiskLimit(uint64_t bytes) { disk_limit_.store(bytes); }
  // Writes metadata records only (no page bytes; they point into no segment). For benchmarks of
  // rebuild and tests; never used by the store.
  absl::Status WriteMetaOnlyForBench(absl::Span<const SsdPageMeta> metas);

 private:
  SsdTier() = default;
  absl::Status CheckFormat(const std::string& dir, bool existed);
  absl::Status LoadSegments(const std::string& dir);
  absl::Status WriteMeta(rocksdb::WriteBatch* batch, std::string_view what);
  // Appends the bytes, syncs them (through env_ when `via_env`) and commits `batch` (to which the
  // pages' records are added at their locations); takes the bytes back on failure.
  absl::Status AppendAndCommit(absl::Span<const SsdPageMeta> metas,
                               absl::Span<const char* const> bytes, bool via_env,
                               rocksdb::WriteBatch* batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Rewrites a sealed segment's live pages into the active segment, then unlinks it. Reads the
  // old bytes without write_mu_ and takes it per batch of a few MiB only, so writers and deletes
  // wait for at most one batch's append.
  absl::Status Compact(uint32_t segment);
  void CompactionLoop();

  rocksdb::DB* db_ = nullptr;
  rocksdb::ColumnFamilyHandle* meta_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* loc_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  std::unique_ptr<SegmentSet> segments_;
  std::shared_ptr<rocksdb::EventListener> listener_;
  SsdTierOptions options_;
  SsdEnv* env_ = nullptr;
  SsdEnv default_env_;
  bool custom_env_ = false;
  // Serializes everything that appends, repoints or deletes (the store's lock already does; this
  // keeps compaction and accounting correct on their own).
  absl::Mutex write_mu_;
  // Serializes compactions (the background one and CompactSegment).
  absl::Mutex compacting_mu_ ABSL_ACQUIRED_BEFORE(write_mu_);
  // Segments a delete found past compact_dead_fraction, for the compaction thread.
  absl::Mutex compact_mu_;
  absl::flat_hash_set<uint32_t> to_compact_ ABSL_GUARDED_BY(compact_mu_);
  bool stopping_ ABSL_GUARDED_BY(compact_mu_) = false;
  // Await conditions on compact_mu_ (members, so the lock analysis sees what they read).
  bool NoCompactionQueued() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(compact_mu_) {
    return stopping_ || to_compact_.empty();
  }
  bool CompactionQueued() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(compact_mu_) {
    return stopping_ || !to_compact_.empty();
  }
  std::thread compactor_;
  std::string ballast_path_;
  uint64_t ballast_bytes_ = 0;
  std::atomic<uint64_t> disk_limit_{0};
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_SSD_TIER_H_
