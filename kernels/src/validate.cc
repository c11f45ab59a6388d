#include "validate.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace pagoda::kernels::internal {
namespace {

bool ValidDType(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16; }

absl::Status Bad(const char* what, const char* why) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", why));
}

}  // namespace

absl::Status ValidatePagedKV(const PagedKV& kv, bool need_v) {
  if (!ValidDType(kv.dtype)) return Bad("kv", "unknown dtype");
  if (kv.num_pages <= 0 || kv.page_size <= 0 || kv.num_kv_heads <= 0 || kv.head_dim <= 0) {
    return Bad("kv", "num_pages, page_size, num_kv_heads and head_dim must be positive");
  }
  if (kv.k == nullptr || (need_v && kv.v == nullptr)) return Bad("kv", "null K or V pointer");
  if (kv.stride_token < kv.head_dim || kv.stride_head <= 0 || kv.stride_page <= 0) {
    return Bad("kv", "strides must be positive and stride_token >= head_dim");
  }
  return absl::OkStatus();
}

absl::Status ValidateDecodeShape(const DecodeParams& p, bool streaming) {
  if (auto s = ValidatePagedKV(p.kv, /*need_v=*/true); !s.ok()) return s;
  if (p.batch <= 0 || p.num_qo_heads <= 0) return Bad("decode", "batch and heads must be > 0");
  if (p.num_qo_heads % p.kv.num_kv_heads != 0) {
    return Bad("decode", "num_qo_heads must be a multiple of num_kv_heads");
  }
  if (p.q == nullptr || p.o == nullptr) return Bad("decode", "null q or o");
  if (p.table.indptr == nullptr || p.table.indices == nullptr || p.table.last_page_len == nullptr) {
    return Bad("decode", "null page table array");
  }
  if (!(p.sm_scale >= 0.f)) return Bad("decode", "sm_scale must be >= 0 (0: 1/sqrt(head_dim))");
  const int64_t rows =
      (!streaming && p.per_kv_head) ? int64_t{p.batch} * p.kv.num_kv_heads : p.batch;
  if (p.table.num_rows != rows) {
    return Bad("decode", "table.num_rows must be batch * num_kv_heads (per_kv_head) or batch");
  }
  if (streaming) {
    if (p.is_streaming == nullptr) return Bad("streaming", "null is_streaming");
    if (p.sink_tokens < 0 || p.window_tokens < 0) {
      return Bad("streaming", "sink_tokens and window_tokens must be >= 0");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSummariesShape(const PageSummaries& s) {
  if (!ValidDType(s.dtype)) return Bad("summaries", "unknown dtype");
  if (s.num_pages <= 0 || s.sub_pages <= 0 || s.num_kv_heads <= 0 || s.head_dim <= 0) {
    return Bad("summaries", "num_pages, sub_pages, num_kv_heads and head_dim must be positive");
  }
  if (s.min == nullptr || s.max == nullptr || s.count == nullptr) {
    return Bad("summaries", "null min, max or count");
  }
  return absl::OkStatus();
}

absl::Status ValidateSummaryUpdateShape(const SummaryUpdateParams& p) {
  if (auto s = ValidatePagedKV(p.kv, /*need_v=*/false); !s.ok()) return s;
  if (auto s = ValidateSummariesShape(p.summaries); !s.ok()) return s;
  const PageSummaries& m = p.summaries;
  if (m.dtype != p.kv.dtype || m.num_kv_heads != p.kv.num_kv_heads || m.head_dim != p.kv.head_dim ||
      (p.summary_pages == nullptr && m.num_pages != p.kv.num_pages)) {
    return Bad("summary update", "summaries and kv disagree on dtype, heads, head_dim or pages");
  }
  if (p.kv.page_size % m.sub_pages != 0) {
    return Bad("summary update", "page_size must be a multiple of sub_pages");
  }
  if (p.num_updates < 0) return Bad("summary update", "num_updates must be >= 0");
  if (p.num_updates > 0 && (p.pages == nullptr || p.new_count == nullptr)) {
    return Bad("summary update", "null pages or new_count");
  }
  return absl::OkStatus();
}

absl::Status ValidateQuestShape(const QuestParams& p) {
  if (auto s = ValidateSummariesShape(p.summaries); !s.ok()) return s;
  if (p.batch <= 0 || p.num_qo_heads <= 0) return Bad("quest", "batch and heads must be > 0");
  if (p.num_qo_heads % p.summaries.num_kv_heads != 0) {
    return Bad("quest", "num_qo_heads must be a multiple of num_kv_heads");
  }
  if (p.page_size <= 0 || p.page_size % p.summaries.sub_pages != 0) {
    return Bad("quest", "page_size must be a positive multiple of sub_pages");
  }
  if (p.top_k < 0) return Bad("quest", "top_k must be >= 0");
  if (p.reduce != GroupReduce::kMax && p.reduce != GroupReduce::kSum) {
    return Bad("quest", "unknown group reduction");
  }
  if (p.q == nullptr || p.cand_indptr == nullptr || p.keep_indptr == nullptr ||
      p.seq_last_page_len == nullptr || p.scores == nullptr || p.out_indptr == nullptr ||
      p.out_indices == nullptr || p.out_last_page_len == nullptr) {
    return Bad("quest", "null input or output array");
  }
  return absl::OkStatus();
}

absl::Status ValidateKMeansShape(const KMeansParams& p) {
  if (auto s = ValidatePagedKV(p.kv, /*need_v=*/false); !s.ok()) return s;
  if (p.num_tokens <= 0 || p.num_clusters <= 0) {
    return Bad("kmeans", "num_tokens and num_clusters must be > 0");
  }
  if (p.pages == nullptr || p.centroids == nullptr || p.assignment == nullptr ||
      p.cluster_size == nullptr) {
    return Bad("kmeans", "null pages, centroids, assignment or cluster_size");
  }
  return absl::OkStatus();
}

absl::Status ValidatePageCopyShape(const PageCopyParams& p) {
  if (p.pool_pages <= 0 || p.page_bytes <= 0 || p.pool_stride_bytes < p.page_bytes) {
    return Bad("page copy", "need pool_pages > 0, page_bytes > 0, pool_stride >= page_bytes");
  }
  if (p.num_pages < 0) return Bad("page copy", "num_pages must be >= 0");
  if (p.num_pages > 0 && (p.pool == nullptr || p.pages == nullptr || p.staging == nullptr)) {
    return Bad("page copy", "null pool, pages or staging");
  }
  return absl::OkStatus();
}

absl::Status ValidateTokenRowsShape(const TokenRowsParams& p) {
  if (p.pool_rows <= 0 || p.row_bytes <= 0) {
    return Bad("token rows", "need pool_rows > 0 and row_bytes > 0");
  }
  if (p.num_rows < 0 || (p.rows == nullptr && p.num_rows > kMaxTokenRows)) {
    return Bad("token rows", "num_rows must be in [0, kMaxTokenRows] without a rows array");
  }
  if (p.num_rows > 0 && (p.pool == nullptr || p.k == nullptr || p.v == nullptr)) {
    return Bad("token rows", "null pool, k or v");
  }
  if (p.heads_per_token < 0 ||
      (p.heads_per_token > 0 &&
       (p.num_rows % p.heads_per_token != 0 || p.k_token_bytes < p.heads_per_token * p.row_bytes ||
        p.v_token_bytes < p.heads_per_token * p.row_bytes))) {
    return Bad("token rows",
               "heads_per_token must divide num_rows, tokens at least heads x row_bytes apart");
  }
  return absl::OkStatus();
}

absl::Status ValidateHeadGatherShape(const HeadGatherParams& p) {
  if (p.num_kv_heads <= 0 || p.pool_slots <= 0 || p.half_bytes <= 0 || p.half_bytes % 16 != 0) {
    return Bad("head gather",
               "need num_kv_heads > 0, pool_slots > 0, half_bytes > 0 and a multiple of 16");
  }
  if (p.num_copies < 0 || p.src_bytes < 0) {
    return Bad("head gather", "num_copies and src_bytes must be >= 0");
  }
  if (p.num_copies > 0 && (p.src == nullptr || p.pool == nullptr || p.src_k == nullptr ||
                           p.src_v == nullptr || p.dst_head == nullptr || p.dst_slot == nullptr ||
                           p.expected == nullptr || p.bad == nullptr)) {
    return Bad("head gather", "null source, pool or per-copy array");
  }
  return absl::OkStatus();
}

absl::Status ValidatePageMassShape(const PageMassParams& p) {
  if (auto s = ValidatePagedKV(p.kv, /*need_v=*/false); !s.ok()) return s;
  if (p.batch <= 0 || p.num_qo_heads <= 0) return Bad("page mass", "batch and heads must be > 0");
  if (p.num_qo_heads % p.kv.num_kv_heads != 0) {
    return Bad("page mass", "num_qo_heads must be a multiple of num_kv_heads");
  }
  if (p.q == nullptr || p.indptr == nullptr || p.indices == nullptr || p.page_len == nullptr ||
      p.mass == nullptr) {
    return Bad("page mass", "null q, indptr, indices, page_len or mass");
  }
  if (p.reduce != GroupReduce::kMax && p.reduce != GroupReduce::kSum) {
    return Bad("page mass", "unknown group reduce");
  }
  if (!(p.sm_scale >= 0.f)) return Bad("page mass", "sm_scale must be >= 0 (0: 1/sqrt(head_dim))");
  if (p.tails != nullptr &&
      (p.listed == nullptr || p.tail_len < 1 || p.tail_len > p.kv.page_size)) {
    return Bad("page mass", "tails need listed and a tail_len in [1, page_size]");
  }
  return absl::OkStatus();
}

absl::Status ValidatePageMassHost(const PageMassParams& p) {
  const int32_t rows = p.batch * p.kv.num_kv_heads;
  if (p.indptr[0] != 0) return Bad("page mass", "indptr[0] must be 0");
  for (int32_t r = 0; r < rows; ++r) {
    if (p.indptr[r + 1] < p.indptr[r]) {
      return absl::InvalidArgumentError(absl::StrCat("page mass: indptr decreases at row ", r));
    }
  }
  if (p.tails != nullptr) {
    if (p.listed[0] != 0) return Bad("page mass", "listed[0] must be 0");
    for (int32_t r = 0; r < rows; ++r) {
      const int32_t listed = p.listed[r + 1] - p.listed[r];
      const int32_t rest = p.indptr[r + 1] - p.indptr[r] - listed;
      if (listed < 0 || rest < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("page mass: row ", r, " lists more entries than it holds"));
      }
      if (rest == 0) continue;
      if (p.tails[r] == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("page mass: row ", r, " has no tail"));
      }
      if (auto s = ValidatePageIdsHost(p.tails[r], rest, p.kv.num_pages, "page mass tail");
          !s.ok()) {
        return s;
      }
    }
  }
  const int64_t n = p.tails != nullptr ? p.listed[rows] : p.indptr[rows];
  if (auto s = ValidatePageIdsHost(p.indices, n, p.kv.num_pages, "page mass"); !s.ok()) return s;
  for (int64_t e = 0; e < n; ++e) {
    if (p.page_len[e] < 1 || p.page_len[e] > p.kv.page_size) {
      return absl::InvalidArgumentError(absl::StrCat("page mass: entry ", e, " holds ",
                                                     p.page_len[e], " tokens, not in [1, ",
                                                     p.kv.page_size, "]"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePageAssemblyShape(const PageAssemblyParams& p) {
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) {
    return Bad("page assembly", "dtype must be float16 or bfloat16");
  }
  if (p.num_pages < 0 || p.page_size <= 0 || p.num_kv_heads <= 0 || p.head_dim <= 0 ||
      p.dst_bytes < 0) {
    return Bad("page assembly", "need num_pages >= 0, page_size, num_kv_heads, head_dim > 0");
  }
  if ((int64_t{p.page_size} * p.head_dim * 2) % 16 != 0) {
    return Bad("page assembly", "page_size * head_dim * 2 must be a multiple of 16");
  }
  if (p.k_stride_token < 0 || p.k_stride_head < 0 || p.v_stride_token < 0 || p.v_stride_head < 0) {
    return Bad("page assembly", "strides must be >= 0");
  }
  if (p.num_pages > 0 &&
      (p.k == nullptr || p.v == nullptr || p.dst_offset == nullptr || p.head_sums == nullptr)) {
    return Bad("page assembly", "null k, v, dst_offset or head_sums");
  }
  return absl::OkStatus();
}

absl::Status ValidatePageAssemblyHost(const PageAssemblyParams& p) {
  const int64_t page_bytes = 4 * int64_t{p.num_kv_heads} * p.page_size * p.head_dim;
  std::vector<int64_t> written;
  for (int32_t i = 0; i < p.num_pages; ++i) {
    const int64_t off = p.dst_offset[i];
    if (off < 0) continue;
    if (p.dst == nullptr || off > p.dst_bytes - page_bytes) {
      return absl::OutOfRangeError(absl::StrCat("page assembly: page ", i, " writes offset ", off,
                                                " outside the destination of ", p.dst_bytes,
                                                " bytes"));
    }
    written.push_back(off);
  }
  std::sort(written.begin(), written.end());
  for (size_t i = 1; i < written.size(); ++i) {
    if (written[i] - written[i - 1] < page_bytes) {
      return Bad("page assembly", "two written pages overlap");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePrefillShape(const PrefillParams& p) {
  if (auto s = ValidatePagedKV(p.kv, /*need_v=*/true); !s.ok()) return s;
  if (p.batch <= 0 || p.num_qo_heads <= 0) return Bad("prefill", "batch and heads must be > 0");
  if (p.num_qo_heads % p.kv.num_kv_heads != 0) {
    return Bad("prefill", "num_qo_heads must be a multiple of num_kv_heads");
  }
  if (p.q == nullptr || p.o == nullptr || p.q_indptr == nullptr) {
    return Bad("prefill", "null q, o or q_indptr");
  }
  if (p.table.indptr == nullptr || p.table.indices == nullptr || p.table.last_page_len == nullptr) {
    return Bad("prefill", "null page table array");
  }
  if (p.table.num_rows != (p.per_kv_head ? int64_t{p.batch} * p.kv.num_kv_heads : p.batch)) {
    return Bad("prefill", "table.num_rows must be batch (batch * num_kv_heads when per_kv_head)");
  }
  if (!(p.sm_scale >= 0.f)) return Bad("prefill", "sm_scale must be >= 0 (0: 1/sqrt(head_dim))");
  if (p.sink_tokens < 0 || p.window_tokens < 0) {
    return Bad("prefill", "sink_tokens and window_tokens must be >= 0");
  }
  if ((p.select_indptr == nullptr) != (p.select_pages == nullptr)) {
    return Bad("prefill", "select_indptr and select_pages must be both set or both null");
  }
  return absl::OkStatus();
}

absl::Status ValidateHeadGatherHost(const HeadGatherParams& p) {
  std::vector<int64_t> dst;
  dst.reserve(p.num_copies);
  for (int32_t i = 0; i < p.num_copies; ++i) {
    for (int64_t off : {p.src_k[i], p.src_v[i]}) {
      if (off < 0 || off > p.src_bytes - p.half_bytes) {
        return absl::OutOfRangeError(absl::StrCat("head gather: copy ", i, " reads offset ", off,
                                                  " outside the source of ", p.src_bytes,
                                                  " bytes"));
      }
    }
    if (p.dst_head[i] < 0 || p.dst_head[i] >= p.num_kv_heads || p.dst_slot[i] < 0 ||
        p.dst_slot[i] >= p.pool_slots) {
      return absl::OutOfRangeError(absl::StrCat("head gather: copy ", i, " targets head ",
                                                p.dst_head[i], " slot ", p.dst_slot[i],
                                                " outside the pool"));
    }
    dst.push_back(int64_t{p.dst_head[i]} * p.pool_slots + p.dst_slot[i]);
  }
  std::sort(dst.begin(), dst.end());
  if (std::adjacent_find(dst.begin(), dst.end()) != dst.end()) {
    return Bad("head gather", "a (head, slot) destination is listed twice");
  }
  return absl::OkStatus();
}

absl::Status ValidatePrefillHost(const PrefillParams& p) {
  if (auto s = ValidateCsrHost(p.table.indptr, p.table.indices, p.table.last_page_len,
                               p.table.num_rows, p.kv.num_pages, p.kv.page_size, "page table");
      !s.ok()) {
    return s;
  }
  if (p.q_indptr[0] != 0) return Bad("prefill", "q_indptr[0] must be 0");
  if (p.select_indptr != nullptr && p.select_indptr[0] != 0) {
    return Bad("prefill selection", "select_indptr[0] must be 0");
  }
  const int32_t heads = p.per_kv_head ? p.kv.num_kv_heads : 1;
  auto row_len = [&](int32_t r) {
    const int32_t pages = p.table.indptr[r + 1] - p.table.indptr[r];
    return pages == 0 ? 0 : int64_t{pages - 1} * p.kv.page_size + p.table.last_page_len[r];
  };
  for (int32_t b = 0; b < p.batch; ++b) {
    const int64_t n = int64_t{p.q_indptr[b + 1]} - p.q_indptr[b];
    const int64_t len = row_len(b * heads);
    for (int32_t h = 1; h < heads; ++h) {
      if (row_len(b * heads + h) != len) {
        return absl::InvalidArgumentError(absl::StrCat("prefill: the per-KV-head rows of sequence ",
                                                       b, " hold different token counts"));
      }
    }
    if (n < 0 || n > len) {
      return absl::InvalidArgumentError(absl::StrCat("prefill: sequence ", b, " has ", n,
                                                     " queries, not in [0, ", len, "] (its KV)"));
    }
    if (p.select_indptr == nullptr) continue;
    const int64_t context = len - n;
    for (int32_t h = 0; h < p.kv.num_kv_heads; ++h) {
      const int64_t r = int64_t{b} * p.kv.num_kv_heads + h;
      if (p.select_indptr[r + 1] < p.select_indptr[r]) {
        return absl::InvalidArgumentError(
            absl::StrCat("prefill selection: select_indptr decreases at row ", r));
      }
      for (int32_t i = p.select_indptr[r]; i < p.select_indptr[r + 1]; ++i) {
        const int32_t k = p.select_pages[i];
        if (k < 0 || int64_t{k} * p.kv.page_size >= context ||
            (i > p.select_indptr[r] && k <= p.select_pages[i - 1])) {
          return absl::InvalidArgumentError(absl::StrCat(
              "prefill selection: row ", r, " page ", k,
              " is not a strictly increasing context page number (context ", context, " tokens)"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePageIdsHost(const int32_t* ids, int64_t n, int64_t num_pages,
                                 const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= num_pages) {
      return absl::OutOfRangeError(
          absl::StrCat(what, ": page id ", ids[i], " at ", i, " not in [0, ", num_pages, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateDistinctIdsHost(const int32_t* ids, int64_t n, const char* what) {
  std::vector<int32_t> sorted(ids, ids + n);
  std::sort(sorted.begin(), sorted.end());
  auto twice = std::adjacent_find(sorted.begin(), sorted.end());
  if (twice != sorted.end()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": page id ", *twice, " appears twice"));
  }
  return absl::OkStatus();
}

absl::Status ValidateCsrHost(const int32_t* indptr, const int32_t* indices,
                             const int32_t* last_page_len, int32_t rows, int64_t num_pages,
                             int32_t page_size, const char* what) {
  if (indptr[0] != 0) return Bad(what, "indptr[0] must be 0");
  for (int32_t r = 0; r < rows; ++r) {
    if (indptr[r + 1] < indptr[r]) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": indptr decreases at row ", r));
    }
    if (last_page_len != nullptr && indptr[r + 1] > indptr[r] &&
        (last_page_len[r] < 1 || last_page_len[r] > page_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": last_page_len[", r, "] = ", last_page_len[r], " not in [1, ", page_size, "]"));
    }
  }
  return ValidatePageIdsHost(indices, indptr[rows], num_pages, what);
}

}  // namespace pagoda::kernels::internal
