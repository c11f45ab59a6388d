// Prompt clusters of the semantic-boundary policy (LouisKV), computable once and shared.
//
// The boundary policy groups each KV head's prompt keys into k-means clusters (its retrieval
// units). Clustering is the expensive part of its prefill, and it depends only on the prompt's
// keys and a few options — not on the budget — so it can be computed once (here on the CPU with
// the kernels' reference k-means; on the GPU with the k-means kernel) and handed to any number of
// boundary selectors for that prompt.
//
// Thread safety: PromptClusters is immutable once built; share it freely.
#ifndef PAGODA_RETRIEVER_PROMPT_CLUSTERS_H_
#define PAGODA_RETRIEVER_PROMPT_CLUSTERS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/kernels/params.h"
#include "pagoda/retriever/selector.h"

namespace pagoda::retriever {

// Positions [0, sink_tokens) stay in order (sinks); [sink_tokens, natural_begin) are clustered;
// [natural_begin, ...) — the prompt's tail (at least the window) and all generated tokens — stay in
// order and are cut into segments at retrieval boundaries.
struct PromptClusters {
  // What the clusters were built from; a selector checks these against its own prompt.
  int64_t prompt_tokens = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int page_tokens = 0;
  int sink_pages = 0;
  int window_pages = 0;
  int cluster_tokens = 0;
  int cluster_window_tokens = 0;
  uint64_t keys_fingerprint = 0;  // XXH3-64 of the prompt's key bits

  int32_t sink_tokens = 0;
  int64_t natural_begin = 0;
  int32_t num_clusters = 0;
  std::vector<std::vector<float>> centroids;      // [kv_head][cluster * head_dim + d]
  std::vector<std::vector<int32_t>> cluster_off;  // [kv_head][cluster + 1], offsets into members
  std::vector<std::vector<int32_t>> members;      // [kv_head][i] positions, grouped by cluster,
                                                  // ascending within a cluster
};

// The position held at `layout_index` of KV head `kv_head`'s cluster-ordered layout (the page ids
// a boundary selector returns address this layout: page p holds layout indices [p * page_tokens,
// (p + 1) * page_tokens)). Valid for 0 <= layout_index < tokens of the sequence.
inline int64_t LayoutPosition(const PromptClusters& c, int kv_head, int64_t layout_index) {
  if (layout_index < c.natural_begin) {
    return layout_index < c.sink_tokens ? layout_index
                                        : c.members[kv_head][layout_index - c.sink_tokens];
  }
  return layout_index;  // the natural region keeps its positions
}

// Runs k-means as kernels::KMeansReference(params, iterations) does: `iterations` Lloyd steps
// from the centroids params holds, then a final assignment, writing params' centroids,
// assignment and cluster_size. params address host memory. Lets a caller run the clustering on
// a device (the decode worker's backend); results may differ from the reference's by rounding.
using KMeansRunner = std::function<absl::Status(const kernels::KMeansParams&, int iterations)>;

// Clusters prompt keys [kv_heads, num_tokens, head_dim] (options.dtype bits) for the boundary
// policy with `options` (page_tokens, sink/window pages, cluster_tokens, cluster_window_tokens,
// kmeans_iters matter), one k-means per window through `run` (empty: the kernels' reference).
// InvalidArgument for bad options or keys (as Selector::Prefill); a runner's error as it is.
absl::StatusOr<std::shared_ptr<const PromptClusters>> ClusterPrompt(const SelectorOptions& options,
                                                                    absl::Span<const uint16_t> keys,
                                                                    int64_t num_tokens,
                                                                    const KMeansRunner& run = {});

// A boundary-policy selector that takes its prompt clusters from `clusters` instead of running
// k-means at Prefill. Prefill then fails with InvalidArgument unless its prompt is the one the
// clusters were built from (same length, same key bits, same options).
absl::StatusOr<std::unique_ptr<Selector>> MakeBoundarySelector(
    const SelectorOptions& options, std::shared_ptr<const PromptClusters> clusters);

}  // namespace pagoda::retriever

#endif  // PAGODA_RETRIEVER_PROMPT_CLUSTERS_H_
