// Fixed-slot allocation inside one memory tier: the tier's bytes are cut into equal segments, a
// segment is given to one slot class on demand and cut into that class's slots.
//
// Thread safety: none; the store calls it with its lock held.
#ifndef PAGODA_KVSTORE_SLAB_ALLOCATOR_H_
#define PAGODA_KVSTORE_SLAB_ALLOCATOR_H_

#include <cstdint>
#include <optional>
#include <vector>

namespace pagoda {

class SlabAllocator {
 public:
  // Slots start at multiples of this many bytes; offsets are stored as 32-bit slot numbers.
  static constexpr uint64_t kSlotAlign = 256;

  // `segment_bytes` is rounded down to kSlotAlign; capacity / segment_bytes segments exist.
  SlabAllocator(uint64_t capacity_bytes, uint64_t segment_bytes);

  // Adds a slot class whose slots hold `slot_bytes` (rounded up to kSlotAlign); returns its index.
  // A class whose slot exceeds a segment can never allocate.
  int AddClass(uint64_t slot_bytes);

  // Offset in bytes of a free slot of `cls`, taking a free segment when the class has no free
  // slot. nullopt when neither exists.
  std::optional<uint64_t> Allocate(int cls);
  // Returns a slot obtained from Allocate(cls).
  void Free(int cls, uint64_t offset);

  uint64_t slot_bytes(int cls) const { return classes_[cls].slot_bytes; }
  uint64_t segment_bytes() const { return segment_bytes_; }
  size_t free_segments() const { return free_segments_.size(); }
  size_t num_classes() const { return classes_.size(); }
  // Memory this allocator uses for its own bookkeeping.
  uint64_t MetadataBytes() const;

 private:
  struct SlotClass {
    uint64_t slot_bytes = 0;
    std::vector<uint32_t> free_slots;  // slot numbers (offset / kSlotAlign)
  };
  uint64_t segment_bytes_;
  std::vector<uint32_t> free_segments_;  // segment indexes
  std::vector<SlotClass> classes_;
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_SLAB_ALLOCATOR_H_
