#include "slab_allocator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace pagoda {

SlabAllocator::SlabAllocator(uint64_t capacity_bytes, uint64_t segment_bytes, SegmentHooks hooks)
    : segment_bytes_(segment_bytes / kSlotAlign * kSlotAlign),
      slot_area_(std::min(segment_bytes_, capacity_bytes)),
      hooks_(std::move(hooks)) {
  if (segment_bytes_ == 0 || capacity_bytes == 0) return;
  const uint64_t n = std::max<uint64_t>(1, capacity_bytes / segment_bytes_);
  segments_.resize(n);
  free_segments_.reserve(n);
  // Hand out low segments first (pop_back takes the last element).
  for (uint64_t i = n; i > 0; --i) free_segments_.push_back(static_cast<uint32_t>(i - 1));
}

int SlabAllocator::ClassFor(uint32_t owner, uint64_t slot_bytes) {
  const uint64_t rounded = (slot_bytes + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
  auto [it, added] = class_index_.try_emplace({owner, rounded}, static_cast<int>(classes_.size()));
  if (added) {
    SlotClass c;
    c.owner = owner;
    c.slot_bytes = rounded;
    classes_.push_back(std::move(c));
  }
  return it->second;
}

std::vector<uint32_t>& SlabAllocator::ListOf(uint32_t seg) {
  SlotClass& c = classes_[segments_[seg].cls];
  return segments_[seg].used == 0 ? c.empty : c.partial;
}

void SlabAllocator::Unlist(uint32_t seg) {
  Segment& s = segments_[seg];
  if (s.pos < 0) return;
  std::vector<uint32_t>& list = ListOf(seg);
  const uint32_t last = list.back();
  list[s.pos] = last;
  segments_[last].pos = s.pos;
  list.pop_back();
  s.pos = -1;
}

void SlabAllocator::List(uint32_t seg) {
  Segment& s = segments_[seg];
  if (s.free_slots.empty()) return;  // full: on no list
  std::vector<uint32_t>& list = ListOf(seg);
  s.pos = static_cast<int32_t>(list.size());
  list.push_back(seg);
}

absl::Status SlabAllocator::Assign(uint32_t seg, int cls) {
  const SlotClass& c = classes_[cls];
  const uint64_t base = uint64_t{seg} * segment_bytes_;
  if (hooks_.assign) {
    if (absl::Status s = hooks_.assign(base, segment_bytes_, c.owner); !s.ok()) {
      return absl::InternalError(absl::StrCat("segment of memory tier: ", s.message()));
    }
  }
  Segment& s = segments_[seg];
  s.cls = cls;
  s.used = 0;
  const uint64_t per_segment = slot_area_ / c.slot_bytes;
  s.free_slots.clear();
  s.free_slots.reserve(per_segment);
  // Push in reverse so that slots are handed out in address order.
  for (uint64_t i = per_segment; i > 0; --i) {
    s.free_slots.push_back(static_cast<uint32_t>((base + (i - 1) * c.slot_bytes) / kSlotAlign));
  }
  List(seg);
  return absl::OkStatus();
}

void SlabAllocator::Reclaim(uint32_t seg) {
  Unlist(seg);
  Segment& s = segments_[seg];
  const uint32_t owner = classes_[s.cls].owner;
  s.cls = -1;
  s.free_slots.clear();
  s.free_slots.shrink_to_fit();
  if (hooks_.release) hooks_.release(uint64_t{seg} * segment_bytes_, segment_bytes_, owner);
  free_segments_.push_back(seg);
}

absl::StatusOr<uint64_t> SlabAllocator::Allocate(int cls) {
  SlotClass& c = classes_[cls];
  if (c.slot_bytes == 0 || c.slot_bytes > slot_area_) {
    return absl::ResourceExhaustedError("slot larger than a segment");
  }
  uint32_t seg;
  if (!c.partial.empty()) {
    seg = c.partial.back();
  } else if (!c.empty.empty()) {
    seg = c.empty.back();
  } else {
    if (free_segments_.empty()) {
      // Take an empty segment of another class (any owner, any page size).
      for (SlotClass& other : classes_) {
        if (other.empty.empty()) continue;
        if (hooks_.may_reclaim && !hooks_.may_reclaim()) {
          return absl::UnavailableError("no free segment; the empty ones may not change owner now");
        }
        Reclaim(other.empty.back());
        break;
      }
    }
    if (free_segments_.empty()) return absl::ResourceExhaustedError("no free segment");
    seg = free_segments_.back();
    free_segments_.pop_back();
    if (absl::Status s = Assign(seg, cls); !s.ok()) {
      free_segments_.push_back(seg);
      return s;
    }
  }
  Unlist(seg);
  Segment& s = segments_[seg];
  const uint64_t slot = s.free_slots.back();
  s.free_slots.pop_back();
  s.used++;
  List(seg);
  return slot * kSlotAlign;
}

absl::StatusOr<bool> SlabAllocator::Prepare(int cls) {
  const SlotClass& c = classes_[cls];
  if (c.slot_bytes == 0 || c.slot_bytes > slot_area_ || free_segments_.empty()) return false;
  const uint32_t seg = free_segments_.back();
  free_segments_.pop_back();
  if (absl::Status s = Assign(seg, cls); !s.ok()) {
    free_segments_.push_back(seg);
    return s;
  }
  return true;
}

void SlabAllocator::Free(uint64_t offset) {
  const uint32_t seg = SegmentOf(offset);
  Unlist(seg);
  Segment& s = segments_[seg];
  s.free_slots.push_back(static_cast<uint32_t>(offset / kSlotAlign));
  s.used--;
  List(seg);
}

uint64_t SlabAllocator::MetadataBytes() const {
  uint64_t b = sizeof(*this) + free_segments_.capacity() * sizeof(uint32_t) +
               segments_.capacity() * sizeof(Segment) +
               class_index_.capacity() * (sizeof(std::pair<uint32_t, uint64_t>) + sizeof(int));
  for (const Segment& s : segments_) b += s.free_slots.capacity() * sizeof(uint32_t);
  for (const SlotClass& c : classes_) {
    b += sizeof(c) + (c.partial.capacity() + c.empty.capacity()) * sizeof(uint32_t);
  }
  return b;
}

}  // namespace pagoda
