#include "pagoda/transport/staged_gpu.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "pagoda/transport/gpu_copy.h"
#include "transport/src/cuda/cuda_status.h"

namespace pagoda {

absl::StatusOr<std::unique_ptr<StagedGpuCopier>> StagedGpuCopier::Create(
    Transport* transport, const StagedGpuOptions& options) {
  if (transport == nullptr) return absl::InvalidArgumentError("StagedGpuCopier: null transport");
  if (options.chunk_bytes == 0 || options.depth < 1 || options.depth > 16) {
    return absl::InvalidArgumentError("StagedGpuCopier: chunk_bytes > 0 and depth 1..16 needed");
  }
  std::unique_ptr<StagedGpuCopier> c(new StagedGpuCopier(options.chunk_bytes));
  for (int i = 0; i < options.depth; ++i) {
    Slot s;
    cudaError_t err =
        cudaHostAlloc(reinterpret_cast<void**>(&s.host), options.chunk_bytes, cudaHostAllocDefault);
    if (err != cudaSuccess) return internal::FromCuda(err, "cudaHostAlloc (bounce buffer)");
    c->slots_.push_back(std::move(s));  // owned now: freed by the destructor on any failure
    Slot& slot = c->slots_.back();
    err = cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming);
    if (err != cudaSuccess) return internal::FromCuda(err, "cudaEventCreate");
    auto reg = transport->Register(slot.host, options.chunk_bytes, MemoryKind::kHost);
    if (!reg.ok()) return reg.status();
    slot.reg = std::move(*reg);
  }
  return c;
}

StagedGpuCopier::~StagedGpuCopier() {
  for (Slot& s : slots_) {
    if (s.copied != nullptr) {
      (void)cudaEventSynchronize(s.copied);
      (void)cudaEventDestroy(s.copied);
    }
    s.reg.reset();  // deregister before freeing
    if (s.host != nullptr) (void)cudaFreeHost(s.host);
  }
}

absl::Status StagedGpuCopier::Check(size_t n_offsets, size_t n_pages, size_t page_bytes,
                                    cudaStream_t stream) const {
  if (n_offsets == 0 || n_offsets != n_pages) {
    return absl::InvalidArgumentError(absl::StrCat("staged copy: ", n_offsets, " offsets for ",
                                                   n_pages, " pages (need equal, > 0)"));
  }
  if (page_bytes == 0 || page_bytes > chunk_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("staged copy: page_bytes ", page_bytes, " not in 1..", chunk_bytes_));
  }
  if (stream == nullptr || stream == cudaStreamLegacy) {
    return absl::InvalidArgumentError("staged copy: pass a created stream");
  }
  return absl::OkStatus();
}

absl::Status StagedGpuCopier::Read(TransportEndpoint& endpoint, const RemoteMemory& remote,
                                   absl::Span<const uint64_t> remote_offsets,
                                   absl::Span<void* const> gpu_pages, size_t page_bytes,
                                   cudaStream_t stream) {
  if (absl::Status s = Check(remote_offsets.size(), gpu_pages.size(), page_bytes, stream);
      !s.ok()) {
    return s;
  }
  const size_t per_chunk = chunk_bytes_ / page_bytes;
  const size_t n = remote_offsets.size();
  const size_t chunks = (n + per_chunk - 1) / per_chunk;
  const size_t depth = slots_.size();
  std::vector<std::optional<TransferFuture>> net(depth);
  absl::Status result;

  // Network read of chunk k into its slot, once the slot's previous PCIe copy is done.
  auto post = [&](size_t k) -> absl::Status {
    Slot& slot = slots_[k % depth];
    cudaError_t err = cudaEventSynchronize(slot.copied);
    if (err != cudaSuccess) return internal::FromCuda(err, "cudaEventSynchronize");
    std::vector<TransferOp> ops;
    for (size_t i = k * per_chunk, j = 0; i < std::min(n, (k + 1) * per_chunk); ++i, ++j) {
      ops.push_back({slot.host + j * page_bytes, remote_offsets[i], page_bytes});
    }
    auto f = endpoint.Post(TransferDirection::kRead, remote, ops);
    if (!f.ok()) return f.status();
    net[k % depth] = *f;
    return absl::OkStatus();
  };

  size_t posted = 0;
  for (; posted < std::min(depth, chunks) && result.ok(); ++posted) result = post(posted);
  for (size_t k = 0; k < chunks && result.ok(); ++k) {
    Slot& slot = slots_[k % depth];
    result = net[k % depth]->WaitAll();
    net[k % depth].reset();
    if (!result.ok()) break;
    std::vector<PageCopy> copies;
    for (size_t i = k * per_chunk, j = 0; i < std::min(n, (k + 1) * per_chunk); ++i, ++j) {
      copies.push_back({gpu_pages[i], slot.host + j * page_bytes});
    }
    result = CopyPagesAsync(copies, page_bytes, stream);
    if (!result.ok()) break;
    cudaError_t err = cudaEventRecord(slot.copied, stream);
    if (err != cudaSuccess) {
      result = internal::FromCuda(err, "cudaEventRecord");
      break;
    }
    if (posted < chunks) result = post(posted++);
  }
  // Drain: no network transfer may still write into a bounce buffer we hand back.
  for (auto& f : net) {
    if (f) f->Wait();
  }
  cudaError_t err = cudaStreamSynchronize(stream);
  if (result.ok() && err != cudaSuccess) result = internal::FromCuda(err, "cudaStreamSynchronize");
  return result;
}

