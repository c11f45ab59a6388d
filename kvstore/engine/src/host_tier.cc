#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "memory_tier.h"

namespace pagoda {
namespace {

absl::Status Errno(const char* what) {
  return absl::InternalError(absl::StrFormat("host tier: %s: %s", what, std::strerror(errno)));
}

// The store's view of the tier is one range of address space; each assigned segment of it is a
// MAP_FIXED window onto the same range of its owner's memfd, so tier offsets are memfd offsets
// and a client of tenant T (which maps T's memfd) sees T's pages where the store put them and
// nothing of anyone else's. Unassigned segments are PROT_NONE.
class HostTier final : public MemoryTier {
 public:
  HostTier(uint8_t* base, uint64_t capacity, uint64_t mapped)
      : base_(base), capacity_(capacity), mapped_(mapped) {}
  ~HostTier() override {
    if (pin_device_ >= 0) {
      for (uint64_t off : pinned_) UnpinHostMemoryForGpu(base_ + off);
    }
    munmap(base_, mapped_);
    for (int fd : fds_) {
      if (fd >= 0) close(fd);
    }
  }
  Tier tier() const override { return Tier::kHost; }
  uint64_t capacity_bytes() const override { return capacity_; }
  uint8_t* host_base() const override { return base_; }
  absl::Status Write(uint64_t offset, const void* src, size_t n) override {
    std::memcpy(base_ + offset, src, n);
    return absl::OkStatus();
  }
  absl::Status Read(uint64_t offset, void* dst, size_t n) override {
    std::memcpy(dst, base_ + offset, n);
    return absl::OkStatus();
  }

  absl::Status AssignSegment(uint64_t offset, uint64_t bytes, uint32_t owner) override {
    absl::StatusOr<int> fd = OwnerFd(owner);
    if (!fd.ok()) return fd.status();
    void* p = mmap(base_ + offset, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, *fd,
                   static_cast<off_t>(offset));
    if (p == MAP_FAILED) return Errno("mmap of a segment");
    AdviseAndPopulate(base_ + offset, bytes);
    if (pin_device_ >= 0) {
      absl::Status pin = PinHostMemoryForGpu(base_ + offset, bytes, pin_device_);
      if (pin.ok()) {
        pinned_.push_back(offset);
      } else if (pin_required_) {  // a device reads this tier: never hand out an unpinned segment
        Unmap(offset, bytes);
        return pin;
      }
    }
    assigned_[offset] = bytes;
    return absl::OkStatus();
  }

  absl::Status MapForGpu(int device) override {
    if (pin_required_) {
      return device == pin_device_
                 ? absl::OkStatus()
                 : absl::FailedPreconditionError(absl::StrFormat(
                       "host tier: already mapped for GPU %d, not %d", pin_device_, device));
    }
    if (pin_device_ >= 0 && pin_device_ != device) {
      return absl::FailedPreconditionError(
          absl::StrFormat("host tier: pinned for GPU %d, not %d", pin_device_, device));
    }
    if (absl::Status s = CheckGpuReadsHostMemory(device); !s.ok()) return s;
    for (const auto& [offset, bytes] : assigned_) {
      if (std::find(pinned_.begin(), pinned_.end(), offset) != pinned_.end()) continue;
      if (absl::Status s = PinHostMemoryForGpu(base_ + offset, bytes, device); !s.ok()) return s;
      pinned_.push_back(offset);
    }
    pin_device_ = device;
    pin_required_ = true;
    return absl::OkStatus();
  }

  void ReleaseSegment(uint64_t offset, uint64_t bytes, uint32_t owner) override {
    for (size_t i = 0; i < pinned_.size(); ++i) {
      if (pinned_[i] == offset) {
        UnpinHostMemoryForGpu(base_ + offset);
        pinned_[i] = pinned_.back();
        pinned_.pop_back();
        break;
      }
    }
    assigned_.erase(offset);
    // Detach the range from the owner's file, then give its memory back: the next owner's bytes
    // never share a page with these, and clients of `owner` that still map it read zeros there.
    Unmap(offset, bytes);
    absl::MutexLock l(&mu_);
    if (owner < fds_.size() && fds_[owner] >= 0) {
      fallocate(fds_[owner], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(bytes));
    }
  }

