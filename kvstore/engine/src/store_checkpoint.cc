// Store: checkpoints, which give every memory-only page a copy on SSD and make the SSD tier
// durable, so that neither a stop nor a crash loses a page committed before them.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "checksum.h"
#include "store_impl.h"

namespace pagoda {
namespace {
// One checkpoint batch carries at most this many page bytes, and at most an eighth of the host
// tier: bounds the pages held unevictable while it is written, and the memory of GPU pages copied
// out for it.
constexpr uint64_t kCheckpointBatchBytes = 4ULL << 20;
// How long room refused because a checkpoint batch holds the pages waits for the batch (4 MiB
// to a device: milliseconds; this bounds a stalled disk's hold on callers).
constexpr absl::Duration kCheckpointWait = absl::Seconds(5);
}  // namespace

void StoreImpl::ChargeCopy(PageEntry& e) {
  e.ssd_copy = true;
  ssd_copy_bytes_ += PageBytes(e);
  ssd_copy_pages_++;
}

void StoreImpl::UnchargeCopy(PageEntry& e) {
  e.ssd_copy = false;
  ssd_copy_bytes_ -= PageBytes(e);
  ssd_copy_pages_--;
}

uint64_t StoreImpl::SsdDiskBytes() const { return std::max(SsdBytes(), ssd_->Space().file_bytes); }

bool StoreImpl::MakeSsdRoom(uint64_t extra) {
  if (ssd_limit_ == 0) return true;
  // When it must drop, it drops down to the low watermark: one batch of deletes, not one per write.
  const uint64_t low = static_cast<uint64_t>(options_.watermarks[static_cast<int>(Tier::kSsd)].low *
                                             static_cast<double>(ssd_limit_));
  // Dropped pages give their space back when their segment empties (or is compacted), so more
  // rounds may be needed; the oldest pages go first, and they fill the oldest segments.
  if (counters_.ssd_full > 0 && SsdDiskBytes() + extra > ssd_limit_) RegrowSsdLimit();
  for (;;) {
    const uint64_t disk = SsdDiskBytes();
    if (disk + extra <= ssd_limit_) return true;
    const uint64_t need = disk + extra - std::min(low, ssd_limit_ - std::min(extra, ssd_limit_));
    const uint64_t now = NowMs();
    std::vector<uint32_t> victims;
    uint64_t freeing = 0;
    for (uint32_t v = table_.Tail(Tier::kSsd); v != kNil && freeing < need; v = table_.Prev(v)) {
      const PageEntry& e = table_.at(v);
      if (Evictable(e, now)) {
        victims.push_back(v);
        freeing += PageBytes(e);
      }
    }
    if (!victims.empty()) {
      EvictBatch(Tier::kSsd, victims).IgnoreError();  // dropping SSD pages cannot fail
      continue;
    }
    // Only copies of memory pages are left to give up (they keep their segments alive): the
    // least recently used first; their pages become memory-only again.
    uint64_t dropped = 0;
    for (Tier t : {Tier::kHost, Tier::kGpu}) {
      for (uint32_t v = table_.Tail(t); v != kNil && dropped < need;) {
        const uint32_t prev = table_.Prev(v);
        PageEntry& e = table_.at(v);
        if (e.ssd_copy && e.state == PageState::kReady) {
          const std::pair<uint32_t, PageKey> k(e.tenant, e.key);
          ssd_->Delete({&k, 1}).IgnoreError();
          dropped += PageBytes(e);
          UnchargeCopy(e);
          dirty_.push_back(EntryRef{v, e.version});
        }
        v = prev;
      }
    }
    if (dropped == 0) break;
  }
  return SsdDiskBytes() + extra <= ssd_limit_;
}

void StoreImpl::LearnSsdFull() {
  const uint64_t files = ssd_->Space().file_bytes;
  const uint64_t fits = files - files / 16;
  ssd_room_at_full_ = files + ssd_->FileSystemFreeBytes();
  ssd_limit_ = ssd_limit_ == 0 ? fits : std::min(ssd_limit_, fits);
  ssd_->ShrinkSegments(ssd_limit_);
  ssd_->SetDiskLimit(ssd_limit_);
  counters_.ssd_full++;
}

void StoreImpl::RegrowSsdLimit() {
  const uint64_t configured = options_.ssd_capacity_bytes;  // 0: unbounded
  if (configured != 0 && ssd_limit_ >= configured) return;
  // What the segments could take now: their files plus the free space. The store's own drops and
  // compactions only move bytes between the two; other users of the file system change the sum.
  const uint64_t could = ssd_->Space().file_bytes + ssd_->FileSystemFreeBytes();
  if (could < ssd_room_at_full_ + ssd_room_at_full_ / 8) return;
  ssd_room_at_full_ = could;
  uint64_t grown = could - could / 16;
  if (configured != 0) grown = std::min(grown, configured);
  if (grown <= ssd_limit_) return;
  ssd_limit_ = grown;
  ssd_->SetDiskLimit(ssd_limit_);
  counters_.ssd_regrown++;
}

absl::Status StoreImpl::WriteSsdBatch(absl::Span<const SsdPageWrite> writes,
                                      absl::Span<const std::pair<uint32_t, std::string>> tenants,
                                      uint64_t bytes) {
  absl::Status s = ssd_->WriteBatch(writes, tenants);
  // A few rounds: space freed by dropped pages may still be held by a compaction or a reader.
  for (int attempt = 0; attempt < 4 && absl::IsResourceExhausted(s); ++attempt) {
    ssd_->ReleaseBallast();            // room for the deletes that make room
    if (attempt == 0) LearnSsdFull();  // once per write: retries must not ratchet it down
    const bool room = MakeSsdRoom(bytes);
    ssd_->RestoreBallast();
    if (!room) return s;
    s = ssd_->WriteBatch(writes, tenants);
  }
  return s;
}

bool StoreImpl::AwaitCheckpointBatches() {
  if (checkpoint_batches_ == 0) return false;
  mu_.AwaitWithTimeout(absl::Condition(this, &StoreImpl::NoCheckpointBatch), kCheckpointWait);
  return true;
}

bool StoreImpl::MakeTenantRoom(uint32_t tenant, Tier t, uint64_t bytes) {
  if (!OverQuota(tenant, t, bytes)) return true;
  const int ti = static_cast<int>(t);
  const uint64_t quota = tenants_[tenant].quota.tier_bytes[ti];
  const uint64_t used = tenants_[tenant].used[ti];
  if (bytes > quota) return false;
  const uint64_t need = used + bytes - quota;
  const uint64_t now = NowMs();
  std::vector<uint32_t> victims;
  uint64_t freeing = 0;
  for (uint32_t v = table_.Tail(t); v != kNil && freeing < need; v = table_.Prev(v)) {
    const PageEntry& e = table_.at(v);
    if (e.tenant == tenant && Evictable(e, now)) {
      victims.push_back(v);
      freeing += PageBytes(e);
    }
  }
  if (freeing < need) return false;
  // A failed demotion (SSD error) leaves the pages where they are: then the quota says no.
  EvictBatch(t, victims).IgnoreError();
  return !OverQuota(tenant, t, bytes);
}

void StoreImpl::PruneDirty() {
  const uint64_t in_memory = pages_[0] + pages_[1];
  if (dirty_.size() <= 2 * in_memory + 4096) return;
  std::deque<EntryRef> kept;
  for (const EntryRef& r : dirty_) {
    const PageEntry& e = table_.at(r.idx);
    if (e.version == r.version && MemoryOnly(e)) kept.push_back(r);
  }
  dirty_.swap(kept);
}

absl::StatusOr<bool> StoreImpl::CheckpointBatch(size_t* budget, CheckpointResult* result) {
  struct Item {
    uint32_t idx;
    uint32_t version;
    std::string gpu_bytes;  // GPU pages are copied out first (the SSD tier writes host memory)
    uint64_t gpu_offset = 0;
  };
  std::vector<Item> items;
  std::vector<SsdPageWrite> writes;
  std::vector<std::pair<uint32_t, std::string>> new_tenants;
  {
    absl::MutexLock lock(&mu_);
    if (*budget == 0 || dirty_.empty()) return false;
    uint64_t bytes = 0;
    const uint64_t max_bytes = std::min(kCheckpointBatchBytes, mem_[1]->capacity_bytes() / 8);
    while (*budget > 0 && !dirty_.empty() && (bytes == 0 || bytes < max_bytes)) {
      const EntryRef r = dirty_.front();
      dirty_.pop_front();
      --*budget;
      PageEntry& e = table_.at(r.idx);
      if (e.version != r.version || !MemoryOnly(e)) continue;
      const uint64_t n = PageBytes(e);
      if (!MakeSsdRoom(bytes + n)) {
        result->pages_skipped++;
        dirty_.push_back(r);  // the next checkpoint tries again
        continue;
      }
      e.readers++;  // neither freed, evicted nor moved while its bytes are written
      Item it{r.idx, r.version, {}, 0};
      if (e.tier == Tier::kGpu) it.gpu_offset = SlotOffset(e);
      SsdPageWrite w;
      w.meta.tenant = e.tenant;
      w.meta.key = e.key;
      w.meta.layout = classes_[e.cls].layout.Id();
      w.meta.size = static_cast<uint32_t>(n);
      w.meta.checksum = e.checksum;
      w.bytes = e.tier == Tier::kHost ? mem_[1]->host_base() + SlotOffset(e) : nullptr;
      items.push_back(std::move(it));
      writes.push_back(w);
      bytes += n;
      const TenantState& t = tenants_[e.tenant];
      if (!t.on_ssd && std::none_of(new_tenants.begin(), new_tenants.end(),
                                    [&](const auto& p) { return p.first == e.tenant; })) {
        new_tenants.emplace_back(e.tenant, t.name);
      }
    }
    if (!items.empty()) ++checkpoint_batches_;
  }
  if (items.empty()) return true;
  // Outside the lock: copy GPU pages out, verify them (a lease may have moved one meanwhile), and
  // write the batch.
  std::vector<bool> skip(items.size(), false);
  for (size_t i = 0; i < items.size(); ++i) {
    if (writes[i].bytes != nullptr) continue;
    Item& it = items[i];
    it.gpu_bytes.resize(writes[i].meta.size);
    if (!mem_[0]->Read(it.gpu_offset, it.gpu_bytes.data(), it.gpu_bytes.size()).ok() ||
        PageChecksum(it.gpu_bytes.data(), it.gpu_bytes.size()) != writes[i].meta.checksum) {
      skip[i] = true;
      continue;
    }
    writes[i].bytes = reinterpret_cast<const uint8_t*>(it.gpu_bytes.data());
  }
  std::vector<SsdPageWrite> to_write;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!skip[i]) to_write.push_back(writes[i]);
  }
  absl::Status written = ssd_->WriteBatch(to_write, new_tenants);
  absl::MutexLock lock(&mu_);
  const bool disk_full = absl::IsResourceExhausted(written);
  if (written.ok()) {
    for (const auto& p : new_tenants) tenants_[p.first].on_ssd = true;
  } else if (disk_full) {
    // The file system filled before the SSD capacity: lower the limit, make room, and leave these
    // pages for the next batch or checkpoint.
    ssd_->ReleaseBallast();
    LearnSsdFull();
    MakeSsdRoom(0);
    ssd_->RestoreBallast();
    result->pages_skipped += items.size();
  } else {
    counters_.ssd_write_failures++;
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const uint32_t idx = items[i].idx;
    PageEntry& e = table_.at(idx);
    if (!written.ok() || skip[i]) {
      if (e.state == PageState::kReady) dirty_.push_back(EntryRef{idx, e.version});
    } else if (e.state == PageState::kReady) {
      ChargeCopy(e);
      result->pages_written++;
    } else if (e.state == PageState::kDoomed) {
      // Removed while written: the record just written must not bring it back after a restart,
      // unless a new page of the key has a record of its own by now (whose bytes are then either
      // its own or these, and reads check them against its checksum).
      const uint32_t now = table_.Find(e.tenant, e.key);
      if (now == kNil || (table_.at(now).tier != Tier::kSsd && !table_.at(now).ssd_copy)) {
        const std::pair<uint32_t, PageKey> k(e.tenant, e.key);
        ssd_->Delete({&k, 1}).IgnoreError();
      }
    }
    EndRead(idx);
  }
  --checkpoint_batches_;
  if (!written.ok() && !disk_full) return written;
  return true;
}

