// The CUDA decode backend: a device page pool, pinned host staging and one stream, running the
// kernels' ScatterPages and SparseDecode. Compiled only where CMake found CUDA
// (decode_backend_cuda_none.cc elsewhere); plain C++ over the runtime API, no device code here.
//
// One step costs: Upload = (host copy into pinned staging unless the caller staged there) + one
// H2D copy + one scatter kernel, or one scatter kernel reading mapped pinned memory; then a
// stream sync. Attend = one H2D copy (q and the page table in one pinned buffer) + the decode
// kernel + one D2H copy of o + a stream sync.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda_status.h"
#include "decode_backend_check.h"
#include "pagoda/client/decode_backend.h"
#include "pagoda/kernels/cuda.h"

namespace pagoda {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  return cuda_internal::CudaStatus(err, "CUDA decode backend", what);
}

#define PAGODA_CUDA_RETURN(expr, what)                                     \
  do {                                                                     \
    if (absl::Status _s = CudaStatus((expr), (what)); !_s.ok()) return _s; \
  } while (0)

constexpr size_t kAlign = 256;
size_t RoundUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A pinned host buffer and its device twin, grown (never shrunk) on demand.
struct PinnedBuffer {
  uint8_t* host = nullptr;
  uint8_t* mapped = nullptr;  // device address of `host` (mapped pinned memory)
  size_t bytes = 0;
  absl::Status Reserve(size_t n) {
    if (n <= bytes) return absl::OkStatus();
    n = std::max(n, 2 * bytes);
    Free();
    void* p = nullptr;
    PAGODA_CUDA_RETURN(cudaHostAlloc(&p, n, cudaHostAllocMapped), "cudaHostAlloc");
    host = static_cast<uint8_t*>(p);
    bytes = n;
    void* d = nullptr;
    PAGODA_CUDA_RETURN(cudaHostGetDevicePointer(&d, p, 0), "cudaHostGetDevicePointer");
    mapped = static_cast<uint8_t*>(d);
    return absl::OkStatus();
  }
  void Free() {
    if (host != nullptr) cudaFreeHost(host);
    host = mapped = nullptr;
    bytes = 0;
  }
};

struct DeviceBuffer {
  uint8_t* ptr = nullptr;
  size_t bytes = 0;
  absl::Status Reserve(size_t n) {
    if (n <= bytes) return absl::OkStatus();
    n = std::max(n, 2 * bytes);
    Free();
    void* p = nullptr;
    PAGODA_CUDA_RETURN(cudaMalloc(&p, n), "cudaMalloc");
    ptr = static_cast<uint8_t*>(p);
    bytes = n;
    return absl::OkStatus();
  }
  void Free() {
    if (ptr != nullptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
  }
};

class CudaDecodeBackend final : public DecodeBackend {
 public:
  explicit CudaDecodeBackend(const CudaDecodeBackendOptions& options) : options_(options) {}

