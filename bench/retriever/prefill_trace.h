// Block-sparse prefill attention over attention traces (the format of ../shared/data/traces): a
// trace layer's K/V become a paged pool (pages in position order), its N queries (positions
// T - N .. T - 1) are prefilled in chunks that attend causally over everything before them,
// through the kernels' CPU reference (BlockSparsePrefillReference) with per-KV-head masks:
// streaming heads (sink + local window), dense heads (every key, or Quest-selected context pages
// per chunk).
#ifndef PAGODA_BENCH_RETRIEVER_PREFILL_TRACE_H_
#define PAGODA_BENCH_RETRIEVER_PREFILL_TRACE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "trace.h"

namespace pagoda::bench {

struct PrefillMask {
  std::vector<uint8_t> streaming;  // [kv_heads]; empty: every head dense
  int32_t sink_tokens = 64;
  int32_t window_tokens = 256;
  // > 0: dense heads attend, besides their chunk, only ceil(select_fraction * context pages)
  // context pages per chunk: the first page (sink), the last keep_recent pages, and the pages
  // with the highest Quest-estimated attention mass (per query head: softmax over pages of the
  // Quest bound sum_d max(q_d max_d, q_d min_d) * scale; summed over the chunk's queries and the
  // GQA group). 0: dense heads attend every key.
  double select_fraction = 0;
  int32_t keep_recent = 2;
  int64_t chunk = 1024;  // queries per prefill call (chunked prefill)
};

struct PrefillRun {
  int64_t queries = 0;
  int32_t q_heads = 0, head_dim = 0;
  std::vector<float> o;       // [queries, q_heads, head_dim]
  std::vector<float> lse;     // [queries, q_heads]
  int64_t keys_attended = 0;  // sum over (query, query head) of keys its mask keeps
};

// A trace layer (with V) ready for prefill runs. Holds a copy of the layer.
class TracePrefill {
 public:
  // InvalidArgument when the layer has no V or page_size < 1.
  static absl::StatusOr<TracePrefill> Create(const TraceLayer& layer, int32_t page_size = 16);

  // Prefills queries [q_begin, q_end) (indices into the trace's N queries) under `mask`.
  absl::StatusOr<PrefillRun> Run(const PrefillMask& mask, int64_t q_begin, int64_t q_end) const;

  const TraceLayer& layer() const { return layer_; }
  int32_t page_size() const { return page_size_; }

 private:
  TracePrefill() = default;
  // Quest selection for the chunk of queries [a, b) whose context is [0, context).
  void Select(const PrefillMask& mask, int64_t a, int64_t b, int64_t context,
              std::vector<int32_t>* indptr, std::vector<int32_t>* pages) const;

  TraceLayer layer_;
  int32_t page_size_ = 16;
  std::vector<uint16_t> pool_;              // [pages][K then V][kv_heads][page_size][head_dim]
  std::vector<uint16_t> q_rows_;            // [N, q_heads, head_dim]
  std::vector<float> page_min_, page_max_;  // [full pages][kv_heads][head_dim]
};

// Relative L2 error |got - want| / |want| of each query over query heads [hq_begin, hq_end)
// (their outputs concatenated).
std::vector<double> QueryErrors(const PrefillRun& want, const PrefillRun& got, int32_t hq_begin,
                                int32_t hq_end);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_RETRIEVER_PREFILL_TRACE_H_