absl::StatusOr<CheckpointResult> StoreImpl::Checkpoint() {
  CheckpointResult result;
  if (ssd_ == nullptr) return result;
  absl::MutexLock cp(&checkpoint_mu_);
  size_t budget = 0;
  absl::Time start;
  {
    absl::MutexLock lock(&mu_);
    start = absl::Now();
    budget = dirty_.size();  // pages committed after this point are the next checkpoint's
  }
  absl::Status status;
  for (;;) {
    absl::StatusOr<bool> more = CheckpointBatch(&budget, &result);
    if (!more.ok()) {
      status = more.status();
      break;
    }
    if (!*more) break;
  }
  // Also covers pages demoted since the last sync: their bytes, then the WAL with their records.
  if (status.ok()) status = ssd_->Sync();
  absl::MutexLock lock(&mu_);
  if (!status.ok()) {
    counters_.checkpoint_failures++;
    return status;
  }
  counters_.checkpoints++;
  if (result.pages_skipped == 0) last_checkpoint_start_ = start;
  return result;
}

void StoreImpl::CheckpointLoop() {
  absl::MutexLock l(&loop_mu_);
  for (;;) {
    const absl::Condition stop(
        +[](bool* stopping) { return *stopping; }, &stopping_);
    if (loop_mu_.AwaitWithTimeout(stop, options_.checkpoint_interval)) return;
    loop_mu_.Unlock();
    // A failure is counted (Stats().checkpoint_failures); its pages stay dirty for the next round.
    Checkpoint().IgnoreError();
    loop_mu_.Lock();
  }
}

}  // namespace pagoda
