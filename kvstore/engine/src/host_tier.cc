#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "memory_tier.h"

namespace pagoda {
namespace {

class HostTier final : public MemoryTier {
 public:
  HostTier(int fd, uint8_t* base, uint64_t capacity) : fd_(fd), base_(base), capacity_(capacity) {}
  ~HostTier() override {
    munmap(base_, capacity_);
    close(fd_);
  }
  Tier tier() const override { return Tier::kHost; }
  uint64_t capacity_bytes() const override { return capacity_; }
  uint8_t* host_base() const override { return base_; }
  int fd() const override { return fd_; }
  absl::Status Write(uint64_t offset, const void* src, size_t n) override {
    std::memcpy(base_ + offset, src, n);
    return absl::OkStatus();
  }
  absl::Status Read(uint64_t offset, void* dst, size_t n) override {
    std::memcpy(dst, base_ + offset, n);
    return absl::OkStatus();
  }

 private:
  int fd_;
  uint8_t* base_;
  uint64_t capacity_;
};

absl::Status Errno(const char* what) {
  return absl::InternalError(absl::StrFormat("host tier: %s: %s", what, std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<MemoryTier>> CreateHostTier(uint64_t capacity_bytes) {
  if (capacity_bytes == 0) return absl::InvalidArgumentError("host tier: capacity is 0");
  const int fd = memfd_create("pagoda-host-arena", MFD_CLOEXEC);
  if (fd < 0) return Errno("memfd_create");
  if (ftruncate(fd, static_cast<off_t>(capacity_bytes)) != 0) {
    absl::Status s = Errno("ftruncate");
    close(fd);
    return s;
  }
  // Pre-fault so that the first write of a slot does not pay for page faults.
  void* p = mmap(nullptr, capacity_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) {
    absl::Status s = Errno("mmap");
    close(fd);
    return s;
  }
  return std::make_unique<HostTier>(fd, static_cast<uint8_t*>(p), capacity_bytes);
}

}  // namespace pagoda
