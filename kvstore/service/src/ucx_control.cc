#include "ucx_control.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "pagoda/transport/remote_key.h"
#include "pagoda/transport/transport.h"
#include "spdlog/spdlog.h"

namespace pagoda::service {
namespace {

void SetStatus(const absl::Status& s, v1::PageStatus* out) {
  out->set_code(static_cast<int32_t>(s.code()));
  if (!s.ok()) out->set_message(std::string(s.message()));
}

absl::Status CheckCount(int n, const char* what) {
  if (n < 1 || n > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a batch holds 1..4096 entries, got ", n));
  }
  return absl::OkStatus();
}

}  // namespace

UcxControl::UcxControl(Store* store, ServiceMetrics* metrics, UcxControlOptions options)
    : store_(store), metrics_(metrics), options_(options) {}

UcxControl::TenantView::~TenantView() {
  registration.reset();
  if (base != nullptr) munmap(base, size);
}

absl::StatusOr<std::unique_ptr<UcxControl>> UcxControl::Create(Store* store,
                                                               ServiceMetrics* metrics,
                                                               UcxControlOptions options) {
  std::unique_ptr<UcxControl> c(new UcxControl(store, metrics, options));
  c->arena_ = store->HostArenaInfo();
  if (c->arena_.base == nullptr || c->arena_.size == 0) {
    return absl::FailedPreconditionError("UCX path: the store has no host arena");
  }
  TransportOptions to;
  to.net_devices = options.net_devices;
  absl::StatusOr<std::unique_ptr<Transport>> t = Transport::Create(to);
  if (!t.ok()) return t.status();
  c->transport_ = std::move(*t);
  c->address_ = EncodePeerAddress(c->transport_->address());
  spdlog::warn(
      "UCX path: {} on network devices '{}' serves tenants' host pages; UCX's software RMA does "
      "not enforce remote keys, so every peer that can reach it is trusted",
      c->transport_->name(), options.net_devices);
  return c;
}

UcxControl::~UcxControl() {
  absl::MutexLock l(&mu_);
  for (const auto& [id, slot] : slots_) (void)store_->Abort(id);
  for (const auto& [id, lease] : leases_) (void)store_->ReleaseRead(id);
  slots_.clear();
  leases_.clear();
  views_.clear();  // registrations go before the transport
}

size_t UcxControl::open_leases() const {
  absl::MutexLock l(&mu_);
  return leases_.size();
}

size_t UcxControl::open_reservations() const {
  absl::MutexLock l(&mu_);
  return slots_.size();
}

void UcxControl::SweepNow() {
  absl::MutexLock l(&mu_);
  Sweep(/*now=*/true);
}

void UcxControl::Sweep(bool force) {
  const absl::Time now = absl::Now();
  if (!force && now < next_sweep_) return;
  next_sweep_ = now + absl::Milliseconds(100);
  std::vector<uint64_t> gone;
  for (const auto& [id, lease] : leases_) {
    if (lease.expiry <= now) gone.push_back(id);
  }
  for (uint64_t id : gone) {
    (void)store_->ReleaseRead(id);
    leases_.erase(id);
  }
  gone.clear();
  for (const auto& [id, slot] : slots_) {
    if (slot.deadline <= now) gone.push_back(id);
  }
  for (uint64_t id : gone) {
    spdlog::info("UCX path: reservation {} of tenant {} expired uncommitted; aborted", id,
                 slots_[id].tenant);
    (void)store_->Abort(id);
    slots_.erase(id);
  }
}

absl::Status UcxControl::Hello(const std::string& tenant, v1::UcxHelloResponse* response) {
  absl::MutexLock l(&mu_);
  std::unique_ptr<TenantView>& view = views_[tenant];
  if (view == nullptr) {
    absl::StatusOr<int> fd = store_->TenantArenaFd(tenant);
    if (!fd.ok()) {
      views_.erase(tenant);
      return fd.status();
    }
    auto v = std::make_unique<TenantView>();
    void* m = mmap(nullptr, arena_.size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (m == MAP_FAILED) {
      views_.erase(tenant);
      return absl::InternalError(absl::StrCat("UCX path: mmap of tenant pages: ", strerror(errno)));
    }
    v->base = static_cast<uint8_t*>(m);
    v->size = arena_.size;
    absl::StatusOr<std::unique_ptr<RegisteredMemory>> reg =
        transport_->Register(v->base, v->size, MemoryKind::kHost);
    absl::StatusOr<std::string> key =
        reg.ok() ? (*reg)->PackRemoteKey() : absl::StatusOr<std::string>(reg.status());
    if (!key.ok()) {
      views_.erase(tenant);
      return key.status();
    }
    v->registration = std::move(*reg);
    v->key = *key;
    view = std::move(v);
  }
  response->set_worker_address(address_);
  response->set_arena_key(view->key);
  response->set_arena_bytes(arena_.size);
  response->set_instance_id(options_.instance_id);
  response->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.default_lease)));
  return absl::OkStatus();
}

