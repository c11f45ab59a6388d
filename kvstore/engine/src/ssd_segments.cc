#include "ssd_segments.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pagoda {
namespace {

absl::Status FromErrno(int err, std::string_view what) {
  const std::string msg =
      absl::StrCat("SSD segments: ", std::string(what), ": ", std::strerror(err));
  if (err == ENOSPC || err == EFBIG || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::UnavailableError(msg);
}

// Batches start at multiples of this, so that aligned batches can go down with O_DIRECT.
constexpr uint64_t kAlign = 4096;
alignas(kAlign) const char kZeros[kAlign] = {};

bool Aligned(uint64_t v) { return v % kAlign == 0; }

// Makes the directory's entries durable: a segment file created (or unlinked) before a crash is
// then there (or gone) after it, as the metadata pointing into it expects.
absl::Status SyncDir(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return FromErrno(errno, absl::StrCat("open directory ", dir));
  const int rc = fsync(fd);
  const int err = errno;
  close(fd);
  if (rc != 0) return FromErrno(err, absl::StrCat("fsync directory ", dir));
  return absl::OkStatus();
}

}  // namespace

struct SegmentSet::Segment {
  uint32_t id = 0;
  int fd = -1;
  // The same file opened with O_DIRECT (-1 where the file system refuses it): aligned batches
  // bypass the page cache, so a demotion costs no page-cache allocation and evicts nothing.
  int direct_fd = -1;
  // Written by the one appending thread under mu_; read under mu_.
  uint64_t size = 0;
  uint64_t live = 0;
  bool sealed = false;
  // Appends so far, and how many of them the last completed fdatasync covered (a sync racing an
  // append must not mark the append's bytes durable).
  uint64_t appends = 0;
  uint64_t synced_appends = 0;
  ~Segment() {
    if (fd >= 0) close(fd);
    if (direct_fd >= 0) close(direct_fd);
  }
};

std::string SegmentSet::PathOf(uint32_t id) const { return absl::StrCat(dir_, "/", id, ".seg"); }

absl::StatusOr<std::unique_ptr<SegmentSet>> SegmentSet::Open(
    const std::string& dir, uint64_t segment_bytes, bool direct_writes,
    const absl::flat_hash_map<uint32_t, uint64_t>& live) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::UnavailableError(absl::StrCat("SSD segments: create ", dir, ": ", ec.message()));
  std::unique_ptr<SegmentSet> set(new SegmentSet(dir, segment_bytes, direct_writes));
  absl::MutexLock l(&set->mu_);
  uint32_t max_id = 0;
  for (const auto& [id, bytes] : live) max_id = std::max(max_id, id);
  for (const auto& f : fs::directory_iterator(dir, ec)) {
    const std::string name = f.path().filename().string();
    uint32_t id = 0;
    if (f.path().extension() != ".seg" || !absl::SimpleAtoi(f.path().stem().string(), &id) ||
        id == 0) {
      continue;  // not ours
    }
    max_id = std::max(max_id, id);
    auto it = live.find(id);
    if (it == live.end() || it->second == 0) {
      // No committed page refers to it: bytes of a batch whose metadata never landed, or a segment
      // emptied before a crash.
      fs::remove(f.path(), ec);
      continue;
    }
    auto seg = std::make_shared<Segment>();
    seg->id = id;
    seg->fd = open(f.path().c_str(), O_RDWR | O_CLOEXEC);
    if (seg->fd < 0) return FromErrno(errno, absl::StrCat("open ", f.path().string()));
    struct stat st;
    if (fstat(seg->fd, &st) != 0) return FromErrno(errno, "fstat");
    seg->size = static_cast<uint64_t>(st.st_size);
    seg->live = it->second;
    seg->sealed = true;
    set->segments_[id] = std::move(seg);
  }
  if (ec)
    return absl::UnavailableError(absl::StrCat("SSD segments: list ", dir, ": ", ec.message()));
  if (absl::Status s = SyncDir(dir); !s.ok()) return s;
  set->next_id_ = max_id + 1;
  return set;
}

SegmentSet::~SegmentSet() = default;

absl::Status SegmentSet::StartSegment() {
  if (active_ != nullptr) {
    active_->sealed = true;
    if (active_->live == 0) {
      segments_.erase(active_->id);
      unlink(PathOf(active_->id).c_str());
    }
    active_ = nullptr;
  }
  if (next_id_ == 0) return absl::ResourceExhaustedError("SSD segments: segment ids exhausted");
  auto seg = std::make_shared<Segment>();
  seg->id = next_id_;
  const std::string path = PathOf(seg->id);
  // O_EXCL: a leftover file of the same id (deleted at open, so only a foreign one) is never
  // appended to.
  seg->fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (seg->fd < 0) return FromErrno(errno, absl::StrCat("create ", path));
  if (absl::Status s = SyncDir(dir_); !s.ok()) {
    unlink(path.c_str());
    return s;  // seg closes its descriptor
  }
  if (direct_writes_) seg->direct_fd = open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  ++next_id_;
  segments_[seg->id] = seg;
  active_ = std::move(seg);
  return absl::OkStatus();
}

