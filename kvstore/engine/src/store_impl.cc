// Store: opening, tenants and layouts, two-phase writes, reads and leases.
#include "store_impl.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checksum.h"

namespace pagoda {

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  auto store = std::make_unique<StoreImpl>(options);
  if (absl::Status s = store->Init(); !s.ok()) return s;
  return std::unique_ptr<Store>(std::move(store));
}

StoreImpl::StoreImpl(const StoreOptions& options) : options_(options), epoch_(absl::Now()) {}

StoreImpl::~StoreImpl() {
  if (checkpointer_.joinable()) {
    {
      absl::MutexLock l(&loop_mu_);
      stopping_ = true;
    }
    checkpointer_.join();
  }
  // The SSD tier flushes on close; memory tiers are a cache and go away.
  ssd_.reset();
  // The host tier unpins its segments itself (MemoryTier::PinForGpu).
}

absl::Status StoreImpl::Init() {
  if (options_.layouts.empty()) {
    return absl::InvalidArgumentError("store options: no page layouts registered");
  }
  if (options_.host_capacity_bytes == 0) {
    return absl::InvalidArgumentError("store options: host_capacity_bytes is 0");
  }
  for (int t = 0; t < kNumTiers; ++t) {
    const Watermarks& w = options_.watermarks[t];
    if (!(w.low > 0 && w.low <= w.high && w.high <= 1.0)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "store options: %s watermarks need 0 < low <= high <= 1 (low %g, high %g)",
          TierName(static_cast<Tier>(t)), w.low, w.high));
    }
  }
  if (options_.max_lease_duration <= absl::ZeroDuration() ||
      options_.default_lease_duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("store options: lease durations must be positive");
  }
  absl::MutexLock lock(&mu_);
  uint64_t max_slot = 0;
  for (const PageLayout& l : options_.layouts) {
    if (absl::Status s = l.Validate(); !s.ok()) return s;
    const int cls = ClassOf(l.Id(), /*add=*/true);
    classes_[cls].accepted = true;
    max_slot = std::max(max_slot, classes_[cls].bytes);
  }
  max_slot = (max_slot + SlabAllocator::kSlotAlign - 1) / SlabAllocator::kSlotAlign *
             SlabAllocator::kSlotAlign;
  auto segment_for = [&](uint64_t capacity) {
    return std::min(std::max(options_.segment_bytes, max_slot), capacity);
  };
  if (options_.host_capacity_bytes < max_slot) {
    return absl::InvalidArgumentError(
        absl::StrFormat("store options: host capacity %d bytes is smaller than one page (%d bytes)",
                        options_.host_capacity_bytes, max_slot));
  }
  auto host = CreateHostTier(options_.host_capacity_bytes);
  if (!host.ok()) return host.status();
  mem_[1] = std::move(*host);
  // Host segments follow their tenant's memfd (see MemoryTier::AssignSegment).
  SlabAllocator::SegmentHooks host_hooks;
  // Generations (HostSegmentGeneration) move at every change of owner; a segment leaves its
  // owner only while no lease-free reader holds the arena.
  host_hooks.assign = [this, tier = mem_[1].get()](uint64_t off, uint64_t bytes, uint32_t owner) {
    absl::Status s = tier->AssignSegment(off, bytes, owner);
    if (s.ok()) host_segment_gen_[off / host_segment_bytes_].fetch_add(1);  // now odd
    return s;
  };
  host_hooks.release = [this, tier = mem_[1].get()](uint64_t off, uint64_t bytes, uint32_t owner) {
    host_segment_gen_[off / host_segment_bytes_].fetch_add(1);  // now even
    tier->ReleaseSegment(off, bytes, owner);
    arena_reclaim_.store(false);  // raised by may_reclaim
  };
  host_hooks.may_reclaim = [this] {
    arena_reclaim_.store(true);
    const absl::Time deadline = absl::Now() + kMaxArenaHoldWait;
    while (arena_holds_.load() > 0) {
      if (absl::Now() > deadline) {
        arena_reclaim_.store(false);
        return false;
      }
      absl::SleepFor(absl::Microseconds(20));
    }
    return true;
  };
  // A host segment is mapped on its own (mmap of its owner's memfd): whole OS pages. The host
  // tier's mappings are rounded up to whole pages too, so a tier below one page still works.
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t host_segment =
      (segment_for(options_.host_capacity_bytes) + page - 1) / page * page;
  alloc_[1] =
      std::make_unique<SlabAllocator>(options_.host_capacity_bytes, host_segment, host_hooks);
  host_segment_bytes_ = host_segment;
  host_segments_ = (options_.host_capacity_bytes + host_segment - 1) / host_segment;
  host_segment_gen_ = std::make_unique<std::atomic<uint32_t>[]>(host_segments_);
  if (options_.gpu_capacity_bytes > 0) {
    if (options_.gpu_capacity_bytes < max_slot) {
      return absl::InvalidArgumentError("store options: GPU capacity is smaller than one page");
    }
    auto gpu = CreateGpuTier(options_.gpu_capacity_bytes, options_.gpu_device);
    if (!gpu.ok()) return gpu.status();
    mem_[0] = std::move(*gpu);
    // Page-lock host segments as they are assigned so GPU <-> host copies run as DMA at full
    // speed. A refusal (memlock limits) only costs speed.
    mem_[1]->PinForGpu(options_.gpu_device);
    alloc_[0] = std::make_unique<SlabAllocator>(options_.gpu_capacity_bytes,
                                                segment_for(options_.gpu_capacity_bytes));
  }
  if (!options_.data_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options_.data_dir, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "store options: cannot create data_dir %s: %s", options_.data_dir, ec.message()));
    }
    SsdTierOptions ssd_options;
    ssd_options.env = options_.ssd_env;
    ssd_options.sync_writes = options_.ssd_sync_writes;
    ssd_options.direct_writes = options_.ssd_direct_writes;
    if (options_.ssd_capacity_bytes > 0) {
      // Space comes back a segment at a time: segments small against the capacity keep the dead
      // space that disk use counts (and a full file system strands) small.
      ssd_options.segment_bytes =
          std::clamp<uint64_t>(options_.ssd_capacity_bytes / 16, 4 << 10, 256ULL << 20);
    }
    ssd_limit_ = options_.ssd_capacity_bytes;
    auto ssd = SsdTier::Open(options_.data_dir, ssd_options);
    if (!ssd.ok()) return ssd.status();
    ssd_ = std::move(*ssd);
    ssd_->SetDiskLimit(ssd_limit_);
    if (absl::Status s = Rebuild(); !s.ok()) return s;
    if (options_.checkpoint_interval > absl::ZeroDuration()) {
      checkpointer_ = std::thread([this] { CheckpointLoop(); });
    }
  }
  return absl::OkStatus();
}

