#include "worker_backend_check.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/client/worker_backend.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::worker_internal {

namespace {
// `ids` sorted, and whether one repeats.
std::vector<int32_t> Sorted(absl::Span<const int32_t> ids) {
  std::vector<int32_t> v(ids.begin(), ids.end());
  std::sort(v.begin(), v.end());
  return v;
}
bool Repeats(const std::vector<int32_t>& sorted) {
  return std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end();
}
}  // namespace

PoolGeometry::PoolGeometry(const PageLayout& layout, int q, int32_t s)
    : dtype(layout.dtype),
      kv_heads(static_cast<int>(layout.kv_heads)),
      q_heads(q),
      head_dim(static_cast<int>(layout.head_dim)),
      page_tokens(static_cast<int>(layout.page_tokens)),
      slots(s),
      half_bytes(int64_t{layout.page_tokens} * layout.head_dim * 2) {}

kernels::PagedKV PoolGeometry::PagedKV(const uint16_t* pool) const {
  kernels::PagedKV kv;
  kv.dtype = KernelDType(dtype);
  kv.num_pages = slots;
  kv.page_size = page_tokens;
  kv.num_kv_heads = kv_heads;
  kv.head_dim = head_dim;
  kv.stride_token = head_dim;
  kv.stride_page = SlotBytes() / 2;
  kv.stride_head = int64_t{slots} * kv.stride_page;
  kv.k = pool;
  kv.v = pool + half_bytes / 2;
  return kv;
}

kernels::PagedKV PoolGeometry::RowPages(const uint16_t* rows, int32_t pages) const {
  kernels::PagedKV kv;
  kv.dtype = KernelDType(dtype);
  kv.num_pages = pages;
  kv.page_size = page_tokens;
  kv.num_kv_heads = kv_heads;
  kv.head_dim = head_dim;
  kv.stride_token = int64_t{kv_heads} * head_dim;
  kv.stride_head = head_dim;
  kv.stride_page = int64_t{page_tokens} * kv_heads * head_dim;
  kv.k = rows;
  return kv;
}

absl::Status CheckInit(const PageLayout& layout, int q_heads, int32_t slots) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  if (slots < 1) return absl::InvalidArgumentError("pool slots per head must be >= 1");
  if (q_heads < 1 || q_heads % static_cast<int>(layout.kv_heads) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "q_heads ", q_heads, " is not a positive multiple of kv_heads ", layout.kv_heads));
  }
  if ((int64_t{layout.page_tokens} * layout.head_dim * 2) % 16 != 0) {
    return absl::InvalidArgumentError("page_tokens x head_dim x 2 must be a multiple of 16");
  }
  return absl::OkStatus();
}

absl::Status CheckWriteTokens(const PoolGeometry& g, Device device, const TensorView& k,
                              const TensorView& v, absl::Span<const int32_t> slots,
                              absl::Span<const int32_t> positions) {
  const int64_t n = static_cast<int64_t>(positions.size());
  if (absl::Status s = CheckTensor(k, "k", {n, g.kv_heads, g.head_dim}, g.dtype, device); !s.ok())
    return s;
  if (absl::Status s = CheckTensor(v, "v", {n, g.kv_heads, g.head_dim}, g.dtype, device); !s.ok())
    return s;
  if (static_cast<int64_t>(slots.size()) != n * g.kv_heads) {
    return absl::InvalidArgumentError("slots must hold rows x kv_heads entries");
  }
  for (int32_t s : slots) {
    if (s < 0 || s >= g.slots)
      return absl::OutOfRangeError(absl::StrCat("slot ", s, " out of range"));
  }
  for (int32_t p : positions) {
    if (p < 0 || p >= g.page_tokens) {
      return absl::OutOfRangeError(absl::StrCat("position ", p, " outside a page"));
    }
  }
  return absl::OkStatus();
}

bool Contiguous(const TensorView& t) {
  return t.strides[2] == 1 && t.strides[1] == t.shape[2] && t.strides[0] == t.shape[1] * t.shape[2];
}

bool TokenRowsFit(const PoolGeometry& g) {
  return int64_t{g.kv_heads} * g.slots * 2 * g.page_tokens < (int64_t{1} << 31);
}

bool TokenRowsViewable(const TensorView& t) {
  return t.ndim == 3 && t.strides[2] == 1 && t.strides[1] == t.shape[2] &&
         t.strides[0] >= t.shape[1] * t.shape[2];
}