  ~CudaDecodeBackend() override {
    cudaSetDevice(options_.device);
    if (stream_ != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
    for (DeviceBuffer* b : {&pool_, &stage_dev_, &io_dev_, &o_dev_, &workspace_}) b->Free();
    for (PinnedBuffer* b : {&stage_, &io_, &o_}) b->Free();
  }

  absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) override {
    if (initialized_) return absl::FailedPreconditionError("backend already initialized");
    if (absl::Status s = decode_internal::CheckInit(layout, q_heads, slots); !s.ok()) return s;
    const uint32_t pt = layout.page_tokens;
    if ((pt & (pt - 1)) != 0 || pt > 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat("CUDA decode backend: page_tokens ", pt, " is not a power of two <= 1024"));
    }
    PAGODA_CUDA_RETURN(cudaSetDevice(options_.device), "cudaSetDevice");
    int sms = 0;
    PAGODA_CUDA_RETURN(
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, options_.device),
        "multiprocessor count");
    plan_options_.num_sms = sms;
    // Planning checks the shapes the kernel supports (head_dim, dtype, group size) and prepares
    // the kernel on this device; planned again per call for the tokens a step attends.
    layout_ = layout;
    q_heads_ = q_heads;
    slots_ = slots;
    const kernels::DecodeParams shape = Shape(nullptr);
    auto plan = kernels::gpu::PlanDecode(shape, false, int64_t{slots} * pt, plan_options_);
    if (!plan.ok()) return plan.status();
    PAGODA_CUDA_RETURN(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                       "cudaStreamCreate");
    const size_t o_bytes = static_cast<size_t>(q_heads) * layout.head_dim * 2;
    // Split-KV partials, as the plan for the whole pool sizes them (Plan() grows the buffer if a
    // smaller row's plan splits further).
    const size_t ws = plan->workspace_bytes;
    for (auto [buf, n] : {std::pair{&pool_, static_cast<size_t>(slots) * layout.PageBytes()},
                          std::pair{&o_dev_, o_bytes}, std::pair{&workspace_, ws}}) {
      if (absl::Status s = buf->Reserve(n); !s.ok()) return s;
    }
    if (absl::Status s = o_.Reserve(o_bytes); !s.ok()) return s;
    PAGODA_CUDA_RETURN(cudaMemsetAsync(pool_.ptr, 0, pool_.bytes, stream_), "cudaMemset");
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "init sync");
    initialized_ = true;
    return absl::OkStatus();
  }

  absl::StatusOr<absl::Span<uint8_t>> StagingBuffer(size_t bytes) override {
    if (!initialized_) return absl::FailedPreconditionError("backend not initialized");
    PAGODA_CUDA_RETURN(cudaSetDevice(options_.device), "cudaSetDevice");
    if (absl::Status s = ReserveStaging(bytes); !s.ok()) return s;
    return absl::MakeSpan(stage_.host, bytes);
  }

  absl::Status Upload(absl::Span<const int32_t> slots, absl::Span<const uint8_t> staging) override {
    if (!initialized_) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s = decode_internal::CheckUpload(slots, staging.size(), layout_.PageBytes(),
                                                      slots_, &seen_);
        !s.ok()) {
      return s;
    }
    if (slots.empty()) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaSetDevice(options_.device), "cudaSetDevice");
    const bool in_place = staging.data() == stage_.host;  // staged in StagingBuffer()
    if (!in_place) {
      if (absl::Status s = ReserveStaging(staging.size()); !s.ok()) return s;
      std::memcpy(stage_.host, staging.data(), staging.size());
    }
    // The slot ids ride behind the pages, so one copy (or none) moves both.
    const size_t ids_at = RoundUp(staging.size());
    if (ids_at + slots.size() * 4 > stage_.bytes) {
      return absl::InternalError("CUDA decode backend: staging buffer too small for slot ids");
    }
    std::memcpy(stage_.host + ids_at, slots.data(), slots.size() * 4);
    uint8_t* src = stage_.mapped;
    if (!options_.mapped_upload) {
      if (absl::Status s = stage_dev_.Reserve(stage_.bytes); !s.ok()) return s;
      PAGODA_CUDA_RETURN(cudaMemcpyAsync(stage_dev_.ptr, stage_.host, ids_at + slots.size() * 4,
                                         cudaMemcpyHostToDevice, stream_),
                         "upload H2D copy");
      src = stage_dev_.ptr;
    }
    kernels::PageCopyParams p;
    p.pool = pool_.ptr;
    p.pool_pages = slots_;
    p.pool_stride_bytes = static_cast<int64_t>(layout_.PageBytes());
    p.page_bytes = p.pool_stride_bytes;
    p.pages = reinterpret_cast<const int32_t*>(src + ids_at);
    p.num_pages = static_cast<int32_t>(slots.size());
    p.staging = src;
    if (absl::Status s = kernels::gpu::ScatterPages(p, stream_); !s.ok()) return s;
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "upload sync");
    return absl::OkStatus();
  }

  absl::Status Attend(absl::Span<const uint16_t> q, const kernels::PageTable& table,
                      absl::Span<uint16_t> o) override {
    if (!initialized_) return absl::FailedPreconditionError("backend not initialized");
    int64_t max_row_tokens = 0;
    if (absl::Status s = decode_internal::CheckAttend(layout_, q_heads_, slots_, q.size(), o.size(),
                                                      table, &max_row_tokens);
        !s.ok()) {
      return s;
    }
    PAGODA_CUDA_RETURN(cudaSetDevice(options_.device), "cudaSetDevice");
    auto plan = Plan(max_row_tokens);
    if (!plan.ok()) return plan.status();
    // One pinned block, one copy: q | indptr | last_page_len | indices.
    const int32_t rows = table.num_rows;
    const int32_t nnz = table.indptr[rows];
    const size_t q_bytes = q.size() * 2;
    const size_t indptr_at = RoundUp(q_bytes);
    const size_t last_at = indptr_at + (rows + 1) * 4;
    const size_t indices_at = last_at + rows * 4;
    const size_t total = indices_at + static_cast<size_t>(nnz) * 4;
    if (absl::Status s = io_.Reserve(total); !s.ok()) return s;
    if (absl::Status s = io_dev_.Reserve(io_.bytes); !s.ok()) return s;
    std::memcpy(io_.host, q.data(), q_bytes);
    std::memcpy(io_.host + indptr_at, table.indptr, (rows + 1) * 4);
    std::memcpy(io_.host + last_at, table.last_page_len, rows * 4);
    if (nnz > 0) std::memcpy(io_.host + indices_at, table.indices, static_cast<size_t>(nnz) * 4);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(io_dev_.ptr, io_.host, total, cudaMemcpyHostToDevice, stream_),
        "attend H2D copy");
    kernels::DecodeParams p = Shape(reinterpret_cast<const uint16_t*>(pool_.ptr));
    p.table.num_rows = rows;
    p.table.indptr = reinterpret_cast<const int32_t*>(io_dev_.ptr + indptr_at);
    p.table.last_page_len = reinterpret_cast<const int32_t*>(io_dev_.ptr + last_at);
    p.table.indices = reinterpret_cast<const int32_t*>(io_dev_.ptr + indices_at);
    p.q = reinterpret_cast<const uint16_t*>(io_dev_.ptr);
    p.o = reinterpret_cast<uint16_t*>(o_dev_.ptr);
    if (absl::Status s = kernels::gpu::SparseDecode(**plan, p, workspace_.ptr, stream_); !s.ok()) {
      return s;
    }
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(o_.host, o_dev_.ptr, q_bytes, cudaMemcpyDeviceToHost, stream_),
        "attend D2H copy");
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "attend sync");
    std::memcpy(o.data(), o_.host, q_bytes);
    return absl::OkStatus();
  }

  const char* name() const override { return options_.mapped_upload ? "cuda-mapped" : "cuda"; }

 private:
  kernels::DecodeParams Shape(const uint16_t* pool) const {
    kernels::DecodeParams p;
    p.kv = kernels::PackedPagedKV(
        KernelDType(layout_.dtype), slots_, static_cast<int32_t>(layout_.page_tokens),
        static_cast<int32_t>(layout_.kv_heads), static_cast<int32_t>(layout_.head_dim), pool);
    p.batch = 1;
    p.num_qo_heads = q_heads_;
    p.per_kv_head = true;
    return p;
  }

  // The plan for rows of up to max_row_tokens, cached per power-of-two bucket of that count.
  absl::StatusOr<const kernels::gpu::DecodePlan*> Plan(int64_t max_row_tokens) {
    size_t bucket = 0;
    while ((int64_t{1} << bucket) < max_row_tokens) ++bucket;
    if (bucket >= plans_.size()) return absl::InvalidArgumentError("too many tokens in a row");
    std::optional<kernels::gpu::DecodePlan>& plan = plans_[bucket];
    if (!plan.has_value()) {
      auto p = kernels::gpu::PlanDecode(Shape(nullptr), false, int64_t{1} << bucket, plan_options_);
      if (!p.ok()) return p.status();
      // The plan says how much split-KV workspace it needs; grow to it once the stream is idle
      // (an earlier step may still be reading the old buffer).
      if (p->workspace_bytes > workspace_.bytes) {
        PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "workspace sync");
        if (absl::Status s = workspace_.Reserve(p->workspace_bytes); !s.ok()) return s;
      }
      plan = *p;
    }
    return &*plan;
  }

  // Staging for `bytes` of pages plus the slot ids behind them. Growing frees the old buffer,
  // which no copy still reads: every Upload ends with a stream sync.
  absl::Status ReserveStaging(size_t bytes) {
    return stage_.Reserve(RoundUp(bytes) + static_cast<size_t>(slots_) * 4);
  }

  CudaDecodeBackendOptions options_;
  kernels::gpu::DecodePlanOptions plan_options_;
  bool initialized_ = false;
  PageLayout layout_;
  int q_heads_ = 0;
  int32_t slots_ = 0;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer pool_, stage_dev_, io_dev_, o_dev_, workspace_;
  PinnedBuffer stage_, io_, o_;
  std::array<std::optional<kernels::gpu::DecodePlan>, 31> plans_;
  std::vector<uint8_t> seen_;  // CheckUpload scratch
};

}  // namespace

absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeCudaDecodeBackend(
    const CudaDecodeBackendOptions& options) {
  int n = 0;
  if (cudaError_t err = cudaGetDeviceCount(&n); err != cudaSuccess) {
    cudaGetLastError();  // clear it: no device is not an error of later calls
    return absl::UnavailableError(
        absl::StrCat("CUDA decode backend: no CUDA device: ", cudaGetErrorString(err)));
  }
  if (options.device < 0 || options.device >= n) {
    return absl::UnavailableError(
        absl::StrCat("CUDA decode backend: no CUDA device ", options.device, " (", n, " present)"));
  }
  return std::unique_ptr<DecodeBackend>(std::make_unique<CudaDecodeBackend>(options));
}

absl::StatusOr<std::unique_ptr<DecodeBackend>> MakeCudaDecodeBackend(int device) {
  CudaDecodeBackendOptions options;
  options.device = device;
  return MakeCudaDecodeBackend(options);
}

}  // namespace pagoda