absl::Status StagedGpuCopier::Write(TransportEndpoint& endpoint, const RemoteMemory& remote,
                                    absl::Span<const uint64_t> remote_offsets,
                                    absl::Span<const void* const> gpu_pages, size_t page_bytes,
                                    cudaStream_t stream) {
  if (absl::Status s = Check(remote_offsets.size(), gpu_pages.size(), page_bytes, stream);
      !s.ok()) {
    return s;
  }
  const size_t per_chunk = chunk_bytes_ / page_bytes;
  const size_t n = remote_offsets.size();
  const size_t chunks = (n + per_chunk - 1) / per_chunk;
  const size_t depth = slots_.size();
  std::vector<std::optional<TransferFuture>> net(depth);
  absl::Status result;

  // PCIe copy of chunk k into its slot, once the slot's previous network write is done.
  auto stage = [&](size_t k) -> absl::Status {
    Slot& slot = slots_[k % depth];
    if (net[k % depth]) {
      absl::Status s = net[k % depth]->WaitAll();
      net[k % depth].reset();
      if (!s.ok()) return s;
    }
    std::vector<PageCopy> copies;
    for (size_t i = k * per_chunk, j = 0; i < std::min(n, (k + 1) * per_chunk); ++i, ++j) {
      copies.push_back({slot.host + j * page_bytes, gpu_pages[i]});
    }
    if (absl::Status s = CopyPagesAsync(copies, page_bytes, stream); !s.ok()) return s;
    return internal::FromCuda(cudaEventRecord(slot.copied, stream), "cudaEventRecord");
  };

  size_t staged = 0;
  for (; staged < std::min(depth, chunks) && result.ok(); ++staged) result = stage(staged);
  for (size_t k = 0; k < chunks && result.ok(); ++k) {
    Slot& slot = slots_[k % depth];
    cudaError_t err = cudaEventSynchronize(slot.copied);
    if (err != cudaSuccess) {
      result = internal::FromCuda(err, "cudaEventSynchronize");
      break;
    }
    std::vector<TransferOp> ops;
    for (size_t i = k * per_chunk, j = 0; i < std::min(n, (k + 1) * per_chunk); ++i, ++j) {
      ops.push_back({slot.host + j * page_bytes, remote_offsets[i], page_bytes});
    }
    auto f = endpoint.Post(TransferDirection::kWrite, remote, ops);
    if (!f.ok()) {
      result = f.status();
      break;
    }
    net[k % depth] = *f;
    if (staged < chunks) result = stage(staged++);
  }
  for (auto& f : net) {
    if (!f) continue;
    absl::Status s = f->WaitAll();
    if (result.ok()) result = s;
  }
  cudaError_t err = cudaStreamSynchronize(stream);
  if (result.ok() && err != cudaSuccess) result = internal::FromCuda(err, "cudaStreamSynchronize");
  return result;
}

}  // namespace pagoda