absl::Status UcxControl::Acquire(const v1::UcxAcquireRequest& request,
                                 v1::UcxAcquireResponse* response) {
  if (absl::Status s = CheckCount(request.keys_size(), "UcxAcquire"); !s.ok()) return s;
  const absl::Duration want =
      request.lease_ms() == 0
          ? options_.default_lease
          : std::min(options_.default_lease, absl::Milliseconds(request.lease_ms()));
  {
    absl::MutexLock l(&mu_);
    Sweep();
    if (leases_.size() + slots_.size() + request.keys_size() > options_.max_open) {
      return absl::ResourceExhaustedError("UCX path: too many open leases and reservations");
    }
  }
  // The store calls run outside mu_ (a page may come up from SSD); only the table is locked.
  std::vector<std::pair<uint64_t, Lease>> taken;
  uint64_t bytes = 0;
  for (const v1::PageKey& k : request.keys()) {
    v1::UcxLease* out = response->add_leases();
    absl::StatusOr<ReadLease> lease =
        store_->AcquireRead(request.tenant(), PageKey{k.hi(), k.lo()}, want);
    if (lease.ok()) {
      taken.push_back({lease->lease_id, Lease{request.tenant(), lease->expiry}});
      out->set_lease(lease->lease_id);
      out->set_offset(lease->arena_offset);
      out->set_size(lease->size);
      out->set_checksum(lease->checksum);
      out->set_layout_id(lease->layout.Id());
      bytes += lease->size;
    }
    SetStatus(lease.status(), out->mutable_status());
  }
  {
    absl::MutexLock l(&mu_);
    for (auto& [id, lease] : taken) leases_[id] = std::move(lease);
  }
  metrics_->AddBytesOut("ucx", bytes);
  return absl::OkStatus();
}

absl::Status UcxControl::Release(const v1::UcxReleaseRequest& request,
                                 v1::BatchResponse* response) {
  if (absl::Status s = CheckCount(request.leases_size(), "UcxRelease"); !s.ok()) return s;
  absl::MutexLock l(&mu_);
  for (uint64_t id : request.leases()) {
    absl::Status st;
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second.tenant != request.tenant()) {
      st = absl::NotFoundError(
          absl::StrCat("no open lease ", id, " of this tenant (released or expired)"));
    } else if (it->second.expiry <= absl::Now()) {
      leases_.erase(it);
      (void)store_->ReleaseRead(id);
      st = absl::NotFoundError(absl::StrCat("lease ", id, " expired"));
    } else {
      leases_.erase(it);
      st = store_->ReleaseRead(id);
    }
    SetStatus(st, response->add_results());
  }
  Sweep();
  return absl::OkStatus();
}

