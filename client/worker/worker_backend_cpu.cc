// The CPU worker backend: a host pool and the kernels' C++ references.
#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kernels/reference.h"
#include "worker_backend_check.h"

namespace pagoda {
namespace {

class CpuWorkerBackend final : public WorkerBackend {
 public:
  absl::Status Init(const PageLayout& layout, int q_heads, int32_t slots) override {
    if (!pool_.empty()) return absl::FailedPreconditionError("backend already initialized");
    if (absl::Status s = worker_internal::CheckInit(layout, q_heads, slots); !s.ok()) return s;
    geo_ = worker_internal::PoolGeometry(layout, q_heads, slots);
    pool_.assign(static_cast<size_t>(geo_.PoolBytes()), 0);
    return absl::OkStatus();
  }
  Device device() const override { return Device::kCpu; }
  const char* name() const override { return "cpu"; }

  absl::Status RegisterSource(const uint8_t* base, int64_t bytes) override {
    if (base == nullptr || bytes <= 0) return absl::InvalidArgumentError("empty source");
    src_ = base;
    src_bytes_ = bytes;
    return absl::OkStatus();
  }

  absl::Status Gather(absl::Span<const HeadFetch> fetches, absl::Span<uint8_t> bad) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    if (bad.size() != fetches.size()) return absl::InvalidArgumentError("bad flags size");
    if (fetches.empty()) return absl::OkStatus();
    if (src_ == nullptr) return absl::FailedPreconditionError("no source registered");
    k_.clear(), v_.clear(), heads_.clear(), slots_.clear(), sums_.clear();
    for (const HeadFetch& f : fetches) {
      k_.push_back(f.src_k);
      v_.push_back(f.src_v);
      heads_.push_back(f.dst.head);
      slots_.push_back(f.dst.slot);
      sums_.push_back(f.checksum);
    }
    kernels::HeadGatherParams p;
    p.src = src_;
    p.src_bytes = src_bytes_;
    p.pool = pool_.data();
    p.num_kv_heads = geo_.kv_heads;
    p.pool_slots = geo_.slots;
    p.half_bytes = geo_.half_bytes;
    p.num_copies = static_cast<int32_t>(fetches.size());
    p.src_k = k_.data();
    p.src_v = v_.data();
    p.dst_head = heads_.data();
    p.dst_slot = slots_.data();
    p.expected = sums_.data();
    p.bad = bad.data();
    return kernels::GatherHeadPagesReference(p);
  }