absl::Status StoreImpl::Rebuild() {
  absl::Status s = ssd_->ForEachTenant([this](uint32_t id, std::string_view name) {
    mu_.AssertHeld();  // called back on this thread, inside Rebuild
    if (id >= tenants_.size()) tenants_.resize(id + 1);
    TenantState& t = tenants_[id];
    t.name = std::string(name);
    t.on_ssd = true;
    if (auto it = options_.tenant_quotas.find(t.name); it != options_.tenant_quotas.end()) {
      t.quota = it->second;
    }
    tenant_ids_[t.name] = id;
  });
  if (!s.ok()) return s;
  table_.Reserve(ssd_->EstimatePages());
  // Two stages on two threads: a scanner decodes metadata records out of RocksDB into batches,
  // this thread builds the page table from them. On a restart either one alone would be the
  // bottleneck; overlapped, the rebuild costs about the slower of the two.
  constexpr size_t kBatch = 16384, kMaxQueued = 8;
  absl::Mutex qmu;
  absl::CondVar qcv;
  std::deque<std::vector<SsdPageMeta>> queue;
  bool scan_done = false;
  absl::Status scan_status;
  std::vector<std::string> bad_keys;
  auto push = [&](std::vector<SsdPageMeta> batch) {
    absl::MutexLock l(&qmu);
    while (queue.size() >= kMaxQueued) qcv.Wait(&qmu);
    queue.push_back(std::move(batch));
    qcv.SignalAll();
  };
  std::thread scanner([&] {
    std::vector<SsdPageMeta> cur;
    cur.reserve(kBatch);
    absl::Status st = ssd_->ForEachPage(
        [&](const SsdPageMeta& m) {
          cur.push_back(m);
          if (cur.size() == kBatch) {
            push(std::move(cur));
            cur = {};
            cur.reserve(kBatch);
          }
        },
        [&](std::string_view key) { bad_keys.emplace_back(key); });
    if (!cur.empty()) push(std::move(cur));
    absl::MutexLock l(&qmu);
    scan_status = st;
    scan_done = true;
    qcv.SignalAll();
  });
  std::vector<std::pair<uint32_t, PageKey>> orphans;
  LayoutId last_layout = 0;
  int last_cls = -1;
  for (;;) {
    std::vector<SsdPageMeta> batch;
    {
      absl::MutexLock l(&qmu);
      while (queue.empty() && !scan_done) qcv.Wait(&qmu);
      if (queue.empty()) break;
      batch = std::move(queue.front());
      queue.pop_front();
      qcv.SignalAll();
    }
    for (const SsdPageMeta& m : batch) {
      // Records arrive sorted by key, and (tenant, key) is the RocksDB key: no duplicates.
      if (m.layout != last_layout) {
        last_layout = m.layout;
        last_cls = ClassOf(m.layout, /*add=*/true);
      }
      const int cls = last_cls;
      if (m.tenant >= tenants_.size() || tenants_[m.tenant].name.empty() || cls < 0 ||
          classes_[cls].bytes != m.size) {
        orphans.emplace_back(m.tenant, m.key);
        continue;
      }
      const uint32_t idx = table_.Insert(m.tenant, m.key);
      PageEntry& e = table_.at(idx);
      e.cls = static_cast<uint16_t>(cls);
      e.tier = Tier::kSsd;
      e.checksum = m.checksum;
      e.state = PageState::kReady;
      Charge(e, Tier::kSsd);
      table_.LinkFront(idx);
    }
  }
  scanner.join();
  s = scan_status;
  if (!s.ok()) return s;
  // Records that cannot describe a servable page are deleted, never served.
  counters_.checksum_failures += orphans.size() + bad_keys.size();
  if (!orphans.empty()) ssd_->Delete(orphans).IgnoreError();
  for (const std::string& k : bad_keys) ssd_->DeleteRawMeta(k).IgnoreError();
  return absl::OkStatus();
}