kernels::TokenRowsParams StagedTokenRows(const PoolGeometry& g, uint8_t* pool, const TensorView& k,
                                         const TensorView& v, const int32_t* rows) {
  kernels::TokenRowsParams c;
  c.pool = pool;
  c.pool_rows = int64_t{g.kv_heads} * g.slots * 2 * g.page_tokens;
  c.row_bytes = int64_t{g.head_dim} * 2;
  c.k = static_cast<const uint8_t*>(k.data);
  c.v = static_cast<const uint8_t*>(v.data);
  c.num_rows = static_cast<int32_t>(k.shape[0] * g.kv_heads);
  c.rows = rows;
  c.heads_per_token = g.kv_heads;
  c.k_token_bytes = k.strides[0] * 2;
  c.v_token_bytes = v.strides[0] * 2;
  return c;
}

std::vector<int32_t> TokenRowIds(const PoolGeometry& g, absl::Span<const int32_t> slots,
                                 absl::Span<const int32_t> positions) {
  const int64_t n_rows = static_cast<int64_t>(positions.size()) * g.kv_heads;
  const int64_t P = g.page_tokens;
  std::vector<int32_t> rows(2 * n_rows);
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t n = r / g.kv_heads, h = r % g.kv_heads;
    const int64_t base = (h * g.slots + slots[r]) * 2 * P + positions[n];
    rows[r] = static_cast<int32_t>(base);
    rows[n_rows + r] = static_cast<int32_t>(base + P);
  }
  return rows;
}