  absl::Status WriteTokens(const TensorView& k, const TensorView& v,
                           absl::Span<const int32_t> slots,
                           absl::Span<const int32_t> positions) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s =
            worker_internal::CheckWriteTokens(geo_, Device::kCpu, k, v, slots, positions);
        !s.ok()) {
      return s;
    }
    if (worker_internal::Contiguous(k) && worker_internal::Contiguous(v) &&
        worker_internal::TokenRowsFit(geo_)) {  // the CUDA backend's kernel, by its reference
      return worker_internal::ForEachTokenRowsCall(
          geo_, pool_.data(), k, v, slots, positions,
          [](const kernels::TokenRowsParams& c) { return kernels::WriteTokenRowsReference(c); });
    }
    const size_t row = static_cast<size_t>(geo_.head_dim) * 2;  // strided views: row by row
    for (size_t n = 0; n < positions.size(); ++n) {
      for (int h = 0; h < geo_.kv_heads; ++h) {
        uint8_t* slot = SlotPtr({h, slots[n * geo_.kv_heads + h]});
        const int64_t at = int64_t{positions[n]} * geo_.head_dim * 2;
        std::memcpy(slot + at, k.At(static_cast<int64_t>(n), h, 0), row);
        std::memcpy(slot + geo_.half_bytes + at, v.At(static_cast<int64_t>(n), h, 0), row);
      }
    }
    return absl::OkStatus();
  }

  absl::Status WriteHeads(absl::Span<const HeadSlot> dst,
                          absl::Span<const uint8_t> bytes) override {
    if (absl::Status s = CheckHeads(dst, bytes.size()); !s.ok()) return s;
    for (size_t i = 0; i < dst.size(); ++i) {
      std::memcpy(SlotPtr(dst[i]), bytes.data() + i * geo_.SlotBytes(), geo_.SlotBytes());
    }
    return absl::OkStatus();
  }

  absl::Status ReadHeads(absl::Span<const HeadSlot> src, absl::Span<uint8_t> bytes) override {
    if (absl::Status s = CheckHeads(src, bytes.size()); !s.ok()) return s;
    for (size_t i = 0; i < src.size(); ++i) {
      std::memcpy(bytes.data() + i * geo_.SlotBytes(), SlotPtr(src[i]), geo_.SlotBytes());
    }
    return absl::OkStatus();
  }

  absl::Status CopyHeads(absl::Span<const HeadSlot> src, absl::Span<const HeadSlot> dst) override {
    if (src.size() != dst.size()) return absl::InvalidArgumentError("src and dst sizes differ");
    if (absl::Status s = CheckHeads(src, src.size() * geo_.SlotBytes()); !s.ok()) return s;
    if (absl::Status s = CheckHeads(dst, dst.size() * geo_.SlotBytes()); !s.ok()) return s;
    for (size_t i = 0; i < src.size(); ++i) {
      std::memmove(SlotPtr(dst[i]), SlotPtr(src[i]), geo_.SlotBytes());
    }
    return absl::OkStatus();
  }

  absl::Status Attend(const TensorView& q, const kernels::PageTable& table,
                      const TensorView& o) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s = worker_internal::CheckAttend(geo_, Device::kCpu, q, table, o); !s.ok()) {
      return s;
    }
    if (absl::Status s = StageQ(q); !s.ok()) return s;
    const int64_t batch = q.shape[0];
    kernels::DecodeParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_.data()));
    p.table = table;
    p.batch = static_cast<int32_t>(batch);
    p.num_qo_heads = geo_.q_heads;
    p.per_kv_head = true;
    p.q = q_.data();
    p.o = o_.data();
    if (absl::Status s = kernels::SparseDecodeReference(p); !s.ok()) return s;
    WriteBackO(o);
    return absl::OkStatus();
  }

  absl::Status ScorePages(const TensorView& q, absl::Span<const int32_t> indptr,
                          absl::Span<const int32_t> slots, absl::Span<const int32_t> page_len,
                          kernels::GroupReduce reduce, absl::Span<float> mass) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    auto batch = worker_internal::CheckScorePages(geo_, Device::kCpu, q, indptr, slots, page_len,
                                                  mass.size());
    if (!batch.ok()) return batch.status();
    if (slots.empty()) return absl::OkStatus();
    if (absl::Status s = StageQ(q); !s.ok()) return s;
    kernels::PageMassParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_.data()));
    p.batch = *batch;
    p.num_qo_heads = geo_.q_heads;
    p.q = q_.data();
    p.indptr = indptr.data();
    p.indices = slots.data();
    p.page_len = page_len.data();
    p.reduce = reduce;
    p.mass = mass.data();
    return kernels::PageMassReference(p);
  }

  absl::Status AttendBestByMass(const TensorView& q, const MassAttendRequest& req, int tag,
                                const TensorView& o) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    if (tag < 0 || tag >= 65536) return absl::InvalidArgumentError("choice tag out of [0, 65536)");
    auto list_size = [&](int64_t id) -> int64_t {
      auto it = lists_.find(id);
      return it == lists_.end() ? -1 : static_cast<int64_t>(it->second.size());
    };
    if (absl::Status s = worker_internal::CheckMassAttend(geo_, Device::kCpu, q, req, o, list_size);
        !s.ok()) {
      return s;
    }
    // Every row's entries in one list: the listed ones, then those of its stored list.
    MassAttendRequest flat;
    const MassAttendRequest& full = req.list.empty() ? req : Flatten(req, flat);
    if (absl::Status s = Choose(q, full, tag, o); !s.ok()) return s;
    for (size_t r = 0; r < req.save.size(); ++r) {
      if (req.save[r] < 0) continue;
      lists_[req.save[r]].assign(req.slots.begin() + req.indptr[r] + req.keep[r],
                                 req.slots.begin() + req.indptr[r + 1]);
    }
    for (const auto& [t, copy_tag] : req.host_copies) {
      if (absl::Status s = StartCopyToHost(t, copy_tag); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  void DropSlotList(int64_t id) override { lists_.erase(id); }

  // req with each row's stored-list entries appended to its listed ones (full pages).
  const MassAttendRequest& Flatten(const MassAttendRequest& req, MassAttendRequest& flat) const {
    flat = req;
    flat.slots.clear();
    flat.page_len.clear();
    flat.indptr.assign(1, 0);
    for (size_t r = 0; r + 1 < req.indptr.size(); ++r) {
      flat.slots.insert(flat.slots.end(), req.slots.begin() + req.indptr[r],
                        req.slots.begin() + req.indptr[r + 1]);
      flat.page_len.insert(flat.page_len.end(), req.page_len.begin() + req.indptr[r],
                           req.page_len.begin() + req.indptr[r + 1]);
      if (req.list[r] >= 0) {
        const std::vector<int32_t>& l = lists_.at(req.list[r]);
        flat.slots.insert(flat.slots.end(), l.begin() + req.list_off[r],
                          l.begin() + req.list_off[r] + req.list_count[r]);
        flat.page_len.insert(flat.page_len.end(), req.list_count[r], geo_.page_tokens);
      }
      flat.indptr.push_back(static_cast<int32_t>(flat.slots.size()));
    }
    flat.save.clear();
    flat.list.clear();
    return flat;
  }

  // AttendBestByMass over a checked request with every entry listed.
  absl::Status Choose(const TensorView& q, const MassAttendRequest& req, int tag,
                      const TensorView& o) {
    // The masses (ScorePages), the choice (kernels' reference), then the decode over it.
    std::vector<float> mass(req.slots.size());
    if (absl::Status s =
            ScorePages(q, req.indptr, req.slots, req.page_len, req.reduce, absl::MakeSpan(mass));
        !s.ok()) {
      return s;
    }
    const int32_t rows = static_cast<int32_t>(req.keep.size());
    std::vector<int32_t> indices(std::max(1, req.out_indptr.back())), entries(indices.size());
    kernels::MassSelectParams m;
    m.rows = rows;
    m.indptr = req.indptr.data();
    m.keep = req.keep.data();
    m.split = req.split.data();
    m.need = req.need.data();
    m.mass = mass.data();
    m.values = req.slots.data();
    m.out_indptr = req.out_indptr.data();
    m.out = indices.data();
    m.out_entry = entries.data();
    if (absl::Status s = kernels::MassSelectReference(m); !s.ok()) return s;
    kernels::PageTable table;
    table.num_rows = rows;
    table.indptr = req.out_indptr.data();
    table.indices = indices.data();
    table.last_page_len = req.last_page_len.data();
    if (absl::Status s = Attend(q, table, o); !s.ok()) return s;
    if (static_cast<size_t>(tag) >= choices_.size()) choices_.resize(tag + 1);
    entries.resize(req.out_indptr.back());
    choices_[tag] = std::move(entries);
    return absl::OkStatus();
  }

  absl::StatusOr<absl::Span<const int32_t>> FinishChoices(int tag) override {
    if (tag < 0 || static_cast<size_t>(tag) >= choices_.size() || !choices_[tag].has_value()) {
      return absl::FailedPreconditionError("no choice was made under this tag");
    }
    return absl::MakeConstSpan(*choices_[tag]);
  }

  absl::Status AssemblePages(const TensorView& k, const TensorView& v,
                             absl::Span<const int64_t> dst_offsets,
                             absl::Span<uint64_t> head_sums) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    auto p = worker_internal::AssemblyParams(geo_, Device::kCpu, k, v, const_cast<uint8_t*>(src_),
                                             src_bytes_, dst_offsets, head_sums);
    if (!p.ok()) return p.status();
    return kernels::AssemblePagesReference(*p);
  }

  absl::Status AttendPrefill(const TensorView& q, const kernels::PageTable& table,
                             const PrefillMask& mask, const TensorView& o) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s = worker_internal::CheckAttendPrefill(geo_, Device::kCpu, q, table, mask, o);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = StageQ(q); !s.ok()) return s;
    const int64_t n = q.shape[0];
    const int32_t q_indptr[2] = {0, static_cast<int32_t>(n)};
    kernels::PrefillParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_.data()));
    p.table = table;
    p.per_kv_head = true;
    p.batch = 1;
    p.num_qo_heads = geo_.q_heads;
    p.q_indptr = q_indptr;
    p.q = q_.data();
    p.o = o_.data();
    p.is_streaming = mask.streaming.empty() ? nullptr : mask.streaming.data();
    p.sink_tokens = mask.sink_tokens;
    p.window_tokens = mask.window_tokens;
    if (absl::Status s = kernels::BlockSparsePrefillReference(p); !s.ok()) return s;
    WriteBackO(o);
    return absl::OkStatus();
  }

  absl::Status CopyToHost(const TensorView& t, absl::Span<uint16_t> out) override {
    return worker_internal::CopyHostTensor(t, out);
  }

  absl::Status StartCopyToHost(const TensorView& t, int tag) override {
    if (tag < 0 || tag >= 65536) return absl::InvalidArgumentError("copy tag out of [0, 65536)");
    if (t.ndim != 3) return absl::InvalidArgumentError("a [a, b, c] tensor is needed");
    if (static_cast<size_t>(tag) >= copies_.size()) copies_.resize(tag + 1);
    std::vector<uint16_t> buf(t.shape[0] * t.shape[1] * t.shape[2]);
    if (absl::Status s = worker_internal::CopyHostTensor(t, absl::MakeSpan(buf)); !s.ok()) return s;
    copies_[tag] = std::move(buf);
    return absl::OkStatus();
  }

  absl::Status StartReadHeads(absl::Span<const HeadSlot> src, int tag) override {
    if (tag < 0 || tag >= 65536) return absl::InvalidArgumentError("copy tag out of [0, 65536)");
    std::vector<uint8_t> bytes(src.size() * geo_.SlotBytes());
    if (absl::Status s = ReadHeads(src, absl::MakeSpan(bytes)); !s.ok()) return s;
    if (static_cast<size_t>(tag) >= copies_.size()) copies_.resize(tag + 1);
    std::vector<uint16_t> elems(bytes.size() / 2);
    std::memcpy(elems.data(), bytes.data(), bytes.size());
    copies_[tag] = std::move(elems);
    return absl::OkStatus();
  }

  absl::StatusOr<absl::Span<const uint16_t>> FinishCopyToHost(int tag) override {
    if (tag < 0 || static_cast<size_t>(tag) >= copies_.size() || !copies_[tag].has_value()) {
      return absl::FailedPreconditionError("no copy was started under this tag");
    }
    return absl::MakeConstSpan(*copies_[tag]);
  }

  absl::Status InitSummaries(int64_t slots) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    if (slots < 1 || slots > (int64_t{1} << 31) - 1) {
      return absl::InvalidArgumentError("summary slots must be in [1, 2^31)");
    }
    const size_t row = static_cast<size_t>(geo_.kv_heads) * geo_.head_dim;
    sum_min_.assign(slots * row, 0);
    sum_max_.assign(slots * row, 0);
    sum_count_.assign(slots, 0);
    sum_slots_ = slots;
    return absl::OkStatus();
  }

  absl::Status WriteSummaries(absl::Span<const int32_t> slots, absl::Span<const uint16_t> min,
                              absl::Span<const uint16_t> max,
                              absl::Span<const int32_t> count) override {
    if (absl::Status s =
            worker_internal::CheckWriteSummaries(geo_, sum_slots_, slots, min, max, count);
        !s.ok()) {
      return s;
    }
    const size_t row = static_cast<size_t>(geo_.kv_heads) * geo_.head_dim;
    for (size_t i = 0; i < slots.size(); ++i) {
      std::memcpy(&sum_min_[slots[i] * row], &min[i * row], row * 2);
      std::memcpy(&sum_max_[slots[i] * row], &max[i * row], row * 2);
      sum_count_[slots[i]] = count[i];
    }
    return absl::OkStatus();
  }

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
    kernels::SummaryUpdateParams p;
    p.kv = geo_.PagedKV(reinterpret_cast<const uint16_t*>(pool_.data()));
    p.summaries = Summaries();
    p.num_updates = static_cast<int32_t>(sum_slots.size());
    p.pages = sum_slots.data();
    p.summary_pages = sum_slots.data();
    p.head_pages = pool_slots.data();
    p.old_count = old_count.data();
    p.new_count = new_count.data();
    return kernels::UpdateSummariesReference(p);
  }

  absl::Status CopySummaries(absl::Span<const int32_t> src,
                             absl::Span<const int32_t> dst) override {
    if (absl::Status s = worker_internal::CheckCopySummaries(sum_slots_, src, dst); !s.ok()) {
      return s;
    }
    const size_t row = static_cast<size_t>(geo_.kv_heads) * geo_.head_dim;
    for (size_t i = 0; i < src.size(); ++i) {
      std::memcpy(&sum_min_[dst[i] * row], &sum_min_[src[i] * row], row * 2);
      std::memcpy(&sum_max_[dst[i] * row], &sum_max_[src[i] * row], row * 2);
      sum_count_[dst[i]] = sum_count_[src[i]];
    }
    return absl::OkStatus();
  }

  absl::Status SummarizeTokens(const TensorView& k, absl::Span<const int32_t> sum_slots) override {
    if (absl::Status s =
            worker_internal::CheckSummarizeTokens(geo_, sum_slots_, Device::kCpu, k, sum_slots);
        !s.ok()) {
      return s;
    }
    if (sum_slots.empty()) return absl::OkStatus();
    const int32_t n = static_cast<int32_t>(sum_slots.size());
    std::vector<int32_t> pages(n), zero(n, 0), full(n, geo_.page_tokens);
    for (int32_t i = 0; i < n; ++i) pages[i] = i;
    kernels::SummaryUpdateParams p;
    p.kv = geo_.RowPages(static_cast<const uint16_t*>(k.data), n);
    p.summaries = Summaries();
    p.num_updates = n;
    p.pages = pages.data();
    p.summary_pages = sum_slots.data();
    p.old_count = zero.data();
    p.new_count = full.data();
    return kernels::UpdateSummariesReference(p);
  }

  absl::Status SelectQuest(const TensorView& q, const QuestRequest& req,
                           std::vector<int32_t>& out_indptr,
                           std::vector<int32_t>& out_indices) override {
    if (absl::Status s = worker_internal::CheckQuestRequest(geo_, sum_slots_, Device::kCpu, q, req);
        !s.ok()) {
      return s;
    }
    const int32_t batch = static_cast<int32_t>(q.shape[0]);
    q_.resize(static_cast<size_t>(batch) * geo_.q_heads * geo_.head_dim);
    if (absl::Status s = worker_internal::CopyHostTensor(q, absl::MakeSpan(q_)); !s.ok()) return s;
    kernels::QuestParams p;
    p.batch = batch;
    p.num_qo_heads = geo_.q_heads;
    p.q = q_.data();
    p.summaries = Summaries();
    p.page_size = geo_.page_tokens;
    p.cand_indptr = req.cand_indptr.data();
    p.cand_pages = req.cand.data();
    p.keep_indptr = req.keep_indptr.data();
    p.keep_pages = req.keep.data();
    p.seq_last_page_len = req.last_len.data();
    p.top_k = req.top_k;
    p.reduce = req.reduce;
    scores_.resize(std::max<size_t>(1, static_cast<size_t>(geo_.kv_heads) * req.cand.size()));
    out_indptr.assign(static_cast<size_t>(batch) * geo_.kv_heads + 1, 0);
    out_indices.assign(std::max<int64_t>(1, kernels::QuestOutputSize(
                                                batch, geo_.kv_heads, req.top_k,
                                                req.cand_indptr.data(), req.keep_indptr.data())),
                       0);
    std::vector<int32_t> last(static_cast<size_t>(batch) * geo_.kv_heads);
    p.scores = scores_.data();
    p.out_indptr = out_indptr.data();
    p.out_indices = out_indices.data();
    p.out_last_page_len = last.data();
    if (absl::Status s = kernels::QuestSelectReference(p); !s.ok()) return s;
    out_indices.resize(out_indptr.back());
    return absl::OkStatus();
  }

  absl::Status KMeans(const kernels::KMeansParams& p, int iterations) override {
    if (absl::Status s = worker_internal::CheckKMeans(geo_, p, iterations); !s.ok()) return s;
    return kernels::KMeansReference(p, iterations);
  }

  absl::StatusOr<uint64_t> StageLayers(absl::Span<const StagedLayer> layers) override {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    if (absl::Status s = worker_internal::CheckStaged(geo_, sum_slots_, layers); !s.ok()) return s;
    // What a graph over AttendStaged would bake in: the batch and the layers (no buffers here).
    if (staged_.size() != layers.size() ||
        staged_[0].token_pos.size() != layers[0].token_pos.size()) {
      ++generation_;
    }
    staged_.assign(layers.begin(), layers.end());
    token_rows_.resize(staged_.size());
    for (size_t l = 0; l < staged_.size(); ++l) {
      token_rows_[l] =
          worker_internal::TokenRowIds(geo_, staged_[l].token_slots, staged_[l].token_pos);
    }
    return generation_;
  }

  absl::Status AttendStaged(int layer, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& o) override {
    if (layer < 0 || static_cast<size_t>(layer) >= staged_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not staged"));
    }
    const StagedLayer& x = staged_[layer];
    if (absl::Status s =
            worker_internal::CheckWriteTokens(geo_, Device::kCpu, k, v, x.token_slots, x.token_pos);
        !s.ok()) {
      return s;
    }
    const kernels::PageTable table = StagedTable(x);
    if (absl::Status s = worker_internal::CheckAttend(geo_, Device::kCpu, q, table, o); !s.ok()) {
      return s;
    }
    if (worker_internal::TokenRowsViewable(k) && worker_internal::TokenRowsViewable(v) &&
        worker_internal::TokenRowsFit(geo_)) {  // the CUDA backend's kernel over staged row ids
      if (absl::Status s = kernels::WriteTokenRowsReference(worker_internal::StagedTokenRows(
              geo_, pool_.data(), k, v, token_rows_[layer].data()));
          !s.ok()) {
        return s;
      }
    } else if (absl::Status s = WriteTokens(k, v, x.token_slots, x.token_pos); !s.ok()) {
      return s;
    }
    if (!x.sum_slots.empty()) {
      if (absl::Status s = UpdateSummaries(x.sum_slots, x.token_slots, x.fold_from, x.fold_to);
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = Attend(q, table, o); !s.ok()) return s;
    return x.q_tag >= 0 ? StartCopyToHost(q, x.q_tag) : absl::OkStatus();
  }

  absl::Status Sync() override { return absl::OkStatus(); }

 private:
  static kernels::PageTable StagedTable(const StagedLayer& x) {
    static constexpr int32_t kNone = 0;  // an all-empty table still has an array
    kernels::PageTable t;
    t.num_rows = static_cast<int32_t>(x.last_page_len.size());
    t.indptr = x.indptr.data();
    t.indices = x.indices.empty() ? &kNone : x.indices.data();
    t.last_page_len = x.last_page_len.data();
    return t;
  }

  // The references take contiguous q / o: q ([rows, q_heads, head_dim], any strides) into q_, and
  // o_ sized to match; WriteBackO copies o_ into the caller's (possibly strided) o.
  absl::Status StageQ(const TensorView& q) {
    const size_t n = static_cast<size_t>(q.shape[0]) * q.shape[1] * q.shape[2];
    q_.resize(n);
    o_.resize(n);
    return worker_internal::CopyHostTensor(q, absl::MakeSpan(q_));
  }
  void WriteBackO(const TensorView& o) {
    for (int64_t r = 0; r < o.shape[0]; ++r) {
      for (int h = 0; h < geo_.q_heads; ++h) {
        std::memcpy(o.At(r, h, 0), &o_[(r * geo_.q_heads + h) * geo_.head_dim], geo_.head_dim * 2);
      }
    }
  }

  uint8_t* SlotPtr(HeadSlot s) {
    return pool_.data() + (int64_t{s.head} * geo_.slots + s.slot) * geo_.SlotBytes();
  }
  // The summary table as the kernels see it (min / max / count; no means).
  kernels::PageSummaries Summaries() {
    kernels::PageSummaries sm;
    sm.dtype = KernelDType(geo_.dtype);
    sm.num_pages = static_cast<int32_t>(sum_slots_);
    sm.sub_pages = 1;
    sm.num_kv_heads = geo_.kv_heads;
    sm.head_dim = geo_.head_dim;
    sm.min = sum_min_.data();
    sm.max = sum_max_.data();
    sm.count = sum_count_.data();
    return sm;
  }
  absl::Status CheckHeads(absl::Span<const HeadSlot> heads, size_t bytes) const {
    if (pool_.empty()) return absl::FailedPreconditionError("backend not initialized");
    return worker_internal::CheckHeadSlots(geo_, heads, bytes);
  }

  worker_internal::PoolGeometry geo_;
  std::vector<uint8_t> pool_;
  const uint8_t* src_ = nullptr;
  int64_t src_bytes_ = 0;
  std::vector<int64_t> k_, v_;
  std::vector<int32_t> heads_, slots_;
  std::vector<uint64_t> sums_;
  std::vector<uint16_t> q_, o_;
  int64_t sum_slots_ = 0;  // summary table (InitSummaries)
  std::vector<uint16_t> sum_min_, sum_max_;
  std::vector<int32_t> sum_count_;
  std::vector<float> scores_;
  std::vector<std::optional<std::vector<uint16_t>>> copies_;  // StartCopyToHost, by tag
  std::vector<std::optional<std::vector<int32_t>>> choices_;  // AttendBestByMass, by tag
  absl::flat_hash_map<int64_t, std::vector<int32_t>> lists_;  // stored slot lists, by id
  std::vector<StagedLayer> staged_;                           // StageLayers
  std::vector<std::vector<int32_t>> token_rows_;              // their token row ids, by layer
  uint64_t generation_ = 0;
};

}  // namespace

std::unique_ptr<WorkerBackend> MakeCpuWorkerBackend() {
  return std::make_unique<CpuWorkerBackend>();
}

}  // namespace pagoda