uint64_t StoreImpl::NowMs() const {
  return static_cast<uint64_t>(absl::ToInt64Milliseconds(absl::Now() - epoch_));
}

absl::Status StoreImpl::CheckTenant(std::string_view tenant) {
  if (tenant.empty()) return absl::InvalidArgumentError("tenant id is empty");
  if (tenant.size() > 255) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tenant id is %d bytes; at most 255", tenant.size()));
  }
  return absl::OkStatus();
}

uint32_t StoreImpl::InternTenant(std::string_view name) {
  if (uint32_t id = FindTenant(name); id != kNil) return id;
  const uint32_t id = static_cast<uint32_t>(tenants_.size());
  TenantState t;
  t.name = std::string(name);
  if (auto it = options_.tenant_quotas.find(t.name); it != options_.tenant_quotas.end()) {
    t.quota = it->second;
  }
  tenants_.push_back(std::move(t));
  tenant_ids_[std::string(name)] = id;
  return id;
}

uint32_t StoreImpl::FindTenant(std::string_view name) const {
  auto it = tenant_ids_.find(absl::string_view(name.data(), name.size()));
  return it == tenant_ids_.end() ? kNil : it->second;
}

int StoreImpl::ClassOf(LayoutId id, bool add) {
  if (auto it = class_by_id_.find(id); it != class_by_id_.end()) return it->second;
  if (!add) return -1;
  auto layout = PageLayout::FromId(id);
  if (!layout.ok()) return -1;
  LayoutClass c;
  c.layout = *layout;
  c.bytes = layout->PageBytes();
  classes_.push_back(c);
  const int cls = static_cast<int>(classes_.size() - 1);
  class_by_id_[id] = cls;
  return cls;
}

uint32_t StoreImpl::FindReady(std::string_view tenant, const PageKey& key) const {
  const uint32_t tid = FindTenant(tenant);
  if (tid == kNil) return kNil;
  const uint32_t idx = table_.Find(tid, key);
  if (idx == kNil || table_.at(idx).state != PageState::kReady) return kNil;
  return idx;
}

PageInfo StoreImpl::InfoOf(const PageEntry& e) const {
  PageInfo info;
  info.layout = classes_[e.cls].layout;
  info.size = classes_[e.cls].bytes;
  info.checksum = e.checksum;
  info.tier = e.tier;
  info.pins = e.pins;
  return info;
}

void StoreImpl::Charge(const PageEntry& e, Tier t) {
  const uint64_t n = PageBytes(e);
  used_[static_cast<int>(t)] += n;
  pages_[static_cast<int>(t)] += 1;
  tenants_[e.tenant].used[static_cast<int>(t)] += n;
}

void StoreImpl::Uncharge(const PageEntry& e, Tier t) {
  const uint64_t n = PageBytes(e);
  used_[static_cast<int>(t)] -= n;
  pages_[static_cast<int>(t)] -= 1;
  tenants_[e.tenant].used[static_cast<int>(t)] -= n;
}

