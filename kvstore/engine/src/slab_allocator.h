// Fixed-slot allocation inside one memory tier: the tier's bytes are cut into equal segments, a
// segment is given to one slot class on demand and cut into that class's slots.
//
// A class belongs to an owner (the host tier: a tenant; the GPU tier: everyone, owner 0): a
// segment holds slots of one class, hence of one owner, so the host tier can back each segment
// with its owner's own memory (a client maps only its own tenant's bytes). A segment whose last
// slot is freed stays with its class while free segments remain, and goes to another class when
// none does, so capacity flows between owners and page sizes.
//
// Thread safety: none; the store calls it with its lock held.
#ifndef PAGODA_KVSTORE_SLAB_ALLOCATOR_H_
#define PAGODA_KVSTORE_SLAB_ALLOCATOR_H_

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pagoda {

class SlabAllocator {
 public:
  // Slots start at multiples of this many bytes; offsets are stored as 32-bit slot numbers.
  static constexpr uint64_t kSlotAlign = 256;

  // What happens to a segment's bytes when it changes owner.
  struct SegmentHooks {
    // Runs before the first slot of [offset, offset + bytes) goes to `owner`. An error fails the
    // Allocate that needed the segment (as Internal); the segment stays free.
    std::function<absl::Status(uint64_t offset, uint64_t bytes, uint32_t owner)> assign;
    // Runs when an empty segment leaves `owner` (before `assign` gives it to the next one).
    std::function<void(uint64_t offset, uint64_t bytes, uint32_t owner)> release;
    // Asked before an empty segment of another class is taken; false keeps every segment with
    // its owner for now (the Allocate that needed one fails with Unavailable). When it returns
    // true, `release` runs next for the segment taken.
    std::function<bool()> may_reclaim;
  };

  // `segment_bytes` is rounded down to kSlotAlign; capacity / segment_bytes segments exist (one
  // holding `capacity_bytes` of slots when the capacity is below one segment).
  SlabAllocator(uint64_t capacity_bytes, uint64_t segment_bytes, SegmentHooks hooks = {});

  // The class of `owner` whose slots hold `slot_bytes` (rounded up to kSlotAlign), added on first
  // use. A class whose slot exceeds a segment can never allocate.
  int ClassFor(uint32_t owner, uint64_t slot_bytes);

  // Offset in bytes of a free slot of `cls`: from a segment of the class, else a free segment,
  // else an empty segment of another class. ResourceExhausted when none exists (the caller
  // evicts and retries); Unavailable when may_reclaim kept the empty ones where they are (only
  // evicting the class's own pages can help); Internal when the assign hook failed.
  absl::StatusOr<uint64_t> Allocate(int cls);
  // Gives one free segment to `cls` ahead of demand: the assign hook runs now instead of inside
  // a later Allocate, and the segment's slots wait in the class. False when no segment is free
  // (segments other classes hold are never taken here); Internal when the assign hook failed.
  absl::StatusOr<bool> Prepare(int cls);
  // Returns a slot obtained from Allocate.
  void Free(uint64_t offset);

  // The class whose segment holds `offset` (-1: a free segment), the segment's index and how
  // many of its slots are allocated.
  int ClassOf(uint64_t offset) const { return segments_[SegmentOf(offset)].cls; }
  uint32_t SegmentOf(uint64_t offset) const {
    return static_cast<uint32_t>(offset / segment_bytes_);
  }
  uint32_t SegmentUsed(uint32_t segment) const { return segments_[segment].used; }

  uint64_t slot_bytes(int cls) const { return classes_[cls].slot_bytes; }
  uint32_t owner(int cls) const { return classes_[cls].owner; }
  uint64_t segment_bytes() const { return segment_bytes_; }
  // Segments given to no class.
  size_t free_segments() const { return free_segments_.size(); }
  size_t num_classes() const { return classes_.size(); }
  // Memory this allocator uses for its own bookkeeping.
  uint64_t MetadataBytes() const;

 private:
  struct Segment {
    int cls = -1;       // -1: free
    uint32_t used = 0;  // allocated slots
    int32_t pos = -1;   // index in its class's `partial` (used > 0) or `empty` list, else -1
    std::vector<uint32_t> free_slots;  // slot numbers (offset / kSlotAlign)
  };
  struct SlotClass {
    uint32_t owner = 0;
    uint64_t slot_bytes = 0;
    std::vector<uint32_t> partial;  // segments with allocated and free slots
    std::vector<uint32_t> empty;    // segments with no allocated slot
  };
  std::vector<uint32_t>& ListOf(uint32_t seg);
  void Unlist(uint32_t seg);
  void List(uint32_t seg);
  // Gives a free segment to `cls` (assign hook, slots cut). The segment must be free.
  absl::Status Assign(uint32_t seg, int cls);
  // Takes an empty segment away from its class (release hook); it becomes free.
  void Reclaim(uint32_t seg);

  uint64_t segment_bytes_;
  uint64_t slot_area_;  // bytes of a segment cut into slots (< segment_bytes_ for a tiny tier)
  SegmentHooks hooks_;
  std::vector<Segment> segments_;
  std::vector<uint32_t> free_segments_;  // segment indexes
  std::vector<SlotClass> classes_;
  absl::flat_hash_map<std::pair<uint32_t, uint64_t>, int> class_index_;  // (owner, slot bytes)
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_SLAB_ALLOCATOR_H_