absl::Status ForEachTokenRowsCall(
    const PoolGeometry& g, uint8_t* pool, const TensorView& k, const TensorView& v,
    absl::Span<const int32_t> slots, absl::Span<const int32_t> positions,
    const std::function<absl::Status(const kernels::TokenRowsParams&)>& fn) {
  const int64_t n_rows = static_cast<int64_t>(positions.size()) * g.kv_heads;
  const int64_t P = g.page_tokens;
  const std::vector<int32_t> rows = TokenRowIds(g, slots, positions);
  kernels::TokenRowsParams c;
  c.pool = pool;
  c.pool_rows = int64_t{g.kv_heads} * g.slots * 2 * P;
  c.row_bytes = int64_t{g.head_dim} * 2;
  for (int64_t r0 = 0; r0 < n_rows; r0 += kernels::kMaxTokenRows) {
    c.num_rows = static_cast<int32_t>(std::min<int64_t>(kernels::kMaxTokenRows, n_rows - r0));
    c.k = static_cast<const uint8_t*>(k.data) + r0 * c.row_bytes;
    c.v = static_cast<const uint8_t*>(v.data) + r0 * c.row_bytes;
    for (int32_t i = 0; i < c.num_rows; ++i) {
      c.k_rows[i] = rows[r0 + i];
      c.v_rows[i] = rows[n_rows + r0 + i];
    }
    if (absl::Status s = fn(c); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<kernels::PageAssemblyParams> AssemblyParams(const PoolGeometry& g, Device device,
                                                           const TensorView& k, const TensorView& v,
                                                           uint8_t* dst, int64_t dst_bytes,
                                                           absl::Span<const int64_t> dst_offsets,
                                                           absl::Span<uint64_t> head_sums) {
  const int64_t pages = static_cast<int64_t>(dst_offsets.size());
  const int64_t rows = pages * g.page_tokens;
  for (const auto& [t, what] : {std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    if (absl::Status s = CheckTensor(*t, what, {rows, g.kv_heads, g.head_dim}, g.dtype, device);
        !s.ok()) {
      return s;
    }
    if (t->strides[2] != 1) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the last axis must be contiguous"));
    }
  }
  if (static_cast<int64_t>(head_sums.size()) != pages * g.kv_heads) {
    return absl::InvalidArgumentError("head_sums must hold pages x kv_heads entries");
  }
  if (dst == nullptr) return absl::FailedPreconditionError("no source registered");
  kernels::PageAssemblyParams p;
  p.dtype = KernelDType(g.dtype);
  p.num_pages = static_cast<int32_t>(pages);
  p.page_size = g.page_tokens;
  p.num_kv_heads = g.kv_heads;
  p.head_dim = g.head_dim;
  p.k = static_cast<const uint16_t*>(k.data);
  p.v = static_cast<const uint16_t*>(v.data);
  p.k_stride_token = k.strides[0];
  p.k_stride_head = k.strides[1];
  p.v_stride_token = v.strides[0];
  p.v_stride_head = v.strides[1];
  p.dst = dst;
  p.dst_bytes = dst_bytes;
  p.dst_offset = dst_offsets.data();
  p.head_sums = head_sums.data();
  if (absl::Status s = kernels::ValidatePageAssembly(p); !s.ok()) return s;
  return p;
}

absl::Status CheckHeadSlots(const PoolGeometry& g, absl::Span<const HeadSlot> heads, size_t bytes) {
  if (bytes != heads.size() * static_cast<size_t>(g.SlotBytes())) {
    return absl::InvalidArgumentError(
        absl::StrCat("head-page bytes: want ", heads.size(), " x ", g.SlotBytes()));
  }
  for (const HeadSlot& h : heads) {
    if (h.head < 0 || h.head >= g.kv_heads || h.slot < 0 || h.slot >= g.slots) {
      return absl::OutOfRangeError(
          absl::StrCat("head ", h.head, " slot ", h.slot, " out of range"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckAttend(const PoolGeometry& g, Device device, const TensorView& q,
                         const kernels::PageTable& table, const TensorView& o) {
  const int64_t batch = q.ndim == 3 ? q.shape[0] : -1;
  if (absl::Status s = CheckTensor(q, "q", {batch, g.q_heads, g.head_dim}, g.dtype, device);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckTensor(o, "o", {batch, g.q_heads, g.head_dim}, g.dtype, device);
      !s.ok()) {
    return s;
  }
  return CheckTable(g, batch, table);
}

absl::Status CheckTable(const PoolGeometry& g, int64_t batch, const kernels::PageTable& table) {
  if (table.num_rows != batch * g.kv_heads || table.indptr == nullptr ||
      table.last_page_len == nullptr) {
    return absl::InvalidArgumentError("the table must have batch x kv_heads rows");
  }
  if (table.indptr[0] != 0) return absl::InvalidArgumentError("indptr[0] must be 0");
  for (int32_t r = 0; r < table.num_rows; ++r) {
    if (table.indptr[r + 1] < table.indptr[r]) {
      return absl::InvalidArgumentError("indptr must be non-decreasing");
    }
    if (table.indptr[r + 1] > table.indptr[r] &&
        (table.last_page_len[r] < 1 || table.last_page_len[r] > g.page_tokens)) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r, ": bad last_page_len"));
    }
  }
  for (int32_t i = 0; i < table.indptr[table.num_rows]; ++i) {
    if (table.indices[i] < 0 || table.indices[i] >= g.slots) {
      return absl::OutOfRangeError(absl::StrCat("table slot ", table.indices[i], " out of range"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckStaged(const PoolGeometry& g, int64_t table_slots,
                         absl::Span<const StagedLayer> layers) {
  if (layers.empty()) return absl::InvalidArgumentError("no layers to stage");
  const int64_t batch = static_cast<int64_t>(layers[0].token_pos.size());
  if (batch < 1) return absl::InvalidArgumentError("a staged layer needs a batch");
  for (size_t l = 0; l < layers.size(); ++l) {
    const StagedLayer& x = layers[l];
    auto bad = [&](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("staged layer ", l, ": ", s.message()));
    };
    if (static_cast<int64_t>(x.token_pos.size()) != batch) {
      return bad(absl::InvalidArgumentError("every layer must have the same batch"));
    }
    if (static_cast<int64_t>(x.token_slots.size()) != batch * g.kv_heads) {
      return bad(absl::InvalidArgumentError("token_slots must hold batch x kv_heads entries"));
    }
    for (int32_t s : x.token_slots) {
      if (s < 0 || s >= g.slots) {
        return bad(absl::OutOfRangeError(absl::StrCat("slot ", s, " out of range")));
      }
    }
    for (int32_t p : x.token_pos) {
      if (p < 0 || p >= g.page_tokens) {
        return bad(absl::OutOfRangeError(absl::StrCat("position ", p, " outside a page")));
      }
    }
    if (!x.sum_slots.empty() || !x.fold_from.empty() || !x.fold_to.empty()) {
      if (static_cast<int64_t>(x.sum_slots.size()) != batch) {
        return bad(absl::InvalidArgumentError("one summary update per row, or none"));
      }
      if (absl::Status s = CheckUpdateSummaries(g, table_slots, x.sum_slots, x.token_slots,
                                                x.fold_from, x.fold_to);
          !s.ok()) {
        return bad(s);
      }
    }
    const int64_t rows = batch * g.kv_heads;
    if (static_cast<int64_t>(x.indptr.size()) != rows + 1 ||
        static_cast<int64_t>(x.last_page_len.size()) != rows ||
        static_cast<int64_t>(x.indices.size()) != x.indptr.back()) {
      return bad(absl::InvalidArgumentError("the table must have batch x kv_heads rows"));
    }
    kernels::PageTable t;
    t.num_rows = static_cast<int32_t>(rows);
    t.indptr = x.indptr.data();
    t.indices = x.indices.data();
    t.last_page_len = x.last_page_len.data();
    if (absl::Status s = CheckTable(g, batch, t); !s.ok()) return bad(s);
    if (x.q_tag >= 65536) return bad(absl::InvalidArgumentError("copy tag out of [0, 65536)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> CheckScorePages(const PoolGeometry& g, Device device, const TensorView& q,
                                        absl::Span<const int32_t> indptr,
                                        absl::Span<const int32_t> slots,
                                        absl::Span<const int32_t> page_len, size_t masses) {
  const int64_t batch = q.ndim == 3 ? q.shape[0] : -1;
  if (batch < 1) return absl::InvalidArgumentError("q must be [batch >= 1, q_heads, head_dim]");
  if (absl::Status s = CheckTensor(q, "q", {batch, g.q_heads, g.head_dim}, g.dtype, device);
      !s.ok()) {
    return s;
  }
  if (static_cast<int64_t>(indptr.size()) != batch * g.kv_heads + 1 || indptr[0] != 0) {
    return absl::InvalidArgumentError("indptr must hold batch x kv_heads + 1 entries from 0");
  }
  for (size_t r = 0; r + 1 < indptr.size(); ++r) {
    if (indptr[r + 1] < indptr[r]) return absl::InvalidArgumentError("indptr must not decrease");
  }
  const size_t n = static_cast<size_t>(indptr.back());
  if (slots.size() != n || page_len.size() != n || masses != n) {
    return absl::InvalidArgumentError(absl::StrCat("indptr lists ", n, " entries, but there are ",
                                                   slots.size(), " slots, ", page_len.size(),
                                                   " page lengths and ", masses, " masses"));
  }
  for (size_t i = 0; i < n; ++i) {
    if (slots[i] < 0 || slots[i] >= g.slots) {
      return absl::OutOfRangeError(absl::StrCat("slot ", slots[i], " out of range"));
    }
    if (page_len[i] < 1 || page_len[i] > g.page_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("entry ", i, ": bad page_len"));
    }
  }
  return static_cast<int32_t>(batch);
}

absl::Status CheckMassAttend(const PoolGeometry& g, Device device, const TensorView& q,
                             const MassAttendRequest& req, const TensorView& o,
                             const std::function<int64_t(int64_t)>& list_size) {
  auto batch = CheckScorePages(g, device, q, req.indptr, req.slots, req.page_len, req.slots.size());
  if (!batch.ok()) return batch.status();
  if (absl::Status s = CheckTensor(o, "o", {*batch, g.q_heads, g.head_dim}, g.dtype, device);
      !s.ok()) {
    return s;
  }
  const size_t rows = req.indptr.size() - 1;
  if (req.keep.size() != rows || req.split.size() != rows || req.need.size() != rows ||
      req.last_page_len.size() != rows || req.out_indptr.size() != rows + 1 ||
      req.out_indptr[0] != 0) {
    return absl::InvalidArgumentError(
        "keep, split, need and last_page_len need one value per row, out_indptr rows + 1 from 0");
  }
  const bool lists = !req.save.empty() || !req.list.empty();
  if (lists && (req.save.size() != rows || req.list.size() != rows || req.list_off.size() != rows ||
                req.list_count.size() != rows)) {
    return absl::InvalidArgumentError("save, list, list_off and list_count need one value per row");
  }
  for (size_t r = 0; r < rows; ++r) {
    int32_t n = req.indptr[r + 1] - req.indptr[r];
    if (req.keep[r] < 0 || req.keep[r] > n || req.split[r] < 0 || req.split[r] > req.keep[r] ||
        req.need[r] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", r, ": keep / split / need out of range"));
    }
    if (lists && req.list[r] >= 0) {
      const int64_t have = list_size(req.list[r]);
      if (have < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("row ", r, ": no slot list ", req.list[r], " is stored"));
      }
      if (req.save[r] >= 0 || req.list_off[r] < 0 || req.list_count[r] < 0 ||
          int64_t{req.list_off[r]} + req.list_count[r] > have) {
        return absl::InvalidArgumentError(absl::StrCat(
            "row ", r, ": entries [", req.list_off[r], ", +", req.list_count[r], ") of list ",
            req.list[r], " (", have, " slots), or a row that both saves and reads a list"));
      }
      n += req.list_count[r];
    }
    const int32_t size = req.keep[r] + std::min(req.need[r], n - req.keep[r]);
    if (req.out_indptr[r + 1] - req.out_indptr[r] != size) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r, ": out_indptr gives ",
                                                     req.out_indptr[r + 1] - req.out_indptr[r],
                                                     " entries, the row attends ", size));
    }
    if (req.last_page_len[r] < 1 || req.last_page_len[r] > g.page_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("row ", r, ": bad last_page_len"));
    }
  }
  for (size_t i = 0; i < req.host_copies.size(); ++i) {
    const auto& [t, tag] = req.host_copies[i];
    if (tag < 0 || tag >= 65536) return absl::InvalidArgumentError("copy tag out of [0, 65536)");
    // One buffer per tag: two copies under one tag would write (and size) the same buffer.
    for (size_t j = 0; j < i; ++j) {
      if (req.host_copies[j].second == tag) {
        return absl::InvalidArgumentError(absl::StrCat("copy tag ", tag, " given twice"));
      }
    }
    if (t.ndim != 3 || t.device != device || t.dtype != g.dtype || t.data == nullptr) {
      return absl::InvalidArgumentError(
          "a host copy needs a [a, b, c] tensor of the backend's device and dtype");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckAttendPrefill(const PoolGeometry& g, Device device, const TensorView& q,
                                const kernels::PageTable& table, const PrefillMask& mask,
                                const TensorView& o) {
  const int64_t n = q.ndim == 3 ? q.shape[0] : -1;
  if (n < 1) return absl::InvalidArgumentError("prefill q must be [T >= 1, q_heads, head_dim]");
  if (table.num_rows != g.kv_heads || table.indptr == nullptr || table.indices == nullptr ||
      table.last_page_len == nullptr) {
    return absl::InvalidArgumentError("the prefill table must have one row per KV head");
  }
  if (absl::Status s = CheckTensor(o, "o", {n, g.q_heads, g.head_dim}, g.dtype, device); !s.ok()) {
    return s;
  }
  // q, o and the table as one decode row per KV head: the same shape, CSR and slot checks.
  TensorView one_q = q, one_o = o;
  one_q.shape[0] = one_o.shape[0] = 1;
  if (absl::Status s = CheckAttend(g, device, one_q, table, one_o); !s.ok()) return s;
  int64_t len = -1;
  for (int32_t r = 0; r < table.num_rows; ++r) {
    const int32_t pages = table.indptr[r + 1] - table.indptr[r];
    const int64_t l = pages == 0 ? 0 : int64_t{pages - 1} * g.page_tokens + table.last_page_len[r];
    if (len >= 0 && l != len) {
      return absl::InvalidArgumentError("the prefill table's rows hold different token counts");
    }
    len = l;
  }
  if (len < n) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prefill table holds ", len, " tokens, fewer than the ", n, " queries"));
  }
  if (!mask.streaming.empty() && static_cast<int>(mask.streaming.size()) != g.kv_heads) {
    return absl::InvalidArgumentError("the streaming mask must have one entry per KV head");
  }
  if (mask.sink_tokens < 0 || mask.window_tokens < 0) {
    return absl::InvalidArgumentError("sink_tokens and window_tokens must be >= 0");
  }
  return absl::OkStatus();
}

absl::Status CopyHostTensor(const TensorView& t, absl::Span<uint16_t> out) {
  if (t.ndim != 3 || t.device != Device::kCpu) {
    return absl::InvalidArgumentError("a host [a, b, c] tensor is needed");
  }
  if (static_cast<int64_t>(out.size()) != t.shape[0] * t.shape[1] * t.shape[2]) {
    return absl::InvalidArgumentError("output size does not match the tensor");
  }
  uint16_t* dst = out.data();
  for (int64_t a = 0; a < t.shape[0]; ++a) {
    for (int64_t b = 0; b < t.shape[1]; ++b) {
      std::memcpy(dst, t.At(a, b, 0), static_cast<size_t>(t.shape[2]) * 2);
      dst += t.shape[2];
    }
  }
  return absl::OkStatus();
}

absl::Status CheckWriteSummaries(const PoolGeometry& g, int64_t table_slots,
                                 absl::Span<const int32_t> slots, absl::Span<const uint16_t> min,
                                 absl::Span<const uint16_t> max, absl::Span<const int32_t> count) {
  if (table_slots < 1) return absl::FailedPreconditionError("no summary table (InitSummaries)");
  const size_t row = static_cast<size_t>(g.kv_heads) * g.head_dim;
  if (min.size() != slots.size() * row || max.size() != slots.size() * row ||
      count.size() != slots.size()) {
    return absl::InvalidArgumentError("summaries: min / max / count sizes disagree with slots");
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] < 0 || slots[i] >= table_slots) {
      return absl::InvalidArgumentError(absl::StrCat("summary slot ", slots[i], " out of range"));
    }
    if (count[i] < 0 || count[i] > g.page_tokens) {
      return absl::InvalidArgumentError("summary count out of [0, page_tokens]");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckUpdateSummaries(const PoolGeometry& g, int64_t table_slots,
                                  absl::Span<const int32_t> sum_slots,
                                  absl::Span<const int32_t> pool_slots,
                                  absl::Span<const int32_t> old_count,
                                  absl::Span<const int32_t> new_count) {
  if (table_slots < 1) return absl::FailedPreconditionError("no summary table (InitSummaries)");
  const size_t n = sum_slots.size();
  if (pool_slots.size() != n * g.kv_heads || old_count.size() != n || new_count.size() != n) {
    return absl::InvalidArgumentError(
        "summary update: pool slots / counts sizes disagree with the summary slots");
  }
  for (size_t i = 0; i < n; ++i) {
    if (sum_slots[i] < 0 || sum_slots[i] >= table_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("summary update: summary slot ", sum_slots[i], " out of range"));
    }
    if (old_count[i] < 0 || new_count[i] <= old_count[i] || new_count[i] > g.page_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("summary update: counts ", old_count[i],
                                                     " -> ", new_count[i],
                                                     " are not 0 <= old < new <= ", g.page_tokens));
    }
  }
  for (int32_t slot : pool_slots) {
    if (slot < 0 || slot >= g.slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("summary update: pool slot ", slot, " out of range"));
    }
  }
  if (Repeats(Sorted(sum_slots))) {
    return absl::InvalidArgumentError("summary update: a summary slot is listed twice");
  }
  return absl::OkStatus();
}

absl::Status CheckCopySummaries(int64_t table_slots, absl::Span<const int32_t> src,
                                absl::Span<const int32_t> dst) {
  if (table_slots < 1) return absl::FailedPreconditionError("no summary table (InitSummaries)");
  if (src.size() != dst.size()) {
    return absl::InvalidArgumentError("copy summaries: source and destination sizes differ");
  }
  for (absl::Span<const int32_t> ids : {src, dst}) {
    for (int32_t s : ids) {
      if (s < 0 || s >= table_slots) {
        return absl::InvalidArgumentError(
            absl::StrCat("copy summaries: summary slot ", s, " out of range"));
      }
    }
  }
  const std::vector<int32_t> d = Sorted(dst);
  if (Repeats(d)) {
    return absl::InvalidArgumentError("copy summaries: a destination is listed twice");
  }
  for (int32_t s : src) {
    if (std::binary_search(d.begin(), d.end(), s)) {
      return absl::InvalidArgumentError("copy summaries: a destination is also a source");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSummarizeTokens(const PoolGeometry& g, int64_t table_slots, Device device,
                                  const TensorView& k, absl::Span<const int32_t> sum_slots) {
  if (table_slots < 1) return absl::FailedPreconditionError("no summary table (InitSummaries)");
  const int64_t rows = static_cast<int64_t>(sum_slots.size()) * g.page_tokens;
  if (k.ndim != 3 || k.device != device || k.shape[0] != rows || k.shape[1] != g.kv_heads ||
      k.shape[2] != g.head_dim || k.dtype != g.dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("summarize tokens: k is ", k.ToString(), ", want [", rows, ", ", g.kv_heads,
                     ", ", g.head_dim, "] on the backend's device in the layout's dtype"));
  }
  if (k.strides[2] != 1 || k.strides[1] != g.head_dim || k.strides[0] != g.kv_heads * g.head_dim) {
    return absl::InvalidArgumentError("summarize tokens: k must be contiguous");
  }
  const std::vector<int32_t> sorted = Sorted(sum_slots);
  if (!sorted.empty() && (sorted.front() < 0 || sorted.back() >= table_slots)) {
    return absl::InvalidArgumentError("summarize tokens: a summary slot is out of range");
  }
  if (Repeats(sorted)) {
    return absl::InvalidArgumentError("summarize tokens: a summary slot is listed twice");
  }
  return absl::OkStatus();
}

namespace {
absl::Status CheckCsr(const std::vector<int32_t>& indptr, const std::vector<int32_t>& ids,
                      int64_t rows, int64_t table_slots, const char* what) {
  if (static_cast<int64_t>(indptr.size()) != rows + 1 || indptr[0] != 0 ||
      indptr.back() != static_cast<int32_t>(ids.size())) {
    return absl::InvalidArgumentError(absl::StrCat("quest request: malformed ", what, " CSR"));
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (indptr[r + 1] < indptr[r]) {
      return absl::InvalidArgumentError(absl::StrCat("quest request: ", what, " indptr decreases"));
    }
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= table_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("quest request: ", what, " slot ", id, " out of range"));
    }
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status CheckKMeans(const PoolGeometry& g, const kernels::KMeansParams& p, int iterations) {
  if (iterations < 0) return absl::InvalidArgumentError("kmeans: iterations must be >= 0");
  if (p.kv.head_dim != g.head_dim || p.kv.num_kv_heads != g.kv_heads ||
      p.kv.dtype != KernelDType(g.dtype)) {
    return absl::InvalidArgumentError(
        "kmeans: the keys' head_dim, KV heads or dtype are not the pool's");
  }
  if (p.kv.k == nullptr || p.pages == nullptr || p.centroids == nullptr ||
      p.assignment == nullptr || p.cluster_size == nullptr || p.num_tokens < 1 ||
      p.num_clusters < 1 || p.num_clusters > p.num_tokens) {
    return absl::InvalidArgumentError("kmeans: missing buffers or bad token / cluster counts");
  }
  if (p.kv.page_size < 1) return absl::InvalidArgumentError("kmeans: page_size < 1");
  for (int32_t i = 0; i < (p.num_tokens + p.kv.page_size - 1) / p.kv.page_size; ++i) {
    if (p.pages[i] < 0 || p.pages[i] >= p.kv.num_pages) {
      return absl::InvalidArgumentError(
          absl::StrCat("kmeans: page id ", p.pages[i], " out of range"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckQuestRequest(const PoolGeometry& g, int64_t table_slots, Device device,
                               const TensorView& q, const QuestRequest& req) {
  if (table_slots < 1) return absl::FailedPreconditionError("no summary table (InitSummaries)");
  const int64_t batch = q.ndim == 3 ? q.shape[0] : 0;
  if (absl::Status s = CheckTensor(q, "q", {batch, g.q_heads, g.head_dim}, g.dtype, device);
      !s.ok()) {
    return s;
  }
  if (batch < 1) return absl::InvalidArgumentError("quest request: empty batch");
  if (req.top_k < 0) return absl::InvalidArgumentError("quest request: negative top_k");
  if (static_cast<int64_t>(req.last_len.size()) != batch) {
    return absl::InvalidArgumentError("quest request: one last_len per row");
  }
  if (absl::Status s = CheckCsr(req.cand_indptr, req.cand, batch, table_slots, "candidate");
      !s.ok()) {
    return s;
  }
  return CheckCsr(req.keep_indptr, req.keep, batch, table_slots, "kept");
}

}  // namespace pagoda::worker_internal
