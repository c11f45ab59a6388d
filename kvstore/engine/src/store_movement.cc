// Store: slot allocation, eviction under watermarks, demotion and promotion between tiers.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "store_impl.h"

namespace pagoda {
namespace {
// One SSD write batch carries at most this many page bytes (bounds the memory of a batch).
constexpr uint64_t kMaxBatchBytes = 4ULL << 20;
}  // namespace

bool StoreImpl::Evictable(const PageEntry& e, uint64_t now_ms) const {
  return e.state == PageState::kReady && e.pins == 0 && e.readers == 0 &&
         (e.leases == 0 || e.lease_deadline_ms <= now_ms);
}

absl::StatusOr<uint64_t> StoreImpl::AllocateSlot(Tier t, int cls, uint32_t tenant) {
  SlabAllocator& alloc = *alloc_[MemIndex(t)];
  // The GPU tier is never mapped by clients: its slots need no owner.
  const int ac = alloc.ClassFor(t == Tier::kHost ? tenant : 0, classes_[cls].bytes);
  for (;;) {
    absl::StatusOr<uint64_t> off = alloc.Allocate(ac);
    // Unavailable: segments may not change owner now (a lease-free reader holds the arena), so
    // only the class's own pages can make room.
    const bool own_only = absl::IsUnavailable(off.status());
    if (off.ok() || !(absl::IsResourceExhausted(off.status()) || own_only)) return off;
    const std::vector<uint32_t> victims = SlotVictims(t, ac, own_only);
    if (victims.empty()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s tier is full for layout %s: every page is pinned, leased or being read%s",
          TierName(t), classes_[cls].layout.ToString(),
          own_only ? " (and a reader holds the arena: no segment may change owner now)" : ""));
    }
    if (absl::Status s = EvictBatch(t, victims); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("%s tier is full and eviction failed: %s",
                                                    TierName(t), s.message()));
    }
  }
}

std::vector<uint32_t> StoreImpl::SlotVictims(Tier t, int ac, bool own_class_only) {
  const SlabAllocator& alloc = *alloc_[MemIndex(t)];
  const uint64_t now = NowMs();
  absl::flat_hash_map<uint32_t, std::vector<uint32_t>> by_segment;  // evictable pages seen
  for (uint32_t v = table_.Tail(t); v != kNil; v = table_.Prev(v)) {
    const PageEntry& e = table_.at(v);
    if (!Evictable(e, now)) continue;
    const uint64_t off = SlotOffset(e);
    if (alloc.ClassOf(off) == ac) return {v};
    if (own_class_only) continue;
    // Pages being written, read or doomed are not on the list, so a segment is complete only
    // when every page it holds can go.
    const uint32_t seg = alloc.SegmentOf(off);
    std::vector<uint32_t>& pages = by_segment[seg];
    pages.push_back(v);
    if (pages.size() == alloc.SegmentUsed(seg)) return std::move(pages);
  }
  return {};
}

