// The CUDA worker backend: a device pool of head-granular slots, the store's host arena read in
// place (the store pins and maps it: Store::MapHostTierForGpu), a device table of page summaries
// for Quest selection, and the kernels' CUDA twins on the caller's stream.
// Compiled only where CMake found CUDA (worker_backend_cuda_none.cc elsewhere); plain C++ over
// the runtime API.
//
// Per layer: Gather = one H2D copy of the fetch list (pinned) + one verified-gather kernel reading
// the arena over PCIe + one D2H copy of the verdicts, read at the next Sync() (the worker reads
// them before attending); WriteTokens = one H2D copy of row ids + two scatter kernels; Attend = one
// H2D copy of the page table (pinned) + the sparse decode kernel, no sync. Head-page copies for
// commits, forks and fallbacks are synchronous.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cuda_status.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/reference.h"
#include "worker_backend_check.h"

namespace pagoda {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  return cuda_internal::CudaStatus(err, "CUDA worker backend", what);
}

#define PAGODA_CUDA_RETURN(expr, what)                                     \
  do {                                                                     \
    if (absl::Status _s = CudaStatus((expr), (what)); !_s.ok()) return _s; \
  } while (0)

// A pinned host buffer (mapped: kernels may write it, cudaHostGetDevicePointer) and a device
// buffer of the same size, grown on demand. `ready` is recorded after the last copy or kernel
// that uses the pinned side, so a refill waits for it.
struct Staged {
  uint8_t* host = nullptr;
  uint8_t* mapped = nullptr;  // `host` as kernels address it
  uint8_t* dev = nullptr;
  size_t bytes = 0;
  size_t used = 0;  // elements of the last StartCopyToHost
  cudaEvent_t ready = nullptr;
  absl::Status Reserve(size_t n) {
    if (ready == nullptr) {
      PAGODA_CUDA_RETURN(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "event");
    }
    PAGODA_CUDA_RETURN(cudaEventSynchronize(ready), "staging wait");
    if (n <= bytes) return absl::OkStatus();
    n = std::max(n, 2 * bytes);
    Free();
    void* h = nullptr;
    void* d = nullptr;
    PAGODA_CUDA_RETURN(cudaMallocHost(&h, n), "cudaMallocHost");
    host = static_cast<uint8_t*>(h);
    PAGODA_CUDA_RETURN(cudaHostGetDevicePointer(&h, host, 0), "pinned buffer mapping");
    mapped = static_cast<uint8_t*>(h);
    PAGODA_CUDA_RETURN(cudaMalloc(&d, n), "cudaMalloc");
    dev = static_cast<uint8_t*>(d);
    bytes = n;
    return absl::OkStatus();
  }
  void Free() {
    if (host != nullptr) cudaFreeHost(host);
    if (dev != nullptr) cudaFree(dev);
    host = mapped = dev = nullptr;
    bytes = 0;
  }
  ~Staged() {
    Free();
    if (ready != nullptr) cudaEventDestroy(ready);
  }
};

// Two staging buffers used in turn, for the uploads of calls made once per layer: a call waits
// only for the upload two calls back, so the host can run a layer further ahead of the device.
struct StagedPair {
  Staged slot[2];
  int next = 0;
  Staged& Next() {
    Staged& s = slot[next];
    next ^= 1;
    return s;
  }
};

// Int32 words of a CSR page table packed as indptr, indices, last_page_len.
size_t TableWords(const kernels::PageTable& t) {
  return 2 * static_cast<size_t>(t.num_rows) + 1 + t.indptr[t.num_rows];
}
// Packs `t` into `host` (TableWords(t) words) and returns the same table over `dev`, the device
// copy of that buffer.
kernels::PageTable PackTable(const kernels::PageTable& t, int32_t* host, const int32_t* dev) {
  const int32_t rows = t.num_rows, entries = t.indptr[rows];
  std::memcpy(host, t.indptr, (rows + 1) * 4);
  std::memcpy(host + rows + 1, t.indices, entries * 4);
  std::memcpy(host + rows + 1 + entries, t.last_page_len, rows * 4);
  return {rows, dev, dev + rows + 1, dev + rows + 1 + entries};
}

class CudaWorkerBackend final : public WorkerBackend {
 public:
  explicit CudaWorkerBackend(const CudaWorkerBackendOptions& o) : o_(o) {
    stream_ = static_cast<cudaStream_t>(o.stream);
  }
  ~CudaWorkerBackend() override {
    cudaSetDevice(o_.device);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (pool_ != nullptr) cudaFree(pool_);
    for (DeviceScratch* w : {&workspace_, &decode_ws_}) {
      if (w->ptr != nullptr) cudaFree(w->ptr);
    }
    if (summaries_ != nullptr) cudaFree(summaries_);
    for (auto& [id, l] : lists_) cudaFree(l.ptr);
    for (DeviceList& l : spare_lists_) cudaFree(l.ptr);
  }

  absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) override {
    if (pool_ != nullptr) return absl::FailedPreconditionError("backend already initialized");
    if (absl::Status s = worker_internal::CheckInit(layout, q_heads, slots); !s.ok()) return s;
    if (layout.head_dim != 64 && layout.head_dim != 128) {
      return absl::InvalidArgumentError("the CUDA decode kernel needs head_dim 64 or 128");
    }
    if (q_heads / static_cast<int>(layout.kv_heads) > 8) {
      return absl::InvalidArgumentError("the CUDA decode kernel takes up to 8 q heads per KV head");
    }
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    geo_ = worker_internal::PoolGeometry(layout, q_heads, slots);
    void* p = nullptr;
    PAGODA_CUDA_RETURN(cudaMalloc(&p, geo_.PoolBytes()), "pool cudaMalloc");
    pool_ = static_cast<uint8_t*>(p);
    PAGODA_CUDA_RETURN(cudaMemsetAsync(pool_, 0, geo_.PoolBytes(), stream_), "pool memset");
    return CudaStatus(cudaStreamSynchronize(stream_), "init sync");
  }
  Device device() const override { return Device::kCuda; }
  int device_index() const override { return o_.device; }
  const char* name() const override { return "cuda"; }

  absl::Status RegisterSource(const uint8_t* base, int64_t bytes) override {
    if (base == nullptr || bytes <= 0) return absl::InvalidArgumentError("empty source");
    // The owner of the range pins and maps what holds pages (the store's arena is a sparse
    // reservation: only assigned segments are memory, so it cannot be registered as a whole).
    src_ = base;
    src_bytes_ = bytes;
    return absl::OkStatus();
  }

  absl::Status Gather(absl::Span<const HeadFetch> fetches, absl::Span<uint8_t> bad) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    if (bad.size() != fetches.size()) return absl::InvalidArgumentError("bad flags size");
    if (fetches.empty()) return absl::OkStatus();
    if (src_ == nullptr) return absl::FailedPreconditionError("no source registered");
    const int64_t n = static_cast<int64_t>(fetches.size());
    // The reference's host checks, then one upload: k, v offsets, heads, slots, sums, flags.
    std::vector<int64_t> k(n), v(n);
    std::vector<int32_t> heads(n), slots(n);
    std::vector<uint64_t> sums(n);
    for (int64_t i = 0; i < n; ++i) {
      k[i] = fetches[i].src_k;
      v[i] = fetches[i].src_v;
      heads[i] = fetches[i].dst.head;
      slots[i] = fetches[i].dst.slot;
      sums[i] = fetches[i].checksum;
    }
    kernels::HeadGatherParams p;
    p.src = src_;
    p.src_bytes = src_bytes_;
    p.pool = pool_;
    p.num_kv_heads = geo_.kv_heads;
    p.pool_slots = geo_.slots;
    p.half_bytes = geo_.half_bytes;
    p.num_copies = static_cast<int32_t>(n);
    p.src_k = k.data();
    p.src_v = v.data();
    p.dst_head = heads.data();
    p.dst_slot = slots.data();
    p.expected = sums.data();
    p.bad = bad.data();
    if (absl::Status s = kernels::ValidateHeadGather(p); !s.ok()) return s;
    // Gathers until the next Sync() share the staging buffer, each in its own region (its upload
    // and verdicts are in flight until then); one that does not fit waits for those first.
    const size_t bytes = (n * (8 + 8 + 4 + 4 + 8 + 1) + 255) & ~size_t{255};
    if (gather_off_ + bytes > fetch_.bytes) {
      if (absl::Status s = Sync(); !s.ok()) return s;
      if (absl::Status s = fetch_.Reserve(bytes); !s.ok()) return s;
    }
    const size_t base = gather_off_;
    uint8_t* h = fetch_.host + base;
    uint8_t* d = fetch_.dev + base;
    size_t off = 0;
    auto put = [&](const void* src, size_t len) {
      std::memcpy(h + off, src, len);
      const size_t at = off;
      off += len;
      return d + at;
    };
    p.src_k = reinterpret_cast<const int64_t*>(put(k.data(), n * 8));
    p.src_v = reinterpret_cast<const int64_t*>(put(v.data(), n * 8));
    p.expected = reinterpret_cast<const uint64_t*>(put(sums.data(), n * 8));
    p.dst_head = reinterpret_cast<const int32_t*>(put(heads.data(), n * 4));
    p.dst_slot = reinterpret_cast<const int32_t*>(put(slots.data(), n * 4));
    p.bad = d + off;
    PAGODA_CUDA_RETURN(cudaMemcpyAsync(d, h, off, cudaMemcpyHostToDevice, stream_),
                       "fetch list upload");
    if (absl::Status s = kernels::gpu::GatherHeadPages(p, stream_); !s.ok()) return s;
    PAGODA_CUDA_RETURN(cudaMemcpyAsync(h + off, p.bad, n, cudaMemcpyDeviceToHost, stream_),
                       "verdicts download");
    PAGODA_CUDA_RETURN(cudaEventRecord(fetch_.ready, stream_), "event record");
    gather_off_ = base + bytes;
    verdicts_.push_back({bad.data(), base + off, static_cast<size_t>(n)});
    return absl::OkStatus();
  }

  absl::Status WriteTokens(const TensorView& k, const TensorView& v,
                           absl::Span<const int32_t> slots,
                           absl::Span<const int32_t> positions) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s =
            worker_internal::CheckWriteTokens(geo_, Device::kCuda, k, v, slots, positions);
        !s.ok()) {
      return s;
    }
    const size_t row = static_cast<size_t>(geo_.head_dim) * 2;
    if (worker_internal::Contiguous(k) && worker_internal::Contiguous(v) &&
        worker_internal::TokenRowsFit(geo_)) {
      // One kernel per kMaxTokenRows rows, the row ids in its parameters (no upload).
      return worker_internal::ForEachTokenRowsCall(
          geo_, pool_, k, v, slots, positions, [&](const kernels::TokenRowsParams& c) {
            return kernels::gpu::WriteTokenRows(c, stream_);
          });
    }
    // Strided views (or a pool too large for 32-bit row ids): one copy per (row, KV head).
    for (size_t n = 0; n < positions.size(); ++n) {
      for (int h = 0; h < geo_.kv_heads; ++h) {
        uint8_t* slot = SlotPtr({h, slots[n * geo_.kv_heads + h]});
        const int64_t at = int64_t{positions[n]} * geo_.head_dim * 2;
        PAGODA_CUDA_RETURN(cudaMemcpyAsync(slot + at, k.At(static_cast<int64_t>(n), h, 0), row,
                                           cudaMemcpyDeviceToDevice, stream_),
                           "token k copy");
        PAGODA_CUDA_RETURN(
            cudaMemcpyAsync(slot + geo_.half_bytes + at, v.At(static_cast<int64_t>(n), h, 0), row,
                            cudaMemcpyDeviceToDevice, stream_),
            "token v copy");
      }
    }
    return absl::OkStatus();
  }

  absl::Status WriteHeads(absl::Span<const HeadSlot> dst,
                          absl::Span<const uint8_t> bytes) override {
    if (absl::Status s = CheckHeads(dst, bytes.size()); !s.ok()) return s;
    for (size_t i = 0; i < dst.size(); ++i) {
      PAGODA_CUDA_RETURN(cudaMemcpyAsync(SlotPtr(dst[i]), bytes.data() + i * geo_.SlotBytes(),
                                         geo_.SlotBytes(), cudaMemcpyHostToDevice, stream_),
                         "head upload");
    }
    return CudaStatus(cudaStreamSynchronize(stream_), "head upload sync");
  }

  absl::Status ReadHeads(absl::Span<const HeadSlot> src, absl::Span<uint8_t> bytes) override {
    if (absl::Status s = CheckHeads(src, bytes.size()); !s.ok()) return s;
    for (size_t i = 0; i < src.size(); ++i) {
      PAGODA_CUDA_RETURN(cudaMemcpyAsync(bytes.data() + i * geo_.SlotBytes(), SlotPtr(src[i]),
                                         geo_.SlotBytes(), cudaMemcpyDeviceToHost, stream_),
                         "head download");
    }
    return CudaStatus(cudaStreamSynchronize(stream_), "head download sync");
  }

  absl::Status CopyHeads(absl::Span<const HeadSlot> src, absl::Span<const HeadSlot> dst) override {
    if (src.size() != dst.size()) return absl::InvalidArgumentError("src and dst sizes differ");
    if (absl::Status s = CheckHeads(src, src.size() * geo_.SlotBytes()); !s.ok()) return s;
    if (absl::Status s = CheckHeads(dst, dst.size() * geo_.SlotBytes()); !s.ok()) return s;
    for (size_t i = 0; i < src.size(); ++i) {
      PAGODA_CUDA_RETURN(cudaMemcpyAsync(SlotPtr(dst[i]), SlotPtr(src[i]), geo_.SlotBytes(),
                                         cudaMemcpyDeviceToDevice, stream_),
                         "head copy");
    }
    return CudaStatus(cudaStreamSynchronize(stream_), "head copy sync");
  }

  absl::Status Attend(const TensorView& q, const kernels::PageTable& table,
                      const TensorView& o) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s = worker_internal::CheckAttend(geo_, Device::kCuda, q, table, o); !s.ok()) {
      return s;
    }
    if (!worker_internal::Contiguous(q) || !worker_internal::Contiguous(o)) {
      return absl::InvalidArgumentError("the CUDA backend needs contiguous q and o");
    }
    const int32_t rows = table.num_rows;
    int64_t max_row = 0;
    for (int32_t r = 0; r < rows; ++r) {
      max_row = std::max<int64_t>(
          max_row, int64_t{table.indptr[r + 1] - table.indptr[r]} * geo_.page_tokens);
    }
    const size_t bytes = TableWords(table) * sizeof(int32_t);
    if (absl::Status s = table_.Reserve(bytes); !s.ok()) return s;
    const kernels::PageTable dt = PackTable(table, reinterpret_cast<int32_t*>(table_.host),
                                            reinterpret_cast<const int32_t*>(table_.dev));
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(table_.dev, table_.host, bytes, cudaMemcpyHostToDevice, stream_),
        "table upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(table_.ready, stream_), "event record");
    kernels::DecodeParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_));
    p.table = dt;
    p.batch = static_cast<int32_t>(q.shape[0]);
    p.num_qo_heads = geo_.q_heads;
    p.per_kv_head = true;
    p.q = static_cast<const uint16_t*>(q.data);
    p.o = static_cast<uint16_t*>(o.data);
    auto plan = DecodePlanFor(p, std::max<int64_t>(1, max_row));
    if (!plan.ok()) return plan.status();
    if (absl::Status s = Reserve(decode_ws_, plan->workspace_bytes); !s.ok()) return s;
    return kernels::gpu::SparseDecode(*plan, p, decode_ws_.ptr, stream_);
  }

  // Staged steps: every layer's arrays in one pinned buffer, uploaded once into device regions of
  // stage_words_ words per layer at fixed offsets (for the batch), the table's slots last:
  //   [token rows 2R | token slots R | summary slots B | from B | to B | indptr R+1 | last_len R |
  //    table slots], R = B * kv_heads.
  absl::StatusOr<uint64_t> StageLayers(absl::Span<const StagedLayer> layers) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s = worker_internal::CheckStaged(geo_, sum_slots_, layers); !s.ok()) return s;
    if (!worker_internal::TokenRowsFit(geo_)) {
      return absl::InvalidArgumentError("a pool this large needs 64-bit token rows: not staged");
    }
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const int32_t B = static_cast<int32_t>(layers[0].token_pos.size());
    const size_t R = static_cast<size_t>(B) * geo_.kv_heads;
    const size_t fixed = 3 * R + 3 * static_cast<size_t>(B) + (R + 1) + R;
    size_t words = 0;
    int64_t max_row = 1;
    for (const StagedLayer& x : layers) {
      words = std::max(words, fixed + x.indices.size());
      for (size_t r = 0; r < R; ++r) {
        max_row =
            std::max<int64_t>(max_row, int64_t{x.indptr[r + 1] - x.indptr[r]} * geo_.page_tokens);
      }
    }
    // What a captured AttendStaged launch reads or how it launches: a change is a new generation.
    bool fresh = B != stage_batch_ || layers.size() != stage_.size() || words > stage_words_ ||
                 max_row > 2 * stage_max_row_;
    for (size_t l = 0; !fresh && l < layers.size(); ++l) {
      fresh = (layers[l].sum_slots.empty() != stage_[l].sum_slots.empty()) ||
              layers[l].q_tag != stage_[l].q_tag;
    }
    if (fresh) {
      words = std::max(words, stage_words_);
      if (words > stage_words_) words += words / 2;  // room to grow before the next generation
      stage_words_ = words;
      stage_batch_ = B;
      stage_max_row_ = max_row;
    }
    const size_t bytes = stage_words_ * layers.size() * 4;
    if (absl::Status s = stage_buf_.Reserve(bytes); !s.ok()) return s;  // waits for the last upload
    stage_.assign(layers.begin(), layers.end());
    stage_plans_.resize(layers.size());
    int32_t* host = reinterpret_cast<int32_t*>(stage_buf_.host);
    for (size_t l = 0; l < layers.size(); ++l) {
      const StagedLayer& x = layers[l];
      int32_t* h = host + l * stage_words_;
      const std::vector<int32_t> rows =
          worker_internal::TokenRowIds(geo_, x.token_slots, x.token_pos);
      h = std::copy(rows.begin(), rows.end(), h);
      h = std::copy(x.token_slots.begin(), x.token_slots.end(), h);
      for (const std::vector<int32_t>* a : {&x.sum_slots, &x.fold_from, &x.fold_to}) {
        std::copy(a->begin(), a->end(), h);
        h += B;
      }
      h = std::copy(x.indptr.begin(), x.indptr.end(), h);
      h = std::copy(x.last_page_len.begin(), x.last_page_len.end(), h);
      std::copy(x.indices.begin(), x.indices.end(), h);
    }
    if (fresh) {
      for (size_t l = 0; l < layers.size(); ++l) {
        auto plan = DecodePlanFor(StagedDecode(l, nullptr, nullptr), stage_max_row_);
        if (!plan.ok()) return plan.status();
        stage_plans_[l] = *plan;
      }
    }
    // Buffers a launch reads besides the staged ones: the decode workspace and q's pinned copies
    // (an eager step may have regrown them since the last staging).
    std::vector<const void*> bufs{stage_buf_.dev};
    for (size_t l = 0; l < layers.size(); ++l) {
      if (absl::Status s = Reserve(decode_ws_, stage_plans_[l].workspace_bytes); !s.ok()) return s;
    }
    bufs.push_back(decode_ws_.ptr);
    for (const StagedLayer& x : layers) {
      if (x.q_tag < 0) continue;
      auto c = TaggedBuffer(x.q_tag, R / geo_.kv_heads * geo_.q_heads * geo_.head_dim * 2);
      if (!c.ok()) return c.status();
      bufs.push_back((*c)->host);
    }
    if (fresh || bufs != stage_bufs_) ++stage_gen_;
    stage_bufs_ = std::move(bufs);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(stage_buf_.dev, stage_buf_.host, bytes, cudaMemcpyHostToDevice, stream_),
        "staged upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(stage_buf_.ready, stream_), "event record");
    return stage_gen_;
  }

  absl::Status AttendStaged(int layer, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& o) override {
    if (layer < 0 || static_cast<size_t>(layer) >= stage_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not staged"));
    }
    const StagedLayer& x = stage_[layer];
    const int64_t B = stage_batch_;
    // k / v: token rows (any token stride); q / o: contiguous.
    for (auto [t, name, heads, rows] :
         {std::tuple{&q, "q", geo_.q_heads, false}, std::tuple{&o, "o", geo_.q_heads, false},
          std::tuple{&k, "k", geo_.kv_heads, true}, std::tuple{&v, "v", geo_.kv_heads, true}}) {
      if (absl::Status s =
              CheckTensor(*t, name, {B, heads, geo_.head_dim}, geo_.dtype, Device::kCuda);
          !s.ok()) {
        return s;
      }
      if (rows ? !worker_internal::TokenRowsViewable(*t) : !worker_internal::Contiguous(*t)) {
        return absl::InvalidArgumentError(
            absl::StrCat("a staged step on the CUDA backend needs ",
                         rows ? "unit-stride head rows in " : "a contiguous ", name));
      }
    }
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const size_t R = static_cast<size_t>(B) * geo_.kv_heads;
    const int32_t* d = reinterpret_cast<const int32_t*>(stage_buf_.dev) + layer * stage_words_;
    const kernels::TokenRowsParams c = worker_internal::StagedTokenRows(geo_, pool_, k, v, d);
    if (absl::Status s = kernels::gpu::WriteTokenRows(c, stream_); !s.ok()) return s;
    if (!x.sum_slots.empty()) {
      kernels::SummaryUpdateParams p;
      p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_));
      p.summaries = Summaries();
      p.num_updates = static_cast<int32_t>(B);
      p.pages = d + 3 * R;
      p.summary_pages = d + 3 * R;
      p.old_count = d + 3 * R + B;
      p.new_count = d + 3 * R + 2 * B;
      p.head_pages = d + 2 * R;
      if (absl::Status s = kernels::gpu::UpdateSummaries(p, stream_); !s.ok()) return s;
    }
    kernels::DecodeParams p = StagedDecode(layer, q.data, o.data);
    if (absl::Status s =
            kernels::gpu::SparseDecode(stage_plans_[layer], p, decode_ws_.ptr, stream_);
        !s.ok()) {
      return s;
    }
    if (x.q_tag < 0) return absl::OkStatus();
    Staged& qc = *copies_[x.q_tag];
    qc.used = static_cast<size_t>(B) * geo_.q_heads * geo_.head_dim;
    if (absl::Status s = EnqueueDownload(q, reinterpret_cast<uint16_t*>(qc.host)); !s.ok())
      return s;
    // Inside a stream capture the event stays as it was (a captured record would leave it
    // unusable for the host): after a replay the caller syncs the stream before reading the copy.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    PAGODA_CUDA_RETURN(cudaStreamIsCapturing(stream_, &capture), "capture status");
    if (capture != cudaStreamCaptureStatusNone) return absl::OkStatus();
    return CudaStatus(cudaEventRecord(qc.ready, stream_), "event record");
  }

  absl::Status ScorePages(const TensorView& q, absl::Span<const int32_t> indptr,
                          absl::Span<const int32_t> slots, absl::Span<const int32_t> page_len,
                          kernels::GroupReduce reduce, absl::Span<float> mass) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    auto batch = worker_internal::CheckScorePages(geo_, Device::kCuda, q, indptr, slots, page_len,
                                                  mass.size());
    if (!batch.ok()) return batch.status();
    if (!worker_internal::Contiguous(q))
      return absl::InvalidArgumentError("the CUDA backend needs a contiguous q");
    const size_t n = slots.size();
    if (n == 0) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    // One upload of indptr, slots and lengths; the masses come back behind the kernel.
    const size_t in_bytes = (indptr.size() + 2 * n) * sizeof(int32_t);
    const size_t in_aligned = (in_bytes + 15) / 16 * 16;
    if (absl::Status s = score_.Reserve(in_aligned + n * sizeof(float)); !s.ok()) return s;
    int32_t* h = reinterpret_cast<int32_t*>(score_.host);
    std::copy(indptr.begin(), indptr.end(), h);
    std::copy(slots.begin(), slots.end(), h + indptr.size());
    std::copy(page_len.begin(), page_len.end(), h + indptr.size() + n);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(score_.dev, score_.host, in_bytes, cudaMemcpyHostToDevice, stream_),
        "score upload");
    const int32_t* d = reinterpret_cast<const int32_t*>(score_.dev);
    kernels::PageMassParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_));
    p.batch = *batch;
    p.num_qo_heads = geo_.q_heads;
    p.q = static_cast<const uint16_t*>(q.data);
    p.indptr = d;
    p.indices = d + indptr.size();
    p.page_len = d + indptr.size() + n;
    p.reduce = reduce;
    p.mass = reinterpret_cast<float*>(score_.dev + in_aligned);
    const size_t ws =
        kernels::gpu::PageMassWorkspaceBytes(static_cast<int64_t>(n), geo_.q_heads / geo_.kv_heads);
    if (absl::Status s = Reserve(workspace_, ws); !s.ok()) return s;
    if (absl::Status s =
            kernels::gpu::PageMass(p, static_cast<int64_t>(n), workspace_.ptr, {}, stream_);
        !s.ok()) {
      return s;
    }
    PAGODA_CUDA_RETURN(cudaMemcpyAsync(score_.host + in_aligned, p.mass, n * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_),
                       "mass download");
    PAGODA_CUDA_RETURN(cudaEventRecord(score_.ready, stream_), "event record");
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "score sync");
    std::memcpy(mass.data(), score_.host + in_aligned, n * sizeof(float));
    return absl::OkStatus();
  }

  absl::Status AttendBestByMass(const TensorView& q, const MassAttendRequest& req, int tag,
                                const TensorView& o) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    if (tag < 0 || tag >= 65536) return absl::InvalidArgumentError("choice tag out of [0, 65536)");
    auto list_size = [&](int64_t id) -> int64_t {
      auto it = lists_.find(id);
      return it == lists_.end() ? -1 : it->second.size;
    };
    if (absl::Status s =
            worker_internal::CheckMassAttend(geo_, Device::kCuda, q, req, o, list_size);
        !s.ok()) {
      return s;
    }
    if (!worker_internal::Contiguous(q) || !worker_internal::Contiguous(o)) {
      return absl::InvalidArgumentError("the CUDA backend needs contiguous q and o");
    }
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const int32_t rows = static_cast<int32_t>(req.keep.size());
    const bool lists = !req.list.empty();
    // Every row's entries: the listed ones, then those of its stored list.
    std::vector<int32_t>& full_indptr = full_indptr_;
    full_indptr.assign(1, 0);
    for (int32_t r = 0; r < rows; ++r) {
      const int32_t extra = lists && req.list[r] >= 0 ? req.list_count[r] : 0;
      full_indptr.push_back(full_indptr.back() + req.indptr[r + 1] - req.indptr[r] + extra);
    }
    const size_t listed = req.slots.size();
    const size_t n = static_cast<size_t>(full_indptr.back());
    const size_t out_n = static_cast<size_t>(req.out_indptr.back());
    int64_t max_row = 1;
    for (int32_t r = 0; r < rows; ++r) {
      max_row = std::max<int64_t>(
          max_row, int64_t{req.out_indptr[r + 1] - req.out_indptr[r]} * geo_.page_tokens);
    }
    // One upload: indptr, slots, page_len, keep, split, need, out_indptr, last_page_len, then
    // (with stored lists) the full indptr and each row's list address; then device-only room for
    // the masses and the attended slots. The mass kernels read the stored lists in place.
    const size_t in_words = 2 * (rows + 1) + 2 * listed + 4 * rows +
                            (lists ? (rows + 1) + 2 * static_cast<size_t>(rows) + 1 : 0);
    const size_t in_bytes = (in_words * 4 + 15) / 16 * 16;
    const size_t total = in_bytes + (n + std::max<size_t>(out_n, 1)) * 4;
    Staged& mass = mass_.Next();
    if (absl::Status s = mass.Reserve(total); !s.ok()) return s;
    int32_t* h = reinterpret_cast<int32_t*>(mass.host);
    const int32_t* d = reinterpret_cast<const int32_t*>(mass.dev);
    size_t at = 0;
    auto put = [&](const std::vector<int32_t>& v) {
      std::memcpy(h + at, v.data(), v.size() * 4);
      const int32_t* where = d + at;
      at += v.size();
      return where;
    };
    const int32_t* d_indptr = put(req.indptr);
    const int32_t* d_slots = put(req.slots);
    const int32_t* d_len = put(req.page_len);
    const int32_t* d_keep = put(req.keep);
    const int32_t* d_split = put(req.split);
    const int32_t* d_need = put(req.need);
    const int32_t* d_out_indptr = put(req.out_indptr);
    const int32_t* d_last = put(req.last_page_len);
    const int32_t* d_full_indptr = d_indptr;
    const int32_t* const* d_src = nullptr;
    if (lists) {
      d_full_indptr = put(full_indptr);
      at += at & 1;  // 8-byte alignment for the addresses
      d_src = reinterpret_cast<const int32_t* const*>(d + at);
      for (int32_t r = 0; r < rows; ++r) {
        const int32_t* src = req.list[r] >= 0 ? lists_[req.list[r]].ptr + req.list_off[r] : nullptr;
        std::memcpy(h + at, &src, sizeof(src));
        at += 2;
      }
    }
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(mass.dev, mass.host, at * 4, cudaMemcpyHostToDevice, stream_),
        "mass attend upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(mass.ready, stream_), "event record");
    float* d_mass = reinterpret_cast<float*>(mass.dev + in_bytes);
    int32_t* d_out = reinterpret_cast<int32_t*>(d_mass + n);

    kernels::DecodeParams dp;
    dp.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_));
    dp.table = {rows, d_out_indptr, d_out, d_last};
    dp.batch = static_cast<int32_t>(q.shape[0]);
    dp.num_qo_heads = geo_.q_heads;
    dp.per_kv_head = true;
    dp.q = static_cast<const uint16_t*>(q.data);
    dp.o = static_cast<uint16_t*>(o.data);
    auto plan = DecodePlanFor(dp, max_row);
    if (!plan.ok()) return plan.status();
    if (absl::Status s = Reserve(decode_ws_, plan->workspace_bytes); !s.ok()) return s;
    // The choice (each attended slot's entry) is written by the kernel straight into a pinned,
    // mapped host buffer for whoever asks (FinishChoices): no copy on the stream, no wait here.
    if (static_cast<size_t>(tag) >= choices_.size()) choices_.resize(tag + 1);
    if (choices_[tag] == nullptr) choices_[tag] = std::make_unique<Staged>();
    Staged& c = *choices_[tag];
    if (absl::Status s = c.Reserve(std::max<size_t>(out_n, 1) * 4); !s.ok()) return s;
    c.used = out_n;
    std::vector<char> side_done(req.host_copies.size(), 0);  // copied in the mass kernel
    if (n > 0) {  // (no entries: every row is empty, nothing to choose)
      kernels::PageMassParams mp;
      mp.kv = dp.kv;
      mp.batch = dp.batch;
      mp.num_qo_heads = geo_.q_heads;
      mp.q = dp.q;
      mp.indptr = d_full_indptr;
      mp.indices = d_slots;
      mp.page_len = d_len;
      if (lists) {
        mp.listed = d_indptr;
        mp.tails = d_src;
        mp.tail_len = geo_.page_tokens;
      }
      mp.reduce = req.reduce;
      mp.mass = d_mass;
      kernels::MassSelectParams sp;
      sp.rows = rows;
      sp.indptr = d_full_indptr;
      sp.keep = d_keep;
      sp.split = d_split;
      sp.need = d_need;
      sp.mass = d_mass;
      sp.values = nullptr;  // each choice is its entry's slot, listed or stored
      sp.out_indptr = d_out_indptr;
      sp.out = d_out;
      sp.out_entry = reinterpret_cast<int32_t*>(c.mapped);
      const size_t mass_ws = kernels::gpu::PageMassWorkspaceBytes(static_cast<int64_t>(n),
                                                                  geo_.q_heads / geo_.kv_heads);
      if (absl::Status s = Reserve(workspace_, mass_ws); !s.ok()) return s;
      kernels::gpu::PageMassOptions options;
      options.select = &sp;
      // The host copies that can ride in the mass kernel (into the tags' mapped buffers).
      for (size_t i = 0; i < req.host_copies.size(); ++i) {
        const auto& [t, copy_tag] = req.host_copies[i];
        const size_t bytes = t.shape[0] * t.shape[1] * t.shape[2] * 2;
        if (options.copies.n == kernels::gpu::SideCopies::kMax || !worker_internal::Contiguous(t) ||
            ((reinterpret_cast<uintptr_t>(t.data) | bytes) & 15u) != 0) {
          continue;
        }
        auto c = TaggedBuffer(copy_tag, bytes);
        if (!c.ok()) return c.status();
        const int k = options.copies.n++;
        options.copies.src[k] = t.data;
        options.copies.dst[k] = (*c)->mapped;
        options.copies.bytes[k] = static_cast<int64_t>(bytes);
        side_done[i] = 1;
      }
      if (absl::Status s =
              kernels::gpu::PageMass(mp, static_cast<int64_t>(n), workspace_.ptr, options, stream_);
          !s.ok()) {
        return s;
      }
      for (size_t i = 0; i < req.host_copies.size(); ++i) {
        if (!side_done[i]) continue;
        PAGODA_CUDA_RETURN(cudaEventRecord(copies_[req.host_copies[i].second]->ready, stream_),
                           "event record");
      }
    }
    PAGODA_CUDA_RETURN(cudaEventRecord(c.ready, stream_), "event record");
    if (absl::Status s = kernels::gpu::SparseDecode(*plan, dp, decode_ws_.ptr, stream_); !s.ok()) {
      return s;
    }
    for (size_t i = 0; i < req.host_copies.size(); ++i) {  // the rest: copies on the stream
      if (side_done[i]) continue;
      const auto& [t, copy_tag] = req.host_copies[i];
      if (absl::Status s = StartCopyToHost(t, copy_tag); !s.ok()) return s;
    }
    // Saved candidates go to their lists on the device (copies ordered after the upload).
    for (int32_t r = 0; r < rows && !req.save.empty(); ++r) {
      if (req.save[r] < 0) continue;
      const int64_t count = req.indptr[r + 1] - req.indptr[r] - req.keep[r];
      auto list = StoreList(req.save[r], count);
      if (!list.ok()) return list.status();
      PAGODA_CUDA_RETURN(cudaMemcpyAsync(*list, d_slots + req.indptr[r] + req.keep[r], count * 4,
                                         cudaMemcpyDeviceToDevice, stream_),
                         "slot list save");
    }
    return absl::OkStatus();
  }

  void DropSlotList(int64_t id) override {
    auto it = lists_.find(id);
    if (it == lists_.end()) return;
    // Its block is reused by a later list; stream order puts that list's copy after every read.
    spare_lists_.push_back(it->second);
    lists_.erase(it);
  }

  absl::StatusOr<absl::Span<const int32_t>> FinishChoices(int tag) override {
    if (tag < 0 || static_cast<size_t>(tag) >= choices_.size() || choices_[tag] == nullptr) {
      return absl::FailedPreconditionError("no choice was made under this tag");
    }
    Staged& c = *choices_[tag];
    PAGODA_CUDA_RETURN(cudaEventSynchronize(c.ready), "choice wait");
    return absl::MakeConstSpan(reinterpret_cast<const int32_t*>(c.host), c.used);
  }

  absl::Status AssemblePages(const TensorView& k, const TensorView& v,
                             absl::Span<const int64_t> dst_offsets,
                             absl::Span<uint64_t> head_sums) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    // The reference's checks on the host offsets, then one upload of the offsets, the kernel
    // writing into the mapped arena, and the sums back.
    auto p = worker_internal::AssemblyParams(geo_, Device::kCuda, k, v, const_cast<uint8_t*>(src_),
                                             src_bytes_, dst_offsets, head_sums);
    if (!p.ok()) return p.status();
    const size_t n = dst_offsets.size();
    if (n == 0) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const size_t off_bytes = n * 8, sum_bytes = head_sums.size() * 8;
    if (absl::Status s = assemble_.Reserve(off_bytes + sum_bytes); !s.ok()) return s;
    std::memcpy(assemble_.host, dst_offsets.data(), off_bytes);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(assemble_.dev, assemble_.host, off_bytes, cudaMemcpyHostToDevice, stream_),
        "assembly upload");
    p->dst_offset = reinterpret_cast<const int64_t*>(assemble_.dev);
    p->head_sums = reinterpret_cast<uint64_t*>(assemble_.dev + off_bytes);
    if (absl::Status s = kernels::gpu::AssemblePages(*p, stream_); !s.ok()) return s;
    PAGODA_CUDA_RETURN(cudaMemcpyAsync(assemble_.host + off_bytes, assemble_.dev + off_bytes,
                                       sum_bytes, cudaMemcpyDeviceToHost, stream_),
                       "assembly sums download");
    PAGODA_CUDA_RETURN(cudaEventRecord(assemble_.ready, stream_), "event record");
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "assembly sync");
    std::memcpy(head_sums.data(), assemble_.host + off_bytes, sum_bytes);
    return absl::OkStatus();
  }

  absl::Status AttendPrefill(const TensorView& q, const kernels::PageTable& table,
                             const PrefillMask& mask, const TensorView& o) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s =
            worker_internal::CheckAttendPrefill(geo_, Device::kCuda, q, table, mask, o);
        !s.ok()) {
      return s;
    }
    if (!worker_internal::Contiguous(q) || !worker_internal::Contiguous(o)) {
      return absl::InvalidArgumentError("the CUDA backend needs contiguous q and o");
    }
    // One upload: indptr, indices, last_page_len, q_indptr (int32), then the streaming flags.
    const int32_t rows = table.num_rows;
    const size_t words = TableWords(table) + 2;
    const size_t bytes = words * 4 + rows;
    if (absl::Status s = prefill_.Reserve(bytes); !s.ok()) return s;
    int32_t* h = reinterpret_cast<int32_t*>(prefill_.host);
    const int32_t* d = reinterpret_cast<const int32_t*>(prefill_.dev);
    const kernels::PageTable dt = PackTable(table, h, d);
    h[words - 2] = 0;
    h[words - 1] = static_cast<int32_t>(q.shape[0]);
    uint8_t* flags = prefill_.host + words * 4;
    for (int32_t r = 0; r < rows; ++r) flags[r] = mask.streaming.empty() ? 0 : mask.streaming[r];
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(prefill_.dev, prefill_.host, bytes, cudaMemcpyHostToDevice, stream_),
        "prefill table upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(prefill_.ready, stream_), "event record");
    kernels::PrefillParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_));
    p.table = dt;
    p.per_kv_head = true;
    p.batch = 1;
    p.num_qo_heads = geo_.q_heads;
    p.q_indptr = d + words - 2;
    p.q = static_cast<const uint16_t*>(q.data);
    p.o = static_cast<uint16_t*>(o.data);
    p.is_streaming = prefill_.dev + words * 4;
    p.sink_tokens = mask.sink_tokens;
    p.window_tokens = mask.window_tokens;
    auto plan = kernels::gpu::PlanPrefill(p, q.shape[0]);
    if (!plan.ok()) return plan.status();
    if (absl::Status s = Reserve(workspace_, plan->workspace_bytes); !s.ok()) return s;
    return kernels::gpu::BlockSparsePrefill(*plan, p, workspace_.ptr, stream_);
  }

  absl::Status CopyToHost(const TensorView& t, absl::Span<uint16_t> out) override {
    if (t.ndim != 3 || t.device != Device::kCuda) {
      return absl::InvalidArgumentError("a CUDA [a, b, c] tensor is needed");
    }
    if (static_cast<int64_t>(out.size()) != t.shape[0] * t.shape[1] * t.shape[2]) {
      return absl::InvalidArgumentError("output size does not match the tensor");
    }
    if (absl::Status s = EnqueueDownload(t, out.data()); !s.ok()) return s;
    return CudaStatus(cudaStreamSynchronize(stream_), "tensor download sync");
  }

  absl::Status StartCopyToHost(const TensorView& t, int tag) override {
    if (t.ndim != 3 || t.device != Device::kCuda) {
      return absl::InvalidArgumentError("a CUDA [a, b, c] tensor is needed");
    }
    const size_t n = t.shape[0] * t.shape[1] * t.shape[2];
    auto c = TaggedBuffer(tag, n * 2);
    if (!c.ok()) return c.status();
    if (absl::Status s = EnqueueDownload(t, reinterpret_cast<uint16_t*>((*c)->host)); !s.ok()) {
      return s;
    }
    return CudaStatus(cudaEventRecord((*c)->ready, stream_), "event record");
  }

  absl::Status StartReadHeads(absl::Span<const HeadSlot> src, int tag) override {
    if (absl::Status s = CheckHeads(src, src.size() * geo_.SlotBytes()); !s.ok()) return s;
    auto c = TaggedBuffer(tag, src.size() * geo_.SlotBytes());
    if (!c.ok()) return c.status();
    for (size_t i = 0; i < src.size(); ++i) {
      PAGODA_CUDA_RETURN(cudaMemcpyAsync((*c)->host + i * geo_.SlotBytes(), SlotPtr(src[i]),
                                         geo_.SlotBytes(), cudaMemcpyDeviceToHost, stream_),
                         "head download");
    }
    return CudaStatus(cudaEventRecord((*c)->ready, stream_), "event record");
  }

  absl::StatusOr<absl::Span<const uint16_t>> FinishCopyToHost(int tag) override {
    if (tag < 0 || static_cast<size_t>(tag) >= copies_.size() || copies_[tag] == nullptr) {
      return absl::FailedPreconditionError("no copy was started under this tag");
    }
    Staged& c = *copies_[tag];
    PAGODA_CUDA_RETURN(cudaEventSynchronize(c.ready), "download wait");
    return absl::Span<const uint16_t>(reinterpret_cast<const uint16_t*>(c.host), c.used);
  }

  absl::Status InitSummaries(int64_t slots) override {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    if (sum_slots_ > 0) return absl::FailedPreconditionError("summaries already initialized");
    if (slots < 1 || slots > (int64_t{1} << 31) - 1) {
      return absl::InvalidArgumentError("summary slots must be in [1, 2^31)");
    }
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const size_t row = static_cast<size_t>(geo_.kv_heads) * geo_.head_dim * 2;
    const size_t bytes = 2 * slots * row + slots * 4;
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrCat("CUDA worker backend: no device memory for ", slots, " summary slots"));
    }
    summaries_ = static_cast<uint8_t*>(p);
    PAGODA_CUDA_RETURN(cudaMemsetAsync(summaries_, 0, bytes, stream_), "summaries memset");
    sum_slots_ = slots;
    return CudaStatus(cudaStreamSynchronize(stream_), "summaries init sync");
  }

  // One pinned upload of [min rows | max rows | counts | slots], then three scatters (the page-copy
  // kernel) of min rows, max rows and counts into their slots.
  absl::Status WriteSummaries(absl::Span<const int32_t> slots, absl::Span<const uint16_t> min,
                              absl::Span<const uint16_t> max,
                              absl::Span<const int32_t> count) override {
    if (absl::Status s =
            worker_internal::CheckWriteSummaries(geo_, sum_slots_, slots, min, max, count);
        !s.ok()) {
      return s;
    }
    if (slots.empty()) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const size_t row = static_cast<size_t>(geo_.kv_heads) * geo_.head_dim * 2;
    const size_t n = slots.size();
    const size_t bytes = 2 * n * row + 2 * n * 4;
    if (absl::Status s = sum_up_.Reserve(bytes); !s.ok()) return s;
    std::memcpy(sum_up_.host, min.data(), n * row);
    std::memcpy(sum_up_.host + n * row, max.data(), n * row);
    std::memcpy(sum_up_.host + 2 * n * row, count.data(), n * 4);
    std::memcpy(sum_up_.host + 2 * n * row + n * 4, slots.data(), n * 4);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(sum_up_.dev, sum_up_.host, bytes, cudaMemcpyHostToDevice, stream_),
        "summary upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(sum_up_.ready, stream_), "event record");
    const int32_t* dslots = reinterpret_cast<const int32_t*>(sum_up_.dev + 2 * n * row + n * 4);
    struct Part {
      uint8_t* table;
      size_t row_bytes;
      uint8_t* from;
    } parts[3] = {{summaries_, row, sum_up_.dev},
                  {summaries_ + sum_slots_ * row, row, sum_up_.dev + n * row},
                  {summaries_ + 2 * sum_slots_ * row, 4, sum_up_.dev + 2 * n * row}};
    for (const Part& part : parts) {
      kernels::PageCopyParams c;
      c.pool = part.table;
      c.pool_pages = sum_slots_;
      c.pool_stride_bytes = static_cast<int64_t>(part.row_bytes);
      c.page_bytes = static_cast<int64_t>(part.row_bytes);
      c.pages = dslots;
      c.num_pages = static_cast<int32_t>(n);
      c.staging = part.from;
      if (absl::Status s = kernels::gpu::ScatterPages(c, stream_); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // One pinned upload of [summary slots | old counts | new counts | pool slots], then the summary
  // kernel reading the new tokens from the pool.
  absl::Status UpdateSummaries(absl::Span<const int32_t> sum_slots,
                               absl::Span<const int32_t> pool_slots,
                               absl::Span<const int32_t> old_count,
                               absl::Span<const int32_t> new_count) override {
    if (absl::Status s = worker_internal::CheckUpdateSummaries(geo_, sum_slots_, sum_slots,
                                                               pool_slots, old_count, new_count);
        !s.ok()) {
      return s;
    }
    if (sum_slots.empty()) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const size_t n = sum_slots.size();
    const size_t bytes = (3 * n + pool_slots.size()) * 4;
    if (absl::Status s = sum_fold_.Reserve(bytes); !s.ok()) return s;
    int32_t* h = reinterpret_cast<int32_t*>(sum_fold_.host);
    std::memcpy(h, sum_slots.data(), n * 4);
    std::memcpy(h + n, old_count.data(), n * 4);
    std::memcpy(h + 2 * n, new_count.data(), n * 4);
    std::memcpy(h + 3 * n, pool_slots.data(), pool_slots.size() * 4);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(sum_fold_.dev, sum_fold_.host, bytes, cudaMemcpyHostToDevice, stream_),
        "summary update upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(sum_fold_.ready, stream_), "event record");
    const int32_t* d = reinterpret_cast<const int32_t*>(sum_fold_.dev);
    kernels::SummaryUpdateParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_));
    p.summaries = Summaries();
    p.num_updates = static_cast<int32_t>(n);
    p.pages = d;
    p.summary_pages = d;
    p.old_count = d + n;
    p.new_count = d + 2 * n;
    p.head_pages = d + 3 * n;
    return kernels::gpu::UpdateSummaries(p, stream_);
  }

  // One pinned upload of [src | dst], then per part (min rows, max rows, counts) a gather of the
  // source rows into device staging and a scatter of them to the destinations.
  absl::Status CopySummaries(absl::Span<const int32_t> src,
                             absl::Span<const int32_t> dst) override {
    if (absl::Status s = worker_internal::CheckCopySummaries(sum_slots_, src, dst); !s.ok()) {
      return s;
    }
    if (src.empty()) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const size_t n = src.size();
    const size_t row = static_cast<size_t>(geo_.kv_heads) * geo_.head_dim * 2;
    const size_t ids = (2 * n * 4 + 15) / 16 * 16;
    if (absl::Status s = sum_copy_.Reserve(ids + n * row); !s.ok()) return s;
    std::memcpy(sum_copy_.host, src.data(), n * 4);
    std::memcpy(sum_copy_.host + n * 4, dst.data(), n * 4);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(sum_copy_.dev, sum_copy_.host, 2 * n * 4, cudaMemcpyHostToDevice, stream_),
        "summary copy upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(sum_copy_.ready, stream_), "event record");
    const int32_t* d = reinterpret_cast<const int32_t*>(sum_copy_.dev);
    struct Part {
      uint8_t* table;
      size_t bytes;
    } parts[3] = {{summaries_, row},
                  {summaries_ + sum_slots_ * row, row},
                  {summaries_ + 2 * sum_slots_ * row, 4}};
    for (const Part& part : parts) {
      kernels::PageCopyParams c;
      c.pool = part.table;
      c.pool_pages = sum_slots_;
      c.pool_stride_bytes = static_cast<int64_t>(part.bytes);
      c.page_bytes = static_cast<int64_t>(part.bytes);
      c.num_pages = static_cast<int32_t>(n);
      c.staging = sum_copy_.dev + ids;
      c.pages = d;
      if (absl::Status s = kernels::gpu::GatherPages(c, stream_); !s.ok()) return s;
      c.pages = d + n;
      if (absl::Status s = kernels::gpu::ScatterPages(c, stream_); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // One pinned upload of [page ids | summary slots | zeros | page_tokens], then the summary
  // kernel reading the chunk's rows where they are.
  absl::Status SummarizeTokens(const TensorView& k, absl::Span<const int32_t> sum_slots) override {
    if (absl::Status s =
            worker_internal::CheckSummarizeTokens(geo_, sum_slots_, Device::kCuda, k, sum_slots);
        !s.ok()) {
      return s;
    }
    if (sum_slots.empty()) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const size_t n = sum_slots.size();
    if (absl::Status s = sum_fold_.Reserve(4 * n * 4); !s.ok()) return s;
    int32_t* h = reinterpret_cast<int32_t*>(sum_fold_.host);
    for (size_t i = 0; i < n; ++i) {
      h[i] = static_cast<int32_t>(i);
      h[n + i] = sum_slots[i];
      h[2 * n + i] = 0;
      h[3 * n + i] = geo_.page_tokens;
    }
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(sum_fold_.dev, sum_fold_.host, 4 * n * 4, cudaMemcpyHostToDevice, stream_),
        "summarize upload");
    PAGODA_CUDA_RETURN(cudaEventRecord(sum_fold_.ready, stream_), "event record");
    const int32_t* d = reinterpret_cast<const int32_t*>(sum_fold_.dev);
    kernels::SummaryUpdateParams p;
    p.kv = geo_.RowPages(static_cast<const uint16_t*>(k.data), static_cast<int32_t>(n));
    p.summaries = Summaries();
    p.num_updates = static_cast<int32_t>(n);
    p.pages = d;
    p.summary_pages = d + n;
    p.old_count = d + 2 * n;
    p.new_count = d + 3 * n;
    return kernels::gpu::UpdateSummaries(p, stream_);
  }

  absl::Status SelectQuest(const TensorView& q, const QuestRequest& req,
                           std::vector<int32_t>& out_indptr,
                           std::vector<int32_t>& out_indices) override {
    if (absl::Status s =
            worker_internal::CheckQuestRequest(geo_, sum_slots_, Device::kCuda, q, req);
        !s.ok()) {
      return s;
    }
    if (!worker_internal::Contiguous(q))
      return absl::InvalidArgumentError("q must be contiguous for selection");
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const int32_t batch = static_cast<int32_t>(q.shape[0]);
    const int64_t rows = int64_t{batch} * geo_.kv_heads;
    const int64_t n_cand = static_cast<int64_t>(req.cand.size());
    const int64_t n_keep = static_cast<int64_t>(req.keep.size());
    const int64_t n_out = kernels::QuestOutputSize(batch, geo_.kv_heads, req.top_k,
                                                   req.cand_indptr.data(), req.keep_indptr.data());
    int32_t max_cand = 0;
    for (int32_t b = 0; b < batch; ++b) {
      max_cand = std::max(max_cand, req.cand_indptr[b + 1] - req.cand_indptr[b]);
    }
    // Upload: cand_indptr, cand, keep_indptr, keep, last_len (int32 each), padded to 16 bytes.
    const int64_t in_words = (batch + 1) + n_cand + (batch + 1) + n_keep + batch;
    const int64_t out_words = (rows + 1) + std::max<int64_t>(1, n_out) + rows;
    const size_t in_bytes = (in_words * 4 + 15) / 16 * 16;
    const size_t scores_bytes = std::max<int64_t>(1, geo_.kv_heads * n_cand) * 4;
    if (absl::Status s = quest_.Reserve(in_bytes + scores_bytes + out_words * 4); !s.ok()) return s;
    int32_t* h = reinterpret_cast<int32_t*>(quest_.host);
    int64_t at = 0;
    auto put = [&](const std::vector<int32_t>& v) {
      if (!v.empty()) std::memcpy(h + at, v.data(), v.size() * 4);
      const int64_t begin = at;
      at += static_cast<int64_t>(v.size());
      return begin;
    };
    const int64_t o_cand_indptr = put(req.cand_indptr), o_cand = put(req.cand);
    const int64_t o_keep_indptr = put(req.keep_indptr), o_keep = put(req.keep);
    const int64_t o_last = put(req.last_len);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(quest_.dev, quest_.host, in_words * 4, cudaMemcpyHostToDevice, stream_),
        "quest upload");
    const int32_t* d = reinterpret_cast<const int32_t*>(quest_.dev);
    float* scores = reinterpret_cast<float*>(quest_.dev + in_bytes);
    int32_t* out = reinterpret_cast<int32_t*>(quest_.dev + in_bytes + scores_bytes);
    kernels::QuestParams p;
    p.batch = batch;
    p.num_qo_heads = geo_.q_heads;
    p.q = static_cast<const uint16_t*>(q.data);
    p.summaries = Summaries();
    p.page_size = geo_.page_tokens;
    p.cand_indptr = d + o_cand_indptr;
    p.cand_pages = d + o_cand;
    p.keep_indptr = d + o_keep_indptr;
    p.keep_pages = d + o_keep;
    p.seq_last_page_len = d + o_last;
    p.top_k = req.top_k;
    p.reduce = req.reduce;
    p.scores = scores;
    p.out_indptr = out;
    p.out_indices = out + rows + 1;
    p.out_last_page_len = out + rows + 1 + std::max<int64_t>(1, n_out);
    auto plan = kernels::gpu::PlanQuest(p, max_cand);
    if (!plan.ok()) return plan.status();
    if (absl::Status s = kernels::gpu::QuestSelect(*plan, p, nullptr, stream_); !s.ok()) return s;
    // The verdict comes back through the pinned side (after the upload it no longer needs).
    int32_t* back = reinterpret_cast<int32_t*>(quest_.host + in_bytes + scores_bytes);
    PAGODA_CUDA_RETURN(cudaMemcpyAsync(back, out, ((rows + 1) + std::max<int64_t>(1, n_out)) * 4,
                                       cudaMemcpyDeviceToHost, stream_),
                       "quest download");
    PAGODA_CUDA_RETURN(cudaEventRecord(quest_.ready, stream_), "event record");
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "quest sync");
    out_indptr.assign(back, back + rows + 1);
    if (out_indptr.back() != n_out) {
      return absl::InternalError("CUDA worker backend: quest output size disagrees");
    }
    out_indices.assign(back + rows + 1, back + rows + 1 + n_out);
    return absl::OkStatus();
  }

  absl::Status KMeans(const kernels::KMeansParams& p, int iterations) override {
    if (absl::Status s = worker_internal::CheckKMeans(geo_, p, iterations); !s.ok()) return s;
    PAGODA_CUDA_RETURN(cudaSetDevice(o_.device), "cudaSetDevice");
    const int32_t P = p.kv.page_size, heads = p.kv.num_kv_heads, d = p.kv.head_dim;
    const int32_t K = p.num_clusters, n = p.num_tokens;
    const int32_t pages = (n + P - 1) / P;
    const int64_t page_elems = int64_t{heads} * P * d;  // keys only, packed per page
    auto up16 = [](size_t b) { return (b + 15) / 16 * 16; };
    // One buffer, each part 16-byte aligned: keys | page ids | centroids | assignment | sizes |
    // the update's workspace (device only; the host side of it is unused).
    const size_t o_ids = up16(static_cast<size_t>(pages) * page_elems * 2);
    const size_t o_cent = o_ids + up16(static_cast<size_t>(pages) * 4);
    const size_t cent_bytes = static_cast<size_t>(heads) * K * d * 4;
    const size_t o_asg = o_cent + up16(cent_bytes);
    const size_t asg_bytes = static_cast<size_t>(heads) * n * 4;
    const size_t o_size = o_asg + up16(asg_bytes);
    const size_t size_bytes = static_cast<size_t>(heads) * K * 4;
    const size_t o_work = o_size + up16(size_bytes);
    kernels::KMeansParams g;
    g.kv = kernels::PackedPagedKV(p.kv.dtype, pages, P, heads, d, nullptr);
    g.kv.stride_page = page_elems;  // keys only
    g.num_tokens = n;
    g.num_clusters = K;
    if (absl::Status s = kmeans_.Reserve(o_work + kernels::gpu::KMeansWorkspaceBytes(g)); !s.ok()) {
      return s;
    }
    uint16_t* keys = reinterpret_cast<uint16_t*>(kmeans_.host);
    for (int32_t i = 0; i < pages; ++i) {
      const int32_t valid = std::min(P, n - i * P);
      for (int h = 0; h < heads; ++h) {
        uint16_t* out = keys + i * page_elems + int64_t{h} * P * d;
        const uint16_t* in =
            p.kv.k + int64_t{p.pages[i]} * p.kv.stride_page + int64_t{h} * p.kv.stride_head;
        for (int32_t t = 0; t < valid; ++t) {
          std::memcpy(out + int64_t{t} * d, in + t * p.kv.stride_token, d * 2);
        }
        std::memset(out + int64_t{valid} * d, 0, static_cast<size_t>(P - valid) * d * 2);
      }
    }
    int32_t* ids = reinterpret_cast<int32_t*>(kmeans_.host + o_ids);
    for (int32_t i = 0; i < pages; ++i) ids[i] = i;
    std::memcpy(kmeans_.host + o_cent, p.centroids, cent_bytes);
    PAGODA_CUDA_RETURN(
        cudaMemcpyAsync(kmeans_.dev, kmeans_.host, o_asg, cudaMemcpyHostToDevice, stream_),
        "kmeans upload");
    g.kv.k = reinterpret_cast<const uint16_t*>(kmeans_.dev);
    g.pages = reinterpret_cast<const int32_t*>(kmeans_.dev + o_ids);
    g.centroids = reinterpret_cast<float*>(kmeans_.dev + o_cent);
    g.assignment = reinterpret_cast<int32_t*>(kmeans_.dev + o_asg);
    g.cluster_size = reinterpret_cast<int32_t*>(kmeans_.dev + o_size);
    void* work = kmeans_.dev + o_work;
    for (int it = 0; it < iterations; ++it) {
      if (absl::Status s = kernels::gpu::KMeansAssign(g, stream_); !s.ok()) return s;
      if (absl::Status s = kernels::gpu::KMeansUpdate(g, work, stream_); !s.ok()) return s;
    }
    if (absl::Status s = kernels::gpu::KMeansAssign(g, stream_); !s.ok()) return s;
    PAGODA_CUDA_RETURN(cudaMemcpyAsync(kmeans_.host + o_cent, kmeans_.dev + o_cent, o_work - o_cent,
                                       cudaMemcpyDeviceToHost, stream_),
                       "kmeans download");
    PAGODA_CUDA_RETURN(cudaEventRecord(kmeans_.ready, stream_), "event record");
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "kmeans sync");
    std::memcpy(p.centroids, kmeans_.host + o_cent, cent_bytes);
    std::memcpy(p.assignment, kmeans_.host + o_asg, asg_bytes);
    std::memcpy(p.cluster_size, kmeans_.host + o_size, size_bytes);
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    absl::Status s = CudaStatus(cudaStreamSynchronize(stream_), "sync");
    // The gathers' verdicts land in their callers' flags (all 1, not verified, when the stream
    // failed: nothing it gathered may be attended).
    for (const Verdicts& v : verdicts_) {
      if (s.ok()) {
        std::memcpy(v.bad, fetch_.host + v.at, v.n);
      } else {
        std::memset(v.bad, 1, v.n);
      }
    }
    verdicts_.clear();
    gather_off_ = 0;
    return s;
  }

 private:
  uint8_t* SlotPtr(HeadSlot s) const {
    return pool_ + (int64_t{s.head} * geo_.slots + s.slot) * geo_.SlotBytes();
  }
  // The device summary table as the kernels see it (min / max / count; no means).
  kernels::PageSummaries Summaries() const {
    const size_t row = static_cast<size_t>(geo_.kv_heads) * geo_.head_dim * 2;
    kernels::PageSummaries sm;
    sm.dtype = KernelDType(geo_.dtype);
    sm.num_pages = static_cast<int32_t>(sum_slots_);
    sm.sub_pages = 1;
    sm.num_kv_heads = geo_.kv_heads;
    sm.head_dim = geo_.head_dim;
    sm.min = reinterpret_cast<uint16_t*>(summaries_);
    sm.max = reinterpret_cast<uint16_t*>(summaries_ + sum_slots_ * row);
    sm.count = reinterpret_cast<int32_t*>(summaries_ + 2 * sum_slots_ * row);
    return sm;
  }
  // Enqueues the download of a CUDA [a, b, c] tensor into `out` (contiguous): one copy, or rows of
  // c elements pitched by the middle stride, one 2-D copy per outer index. No sync.
  absl::Status EnqueueDownload(const TensorView& t, uint16_t* out) {
    if (worker_internal::Contiguous(t)) {
      return CudaStatus(cudaMemcpyAsync(out, t.data, t.shape[0] * t.shape[1] * t.shape[2] * 2,
                                        cudaMemcpyDeviceToHost, stream_),
                        "tensor download");
    }
    for (int64_t a = 0; a < t.shape[0]; ++a) {
      PAGODA_CUDA_RETURN(
          cudaMemcpy2DAsync(out + a * t.shape[1] * t.shape[2], t.shape[2] * 2, t.At(a, 0, 0),
                            std::max<int64_t>(t.strides[1], t.shape[2]) * 2, t.shape[2] * 2,
                            t.shape[1], cudaMemcpyDeviceToHost, stream_),
          "tensor download");
    }
    return absl::OkStatus();
  }
  // The pinned buffer of copy tag `tag`, holding `bytes` (after the earlier copy under it is done).
  absl::StatusOr<Staged*> TaggedBuffer(int tag, size_t bytes) {
    if (tag < 0 || tag >= 65536) return absl::InvalidArgumentError("copy tag out of [0, 65536)");
    if (static_cast<size_t>(tag) >= copies_.size()) copies_.resize(tag + 1);
    if (copies_[tag] == nullptr) copies_[tag] = std::make_unique<Staged>();
    Staged& c = *copies_[tag];
    if (absl::Status s = c.Reserve(bytes); !s.ok()) return s;
    c.used = bytes / 2;
    return &c;
  }
  // Device scratch grown on demand (after the stream drained: a kernel may still use it) and
  // zeroed when (re)allocated: the decode's arrival counters live at its start, and every
  // finished decode leaves them zero (its plans skip the per-call memset: DecodePlanFor).
  struct DeviceScratch {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  absl::Status Reserve(DeviceScratch& w, size_t bytes) {
    if (bytes <= w.bytes) return absl::OkStatus();
    PAGODA_CUDA_RETURN(cudaStreamSynchronize(stream_), "workspace sync");
    if (w.ptr != nullptr) cudaFree(w.ptr);
    w.ptr = nullptr;
    w.bytes = 0;
    PAGODA_CUDA_RETURN(cudaMalloc(&w.ptr, bytes), "workspace cudaMalloc");
    PAGODA_CUDA_RETURN(cudaMemset(w.ptr, 0, bytes), "workspace zero");
    w.bytes = bytes;
    return absl::OkStatus();
  }
  // The decode plan of a batch and longest row (the geometry is fixed at Init), planned once: a
  // plan asks the device for the kernel's occupancy (four runtime calls), every layer of every
  // step needs one, and a step's rows keep their budget.
  absl::StatusOr<kernels::gpu::DecodePlan> DecodePlanFor(const kernels::DecodeParams& p,
                                                         int64_t max_row) {
    const std::pair<int32_t, int64_t> key{p.batch, max_row};
    if (auto it = plans_.find(key); it != plans_.end()) return it->second;
    kernels::gpu::DecodePlanOptions o;
    o.zeroed_workspace = true;  // decode_ws_ is used by nothing else
    auto plan = kernels::gpu::PlanDecode(p, /*streaming=*/false, max_row, o);
    if (!plan.ok()) return plan.status();
    if (plans_.size() >= 1024) plans_.clear();  // (batch, row length) pairs seen: bounded
    plans_.emplace(key, *plan);
    return *plan;
  }
  // The staged table of `layer` as decode parameters (device pointers into its region).
  kernels::DecodeParams StagedDecode(size_t layer, const void* q, void* o) const {
    const size_t R = static_cast<size_t>(stage_batch_) * geo_.kv_heads;
    const int32_t* d = reinterpret_cast<const int32_t*>(stage_buf_.dev) + layer * stage_words_;
    const int32_t* indptr = d + 3 * R + 3 * static_cast<size_t>(stage_batch_);
    kernels::DecodeParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_));
    p.table = {static_cast<int32_t>(R), indptr, indptr + 2 * R + 1, indptr + R + 1};
    p.batch = stage_batch_;
    p.num_qo_heads = geo_.q_heads;
    p.per_kv_head = true;
    p.q = static_cast<const uint16_t*>(q);
    p.o = static_cast<uint16_t*>(o);
    return p;
  }
  absl::Status CheckHeads(absl::Span<const HeadSlot> heads, size_t bytes) const {
    if (pool_ == nullptr) return absl::FailedPreconditionError("backend not initialized");
    return worker_internal::CheckHeadSlots(geo_, heads, bytes);
  }

  CudaWorkerBackendOptions o_;
  cudaStream_t stream_ = nullptr;
  worker_internal::PoolGeometry geo_;
  uint8_t* pool_ = nullptr;
  const uint8_t* src_ = nullptr;
  int64_t src_bytes_ = 0;
  Staged fetch_, table_, prefill_, assemble_, score_;
  // Gathers enqueued since the last Sync(): where in fetch_ each one's verdicts arrive and whose
  // flags they are; gather_off_ is where the next one's region begins.
  struct Verdicts {
    uint8_t* bad;
    size_t at;
    size_t n;
  };
  std::vector<Verdicts> verdicts_;
  size_t gather_off_ = 0;
  // workspace_: the prefill's and the masses'; decode_ws_: the decode's only (its counters).
  DeviceScratch workspace_, decode_ws_;
  absl::flat_hash_map<std::pair<int32_t, int64_t>, kernels::gpu::DecodePlan> plans_;
  uint8_t* summaries_ = nullptr;  // [min rows | max rows | counts] of sum_slots_ slots
  int64_t sum_slots_ = 0;
  Staged sum_up_, quest_, sum_fold_, sum_copy_, kmeans_;
  std::vector<std::unique_ptr<Staged>> copies_;   // StartCopyToHost, by tag
  std::vector<std::unique_ptr<Staged>> choices_;  // AttendBestByMass, by tag
  StagedPair mass_;                               // AttendBestByMass' upload and scratch
  std::vector<int32_t> full_indptr_;
  // StageLayers: the staged layers, their upload, regions and decode plans, and the generation.
  std::vector<StagedLayer> stage_;
  Staged stage_buf_;
  size_t stage_words_ = 0;
  int32_t stage_batch_ = 0;
  int64_t stage_max_row_ = 0;
  std::vector<kernels::gpu::DecodePlan> stage_plans_;
  std::vector<const void*> stage_bufs_;  // what the generation's launches read
  uint64_t stage_gen_ = 0;
  // Stored slot lists (MassAttendRequest::save) in device blocks; dropped blocks are reused.
  struct DeviceList {
    int32_t* ptr = nullptr;
    int64_t capacity = 0;
    int64_t size = 0;
  };
  absl::flat_hash_map<int64_t, DeviceList> lists_;
  std::vector<DeviceList> spare_lists_;
  // The device block of list `id`, holding `size` slots (reused, taken from the spares or new).
  absl::StatusOr<int32_t*> StoreList(int64_t id, int64_t size) {
    auto it = lists_.find(id);
    if (it != lists_.end() && it->second.capacity >= size) {
      it->second.size = size;
      return it->second.ptr;
    }
    if (it != lists_.end()) {
      spare_lists_.push_back(it->second);
      lists_.erase(it);
    }
    DeviceList l;
    for (size_t i = 0; i < spare_lists_.size(); ++i) {
      if (spare_lists_[i].capacity >= size) {
        l = spare_lists_[i];
        spare_lists_[i] = spare_lists_.back();
        spare_lists_.pop_back();
        break;
      }
    }
    if (l.ptr == nullptr) {
      l.capacity = std::max<int64_t>(1024, (size + 1023) / 1024 * 1024);
      void* p = nullptr;
      PAGODA_CUDA_RETURN(cudaMalloc(&p, l.capacity * 4), "slot list cudaMalloc");
      l.ptr = static_cast<int32_t*>(p);
    }
    l.size = size;
    lists_[id] = l;
    return l.ptr;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerBackend>> MakeCudaWorkerBackend(
    const CudaWorkerBackendOptions& options) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return absl::UnavailableError("no CUDA device");
  }
  if (options.device < 0 || options.device >= n) {
    return absl::UnavailableError(absl::StrCat("no CUDA device ", options.device));
  }
  return std::unique_ptr<WorkerBackend>(new CudaWorkerBackend(options));
}

}  // namespace pagoda
