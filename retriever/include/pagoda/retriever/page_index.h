// Nearest pages by inner product over page vectors (mean keys), backed by FAISS.
//
// PageIndex maps caller-chosen int64 ids to dim-dimensional vectors and answers "the k vectors
// with the largest inner product with q" (the attention logit of a page's mean key). Three kinds:
//   kFlat  exact (IndexFlatIP behind an id map); the brute-force baseline.
//   kIvf   inverted lists (IndexIVFFlat, inner product); trained on the first Add batch (or
//          Train), nlist = sqrt(n) capped so each list has ~39 training points; searches nprobe.
//   kHnsw  graph (IndexHNSWFlat, inner product), efSearch >= 128. FAISS 1.7.3 HNSW cannot delete,
//          so Remove marks a tombstone (filtered at search, with over-fetch) and the graph is
//          rebuilt from the live vectors once tombstones exceed compact_fraction of it.
// FAISS headers stay out of this header; FAISS errors become absl::Status here, in one place.
//
// Thread safety: not synchronized. Concurrent const calls (Search, size) are safe; anything
// concurrent with Add / Remove / Train needs external locking (StoreIndex does this).
#ifndef PAGODA_RETRIEVER_PAGE_INDEX_H_
#define PAGODA_RETRIEVER_PAGE_INDEX_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/retriever/selector.h"

namespace pagoda::retriever {

struct PageIndexOptions {
  AnnKind kind = AnnKind::kFlat;
  int dim = 64;
  // kIvf: number of lists (0 = chosen at training, see above) and lists probed per search.
  int ivf_nlist = 0;
  int ivf_nprobe = 8;
  // kHnsw: graph degree and search breadth. efSearch 16 (FAISS's default) misses neighbours.
  int hnsw_m = 32;
  int hnsw_ef_search = 128;
  // kHnsw: rebuild when tombstones exceed this fraction of the graph.
  double hnsw_compact_fraction = 0.25;
};

struct IndexHit {
  int64_t id = -1;
  float score = 0;  // inner product with the query
};

struct IndexSearchResult {
  std::vector<IndexHit> hits;  // best first, at most k, only live ids
  // Index vectors whose distance was computed (flat: all; IVF: centroids + probed lists;
  // HNSW: an estimate, min(n, efSearch * 2M)). Times dim * 4 bytes = bytes scanned.
  int64_t vectors_scanned = 0;
};

class PageIndex {
 public:
  // InvalidArgument for dim < 1 or non-positive knobs.
  static absl::StatusOr<std::unique_ptr<PageIndex>> Create(const PageIndexOptions& options);
  ~PageIndex();
  PageIndex(const PageIndex&) = delete;
  PageIndex& operator=(const PageIndex&) = delete;

  // kIvf: trains the coarse quantizer on vectors [n, dim] (n >= 1); FailedPrecondition when
  // already trained. Other kinds: no-op.
  absl::Status Train(absl::Span<const float> vectors);
  bool trained() const;

  // Adds vectors [ids.size(), dim]. Ids must be >= 0, distinct, and not already live; vectors
  // finite. An untrained IVF index trains on this batch first. On error nothing is added.
  absl::Status Add(absl::Span<const int64_t> ids, absl::Span<const float> vectors);

  // Removes live ids; NotFound (and nothing removed) if any is not live.
  absl::Status Remove(absl::Span<const int64_t> ids);

  // The k best live vectors for query [dim] (fewer when the index holds fewer). k >= 1.
  absl::StatusOr<IndexSearchResult> Search(absl::Span<const float> query, int k) const;

  // Live vectors.
  int64_t size() const;
  bool Contains(int64_t id) const;
  const PageIndexOptions& options() const;

 private:
  struct Impl;
  explicit PageIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagoda::retriever

#endif  // PAGODA_RETRIEVER_PAGE_INDEX_H_