bool StoreImpl::OverQuota(uint32_t tenant, Tier t, uint64_t bytes) const {
  const uint64_t quota = tenants_[tenant].quota.tier_bytes[static_cast<int>(t)];
  return quota != 0 && tenants_[tenant].used[static_cast<int>(t)] + bytes > quota;
}

// ---- Writes ---------------------------------------------------------------------------------

absl::StatusOr<Reservation> StoreImpl::Reserve(std::string_view tenant, const PageKey& key,
                                               const PageLayout& layout,
                                               const WriteOptions& options) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto idx = ReserveLocked(tenant, key, layout, options);
  if (!idx.ok()) return idx.status();
  const PageEntry& e = table_.at(*idx);
  const uint64_t rid = next_reservation_++;
  reservations_[rid] = PendingWrite{*idx, e.version, options};
  Reservation r;
  r.id = rid;
  r.key = key;
  r.layout = layout;
  r.arena_offset = SlotOffset(e);
  r.size = PageBytes(e);
  return r;
}

absl::StatusOr<uint32_t> StoreImpl::ReserveLocked(std::string_view tenant, const PageKey& key,
                                                  const PageLayout& layout,
                                                  const WriteOptions& options) {
  absl::StatusOr<uint32_t> r = ReserveOnceLocked(tenant, key, layout, options);
  // Refused for room while a checkpoint held pages: once more after it (everything checked again).
  if (absl::IsResourceExhausted(r.status()) && AwaitCheckpointBatches()) {
    r = ReserveOnceLocked(tenant, key, layout, options);
  }
  return r;
}

absl::StatusOr<uint32_t> StoreImpl::ReserveOnceLocked(std::string_view tenant, const PageKey& key,
                                                      const PageLayout& layout,
                                                      const WriteOptions& options) {
  const int cls = ClassOf(layout.Id(), /*add=*/false);
  if (cls < 0 || !classes_[cls].accepted) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layout %s is not registered with this store", layout.ToString()));
  }
  const uint64_t n = classes_[cls].bytes;
  uint32_t tid = FindTenant(tenant);
  if (options.stream_id != 0 && (tid == kNil || !streams_.contains({tid, options.stream_id}))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stream %d is not open for tenant %s", options.stream_id, tenant));
  }
  if (tid != kNil) {
    if (const uint32_t idx = table_.Find(tid, key); idx != kNil) {
      return table_.at(idx).state == PageState::kWriting
                 ? absl::AlreadyExistsError(absl::StrFormat("page %s is being written", key.Hex()))
                 : absl::AlreadyExistsError(
                       absl::StrFormat("page %s is already stored", key.Hex()));
    }
  }
  tid = InternTenant(tenant);
  // At its quota, the tenant's own least-recently-used pages move down to make room.
  if (!MakeTenantRoom(tid, Tier::kHost, n)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant %s is over its host quota (%d used + %d > %d bytes; its other host pages are "
        "pinned, leased, being read or being written)",
        tenant, tenants_[tid].used[1], n, tenants_[tid].quota.tier_bytes[1]));
  }
  if (options.pin) {
    const TenantState& t = tenants_[tid];
    const uint64_t quota =
        t.quota.pinned_bytes != 0 ? t.quota.pinned_bytes : options_.default_pin_quota_bytes;
    if (t.pinned + n > quota) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("tenant %s is over its pin quota (%d bytes)", tenant, quota));
    }
  }
  auto offset = AllocateSlot(Tier::kHost, cls, tid);
  if (!offset.ok()) return offset.status();
  const uint32_t idx = table_.Insert(tid, key);
  PageEntry& e = table_.at(idx);
  e.cls = static_cast<uint16_t>(cls);
  e.tier = Tier::kHost;
  e.slot = static_cast<uint32_t>(*offset / SlabAllocator::kSlotAlign);
  Charge(e, Tier::kHost);
  return idx;
}

absl::Status StoreImpl::Commit(uint64_t reservation_id) {
  PendingWrite pw;
  uint64_t offset = 0, n = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(reservation_id);
    if (it == reservations_.end()) {
      return absl::NotFoundError(absl::StrFormat(
          "reservation %d is not open (unknown, committed or aborted)", reservation_id));
    }
    pw = it->second;
    // Taking it out first makes a concurrent Commit or Abort of the same id fail cleanly; a
    // kWriting entry is freed by nothing else, so it stays ours while we hash outside the lock.
    reservations_.erase(it);
    const PageEntry& e = table_.at(pw.idx);
    offset = SlotOffset(e);
    n = PageBytes(e);
  }
  const uint64_t checksum = PageChecksum(mem_[1]->host_base() + offset, n);
  absl::MutexLock lock(&mu_);
  return CommitLocked(pw.idx, pw.options, checksum);
}