absl::StatusOr<SegmentLocation> SegmentSet::Append(absl::Span<const iovec> iov, uint64_t total) {
  std::shared_ptr<Segment> seg;
  uint64_t base = 0;
  {
    absl::MutexLock l(&mu_);
    if (active_ == nullptr || (active_->size > 0 && active_->size + total > segment_bytes_)) {
      if (absl::Status s = StartSegment(); !s.ok()) return s;
    }
    seg = active_;
    base = seg->size;
  }
  if (base + total + kAlign > UINT32_MAX) {
    return absl::InvalidArgumentError(
        "SSD segments: batch does not fit a segment's 32-bit offsets");
  }
  // Pad the batch to kAlign so the next one starts aligned (the padding is dead space).
  std::vector<iovec> all(iov.begin(), iov.end());
  const uint64_t pad = Aligned(total) ? 0 : kAlign - total % kAlign;
  if (pad > 0) all.push_back(iovec{const_cast<char*>(kZeros), pad});
  bool direct = seg->direct_fd >= 0 && Aligned(base);
  for (const iovec& v : all) {
    direct = direct && Aligned(reinterpret_cast<uintptr_t>(v.iov_base)) && Aligned(v.iov_len);
  }
  // The bytes go down outside the lock (readers never need the tail); only this thread appends.
  const uint64_t want = total + pad;
  uint64_t done = 0;
  size_t i = 0, skip = 0;  // all[i] is written up to `skip` bytes
  absl::Status failed;
  std::vector<iovec> chunk;
  while (done < want) {
    chunk.clear();
    for (size_t j = i; j < all.size() && chunk.size() < IOV_MAX; ++j) {
      iovec v = all[j];
      if (j == i) {
        v.iov_base = static_cast<char*>(v.iov_base) + skip;
        v.iov_len -= skip;
      }
      chunk.push_back(v);
    }
    const ssize_t n = pwritev(direct ? seg->direct_fd : seg->fd, chunk.data(),
                              static_cast<int>(chunk.size()), static_cast<off_t>(base + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && direct) {
      direct = false;  // the device wants a stricter alignment: buffered from here on
      continue;
    }
    if (n <= 0) {
      failed = FromErrno(n < 0 ? errno : ENOSPC, absl::StrCat("append to segment ", seg->id));
      break;
    }
    done += static_cast<uint64_t>(n);
    // Advance (i, skip) past n bytes.
    uint64_t left = static_cast<uint64_t>(n);
    while (left > 0 && i < all.size()) {
      const uint64_t rest = all[i].iov_len - skip;
      if (left >= rest) {
        left -= rest;
        ++i;
        skip = 0;
      } else {
        skip += left;
        left = 0;
      }
    }
    // A short direct write leaves an unaligned remainder: finish it buffered.
    if (direct && (!Aligned(done) || !Aligned(skip))) direct = false;
  }
  if (!failed.ok()) {
    TakeBack({seg->id, static_cast<uint32_t>(base)});
    return failed;
  }
  absl::MutexLock l(&mu_);
  seg->size = base + want;
  seg->appends++;
  return SegmentLocation{seg->id, static_cast<uint32_t>(base)};
}

void SegmentSet::TakeBack(SegmentLocation at) {
  absl::MutexLock l(&mu_);
  auto it = segments_.find(at.segment);
  if (it == segments_.end()) return;
  Segment& seg = *it->second;
  if (ftruncate(seg.fd, static_cast<off_t>(at.offset)) == 0) {
    seg.size = at.offset;
    return;
  }
  // The tail is unknown now: never append here again; the junk is dead space.
  struct stat st;
  if (fstat(seg.fd, &st) == 0) seg.size = static_cast<uint64_t>(st.st_size);
  if (active_ != nullptr && active_->id == seg.id) {
    seg.sealed = true;
    active_ = nullptr;
  }
}

void SegmentSet::ShrinkSegments(uint64_t bytes) {
  absl::MutexLock l(&mu_);
  segment_bytes_ = std::min(segment_bytes_, std::max<uint64_t>(bytes, kAlign));
  if (active_ == nullptr) return;
  active_->sealed = true;
  if (active_->live == 0) {
    segments_.erase(active_->id);
    unlink(PathOf(active_->id).c_str());
    SyncDir(dir_).IgnoreError();
  }
  active_ = nullptr;
}

void SegmentSet::SealActive() {
  absl::MutexLock l(&mu_);
  if (active_ == nullptr) return;
  struct stat st;
  if (fstat(active_->fd, &st) == 0) active_->size = static_cast<uint64_t>(st.st_size);
  active_->sealed = true;
  active_ = nullptr;
}

absl::Status SegmentSet::Sync(uint32_t segment) {
  std::shared_ptr<Segment> seg = Find(segment);
  if (seg == nullptr) return absl::OkStatus();
  uint64_t appends = 0;
  {
    absl::MutexLock l(&mu_);
    appends = seg->appends;
  }
  if (fdatasync(seg->fd) != 0) return FromErrno(errno, absl::StrCat("fdatasync segment ", segment));
  absl::MutexLock l(&mu_);
  seg->synced_appends = std::max(seg->synced_appends, appends);
  return absl::OkStatus();
}

absl::Status SegmentSet::SyncAll() {
  std::vector<uint32_t> dirty;
  {
    absl::MutexLock l(&mu_);
    for (const auto& [id, seg] : segments_) {
      if (seg->appends != seg->synced_appends) dirty.push_back(id);
    }
  }
  for (uint32_t id : dirty) {
    if (absl::Status s = Sync(id); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::shared_ptr<SegmentSet::Segment> SegmentSet::Find(uint32_t id) const {
  absl::MutexLock l(&mu_);
  auto it = segments_.find(id);
  return it == segments_.end() ? nullptr : it->second;
}

bool SegmentSet::Has(uint32_t segment) const { return Find(segment) != nullptr; }

absl::Status SegmentSet::Read(SegmentLocation at, char* out, size_t size) const {
  std::shared_ptr<Segment> seg = Find(at.segment);
  if (seg == nullptr) {
    return absl::NotFoundError(absl::StrCat("SSD segments: segment ", at.segment, " is missing"));
  }
  size_t done = 0;
  while (done < size) {
    const ssize_t n = pread(seg->fd, out + done, size - done, static_cast<off_t>(at.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FromErrno(errno, absl::StrCat("read segment ", at.segment));
    if (n == 0) {
      return absl::DataLossError(absl::StrCat("SSD segments: record at ", at.segment, ":",
                                              at.offset, "+", size, " points past the end of ",
                                              "its segment (", at.offset + done, " bytes)"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SegmentSet::CheckRange(SegmentLocation at, uint64_t size) const {
  std::shared_ptr<Segment> seg = Find(at.segment);
  if (seg == nullptr) {
    return absl::NotFoundError(absl::StrCat("SSD segments: segment ", at.segment, " is missing"));
  }
  struct stat st;
  if (fstat(seg->fd, &st) != 0) return FromErrno(errno, absl::StrCat("stat segment ", at.segment));
  if (uint64_t{at.offset} + size > static_cast<uint64_t>(st.st_size)) {
    return absl::DataLossError(absl::StrCat("SSD segments: record at ", at.segment, ":", at.offset,
                                            "+", size, " points past the end of its segment (",
                                            st.st_size, " bytes)"));
  }
  return absl::OkStatus();
}

void SegmentSet::AddLive(uint32_t segment, uint64_t bytes) {
  absl::MutexLock l(&mu_);
  auto it = segments_.find(segment);
  if (it != segments_.end()) it->second->live += bytes;
}

bool SegmentSet::SubLive(uint32_t segment, uint64_t bytes) {
  absl::MutexLock l(&mu_);
  auto it = segments_.find(segment);
  if (it == segments_.end()) return false;
  Segment& seg = *it->second;
  seg.live = seg.live > bytes ? seg.live - bytes : 0;
  return seg.sealed && seg.live == 0;
}

double SegmentSet::DeadFraction(uint32_t segment) const {
  absl::MutexLock l(&mu_);
  auto it = segments_.find(segment);
  if (it == segments_.end() || !it->second->sealed || it->second->size == 0) return 0;
  const Segment& seg = *it->second;
  return seg.live >= seg.size ? 0 : static_cast<double>(seg.size - seg.live) / seg.size;
}

void SegmentSet::Remove(uint32_t segment) {
  absl::MutexLock l(&mu_);
  auto it = segments_.find(segment);
  if (it == segments_.end()) return;
  if (active_ == it->second) active_ = nullptr;
  unlink(PathOf(segment).c_str());
  segments_.erase(it);  // open reads keep the descriptor until they finish
  // A failure only risks the file coming back after a crash; unreferenced, it goes at open.
  SyncDir(dir_).IgnoreError();
}

SegmentSet::Usage SegmentSet::GetUsage() const {
  absl::MutexLock l(&mu_);
  Usage u;
  for (const auto& [id, seg] : segments_) {
    u.segments++;
    u.file_bytes += seg->size;
    u.live_bytes += seg->live;
  }
  return u;
}

uint32_t SegmentSet::active() const {
  absl::MutexLock l(&mu_);
  return active_ == nullptr ? 0 : active_->id;
}

}  // namespace pagoda
