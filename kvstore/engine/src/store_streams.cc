// Store: removal, pins, rolling-window streams and statistics.
#include "absl/strings/str_format.h"
#include "store_impl.h"

namespace pagoda {

absl::Status StoreImpl::Remove(std::string_view tenant, const PageKey& key) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const uint32_t idx = FindReady(tenant, key);
  if (idx == kNil) return absl::NotFoundError(absl::StrFormat("page %s not found", key.Hex()));
  RemoveEntry(idx);
  counters_.removes++;
  return absl::OkStatus();
}

absl::Status StoreImpl::Pin(std::string_view tenant, const PageKey& key) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const uint32_t idx = FindReady(tenant, key);
  if (idx == kNil) return absl::NotFoundError(absl::StrFormat("page %s not found", key.Hex()));
  PageEntry& e = table_.at(idx);
  if (e.pins == 0xFFFF) {
    return absl::ResourceExhaustedError(absl::StrFormat("page %s: too many pins", key.Hex()));
  }
  if (e.pins == 0) {
    TenantState& t = tenants_[e.tenant];
    const uint64_t quota =
        t.quota.pinned_bytes != 0 ? t.quota.pinned_bytes : options_.default_pin_quota_bytes;
    const uint64_t n = PageBytes(e);
    if (t.pinned + n > quota) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("tenant %s is over its pin quota (%d pinned + %d > %d bytes)", tenant,
                          t.pinned, n, quota));
    }
    t.pinned += n;
    pinned_bytes_ += n;
  }
  e.pins++;
  return absl::OkStatus();
}

absl::Status StoreImpl::Unpin(std::string_view tenant, const PageKey& key) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const uint32_t idx = FindReady(tenant, key);
  if (idx == kNil) return absl::NotFoundError(absl::StrFormat("page %s not found", key.Hex()));
  PageEntry& e = table_.at(idx);
  if (e.pins == 0) {
    return absl::FailedPreconditionError(absl::StrFormat("page %s is not pinned", key.Hex()));
  }
  if (--e.pins == 0) {
    tenants_[e.tenant].pinned -= PageBytes(e);
    pinned_bytes_ -= PageBytes(e);
  }
  return absl::OkStatus();
}

absl::Status StoreImpl::OpenStream(std::string_view tenant, uint64_t stream_id,
                                   const StreamOptions& options) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  if (stream_id == 0) return absl::InvalidArgumentError("stream id 0 is reserved for 'no stream'");
  if (options.window_pages == 0) {
    return absl::InvalidArgumentError("stream window_pages must be at least 1");
  }
  absl::MutexLock lock(&mu_);
  const uint32_t tid = InternTenant(tenant);
  StreamState st;
  st.options = options;
  if (!streams_.try_emplace({tid, stream_id}, std::move(st)).second) {
    return absl::AlreadyExistsError(
        absl::StrFormat("stream %d of tenant %s is already open", stream_id, tenant));
  }
  return absl::OkStatus();
}

absl::Status StoreImpl::CloseStream(std::string_view tenant, uint64_t stream_id) {
  if (absl::Status s = CheckTenant(tenant); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const uint32_t tid = FindTenant(tenant);
  if (tid == kNil || streams_.erase({tid, stream_id}) == 0) {
    return absl::NotFoundError(
        absl::StrFormat("stream %d of tenant %s is not open", stream_id, tenant));
  }
  return absl::OkStatus();
}

void StoreImpl::AddToStream(uint32_t idx, uint64_t stream_id) {
  PageEntry& e = table_.at(idx);
  auto it = streams_.find({e.tenant, stream_id});
  if (it == streams_.end()) return;  // closed between Reserve and Commit: an ordinary page
  StreamState& s = it->second;
  if (s.sinks_taken < s.options.sink_pages) {
    s.sinks_taken++;  // attention sinks stay for the stream's life
    return;
  }
  s.window.push_back(EntryRef{idx, e.version});
  while (s.window.size() > s.options.window_pages) {
    const EntryRef old = s.window.front();
    s.window.pop_front();
    const PageEntry& o = table_.at(old.idx);
    // Gone already (removed, evicted out of the store, reused), or pinned by the caller: nothing
    // to do. Leases do not keep a page in the window (they are bounded and carry the checksum).
    if (o.version != old.version || o.state != PageState::kReady || o.pins > 0) continue;
    RemoveEntry(old.idx);
    counters_.window_dropped++;
  }
}

StoreStats StoreImpl::Stats() {
  absl::MutexLock lock(&mu_);
  StoreStats s;
  for (int t = 0; t < kNumTiers; ++t) {
    TierStats& ts = s.tiers[t];
    const Tier tier = static_cast<Tier>(t);
    ts.present = Present(tier);
    ts.capacity_bytes = tier == Tier::kSsd ? (ssd_ != nullptr ? options_.ssd_capacity_bytes : 0)
                        : ts.present       ? mem_[MemIndex(tier)]->capacity_bytes()
                                           : 0;
    ts.used_bytes = used_[t];
    ts.pages = pages_[t];
    ts.hits = counters_.hits[t];
    ts.evictions = counters_.evictions[t];
    ts.promotions = counters_.promotions[t];
    ts.bytes_in = counters_.bytes_in[t];
    ts.bytes_out = counters_.bytes_out[t];
  }
  s.pages = table_.size();
  s.misses = counters_.misses;
  s.puts = counters_.puts;
  s.removes = counters_.removes;
  s.dropped = counters_.dropped;
  s.window_dropped = counters_.window_dropped;
  s.checksum_failures = counters_.checksum_failures;
  s.ssd_write_failures = counters_.ssd_write_failures;
  s.memory_only_pages = pages_[0] + pages_[1] - ssd_copy_pages_;
  s.ssd_copy_bytes = ssd_copy_bytes_;
  s.checkpoints = counters_.checkpoints;
  s.checkpoint_failures = counters_.checkpoint_failures;
  s.last_checkpoint_start = last_checkpoint_start_;
  if (ssd_ != nullptr) s.ssd_disk_bytes = SsdDiskBytes();
  s.ssd_limit_bytes = ssd_limit_;
  s.ssd_full = counters_.ssd_full;
  s.ssd_regrown = counters_.ssd_regrown;
  s.active_leases = leases_.size();
  s.pinned_bytes = pinned_bytes_;
  uint64_t meta = table_.MetadataBytes();
  for (int i = 0; i < 2; ++i) {
    if (alloc_[i] != nullptr) meta += alloc_[i]->MetadataBytes();
  }
  meta += leases_.capacity() * (sizeof(uint64_t) + sizeof(LeaseRecord) + 1);
  meta += reservations_.capacity() * (sizeof(uint64_t) + sizeof(PendingWrite) + 1);
  meta += tenants_.capacity() * sizeof(TenantState) + tenant_ids_.capacity() * 40;
  for (const auto& [k, st] : streams_) meta += sizeof(st) + st.window.size() * sizeof(EntryRef);
  s.metadata_bytes = meta;
  return s;
}

}  // namespace pagoda