absl::Status StoreImpl::CommitLocked(uint32_t idx, const WriteOptions& options, uint64_t checksum) {
  PageEntry& e = table_.at(idx);
  const uint64_t n = PageBytes(e);
  if (options.pin) {
    TenantState& t = tenants_[e.tenant];
    const uint64_t quota =
        t.quota.pinned_bytes != 0 ? t.quota.pinned_bytes : options_.default_pin_quota_bytes;
    if (t.pinned + n > quota) {
      const std::string name = t.name;
      FreeEntry(idx);
      return absl::ResourceExhaustedError(absl::StrFormat(
          "tenant %s is over its pin quota (%d bytes); the write was aborted", name, quota));
    }
    t.pinned += n;
    pinned_bytes_ += n;
    e.pins = 1;
  }
  e.checksum = checksum;
  e.state = PageState::kReady;
  table_.LinkFront(idx);
  counters_.puts++;
  if (ssd_ != nullptr) {
    dirty_.push_back(EntryRef{idx, e.version});
    PruneDirty();
  }
  if (options.stream_id != 0) AddToStream(idx, options.stream_id);
  EnforceWatermarks(Tier::kHost);
  return absl::OkStatus();
}

absl::Status StoreImpl::Abort(uint64_t reservation_id) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(reservation_id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrFormat(
        "reservation %d is not open (unknown, committed or aborted)", reservation_id));
  }
  const uint32_t idx = it->second.idx;
  reservations_.erase(it);
  FreeEntry(idx);
  return absl::OkStatus();
}

absl::Status StoreImpl::Put(std::string_view tenant, const PageKey& key, const PageLayout& layout,
                            absl::Span<const uint8_t> bytes, const WriteOptions& options) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  if (bytes.size() != layout.PageBytes()) {
    return absl::InvalidArgumentError(absl::StrFormat("page %s: %d bytes given, layout %s needs %d",
                                                      key.Hex(), bytes.size(), layout.ToString(),
                                                      layout.PageBytes()));
  }
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  uint8_t* slot = nullptr;
  uint32_t idx = kNil;
  {
    absl::MutexLock lock(&mu_);
    auto reserved = ReserveLocked(tenant, key, layout, options);
    if (!reserved.ok()) return reserved.status();
    idx = *reserved;
    slot = mem_[1]->host_base() + SlotOffset(table_.at(idx));
  }
  // The kWriting entry is in no reservation table: nothing else can commit, abort or free it.
  const uint64_t checksum = CopyAndChecksum(slot, bytes.data(), bytes.size());
  absl::MutexLock lock(&mu_);
  return CommitLocked(idx, options, checksum);
}

// ---- Reads ----------------------------------------------------------------------------------

absl::Status StoreImpl::ReadSsdUnlocked(uint32_t idx, std::string* bytes) {
  PageEntry& e = table_.at(idx);
  const uint32_t version = e.version;
  const uint32_t tenant = e.tenant;
  const PageKey key = e.key;
  const uint64_t checksum = e.checksum;
  const uint64_t n = PageBytes(e);
  e.readers++;
  mu_.Unlock();
  absl::Status s = ssd_->Read(tenant, key, bytes);
  const bool bad_bytes =
      s.ok() && (bytes->size() != n || PageChecksum(bytes->data(), bytes->size()) != checksum);
  mu_.Lock();
  EndRead(idx);
  if (s.ok() && !bad_bytes) return s;
  const PageEntry& now = table_.at(idx);
  if (now.version != version || now.state != PageState::kReady) {
    return absl::NotFoundError(absl::StrFormat("page %s was removed while read", key.Hex()));
  }
  if (now.tier != Tier::kSsd) {
    // Another reader promoted the page meanwhile: its memory copy is good. The caller looks the
    // page up again.
    return absl::AbortedError(absl::StrFormat("page %s moved while read", key.Hex()));
  }
  if (bad_bytes) {
    s = absl::DataLossError(
        absl::StrFormat("page %s on SSD failed its checksum (%d bytes read, %d expected); dropped",
                        key.Hex(), bytes->size(), n));
  } else if (absl::IsNotFound(s)) {
    s = absl::DataLossError(
        absl::StrFormat("page %s: metadata on SSD but its bytes are missing; dropped", key.Hex()));
  } else if (absl::IsDataLoss(s)) {
    s = absl::DataLossError(absl::StrCat(s.message(), "; dropped"));
  } else {
    return s;  // an I/O error: the page may be fine; keep it
  }
  counters_.checksum_failures++;
  DropCorrupt(idx, version);
  return s;
}