absl::Status StoreImpl::EvictBatch(Tier from, const std::vector<uint32_t>& victims) {
  const int fi = static_cast<int>(from);
  if (from == Tier::kGpu) {
    for (uint32_t v : victims) {
      if (absl::Status s = MoveBetweenMemory(v, Tier::kHost); !s.ok()) return s;
      counters_.evictions[fi]++;
    }
    EnforceWatermarks(Tier::kHost);
    return absl::OkStatus();
  }
  if (from == Tier::kSsd || ssd_ == nullptr) {
    // The last tier evicts by deletion.
    for (uint32_t v : victims) {
      counters_.evictions[fi]++;
      counters_.dropped++;
      FreeEntry(v);
    }
    return absl::OkStatus();
  }
  // Host -> SSD. A page with an SSD copy only gives up its slot; the rest are written in batches
  // of bounded size, one RocksDB write (and at most one sync) each.
  std::vector<uint32_t> dirty;
  for (uint32_t v : victims) {
    PageEntry& e = table_.at(v);
    if (!e.ssd_copy) {
      dirty.push_back(v);
      continue;
    }
    alloc_[1]->Free(SlotOffset(e));
    table_.Unlink(v);
    Uncharge(e, Tier::kHost);
    UnchargeCopy(e);
    e.tier = Tier::kSsd;
    e.slot = 0;
    Charge(e, Tier::kSsd);
    table_.LinkFront(v);
    counters_.evictions[fi]++;
  }
  uint8_t* base = mem_[1]->host_base();
  size_t i = 0;
  while (i < dirty.size()) {
    std::vector<SsdPageWrite> writes;
    std::vector<uint32_t> written;
    std::vector<std::pair<uint32_t, std::string>> new_tenants;
    absl::flat_hash_map<uint32_t, uint64_t> pending_by_tenant;
    uint64_t bytes = 0;
    for (; i < dirty.size() && bytes < kMaxBatchBytes; ++i) {
      const uint32_t v = dirty[i];
      PageEntry& e = table_.at(v);
      const uint64_t n = PageBytes(e);
      uint64_t& tenant_pending = pending_by_tenant[e.tenant];
      // At its SSD quota, the tenant's own least-recently-used SSD pages make room; when they
      // cannot (pinned, read), the page leaves the store.
      if (OverQuota(e.tenant, Tier::kSsd, tenant_pending + n) &&
          !MakeTenantRoom(e.tenant, Tier::kSsd, tenant_pending + n)) {
        counters_.evictions[fi]++;
        counters_.dropped++;
        FreeEntry(v);
        continue;
      }
      SsdPageWrite w;
      w.meta.tenant = e.tenant;
      w.meta.key = e.key;
      w.meta.layout = classes_[e.cls].layout.Id();
      w.meta.size = static_cast<uint32_t>(n);
      w.meta.checksum = e.checksum;
      w.bytes = base + SlotOffset(e);
      writes.push_back(w);
      written.push_back(v);
      bytes += n;
      tenant_pending += n;
      TenantState& t = tenants_[e.tenant];
      if (!t.on_ssd && std::none_of(new_tenants.begin(), new_tenants.end(),
                                    [&](const auto& p) { return p.first == e.tenant; })) {
        new_tenants.emplace_back(e.tenant, t.name);
      }
    }
    if (writes.empty()) continue;
    absl::Status s = MakeSsdRoom(bytes)
                         ? WriteSsdBatch(writes, new_tenants, bytes)
                         : absl::ResourceExhaustedError(
                               "SSD tier is full: every page on it is pinned or being read");
    if (!s.ok()) {
      counters_.ssd_write_failures++;
      // An I/O error: the batch's pages stay in the host tier, unchanged, and the caller hears it.
      if (!absl::IsResourceExhausted(s)) return s;
      // The disk is full and nothing on it can go (pinned, read, or the file system filled under
      // the tier's own limit): the host tier is a cache, so its victims leave the store, as they
      // do at an SSD quota, instead of failing the write or read that needed their slots.
      for (uint32_t v : written) {
        counters_.evictions[fi]++;
        counters_.dropped++;
        FreeEntry(v);
      }
      continue;
    }
    for (const auto& p : new_tenants) tenants_[p.first].on_ssd = true;
    for (uint32_t v : written) {
      PageEntry& e = table_.at(v);
      const uint64_t n = PageBytes(e);
      alloc_[1]->Free(SlotOffset(e));
      table_.Unlink(v);
      Uncharge(e, Tier::kHost);
      e.tier = Tier::kSsd;
      e.slot = 0;
      Charge(e, Tier::kSsd);
      table_.LinkFront(v);
      counters_.evictions[fi]++;
      counters_.bytes_out[fi] += n;
      counters_.bytes_in[static_cast<int>(Tier::kSsd)] += n;
    }
  }
  EnforceWatermarks(Tier::kSsd);
  return absl::OkStatus();
}

void StoreImpl::EnforceWatermarks(Tier t) {
  if (!Present(t)) return;
  const int ti = static_cast<int>(t);
  uint64_t capacity = t == Tier::kSsd ? ssd_limit_ : mem_[MemIndex(t)]->capacity_bytes();
  if (capacity == 0) return;  // unbounded SSD tier
  const Watermarks& w = options_.watermarks[ti];
  // The SSD tier's disk also holds copies of memory-tier pages and dead space of segments; only
  // its own pages are dropped.
  const uint64_t used = t == Tier::kSsd ? SsdDiskBytes() : used_[ti];
  if (static_cast<double>(used) <= w.high * static_cast<double>(capacity)) return;
  if (t == Tier::kSsd && counters_.ssd_full > 0) {
    RegrowSsdLimit();  // a limit the file system set may have room to grow again
    capacity = ssd_limit_;
    if (static_cast<double>(used) <= w.high * static_cast<double>(capacity)) return;
  }
  const double target = w.low * static_cast<double>(capacity);
  const uint64_t now = NowMs();
  std::vector<uint32_t> victims;
  uint64_t freeing = 0;
  for (uint32_t v = table_.Tail(t); v != kNil && static_cast<double>(used - freeing) > target;
       v = table_.Prev(v)) {
    const PageEntry& e = table_.at(v);
    if (Evictable(e, now)) {
      victims.push_back(v);
      freeing += PageBytes(e);
    }
  }
  // A failure (SSD write error) leaves the pages where they are; the next commit retries.
  EvictBatch(t, victims).IgnoreError();
}