absl::Status UcxControl::Reserve(const v1::PutBegin& request, v1::UcxReserveResponse* response) {
  const int n = request.pages_size();
  if (absl::Status s = CheckCount(n, "UcxReserve"); !s.ok()) return s;
  // Validate the whole batch first: a malformed batch reserves nothing.
  std::vector<PageLayout> layouts(n);
  absl::flat_hash_set<PageKey> seen;
  for (int i = 0; i < n; ++i) {
    const v1::PutPage& p = request.pages(i);
    absl::StatusOr<PageLayout> lay = PageLayout::FromId(p.layout_id());
    if (!lay.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("UcxReserve: page ", i, ": unknown layout id ",
                                                     p.layout_id(), ": ", lay.status().message()));
    }
    if (lay->PageBytes() != p.size()) {
      return absl::InvalidArgumentError(absl::StrCat("UcxReserve: page ", i, ": size ", p.size(),
                                                     " does not match layout ", lay->ToString(),
                                                     " (", lay->PageBytes(), " bytes)"));
    }
    if (!p.data().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("UcxReserve: page ", i, ": carries bytes (they go over UCX)"));
    }
    if (!seen.insert(PageKey{p.key().hi(), p.key().lo()}).second) {
      return absl::InvalidArgumentError(absl::StrCat("UcxReserve: page ", i, ": duplicate key"));
    }
    layouts[i] = *lay;
  }
  {
    absl::MutexLock l(&mu_);
    Sweep();
    if (leases_.size() + slots_.size() + n > options_.max_open) {
      return absl::ResourceExhaustedError("UCX path: too many open leases and reservations");
    }
  }
  // The store calls run outside mu_ (a reservation may evict); only the table is locked.
  const absl::Time deadline = absl::Now() + options_.reservation_ttl;
  std::vector<std::pair<uint64_t, Slot>> taken;
  for (int i = 0; i < n; ++i) {
    const v1::PutPage& p = request.pages(i);
    v1::UcxSlot* out = response->add_slots();
    absl::StatusOr<Reservation> r =
        store_->Reserve(request.tenant(), PageKey{p.key().hi(), p.key().lo()}, layouts[i]);
    if (r.ok()) {
      taken.push_back({r->id, Slot{request.tenant(), r->key, r->arena_offset, r->size, p.checksum(),
                                   deadline}});
      out->set_handle(r->id);
      out->set_offset(r->arena_offset);
    }
    SetStatus(r.status(), out->mutable_status());
  }
  absl::MutexLock l(&mu_);
  for (auto& [id, slot] : taken) slots_[id] = std::move(slot);
  return absl::OkStatus();
}

absl::Status UcxControl::Commit(const v1::UcxCommitRequest& request, v1::PutResponse* response) {
  if (request.commit_size() + request.abort_size() < 1 ||
      request.commit_size() + request.abort_size() > 8192) {
    return absl::InvalidArgumentError("UcxCommit: 1..8192 handles per call");
  }
  // Take the tenant's own handles out of the table first (so none is used twice), then verify and
  // publish outside mu_ (checksumming MiB pages).
  std::vector<absl::Status> found(request.commit_size());
  std::vector<Slot> slots(request.commit_size());
  std::vector<uint64_t> aborts;
  {
    absl::MutexLock l(&mu_);
    Sweep();
    for (uint64_t id : request.abort()) {
      auto it = slots_.find(id);
      if (it != slots_.end() && it->second.tenant == request.tenant()) {
        slots_.erase(it);
        aborts.push_back(id);
      }
    }
    for (int i = 0; i < request.commit_size(); ++i) {
      const uint64_t id = request.commit(i);
      auto it = slots_.find(id);
      if (it == slots_.end() || it->second.tenant != request.tenant()) {
        found[i] = absl::NotFoundError(absl::StrCat(
            "no open reservation ", id, " of this tenant (committed, aborted or expired)"));
      } else {
        slots[i] = it->second;
        slots_.erase(it);
      }
    }
  }
  for (uint64_t id : aborts) (void)store_->Abort(id);
  uint64_t bytes = 0;
  for (int i = 0; i < request.commit_size(); ++i) {
    const uint64_t id = request.commit(i);
    absl::Status st = found[i];
    if (st.ok()) {
      const Slot& slot = slots[i];
      // The client hashed what it meant to write; the slot must hold exactly that.
      if (PageChecksum(arena_.base + slot.offset, slot.size) != slot.checksum) {
        (void)store_->Abort(id);
        st = absl::DataLossError(
            "checksum of the slot does not match the reserved one (incomplete or damaged "
            "write); page aborted");
      } else {
        st = store_->Commit(id);
        if (st.ok()) bytes += slot.size;
      }
    }
    SetStatus(st, response->add_results());
  }
  metrics_->AddBytesIn("ucx", bytes);
  return absl::OkStatus();
}

}  // namespace pagoda::service