absl::StatusOr<PageInfo> StoreImpl::Get(std::string_view tenant, const PageKey& key,
                                        absl::Span<uint8_t> out) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  for (;;) {
    absl::StatusOr<PageInfo> r = GetLocked(tenant, key, out);
    if (!absl::IsAborted(r.status())) return r;
  }
}

absl::StatusOr<PageInfo> StoreImpl::GetLocked(std::string_view tenant, const PageKey& key,
                                              absl::Span<uint8_t> out) {
  const uint32_t idx = FindReady(tenant, key);
  if (idx == kNil) {
    counters_.misses++;
    return absl::NotFoundError(absl::StrFormat("page %s not found", key.Hex()));
  }
  PageEntry& e = table_.at(idx);
  const uint64_t n = PageBytes(e);
  if (out.size() < n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "page %s: output buffer holds %d bytes, the page has %d", key.Hex(), out.size(), n));
  }
  const PageInfo info = InfoOf(e);
  const uint32_t version = e.version;
  counters_.hits[static_cast<int>(e.tier)]++;
  table_.Touch(idx);
  if (e.tier == Tier::kSsd) {
    std::string bytes;
    if (absl::Status s = ReadSsdUnlocked(idx, &bytes); !s.ok()) return s;
    std::memcpy(out.data(), bytes.data(), n);
    PageEntry& now = table_.at(idx);
    if (options_.promote_on_hit && now.version == version && now.state == PageState::kReady &&
        now.tier == Tier::kSsd) {
      // A failed promotion (host full of pinned pages) leaves the page on SSD; the read succeeded.
      if (PromoteFromSsd(idx, Tier::kHost, bytes).ok()) EnforceWatermarks(Tier::kHost);
    }
    return info;
  }
  const Tier tier = e.tier;
  const uint64_t offset = SlotOffset(e);
  e.readers++;
  mu_.Unlock();
  uint64_t got = 0;
  absl::Status copied;
  if (tier == Tier::kHost) {
    got = CopyAndChecksum(out.data(), mem_[1]->host_base() + offset, n);
  } else {
    copied = mem_[0]->Read(offset, out.data(), n);
    got = PageChecksum(out.data(), n);
  }
  mu_.Lock();
  EndRead(idx);
  if (!copied.ok()) return copied;
  if (got != info.checksum) {
    const PageEntry& now = table_.at(idx);
    if (now.version != version || now.state != PageState::kReady) {
      return absl::NotFoundError(absl::StrFormat("page %s was removed while read", key.Hex()));
    }
    if (now.tier != tier || SlotOffset(now) != offset) {
      // A lease moved it from the GPU to the host arena mid-copy: read it again where it is now.
      return absl::AbortedError(absl::StrFormat("page %s moved while read", key.Hex()));
    }
    counters_.checksum_failures++;
    DropCorrupt(idx, version);
    return absl::DataLossError(absl::StrFormat(
        "page %s in the %s tier failed its checksum; dropped", key.Hex(), TierName(tier)));
  }
  return info;
}

absl::StatusOr<ReadLease> StoreImpl::AcquireRead(std::string_view tenant, const PageKey& key,
                                                 absl::Duration duration) {
  return std::move(AcquireReads(tenant, {&key, 1}, duration)[0]);
}

std::vector<absl::StatusOr<ReadLease>> StoreImpl::AcquireReads(std::string_view tenant,
                                                               absl::Span<const PageKey> keys,
                                                               absl::Duration duration) {
  std::vector<absl::StatusOr<ReadLease>> out;
  out.reserve(keys.size());
  if (absl::Status s = CheckTenant(tenant); !s.ok()) {
    out.assign(keys.size(), s);
    return out;
  }
  if (duration <= absl::ZeroDuration()) duration = options_.default_lease_duration;
  duration = std::min(duration, options_.max_lease_duration);
  const uint64_t lease_ms =
      static_cast<uint64_t>(absl::ToInt64Milliseconds(absl::Ceil(duration, absl::Milliseconds(1))));
  absl::MutexLock lock(&mu_);
  // Per batch, not per key: the tenant's id (tenants are never removed), the clock (read again
  // after a lease that dropped the lock for an SSD read) and room for the new leases.
  const uint32_t tid = FindTenant(tenant);
  uint64_t now = NowMs();
  leases_.reserve(leases_.size() + keys.size());
  // The page table is far larger than the caches, so every key is looked up in a pipeline of
  // loads that never wait on one another: its index bucket is requested kBucket keys ahead, the
  // entries the bucket points at kEntry ahead, its entry's LRU neighbours (which the lease's Touch
  // rewrites) kNeighbours ahead; by its turn everything the lease touches is in the cache.
  constexpr int64_t kBucket = 12, kEntry = 8, kNeighbours = 4;
  const int64_t n = static_cast<int64_t>(keys.size());
  auto in_batch = [n](int64_t j) { return j >= 0 && j < n; };
  for (int64_t i = -kBucket; i < n; ++i) {  // key i is leased; keys ahead of it are loaded
    if (tid != kNil) {
      if (in_batch(i + kBucket)) table_.PrefetchIndex(tid, keys[i + kBucket]);
      if (in_batch(i + kEntry)) table_.PrefetchCandidates(tid, keys[i + kEntry]);
      if (in_batch(i + kNeighbours)) {
        if (const uint32_t ahead = table_.Find(tid, keys[i + kNeighbours]); ahead != kNil) {
          table_.PrefetchEntry(ahead);
        }
      }
    }
    if (i >= 0) out.push_back(LeaseLocked(tid, keys[i], lease_ms, now));
  }
  EnforceWatermarks(Tier::kHost);
  return out;
}

