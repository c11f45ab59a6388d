#include "head_pool.h"

namespace pagoda::worker_internal {

HeadPool::HeadPool(int kv_heads, int32_t slots)
    : slots_(slots), subs_(kv_heads), owned_(kv_heads, 0), held_(kv_heads, 0) {
  for (Sub& sub : subs_) {
    sub.hot.resize(slots);
    sub.cold.resize(slots);
    sub.free.reserve(slots);
    for (int32_t s = slots - 1; s >= 0; --s) sub.free.push_back(s);
  }
}

int32_t HeadPool::Find(const PageKey& key, int head, uint64_t epoch, int32_t row) {
  Sub& sub = subs_[head];
  auto it = sub.cached.find(key);
  if (it == sub.cached.end()) return -1;
  Use(head, it->second, epoch, row);
  return it->second;
}

int32_t HeadPool::TakeFree(Sub& sub, uint64_t epoch) {
  if (!sub.free.empty()) {
    const int32_t s = sub.free.back();
    sub.free.pop_back();
    return s;
  }
  // CLOCK: the hand passes over owned slots and those used in this epoch, gives referenced ones
  // a second chance, and takes the first cached slot not used since it last passed. Two turns
  // clear every reference bit, so finding none then means every cached slot is in use.
  for (int64_t n = 0; n < 2 * int64_t{slots_}; ++n) {
    const int32_t s = sub.hand;
    sub.hand = sub.hand + 1 == slots_ ? 0 : sub.hand + 1;
    if (sub.cold[s].state != State::kCached || sub.hot[s].epoch == epoch || sub.cold[s].holds > 0) {
      continue;
    }
    if (sub.hot[s].referenced) {
      sub.hot[s].referenced = 0;
      continue;
    }
    sub.cached.erase(sub.cold[s].key);
    sub.cold[s].state = State::kFree;
    Renew(sub, s);
    ++sub.evictions;
    ++sub.lost;
    return s;
  }
  return -1;
}

int32_t HeadPool::Insert(const PageKey& key, int head, uint64_t epoch, int32_t row) {
  Sub& sub = subs_[head];
  const int32_t s = TakeFree(sub, epoch);
  if (s < 0) return -1;
  sub.cold[s] = {State::kCached, key};
  Renew(sub, s);
  sub.hot[s].epoch = epoch;
  sub.hot[s].first_row = static_cast<int16_t>(row > kMaxRow ? -1 : row);
  sub.hot[s].referenced = 0;
  sub.cached[key] = s;
  return s;
}

void HeadPool::Forget(const PageKey& key, int head) {
  Sub& sub = subs_[head];
  ++sub.lost;  // even when nothing goes: a row's memo of the page must not outlive this call
  auto it = sub.cached.find(key);
  if (it == sub.cached.end()) return;
  const int32_t s = it->second;
  if (sub.cold[s].holds > 0) return;  // held copies were verified when they came in
  sub.cached.erase(it);
  sub.cold[s].state = State::kFree;
  Renew(sub, s);
  sub.free.push_back(s);
}

bool HeadPool::Hold(int head, int32_t slot) {
  Sub& sub = subs_[head];
  if (slot < 0 || slot >= slots_ || sub.cold[slot].state != State::kCached) return false;
  if (sub.cold[slot].holds++ == 0) ++held_[head];
  return true;
}

void HeadPool::Unhold(int head, int32_t slot) {
  Sub& sub = subs_[head];
  if (slot < 0 || slot >= slots_ || sub.cold[slot].holds == 0) return;
  if (--sub.cold[slot].holds == 0) --held_[head];
}

int32_t HeadPool::AllocOwned(int head, uint64_t epoch) {
  Sub& sub = subs_[head];
  const int32_t s = TakeFree(sub, epoch);
  if (s < 0) return -1;
  sub.cold[s].state = State::kOwned;
  Renew(sub, s);
  ++owned_[head];
  return s;
}

void HeadPool::ReleaseOwned(int head, int32_t slot) {
  Sub& sub = subs_[head];
  if (slot < 0 || sub.cold[slot].state != State::kOwned) return;
  sub.cold[slot].state = State::kFree;
  Renew(sub, slot);
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
  sub.cold[slot] = {State::kCached, key};
  Renew(sub, slot);
  sub.hot[slot].epoch = epoch;
  sub.hot[slot].first_row = -1;
  sub.hot[slot].referenced = 1;
  --owned_[head];
  sub.cached[key] = slot;
  return slot;
}

int64_t HeadPool::evictions() const {
  int64_t n = 0;
  for (const Sub& sub : subs_) n += sub.evictions;
  return n;
}

int64_t HeadPool::shared() const {
  int64_t n = 0;
  for (const Sub& sub : subs_) n += sub.shared;
  return n;
}

int64_t HeadPool::used() const {
  int64_t n = 0;
  for (const Sub& sub : subs_) n += slots_ - static_cast<int64_t>(sub.free.size());
  return n;
}

}  // namespace pagoda::worker_internal
