// Plain C++ reference implementations of Pagoda's attention-side kernels.
//
// Each function computes exactly the function its CUDA twin (cuda.h) computes, on host memory,
// with float accumulation over fp16/bf16 storage. They are what CI tests (against float64 brute
// force) and what the GPU tests compare the kernels with; the retriever also uses them for CPU
// evaluation, so they are written to be reasonably fast (single-threaded, no allocation in inner
// loops).
//
// Contract shared by every function: all pointers in the params are host pointers; inputs are
// validated first (shapes, strides, page ids, CSR structure, disjointness where required) and bad
// input returns InvalidArgument / OutOfRange without writing any output. Functions are pure
// over their params and safe to call concurrently on disjoint outputs.
#ifndef PAGODA_KERNELS_REFERENCE_H_
#define PAGODA_KERNELS_REFERENCE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "pagoda/kernels/params.h"

namespace pagoda::kernels {

// Sparse paged decode attention (DecodeParams, sparse mode): o = softmax(sm_scale * q K^T) V over
// the tokens the table lists. Writes o (and lse if set) for every (sequence, query head).
absl::Status SparseDecodeReference(const DecodeParams& p);

// Streaming-head attention (DecodeParams, streaming mode): for KV heads with is_streaming set,
// attention over the row's first sink_tokens and last window_tokens tokens. Needs is_streaming.
absl::Status StreamingDecodeReference(const DecodeParams& p);

// Block-sparse causal prefill attention (PrefillParams): every query row of the chunk, every
// query head, over the keys its KV head's mask keeps. Writes o (and lse if set).
absl::Status BlockSparsePrefillReference(const PrefillParams& p);

// Page summary update (SummaryUpdateParams): min / max merged over the new tokens, mean
// recomputed over the touched sub-pages, count updated.
absl::Status UpdateSummariesReference(const SummaryUpdateParams& p);

// Quest scoring (hierarchical when sub_pages > 1) and top-k with kept pages appended
// (QuestParams). Writes scores, out_indptr, out_indices and out_last_page_len.
absl::Status QuestSelectReference(const QuestParams& p);

// Number of entries QuestSelectReference / the CUDA selector write to out_indices, from the host
// copies of cand_indptr and keep_indptr ([batch + 1] each).
int64_t QuestOutputSize(int32_t batch, int32_t num_kv_heads, int32_t top_k,
                        const int32_t* cand_indptr, const int32_t* keep_indptr);

// Exact page masses (PageMassParams). InvalidArgument for bad shapes, page ids, page lengths or a
// non-finite query (nothing is written then).
absl::Status PageMassReference(const PageMassParams& p);

// The choice of a step from exact masses (MassSelectParams). InvalidArgument for a malformed CSR,
// counts out of range, an out_indptr that is not the rows' output sizes, or a non-finite mass
// (nothing is written then).
absl::Status MassSelectReference(const MassSelectParams& p);

// k-means pieces (KMeansParams). Init sets centroid c of every head to the key of token
// floor(c * num_tokens / num_clusters) (needs num_clusters <= num_tokens). Assign writes
// assignment; Update writes centroids and cluster_size from the current assignment. KMeans runs
// `iterations` rounds of Assign + Update from the current centroids, then a final Assign so
// assignment matches the returned centroids.
absl::Status KMeansInitReference(const KMeansParams& p);
absl::Status KMeansAssignReference(const KMeansParams& p);
absl::Status KMeansUpdateReference(const KMeansParams& p);
absl::Status KMeansReference(const KMeansParams& p, int iterations);

// Page gather (pool -> staging) and scatter (staging -> pool), PageCopyParams.
absl::Status GatherPagesReference(const PageCopyParams& p);
absl::Status ScatterPagesReference(const PageCopyParams& p);

// New tokens' K / V rows into their pool rows (TokenRowsParams). InvalidArgument for a bad shape
// or a row written twice, OutOfRange for a row id out of range; nothing is written then.
absl::Status WriteTokenRowsReference(const TokenRowsParams& p);

// Verified gather of head-pages from a host source into a head-granular pool (HeadGatherParams).
// InvalidArgument / OutOfRange for bad shapes, offsets outside [0, src_bytes), slots or heads out
// of range or repeated destinations; nothing is written then.
absl::Status GatherHeadPagesReference(const HeadGatherParams& p);
// GatherHeadPagesReference's input checks alone (they read the per-copy arrays on the host), for
// callers that check host copies before launching the CUDA kernel.
absl::Status ValidateHeadGather(const HeadGatherParams& p);

// Token rows into store pages with their head checksums (PageAssemblyParams). InvalidArgument /
// OutOfRange for bad shapes, offsets outside dst or overlapping pages; nothing is written then.
absl::Status AssemblePagesReference(const PageAssemblyParams& p);
// AssemblePagesReference's input checks alone (for callers about to launch the CUDA kernel).
absl::Status ValidatePageAssembly(const PageAssemblyParams& p);

}  // namespace pagoda::kernels

#endif  // PAGODA_KERNELS_REFERENCE_H_