absl::StatusOr<ReadLease> StoreImpl::LeaseLocked(uint32_t tid, const PageKey& key,
                                                 uint64_t lease_ms, uint64_t& now) {
  uint32_t idx = kNil;
  Tier found = Tier::kHost;
  bool waited = false;
  for (;;) {
    idx = tid == kNil ? kNil : table_.Find(tid, key);
    if (idx != kNil && table_.at(idx).state != PageState::kReady) idx = kNil;
    if (idx == kNil) {
      counters_.misses++;
      return absl::NotFoundError(absl::StrFormat("page %s not found", key.Hex()));
    }
    found = table_.at(idx).tier;
    if (found != Tier::kSsd) break;
    std::string bytes;
    const uint32_t version = table_.at(idx).version;
    absl::Status s = ReadSsdUnlocked(idx, &bytes);
    if (absl::IsAborted(s)) continue;
    if (!s.ok()) return s;
    const PageEntry& e = table_.at(idx);
    if (e.version != version || e.state != PageState::kReady) {
      return absl::NotFoundError(absl::StrFormat("page %s was removed while read", key.Hex()));
    }
    if (e.tier == Tier::kSsd) {
      if (absl::Status s = PromoteFromSsd(idx, Tier::kHost, bytes); !s.ok()) {
        // No room while a checkpoint held pages: once more after it, from the start.
        if (absl::IsResourceExhausted(s) && !waited && AwaitCheckpointBatches()) {
          waited = true;
          continue;
        }
        return absl::Status(s.code(),
                            absl::StrFormat("page %s: cannot lease: %s", key.Hex(), s.message()));
      }
    }
    now = NowMs();  // the read took time
    break;
  }
  counters_.hits[static_cast<int>(found)]++;
  if (table_.at(idx).tier == Tier::kGpu) {
    if (absl::Status s = MoveBetweenMemory(idx, Tier::kHost); !s.ok()) return s;
  }
  PageEntry& e = table_.at(idx);
  const uint64_t deadline = now + lease_ms;
  e.leases++;
  e.lease_deadline_ms = std::max(e.lease_deadline_ms, deadline);
  table_.Touch(idx);
  const uint64_t id = next_lease_++;
  leases_[id] = LeaseRecord{idx, e.version, deadline};
  ReadLease lease;
  lease.lease_id = id;
  lease.key = key;
  lease.layout = classes_[e.cls].layout;
  lease.arena_offset = SlotOffset(e);
  lease.size = PageBytes(e);
  lease.checksum = e.checksum;
  lease.found_in = found;
  lease.expiry = epoch_ + absl::Milliseconds(deadline);
  if (leases_.size() >= lease_sweep_at_) SweepLeases(now);
  return lease;
}

absl::Status StoreImpl::ReleaseRead(uint64_t lease_id) { return ReleaseReads({&lease_id, 1}); }

absl::Status StoreImpl::ReleaseReads(absl::Span<const uint64_t> lease_ids) {
  absl::Status first;
  absl::MutexLock lock(&mu_);
  for (uint64_t lease_id : lease_ids) {
    if (lease_id == 0 || lease_id >= next_lease_) {
      if (first.ok()) {
        first = absl::NotFoundError(absl::StrFormat("lease %d was never issued", lease_id));
      }
      continue;
    }
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) continue;  // released before or swept after expiry
    const LeaseRecord rec = it->second;
    leases_.erase(it);
    PageEntry& e = table_.at(rec.idx);
    if (e.version == rec.version && e.leases > 0) e.leases--;
  }
  return first;
}

