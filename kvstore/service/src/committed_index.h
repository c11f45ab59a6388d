// The pages this pagodad committed, by tenant, so that a graceful shutdown can move the pages
// still in memory tiers down to SSD (the engine treats memory tiers as a cache and drops them on
// close; a SIGTERM must not lose a page whose Put was acknowledged).
//
// The index may hold keys the engine has since evicted or dropped (Demote skips them); it is
// pruned of pages no longer in a memory tier whenever it doubles past `soft_limit`.
//
// Thread safety: safe for concurrent use without external synchronization.
#pragma once

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "pagoda/kvstore/store.h"

namespace pagoda::service {

class CommittedIndex {
 public:
  CommittedIndex(Store* store, size_t soft_limit) : store_(store), limit_(soft_limit) {}

  void Add(const std::string& tenant, const PageKey& key);
  void Erase(const std::string& tenant, const PageKey& key);
  size_t size() const;

  // Demotes every indexed page still in a memory tier to SSD, then clears the index. Returns the
  // number of pages moved, or the first error (a tenant's error skips the rest of that tenant
  // only; pages moved stay moved).
  absl::StatusOr<size_t> DemoteAllToSsd();

 private:
  void PruneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store* const store_;
  size_t limit_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::flat_hash_set<PageKey>> keys_ ABSL_GUARDED_BY(mu_);
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace pagoda::service
