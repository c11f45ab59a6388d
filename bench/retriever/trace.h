// Attention traces in the format of ../shared/data/traces (see its README): per document and
// layer, doc{NAME}_L{XX}_q.npy [q_heads, N, head_dim] (the last N positions), _k.npy and optional
// _v.npy [kv_heads, T, head_dim], all float16. Documents and layers are found by file name.
#ifndef PAGODA_BENCH_RETRIEVER_TRACE_H_
#define PAGODA_BENCH_RETRIEVER_TRACE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pagoda::bench {

struct TraceFiles {
  std::string doc;
  int layer = 0;
  std::string q_path, k_path, v_path;  // v_path empty when absent
};

// The (doc, layer) pairs of `dir` that have both q and k, sorted by doc then layer. NotFound when
// the directory cannot be read or holds none.
absl::StatusOr<std::vector<TraceFiles>> FindTraces(const std::string& dir);

struct TraceLayer {
  std::string doc;
  int layer = 0;
  int q_heads = 0, kv_heads = 0, head_dim = 0;
  int64_t tokens = 0;       // T
  int64_t queries = 0;      // N: query i sits at position T - N + i
  std::vector<uint16_t> q;  // [q_heads, N, head_dim] fp16 bits
  std::vector<uint16_t> k;  // [kv_heads, T, head_dim]
  std::vector<uint16_t> v;  // [kv_heads, T, head_dim] or empty
  int64_t first_query() const { return tokens - queries; }
};

// Loads and checks shapes (3-D fp16, same head_dim, q_heads a multiple of kv_heads, N <= T,
// v shaped like k). InvalidArgument naming the file otherwise.
absl::StatusOr<TraceLayer> LoadTrace(const TraceFiles& files);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_RETRIEVER_TRACE_H_