void StoreImpl::SweepLeases(uint64_t now_ms) {
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (it->second.deadline_ms <= now_ms) {
      PageEntry& e = table_.at(it->second.idx);
      if (e.version == it->second.version && e.leases > 0) e.leases--;
      leases_.erase(it++);
    } else {
      ++it;
    }
  }
  lease_sweep_at_ = std::max<size_t>(4096, 2 * leases_.size());
}

bool StoreImpl::Exists(std::string_view tenant, const PageKey& key) {
  if (!CheckTenant(tenant).ok()) return false;
  absl::MutexLock lock(&mu_);
  return FindReady(tenant, key) != kNil;
}

absl::StatusOr<PageInfo> StoreImpl::Stat(std::string_view tenant, const PageKey& key) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const uint32_t idx = FindReady(tenant, key);
  if (idx == kNil) return absl::NotFoundError(absl::StrFormat("page %s not found", key.Hex()));
  return InfoOf(table_.at(idx));
}

size_t StoreImpl::LongestCachedPrefix(std::string_view tenant, absl::Span<const PageKey> keys) {
  if (!CheckTenant(tenant).ok()) return 0;
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  while (n < keys.size() && FindReady(tenant, keys[n]) != kNil) ++n;
  return n;
}

absl::StatusOr<int> StoreImpl::TenantArenaFd(std::string_view tenant) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  uint32_t tid;
  {
    absl::MutexLock lock(&mu_);
    tid = InternTenant(tenant);
  }
  return mem_[1]->OwnerFd(tid);
}

HostArena StoreImpl::HostArenaInfo() const {
  HostArena a;
  a.size = mem_[1]->capacity_bytes();
  a.segment_bytes = host_segment_bytes_;
  a.base = mem_[1]->host_base();
  a.gpu_device = host_gpu_device_.load();
  return a;
}

absl::Status StoreImpl::MapHostTierForGpu(int device) {
  if (device < 0) return absl::InvalidArgumentError("MapHostTierForGpu: negative device");
  absl::MutexLock l(&mu_);  // segments are assigned and released under it
  if (absl::Status s = mem_[1]->MapForGpu(device); !s.ok()) return s;
  host_gpu_device_ = device;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> StoreImpl::PrepareHostTier(std::string_view tenant,
                                                    const PageLayout& layout, uint64_t bytes) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  uint64_t prepared = 0;
  while (prepared < bytes) {
    absl::MutexLock lock(&mu_);  // one segment per hold: other calls interleave
    const int cls = ClassOf(layout.Id(), /*add=*/false);
    if (cls < 0 || !classes_[cls].accepted) {
      return absl::InvalidArgumentError(
          absl::StrFormat("layout %s is not registered with this store", layout.ToString()));
    }
    const uint32_t tid = InternTenant(tenant);
    const uint64_t quota = tenants_[tid].quota.tier_bytes[static_cast<int>(Tier::kHost)];
    if (quota != 0 && prepared >= quota) break;  // the tenant could not fill more
    SlabAllocator& alloc = *alloc_[MemIndex(Tier::kHost)];
    const int ac = alloc.ClassFor(tid, classes_[cls].bytes);
    absl::StatusOr<bool> got = alloc.Prepare(ac);
    if (!got.ok()) return got.status();
    if (!*got) break;
    prepared += alloc.segment_bytes() / alloc.slot_bytes(ac) * alloc.slot_bytes(ac);
  }
  return prepared;
}

bool StoreImpl::HasTier(Tier tier) const { return Present(tier); }

absl::Status StoreImpl::HoldHostArena() {
  arena_holds_.fetch_add(1);
  if (arena_reclaim_.load()) {
    arena_holds_.fetch_sub(1);
    return absl::UnavailableError("a host segment is changing owner; lease the pages instead");
  }
  return absl::OkStatus();
}

void StoreImpl::ReleaseHostArena() { arena_holds_.fetch_sub(1); }

uint32_t StoreImpl::HostSegmentGeneration(uint64_t arena_offset) const {
  if (host_segment_bytes_ == 0 || arena_offset / host_segment_bytes_ >= host_segments_) return 0;
  return host_segment_gen_[arena_offset / host_segment_bytes_].load(std::memory_order_acquire);
}

absl::Status StoreImpl::Flush() {
  absl::MutexLock lock(&mu_);
  return ssd_ != nullptr ? ssd_->Flush() : absl::OkStatus();
}

}  // namespace pagoda