  absl::StatusOr<int> OwnerFd(uint32_t owner) override {
    absl::MutexLock l(&mu_);
    if (owner < fds_.size() && fds_[owner] >= 0) return fds_[owner];
    const int fd = memfd_create("pagoda-host-tenant", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return Errno("memfd_create");
    // Sealed at its full size: a client holding it can neither shrink it (which would make the
    // store's next access SIGBUS) nor grow it; further seals cannot be added or removed.
    if (ftruncate(fd, static_cast<off_t>(mapped_)) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
      absl::Status s = Errno("ftruncate / seal of a tenant memfd");
      close(fd);
      return s;
    }
    if (owner >= fds_.size()) fds_.resize(owner + 1, -1);
    fds_[owner] = fd;
    return fd;
  }

  void PinForGpu(int device) override {
    if (!pin_required_) pin_device_ = device;
  }

 private:
  void Unmap(uint64_t offset, uint64_t bytes) {
    mmap(base_ + offset, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
         -1, 0);
  }

  // Transparent huge pages where the kernel allows them for shared memory
  // (/sys/kernel/mm/transparent_hugepage/shmem_enabled "advise" or "always"; the range is 2 MiB
  // aligned): faulting in and page-locking a large arena took 2-3x less time on a GPU host
  // (bench/RESULTS.md, model decode throughput; the GPU's gather from it was as fast either way).
  // Then the segment's pages are faulted in now rather than on first write (what MAP_POPULATE
  // did, which would fault them before the advice).
  static void AdviseAndPopulate(uint8_t* p, uint64_t bytes) {
    (void)madvise(p, bytes, MADV_HUGEPAGE);  // EINVAL without THP: small pages, as before
    if (madvise(p, bytes, kMadvPopulateWrite) == 0) return;
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    for (uint64_t off = 0; off < bytes; off += page) {  // kernels before 5.14: touch each page
      (void)*reinterpret_cast<volatile const uint8_t*>(p + off);
    }
  }
  static constexpr int kMadvPopulateWrite = 23;  // MADV_POPULATE_WRITE (Linux 5.14)

  uint8_t* const base_;
  const uint64_t capacity_;
  const uint64_t mapped_;  // capacity_ rounded up to whole OS pages
  int pin_device_ = -1;
  bool pin_required_ = false;     // MapForGpu: a segment that cannot be pinned is not assigned
  std::vector<uint64_t> pinned_;  // offsets of segments registered with CUDA (store lock held)
  std::map<uint64_t, uint64_t> assigned_;      // offset -> bytes of assigned segments (store lock)
  absl::Mutex mu_;                             // OwnerFd is also called outside the store lock
  std::vector<int> fds_ ABSL_GUARDED_BY(mu_);  // memfd by owner, -1 = none yet
};

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryTier>> CreateHostTier(uint64_t capacity_bytes) {
  if (capacity_bytes == 0) return absl::InvalidArgumentError("host tier: capacity is 0");
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t mapped = (capacity_bytes + page - 1) / page * page;
  // The range starts on a 2 MiB boundary (huge pages can back it; see AdviseAndPopulate): reserve
  // 2 MiB more, then give back what lies outside the aligned range.
  constexpr uint64_t kHuge = uint64_t{2} << 20;
  void* p =
      mmap(nullptr, mapped + kHuge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return Errno("mmap");
  uint8_t* const raw = static_cast<uint8_t*>(p);
  uint8_t* const base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + kHuge - 1) &
                                                   ~uintptr_t{kHuge - 1});
  if (base > raw) munmap(raw, static_cast<size_t>(base - raw));
  if (base + mapped < raw + mapped + kHuge) {
    munmap(base + mapped, static_cast<size_t>(raw + mapped + kHuge - (base + mapped)));
  }
  return std::make_unique<HostTier>(base, capacity_bytes, mapped);
}

}  // namespace pagoda
