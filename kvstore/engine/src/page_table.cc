#include "page_table.h"

namespace pagoda {

PageTable::PageTable() : index_(0, Hash{&slab_}, Eq{&slab_}) {
  for (int t = 0; t < kNumTiers; ++t) head_[t] = tail_[t] = kNil;
}

uint32_t PageTable::Find(uint32_t tenant, const PageKey& key) const {
  auto it = index_.find(Lookup{tenant, key});
  return it == index_.end() ? kNil : *it;
}

uint32_t PageTable::Insert(uint32_t tenant, const PageKey& key) {
  uint32_t idx;
  if (free_head_ != kNil) {
    idx = free_head_;
    free_head_ = slab_[idx].next;
  } else {
    idx = static_cast<uint32_t>(slab_.size());
    slab_.emplace_back();
  }
  PageEntry& e = slab_[idx];
  const uint32_t version = e.version + 1;
  e = PageEntry();
  e.version = version;
  e.key = key;
  e.tenant = tenant;
  e.state = PageState::kWriting;
  index_.insert(idx);
  return idx;
}

void PageTable::Unindex(uint32_t idx) { index_.erase(idx); }

void PageTable::Release(uint32_t idx) {
  PageEntry& e = slab_[idx];
  if (e.linked) Unlink(idx);
  auto it = index_.find(idx);
  if (it != index_.end()) index_.erase(it);
  const uint32_t version = e.version + 1;
  e = PageEntry();
  e.version = version;
  e.state = PageState::kFree;
  e.next = free_head_;
  free_head_ = idx;
}

void PageTable::LinkFront(uint32_t idx) {
  PageEntry& e = slab_[idx];
  const int t = static_cast<int>(e.tier);
  e.prev = kNil;
  e.next = head_[t];
  if (head_[t] != kNil) slab_[head_[t]].prev = idx;
  head_[t] = idx;
  if (tail_[t] == kNil) tail_[t] = idx;
  e.linked = true;
}

void PageTable::Unlink(uint32_t idx) {
  PageEntry& e = slab_[idx];
  const int t = static_cast<int>(e.tier);
  if (e.prev != kNil) {
    slab_[e.prev].next = e.next;
  } else {
    head_[t] = e.next;
  }
  if (e.next != kNil) {
    slab_[e.next].prev = e.prev;
  } else {
    tail_[t] = e.prev;
  }
  e.prev = e.next = kNil;
  e.linked = false;
}

void PageTable::Touch(uint32_t idx) {
  if (!slab_[idx].linked) return;
  if (head_[static_cast<int>(slab_[idx].tier)] == idx) return;
  Unlink(idx);
  LinkFront(idx);
}

void PageTable::Reserve(size_t n) {
  slab_.reserve(n);
  index_.reserve(n);
}

uint64_t PageTable::MetadataBytes() const {
  // flat_hash_set: one control byte per slot (plus a group of cloned bytes) and the slot itself.
  const uint64_t index_bytes = index_.capacity() * (sizeof(uint32_t) + 1) + 16;
  return sizeof(*this) + slab_.capacity() * sizeof(PageEntry) + index_bytes;
}

}  // namespace pagoda
