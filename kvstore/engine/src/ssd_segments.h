// Append-only segment files holding the SSD tier's page bytes: <dir>/<id>.seg, one active segment
// that batches are appended to, the rest sealed. A segment's bytes are never rewritten in place;
// space comes back by unlinking a whole segment (once nothing lives in it, or after compaction
// moved its live pages out).
//
// The set knows each segment's size and live bytes, nothing per page: which page lives where is
// the SSD tier's metadata (RocksDB), and a segment's live bytes are rebuilt from it at open.
//
// Thread safety: Read() and Find() may run concurrently with everything else. Appends, truncation,
// accounting and removal must come from one thread at a time (the SSD tier serializes them). A
// segment removed while a read holds it stays readable until that read ends (its descriptor closes
// with the last reference).
#ifndef PAGODA_KVSTORE_SSD_SEGMENTS_H_
#define PAGODA_KVSTORE_SSD_SEGMENTS_H_

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace pagoda {

struct SegmentLocation {
  uint32_t segment = 0;  // 0 is never a segment id
  uint32_t offset = 0;
};

class SegmentSet {
 public:
  struct Usage {
    uint64_t segments = 0;
    uint64_t file_bytes = 0;
    uint64_t live_bytes = 0;
  };

  // Opens <dir> (created if missing). With `direct_writes`, batches whose buffers, lengths and
  // offset are 4 KiB-aligned are written with O_DIRECT (others, and file systems without it,
  // buffered). `live` maps segment id -> live bytes, as the metadata says;
  // segment files it does not name are deleted (bytes whose metadata never committed), the rest
  // are opened sealed. Appends go to a new segment whose id is above every id seen.
  static absl::StatusOr<std::unique_ptr<SegmentSet>> Open(
      const std::string& dir, uint64_t segment_bytes, bool direct_writes,
      const absl::flat_hash_map<uint32_t, uint64_t>& live);
  ~SegmentSet();

  // Appends `total` bytes (the iovecs, in order) at the tail of the active segment, starting a new
  // one when the batch would not fit in segment_bytes (a batch is never split; a segment exceeds
  // segment_bytes by at most one batch). One pwritev per IOV_MAX pages. The tail is padded to a
  // 4 KiB multiple (dead bytes) so that every batch starts aligned. On any failure (short
  // write, ENOSPC, EFBIG) the segment is truncated back to its previous tail and the error
  // returned: nothing of the batch remains.
  absl::StatusOr<SegmentLocation> Append(absl::Span<const iovec> iov, uint64_t total);
  // Takes back a batch appended at `at` whose metadata did not commit: truncates the segment to
  // at.offset, or, when it cannot, seals it so those offsets are never reused.
  void TakeBack(SegmentLocation at);
  // Seals the active segment after a failure after which its tail cannot be trusted.
  void SealActive();
  // Segments started from now on hold about `bytes`; seals the active segment (unlinking it when
  // nothing lives in it), so that its space comes back once its pages are deleted.
  void ShrinkSegments(uint64_t bytes);
  // fdatasync of one segment / of every segment written since its last sync.
  absl::Status Sync(uint32_t segment);
  absl::Status SyncAll();

  // Reads exactly out->size() bytes at `at`. NotFound when the segment is not in the set; DataLoss
  // when the file ends before the range does.
  absl::Status Read(SegmentLocation at, char* out, size_t size) const;
  // The same answers as Read for a range, without reading: lets a caller refuse a corrupt record's
  // size before allocating a buffer for it.
  absl::Status CheckRange(SegmentLocation at, uint64_t size) const;
  bool Has(uint32_t segment) const;

  void AddLive(uint32_t segment, uint64_t bytes);
  // Returns true when `segment` is now sealed with no live bytes (the caller removes it).
  bool SubLive(uint32_t segment, uint64_t bytes);
  // Fraction of a sealed segment's file that no page refers to; 0 for the active segment and for
  // segments not in the set.
  double DeadFraction(uint32_t segment) const;
  // Unlinks a segment's file and forgets it.
  void Remove(uint32_t segment);
  Usage GetUsage() const;
  uint32_t active() const;

 private:
  struct Segment;
  SegmentSet(std::string dir, uint64_t segment_bytes, bool direct_writes)
      : dir_(std::move(dir)), segment_bytes_(segment_bytes), direct_writes_(direct_writes) {}
  std::string PathOf(uint32_t id) const;
  absl::Status StartSegment() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<Segment> Find(uint32_t id) const;

  const std::string dir_;
  uint64_t segment_bytes_ ABSL_GUARDED_BY(mu_);
  const bool direct_writes_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint32_t, std::shared_ptr<Segment>> segments_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Segment> active_ ABSL_GUARDED_BY(mu_);
  uint32_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_SSD_SEGMENTS_H_
