#include "head_pool.h"

namespace pagoda::worker_internal {

HeadPool::HeadPool(int kv_heads, int32_t slots)
    : slots_(slots), subs_(kv_heads), owned_(kv_heads, 0) {
  for (Sub& sub : subs_) {
    sub.slots.resize(slots);
    sub.free.reserve(slots);
    for (int32_t s = slots - 1; s >= 0; --s) sub.free.push_back(s);
  }
}

void HeadPool::Unlink(Sub& sub, int32_t s) {
  Slot& x = sub.slots[s];
  (x.prev >= 0 ? sub.slots[x.prev].next : sub.lru) = x.next;
  (x.next >= 0 ? sub.slots[x.next].prev : sub.mru) = x.prev;
  x.prev = x.next = -1;
}

void HeadPool::PushMru(Sub& sub, int32_t s) {
  Slot& x = sub.slots[s];
  x.prev = sub.mru;
  x.next = -1;
  (sub.mru >= 0 ? sub.slots[sub.mru].next : sub.lru) = s;
  sub.mru = s;
}

int32_t HeadPool::Find(const PageKey& key, int head, uint64_t epoch) {
  Sub& sub = subs_[head];
  auto it = sub.cached.find(key);
  if (it == sub.cached.end()) return -1;
  const int32_t s = it->second;
  sub.slots[s].epoch = epoch;
  Unlink(sub, s);
  PushMru(sub, s);
  return s;
}

int32_t HeadPool::Touch(const PageKey& key, int head, int32_t slot, uint64_t epoch) {
  Sub& sub = subs_[head];
  if (slot < 0 || slot >= slots_) return -1;
  Slot& x = sub.slots[slot];
  if (x.state != State::kCached || !(x.key == key)) return -1;
  if (x.epoch != epoch) {
    x.epoch = epoch;
    Unlink(sub, slot);
    PushMru(sub, slot);
  }
  return slot;
}

int32_t HeadPool::TakeFree(Sub& sub, uint64_t epoch) {
  if (!sub.free.empty()) {
    const int32_t s = sub.free.back();
    sub.free.pop_back();
    return s;
  }
  // Touched slots move to the MRU end, so if the LRU one was used in this epoch, all were.
  const int32_t victim = sub.lru;
  if (victim < 0 || sub.slots[victim].epoch == epoch) return -1;
  Unlink(sub, victim);
  sub.cached.erase(sub.slots[victim].key);
  sub.slots[victim].state = State::kFree;
  ++evictions_;
  return victim;
}

int32_t HeadPool::Insert(const PageKey& key, int head, uint64_t epoch) {
  Sub& sub = subs_[head];
  const int32_t s = TakeFree(sub, epoch);
  if (s < 0) return -1;
  Slot& x = sub.slots[s];
  x.state = State::kCached;
  x.key = key;
  x.epoch = epoch;
  sub.cached[key] = s;
  PushMru(sub, s);
  return s;
}

void HeadPool::Forget(const PageKey& key, int head) {
  Sub& sub = subs_[head];
  auto it = sub.cached.find(key);
  if (it == sub.cached.end()) return;
  const int32_t s = it->second;
  sub.cached.erase(it);
  Unlink(sub, s);
  sub.slots[s].state = State::kFree;
  sub.free.push_back(s);
}

int32_t HeadPool::AllocOwned(int head, uint64_t epoch) {
  Sub& sub = subs_[head];
  const int32_t s = TakeFree(sub, epoch);
  if (s < 0) return -1;
  sub.slots[s].state = State::kOwned;
  ++owned_[head];
  return s;
}

void HeadPool::ReleaseOwned(int head, int32_t slot) {
  Sub& sub = subs_[head];
  if (slot < 0 || sub.slots[slot].state != State::kOwned) return;
  sub.slots[slot].state = State::kFree;
  sub.free.push_back(slot);
  --owned_[head];
}

int32_t HeadPool::Adopt(int head, int32_t slot, const PageKey& key, uint64_t epoch) {
  Sub& sub = subs_[head];
  auto it = sub.cached.find(key);
  if (it != sub.cached.end()) {
    ReleaseOwned(head, slot);
    return Find(key, head, epoch);
  }
  Slot& x = sub.slots[slot];
  x.state = State::kCached;
  x.key = key;
  x.epoch = epoch;
  --owned_[head];
  sub.cached[key] = slot;
  PushMru(sub, slot);
  return slot;
}

int64_t HeadPool::used() const {
  int64_t n = 0;
  for (const Sub& sub : subs_) n += slots_ - static_cast<int64_t>(sub.free.size());
  return n;
}

}  // namespace pagoda::worker_internal
