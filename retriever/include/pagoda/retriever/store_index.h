// A store-wide page index: nearest pages across every document the store holds (RetroLM-style
// KV-level retrieval), so a worker can pull pages of other documents into its attention.
//
// One StoreIndex serves one (model, layer). Each entry is a page (its 128-bit PageKey) with one
// vector per KV head (the page's mean key for that head); searches run per KV head with the
// group's query. Pages are added when the store commits them and removed when it drops them.
//
// Thread safety: safe for concurrent use without external synchronization (one mutex; searches
// of different KV heads still serialize — the index is small next to a decode step).
#ifndef PAGODA_RETRIEVER_STORE_INDEX_H_
#define PAGODA_RETRIEVER_STORE_INDEX_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/retriever/page_index.h"

namespace pagoda::retriever {

struct StoreIndexOptions {
  int kv_heads = 4;
  // index.dim is the head dim; index.kind picks flat (exact) / IVF / HNSW for every head.
  PageIndexOptions index;
};

struct StoreHit {
  PageKey key;
  float score = 0;  // inner product of the query with the page's vector for that head
};

class StoreIndex {
 public:
  // InvalidArgument for kv_heads < 1 or bad index options.
  static absl::StatusOr<std::unique_ptr<StoreIndex>> Create(const StoreIndexOptions& options);

  // IVF: trains every head's coarse quantizer on sample pages [n, kv_heads, dim] before the
  // first Add (otherwise the first Add trains on that one page: a single list). Other kinds:
  // no-op. FailedPrecondition once trained; InvalidArgument for a bad size.
  absl::Status Train(absl::Span<const float> samples);

  // Adds a page: vectors [kv_heads, dim]. AlreadyExists for a key already present,
  // InvalidArgument for a wrong size or non-finite values; on error nothing is added.
  absl::Status Add(const PageKey& key, absl::Span<const float> vectors);

  // Adds pages in one call: vectors [keys.size(), kv_heads, dim]. All or nothing, with Add's
  // errors (a key repeated in the batch is AlreadyExists). Prefer it for many pages: FAISS's HNSW
  // pays O(index size) per insertion call.
  absl::Status AddBatch(absl::Span<const PageKey> keys, absl::Span<const float> vectors);

  // Removes a page; NotFound if absent.
  absl::Status Remove(const PageKey& key);

  // The k pages whose head-`kv_head` vector has the largest inner product with query [dim].
  // InvalidArgument for a bad head, size or k < 1.
  absl::StatusOr<std::vector<StoreHit>> Search(int kv_head, absl::Span<const float> query,
                                               int k) const;

  int64_t size() const;
  bool Contains(const PageKey& key) const;

 private:
  explicit StoreIndex(const StoreIndexOptions& options) : options_(options) {}

  const StoreIndexOptions options_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<PageIndex>> heads_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<PageKey, int64_t> ids_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int64_t, PageKey> keys_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace pagoda::retriever

#endif  // PAGODA_RETRIEVER_STORE_INDEX_H_