void StoreImpl::FreeEntry(uint32_t idx) {
  PageEntry& e = table_.at(idx);
  if (e.tier == Tier::kSsd) {
    // A doomed SSD page lost its record when it was removed (see RemoveEntry).
    if (ssd_ != nullptr && e.state != PageState::kDoomed) {
      const std::pair<uint32_t, PageKey> k(e.tenant, e.key);
      ssd_->Delete({&k, 1}).IgnoreError();
    }
  } else {
    const int mi = MemIndex(e.tier);
    alloc_[mi]->Free(SlotOffset(e));
    if (e.ssd_copy) {
      const std::pair<uint32_t, PageKey> k(e.tenant, e.key);
      ssd_->Delete({&k, 1}).IgnoreError();
      UnchargeCopy(e);
    }
  }
  Uncharge(e, e.tier);
  if (e.pins > 0) {
    tenants_[e.tenant].pinned -= PageBytes(e);
    pinned_bytes_ -= PageBytes(e);
  }
  table_.Release(idx);
}

void StoreImpl::RemoveEntry(uint32_t idx) {
  PageEntry& e = table_.at(idx);
  if (e.readers > 0) {
    // Copies of it run outside the lock: hide it now, free it when the last one ends. An SSD
    // record is keyed by (tenant, key) and a new page of the same key may be written before the
    // readers end, so it goes now; a reader then sees NotFound (never partial bytes: segment bytes
    // are never rewritten in place) and reports the page removed.
    if ((e.tier == Tier::kSsd || e.ssd_copy) && ssd_ != nullptr) {
      const std::pair<uint32_t, PageKey> k(e.tenant, e.key);
      ssd_->Delete({&k, 1}).IgnoreError();
    }
    if (e.ssd_copy) UnchargeCopy(e);
    table_.Unindex(idx);
    if (e.linked) table_.Unlink(idx);
    e.state = PageState::kDoomed;
    return;
  }
  FreeEntry(idx);
}

void StoreImpl::EndRead(uint32_t idx) {
  PageEntry& e = table_.at(idx);
  e.readers--;
  if (e.readers == 0 && e.state == PageState::kDoomed) FreeEntry(idx);
}

void StoreImpl::DropCorrupt(uint32_t idx, uint32_t version) {
  const PageEntry& e = table_.at(idx);
  if (e.version != version || e.state != PageState::kReady) return;
  RemoveEntry(idx);
}

absl::Status StoreImpl::MoveBetweenMemory(uint32_t idx, Tier to) {
  PageEntry* e = &table_.at(idx);
  const Tier from = e->tier;
  const uint64_t n = PageBytes(*e);
  if (!Present(to)) {
    return absl::FailedPreconditionError(absl::StrFormat("no %s tier", TierName(to)));
  }
  e->readers++;  // keeps eviction (which quota room and AllocateSlot may run) away from this page
  if (!MakeTenantRoom(e->tenant, to, n)) {
    e = &table_.at(idx);
    e->readers--;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant %s is over its %s quota (its other pages there are pinned, leased or being read)",
        tenants_[e->tenant].name, TierName(to)));
  }
  absl::StatusOr<uint64_t> off = AllocateSlot(to, e->cls, e->tenant);
  e = &table_.at(idx);
  e->readers--;
  if (!off.ok()) return off.status();
  absl::Status copied = from == Tier::kHost
                            ? mem_[0]->Write(*off, mem_[1]->host_base() + SlotOffset(*e), n)
                            : mem_[0]->Read(SlotOffset(*e), mem_[1]->host_base() + *off, n);
  const int ti = MemIndex(to), fi = MemIndex(from);
  if (!copied.ok()) {
    alloc_[ti]->Free(*off);
    return copied;
  }
  alloc_[fi]->Free(SlotOffset(*e));
  table_.Unlink(idx);
  Uncharge(*e, from);
  e->tier = to;
  e->slot = static_cast<uint32_t>(*off / SlabAllocator::kSlotAlign);
  Charge(*e, to);
  table_.LinkFront(idx);
  counters_.bytes_out[static_cast<int>(from)] += n;
  counters_.bytes_in[static_cast<int>(to)] += n;
  if (to < from) counters_.promotions[static_cast<int>(to)]++;
  return absl::OkStatus();
}

