#include "pagoda/transport/kv_handoff.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "pagoda/transport/cuda_ipc.h"
#include "pagoda/transport/gpu_copy.h"
#include "transport/src/cuda/cuda_status.h"

namespace pagoda {
namespace {

constexpr uint64_t kMagic = 0x31464f4448564b50ULL;  // "PKVHDOF1"
constexpr size_t kMaxPoolHandle = 256;

struct LayerSlot {
  std::atomic<uint32_t> published;  // publications so far
  std::atomic<uint32_t> consumed;   // publications copied out by the receiver
  uint32_t num_pages;
  uint32_t pad;
  cudaIpcEventHandle_t event;
};

struct Header {
  uint64_t magic;
  std::atomic<uint32_t> ready;  // 1 once every field below is written
  int32_t num_layers;
  int32_t max_pages;
  uint32_t pool_handle_len;
  uint64_t page_bytes;
  uint64_t pool_bytes;
  char pool_handle[kMaxPoolHandle];
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);

size_t SegmentBytes(int32_t layers, int32_t max_pages) {
  return sizeof(Header) + layers * sizeof(LayerSlot) + size_t(layers) * max_pages * 8;
}
LayerSlot* Slots(Header* h) { return reinterpret_cast<LayerSlot*>(h + 1); }
uint64_t* Offsets(Header* h, int layer) {
  return reinterpret_cast<uint64_t*>(Slots(h) + h->num_layers) + size_t(layer) * h->max_pages;
}

absl::StatusOr<std::string> ShmName(const std::string& name) {
  if (name.empty() || name.size() > 200) {
    return absl::InvalidArgumentError("handoff name must be 1..200 characters");
  }
  for (char c : name) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return absl::InvalidArgumentError(
          absl::StrCat("handoff name \"", name, "\": only letters, digits, '-', '_', '.'"));
    }
  }
  return "/pagoda-kv-" + name;
}

// Polls `done` until true or `deadline`: a short spin, then 10 us naps.
template <typename Pred>
bool WaitUntil(Pred done, absl::Time deadline) {
  for (int i = 0; !done(); ++i) {
    if (i > 1000) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Microseconds(10));
    }
  }
  return true;
}

