#include "slab_allocator.h"

namespace pagoda {

SlabAllocator::SlabAllocator(uint64_t capacity_bytes, uint64_t segment_bytes)
    : segment_bytes_(segment_bytes / kSlotAlign * kSlotAlign) {
  if (segment_bytes_ == 0) return;
  const uint64_t n = capacity_bytes / segment_bytes_;
  free_segments_.reserve(n);
  // Hand out low segments first (pop_back takes the last element).
  for (uint64_t i = n; i > 0; --i) free_segments_.push_back(static_cast<uint32_t>(i - 1));
}

int SlabAllocator::AddClass(uint64_t slot_bytes) {
  SlotClass c;
  c.slot_bytes = (slot_bytes + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
  classes_.push_back(std::move(c));
  return static_cast<int>(classes_.size() - 1);
}

std::optional<uint64_t> SlabAllocator::Allocate(int cls) {
  SlotClass& c = classes_[cls];
  if (c.free_slots.empty()) {
    if (free_segments_.empty() || c.slot_bytes > segment_bytes_ || c.slot_bytes == 0) {
      return std::nullopt;
    }
    const uint64_t seg = free_segments_.back();
    free_segments_.pop_back();
    const uint64_t per_segment = segment_bytes_ / c.slot_bytes;
    const uint64_t base = seg * segment_bytes_;
    // Push in reverse so that slots are handed out in address order.
    for (uint64_t i = per_segment; i > 0; --i) {
      c.free_slots.push_back(static_cast<uint32_t>((base + (i - 1) * c.slot_bytes) / kSlotAlign));
    }
  }
  const uint64_t slot = c.free_slots.back();
  c.free_slots.pop_back();
  return slot * kSlotAlign;
}

void SlabAllocator::Free(int cls, uint64_t offset) {
  classes_[cls].free_slots.push_back(static_cast<uint32_t>(offset / kSlotAlign));
}

uint64_t SlabAllocator::MetadataBytes() const {
  uint64_t b = sizeof(*this) + free_segments_.capacity() * sizeof(uint32_t);
  for (const SlotClass& c : classes_) b += sizeof(c) + c.free_slots.capacity() * sizeof(uint32_t);
  return b;
}

}  // namespace pagoda