absl::Status StoreImpl::PromoteFromSsd(uint32_t idx, Tier to, const std::string& bytes) {
  PageEntry* e = &table_.at(idx);
  const uint64_t n = PageBytes(*e);
  if (!Present(to)) {
    return absl::FailedPreconditionError(absl::StrFormat("no %s tier", TierName(to)));
  }
  e->readers++;  // keeps SSD eviction (which a cascade may run) away from this page
  if (!MakeTenantRoom(e->tenant, to, n)) {
    e = &table_.at(idx);
    e->readers--;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant %s is over its %s quota (its other pages there are pinned, leased or being read)",
        tenants_[e->tenant].name, TierName(to)));
  }
  absl::StatusOr<uint64_t> off = AllocateSlot(to, e->cls, e->tenant);
  e = &table_.at(idx);
  e->readers--;
  if (!off.ok()) return off.status();
  const int ti = MemIndex(to);
  absl::Status copied = mem_[ti]->Write(*off, bytes.data(), n);
  if (!copied.ok()) {
    alloc_[ti]->Free(*off);
    return copied;
  }
  // The SSD record stays: the page now has a copy there, so evicting it again costs no write
  // and a crash or stop does not lose it.
  table_.Unlink(idx);
  Uncharge(*e, Tier::kSsd);
  e->tier = to;
  e->slot = static_cast<uint32_t>(*off / SlabAllocator::kSlotAlign);
  Charge(*e, to);
  ChargeCopy(*e);
  table_.LinkFront(idx);
  counters_.bytes_out[static_cast<int>(Tier::kSsd)] += n;
  counters_.bytes_in[static_cast<int>(to)] += n;
  counters_.promotions[static_cast<int>(to)]++;
  return absl::OkStatus();
}

absl::StatusOr<size_t> StoreImpl::Prefetch(std::string_view tenant, absl::Span<const PageKey> keys,
                                           Tier tier) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  if (tier == Tier::kSsd)
    return absl::InvalidArgumentError("prefetch into the SSD tier: use Demote");
  absl::MutexLock lock(&mu_);
  if (!Present(tier)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("prefetch: this store has no %s tier", TierName(tier)));
  }
  size_t moved = 0;
  for (const PageKey& key : keys) {
    const uint32_t idx = FindReady(tenant, key);
    if (idx == kNil || table_.at(idx).tier <= tier) continue;
    const PageEntry& e = table_.at(idx);
    if (e.readers > 0 || (e.leases > 0 && e.lease_deadline_ms > NowMs())) continue;
    if (e.tier == Tier::kSsd) {
      const uint32_t version = e.version;
      std::string bytes;
      absl::Status read = ReadSsdUnlocked(idx, &bytes);
      if (absl::IsAborted(read) || absl::IsNotFound(read)) continue;  // moved or removed meanwhile
      if (!read.ok()) return read;
      const PageEntry& now = table_.at(idx);
      if (now.version != version || now.state != PageState::kReady || now.tier != Tier::kSsd) {
        continue;
      }
      if (absl::Status s = PromoteFromSsd(idx, tier, bytes); !s.ok()) return s;
    } else {
      if (absl::Status s = MoveBetweenMemory(idx, tier); !s.ok()) return s;
    }
    ++moved;
  }
  EnforceWatermarks(tier);
  return moved;
}

absl::StatusOr<size_t> StoreImpl::Demote(std::string_view tenant, absl::Span<const PageKey> keys,
                                         Tier tier) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  if (tier == Tier::kGpu)
    return absl::InvalidArgumentError("demote into the GPU tier: use Prefetch");
  absl::MutexLock lock(&mu_);
  if (!Present(tier)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("demote: this store has no %s tier", TierName(tier)));
  }
  size_t moved = 0;
  // Host pages bound for SSD go down in one batched write at the end. Until then `readers` holds
  // them in place: moving a later GPU page to the host may evict, and must not pick them.
  std::vector<uint32_t> to_ssd;
  uint64_t pending = 0;
  absl::Status status;
  for (const PageKey& key : keys) {
    const uint32_t idx = FindReady(tenant, key);
    if (idx == kNil || table_.at(idx).tier >= tier) continue;
    const PageEntry& e = table_.at(idx);
    if (e.readers > 0 || (e.leases > 0 && e.lease_deadline_ms > NowMs())) continue;
    if (tier == Tier::kSsd && OverQuota(e.tenant, Tier::kSsd, pending + PageBytes(e))) {
      status =
          absl::ResourceExhaustedError(absl::StrFormat("tenant %s is over its ssd quota", tenant));
      break;
    }
    if (e.tier == Tier::kGpu) {
      if (absl::Status s = MoveBetweenMemory(idx, Tier::kHost); !s.ok()) {
        status = s;
        break;
      }
    }
    if (tier == Tier::kSsd) {
      table_.at(idx).readers++;
      to_ssd.push_back(idx);
      pending += PageBytes(table_.at(idx));
    } else {
      ++moved;
    }
  }
  for (uint32_t idx : to_ssd) table_.at(idx).readers--;
  if (!to_ssd.empty()) {
    if (absl::Status s = EvictBatch(Tier::kHost, to_ssd); !s.ok()) return s;
    moved += to_ssd.size();
  }
  if (!status.ok()) return status;
  EnforceWatermarks(tier);
  return moved;
}

}  // namespace pagoda
