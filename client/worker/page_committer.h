// Internal: commits full pages to the store off the decode worker's critical path.
//
// One background thread takes jobs in order: commits (Put, two-phase, checksummed by the store;
// a page already stored under its key — a shared prefix another sequence or worker wrote — counts
// as reused, and is pinned when the write asked for a pin) and prefetches (SSD -> host promotion
// of hinted pages, best effort). Drain() waits for every job queued so far and returns the failures
// (with the id of the sequence whose page failed), so a caller can mark those sequences failed.
//
// Page bytes waiting in the queue are bounded (kMaxQueuedBytes): Enqueue waits for the committer
// when a long prefill writes faster than the store takes pages, so memory stays bounded.
//
// Thread safety: Enqueue / Drain from one thread (the worker's); the committer thread is internal.
#ifndef PAGODA_CLIENT_WORKER_PAGE_COMMITTER_H_
#define PAGODA_CLIENT_WORKER_PAGE_COMMITTER_H_

#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "pagoda/kvstore/store.h"

namespace pagoda::worker_internal {

class PageCommitter {
 public:
  PageCommitter(Store* store, std::string tenant, PageLayout layout);
  ~PageCommitter();  // drains

  static constexpr uint64_t kMaxQueuedBytes = 256ULL << 20;
  // Page buffers kept for TakeBuffer once committed (decode steps' filled pages, louiskv's layout
  // pages: up to one per prompt page at the end of a layer's prefill; whole prefill pages are
  // written into reserved store slots and never use them): 512 pages of 64 KiB at Llama-3-8B
  // shapes, so a burst reuses warm memory instead of faulting in a fresh buffer per page.
  static constexpr uint64_t kMaxSpareBytes = 32ULL << 20;

  void Enqueue(uint64_t sequence, const PageKey& key, std::vector<uint8_t> bytes,
               WriteOptions options = {});
  // Commits a reservation whose slot the caller filled (Store::Reserve, phase two off the caller's
  // thread); `bytes` (the page's size) counts against kMaxQueuedBytes until it is committed.
  void EnqueueCommit(uint64_t sequence, uint64_t reservation_id, uint64_t bytes);
  void Prefetch(std::vector<PageKey> keys);
  // A page buffer of layout.PageBytes() bytes to fill and Enqueue: one the committer is done with
  // (contents stale: the caller overwrites every byte), else a new one. Saves an allocation, its
  // page faults and its zero-fill per page (64 KiB each at Llama-3-8B shapes).
  std::vector<uint8_t> TakeBuffer();
  // Waits for the queue; returns (sequence, error) of each failed job since the last Drain.
  std::vector<std::pair<uint64_t, absl::Status>> Drain();

  int64_t committed() const;
  int64_t reused() const;
  uint64_t bytes() const;

 private:
  struct Job {
    uint64_t sequence = 0;
    PageKey key;
    std::vector<uint8_t> bytes;
    WriteOptions options;
    std::vector<PageKey> prefetch;  // a prefetch job when not empty
    uint64_t reservation = 0;       // a commit job when not 0
    uint64_t reserved_bytes = 0;
  };
  void Run();

  Store* const store_;
  const std::string tenant_;
  const PageLayout layout_;
  mutable absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::pair<uint64_t, absl::Status>> failures_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<uint8_t>> spare_ ABSL_GUARDED_BY(mu_);  // done with, for TakeBuffer
  int64_t committed_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reused_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_PAGE_COMMITTER_H_