class SenderImpl final : public KvHandoffSender {
 public:
  ~SenderImpl() override {
    if (header_ != nullptr) munmap(header_, bytes_);
    if (!shm_name_.empty()) shm_unlink(shm_name_.c_str());
    for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);
  }

  absl::Status Init(const std::string& name, void* pool, size_t pool_bytes,
                    const KvHandoffShape& shape) {
    auto shm = ShmName(name);
    if (!shm.ok()) return shm.status();
    if (pool == nullptr || pool_bytes == 0) {
      return absl::InvalidArgumentError("handoff pool is null or empty");
    }
    if (shape.num_layers <= 0 || shape.max_pages_per_layer <= 0 || shape.page_bytes == 0 ||
        shape.page_bytes > pool_bytes) {
      return absl::InvalidArgumentError("handoff shape needs layers, pages and page_bytes > 0");
    }
    auto handle = ExportCudaIpc(pool, pool_bytes);
    if (!handle.ok()) return handle.status();
    if (handle->size() > kMaxPoolHandle) return absl::InternalError("IPC handle too large");
    for (int l = 0; l < shape.num_layers; ++l) {
      cudaEvent_t e;
      cudaError_t err =
          cudaEventCreateWithFlags(&e, cudaEventInterprocess | cudaEventDisableTiming);
      if (err != cudaSuccess) return internal::FromCuda(err, "cudaEventCreateWithFlags");
      events_.push_back(e);
    }
    int fd = shm_open(shm->c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      if (errno == EEXIST) return absl::AlreadyExistsError(absl::StrCat("handoff ", name));
      return absl::InternalError(absl::StrCat("shm_open: ", std::strerror(errno)));
    }
    shm_name_ = *shm;
    bytes_ = SegmentBytes(shape.num_layers, shape.max_pages_per_layer);
    if (ftruncate(fd, static_cast<off_t>(bytes_)) != 0) {
      close(fd);
      return absl::InternalError(absl::StrCat("ftruncate: ", std::strerror(errno)));
    }
    void* m = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap: ", std::strerror(errno)));
    header_ = static_cast<Header*>(m);  // zero-filled by ftruncate
    header_->magic = kMagic;
    header_->num_layers = shape.num_layers;
    header_->max_pages = shape.max_pages_per_layer;
    header_->page_bytes = shape.page_bytes;
    header_->pool_bytes = pool_bytes;
    header_->pool_handle_len = static_cast<uint32_t>(handle->size());
    std::memcpy(header_->pool_handle, handle->data(), handle->size());
    for (int l = 0; l < shape.num_layers; ++l) {
      cudaError_t err = cudaIpcGetEventHandle(&Slots(header_)[l].event, events_[l]);
      if (err != cudaSuccess) return internal::FromCuda(err, "cudaIpcGetEventHandle");
    }
    shape_ = shape;
    pool_bytes_ = pool_bytes;
    header_->ready.store(1, std::memory_order_release);
    return absl::OkStatus();
  }

  absl::Status PublishLayer(int layer, absl::Span<const uint64_t> page_offsets, cudaStream_t stream,
                            absl::Duration timeout) override {
    if (layer < 0 || layer >= shape_.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range"));
    }
    if (page_offsets.empty() ||
        page_offsets.size() > static_cast<size_t>(shape_.max_pages_per_layer)) {
      return absl::InvalidArgumentError(
          absl::StrCat(page_offsets.size(), " pages; 1..", shape_.max_pages_per_layer, " allowed"));
    }
    for (uint64_t off : page_offsets) {
      if (off > pool_bytes_ || shape_.page_bytes > pool_bytes_ - off) {
        return absl::InvalidArgumentError(
            absl::StrCat("page at offset ", off, " is outside the ", pool_bytes_, "-byte pool"));
      }
    }
    LayerSlot& slot = Slots(header_)[layer];
    uint32_t gen = slot.published.load(std::memory_order_relaxed);
    if (!WaitUntil([&] { return slot.consumed.load(std::memory_order_acquire) == gen; },
                   absl::Now() + timeout)) {
      return absl::DeadlineExceededError(
          absl::StrCat("layer ", layer, ": the receiver has not consumed the previous pages"));
    }
    std::memcpy(Offsets(header_, layer), page_offsets.data(), page_offsets.size() * 8);
    slot.num_pages = static_cast<uint32_t>(page_offsets.size());
    cudaError_t err = cudaEventRecord(events_[layer], stream);
    if (err != cudaSuccess) return internal::FromCuda(err, "cudaEventRecord");
    slot.published.store(gen + 1, std::memory_order_release);
    return absl::OkStatus();
  }

  absl::Status WaitConsumed(absl::Duration timeout) override {
    absl::Time deadline = absl::Now() + timeout;
    for (int l = 0; l < shape_.num_layers; ++l) {
      LayerSlot& slot = Slots(header_)[l];
      if (!WaitUntil(
              [&] {
                return slot.consumed.load(std::memory_order_acquire) ==
                       slot.published.load(std::memory_order_relaxed);
              },
              deadline)) {
        return absl::DeadlineExceededError(absl::StrCat("layer ", l, " not consumed in time"));
      }
    }
    return absl::OkStatus();
  }

 private:
  KvHandoffShape shape_;
  size_t pool_bytes_ = 0;
  std::string shm_name_;
  Header* header_ = nullptr;
  size_t bytes_ = 0;
  std::vector<cudaEvent_t> events_;
};

class ReceiverImpl final : public KvHandoffReceiver {
 public:
  ~ReceiverImpl() override {
    // Host callbacks still queued write into the segment: let them run first.
    (void)cudaDeviceSynchronize();
    for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);
    mapping_.reset();
    if (header_ != nullptr) munmap(header_, bytes_);
  }

  absl::Status Init(const std::string& name, absl::Duration timeout) {
    auto shm = ShmName(name);
    if (!shm.ok()) return shm.status();
    absl::Time deadline = absl::Now() + timeout;
    int fd = -1;
    if (!WaitUntil(
            [&] {
              fd = shm_open(shm->c_str(), O_RDWR, 0);
              return fd >= 0;
            },
            deadline)) {
      return absl::DeadlineExceededError(absl::StrCat("no handoff named ", name));
    }
    struct Header probe;
    size_t got = 0;
    // The sender sizes the segment before writing the header: wait for both.
    bool sized = WaitUntil(
        [&] {
          got = static_cast<size_t>(lseek(fd, 0, SEEK_END));
          return got >= sizeof(probe);
        },
        deadline);
    if (!sized) {
      close(fd);
      return absl::DeadlineExceededError("handoff segment never initialized");
    }
    void* m = mmap(nullptr, got, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap: ", std::strerror(errno)));
    header_ = static_cast<Header*>(m);
    bytes_ = got;
    if (!WaitUntil([&] { return header_->ready.load(std::memory_order_acquire) == 1; }, deadline)) {
      return absl::DeadlineExceededError("handoff sender never became ready");
    }
    if (header_->magic != kMagic || header_->pool_handle_len > kMaxPoolHandle ||
        SegmentBytes(header_->num_layers, header_->max_pages) != bytes_) {
      return absl::InvalidArgumentError(absl::StrCat("handoff ", name, " is malformed"));
    }
    shape_.num_layers = header_->num_layers;
    shape_.max_pages_per_layer = header_->max_pages;
    shape_.page_bytes = header_->page_bytes;
    auto mapping =
        CudaIpcMapping::Open(std::string_view(header_->pool_handle, header_->pool_handle_len));
    if (!mapping.ok()) return mapping.status();
    mapping_ = std::move(*mapping);
    for (int l = 0; l < shape_.num_layers; ++l) {
      cudaEvent_t e;
      cudaError_t err = cudaIpcOpenEventHandle(&e, Slots(header_)[l].event);
      if (err != cudaSuccess) return internal::FromCuda(err, "cudaIpcOpenEventHandle");
      events_.push_back(e);
    }
    received_.assign(shape_.num_layers, 0);
    return absl::OkStatus();
  }

  absl::StatusOr<size_t> ReceiveLayer(int layer, absl::Span<void* const> dst_pages,
                                      cudaStream_t stream, absl::Duration timeout) override {
    if (layer < 0 || layer >= shape_.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range"));
    }
    LayerSlot& slot = Slots(header_)[layer];
    const uint32_t want = received_[layer] + 1;
    if (!WaitUntil([&] { return slot.published.load(std::memory_order_acquire) >= want; },
                   absl::Now() + timeout)) {
      return absl::DeadlineExceededError(absl::StrCat("layer ", layer, " not published in time"));
    }
    const size_t n = slot.num_pages;
    if (dst_pages.size() < n) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer, " has ", n, " pages, ", dst_pages.size(), " destinations"));
    }
    const uint64_t* offsets = Offsets(header_, layer);
    std::vector<PageCopy> copies(n);
    for (size_t i = 0; i < n; ++i) {
      if (dst_pages[i] == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("destination ", i, " is null"));
      }
      if (offsets[i] > mapping_->length() || shape_.page_bytes > mapping_->length() - offsets[i]) {
        return absl::InvalidArgumentError("sender published a page outside its pool");
      }
      copies[i] = {dst_pages[i], static_cast<const char*>(mapping_->data()) + offsets[i]};
    }
    cudaError_t err = cudaStreamWaitEvent(stream, events_[layer], 0);
    if (err != cudaSuccess) return internal::FromCuda(err, "cudaStreamWaitEvent");
    if (absl::Status s = CopyPagesAsync(copies, shape_.page_bytes, stream); !s.ok()) return s;
    err = cudaLaunchHostFunc(
        stream,
        [](void* p) {
          static_cast<std::atomic<uint32_t>*>(p)->fetch_add(1, std::memory_order_release);
        },
        &slot.consumed);
    if (err != cudaSuccess) return internal::FromCuda(err, "cudaLaunchHostFunc");
    received_[layer] = want;
    return n;
  }

 private:
  Header* header_ = nullptr;
  size_t bytes_ = 0;
  std::unique_ptr<CudaIpcMapping> mapping_;
  std::vector<cudaEvent_t> events_;
  std::vector<uint32_t> received_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvHandoffSender>> KvHandoffSender::Create(
    const std::string& name, void* pool, size_t pool_bytes, const KvHandoffShape& shape) {
  auto s = std::make_unique<SenderImpl>();
  if (absl::Status st = s->Init(name, pool, pool_bytes, shape); !st.ok()) return st;
  return s;
}

absl::StatusOr<std::unique_ptr<KvHandoffReceiver>> KvHandoffReceiver::Open(const std::string& name,
                                                                           absl::Duration timeout) {
  auto r = std::make_unique<ReceiverImpl>();
  if (absl::Status st = r->Init(name, timeout); !st.ok()) return st;
  return r;
}

}  // namespace pagoda
