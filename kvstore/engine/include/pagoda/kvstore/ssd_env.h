// Fault seam of the SSD tier, in the spirit of leveldb's Env / FaultInjectionTestEnv.
//
// Every batch of page records the SSD tier writes passes through BeforeWrite(), and every
// durability barrier through Sync(). The default implementation does nothing extra; tests subclass
// it to fail writes and syncs or to corrupt bytes on their way to the device.
//
// Thread safety: the SSD tier calls these methods one call at a time (under its own write lock;
// demotions also hold the store's lock, checkpoints do not); implementations need no locking of
// their own unless tests touch them from other threads.
#ifndef PAGODA_KVSTORE_SSD_ENV_H_
#define PAGODA_KVSTORE_SSD_ENV_H_

#include <cstddef>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace pagoda {

class SsdEnv {
 public:
  virtual ~SsdEnv() = default;

  // Called with the page bytes of a batch about to be written, one string per page, after their
  // checksums were taken. A non-OK status fails the whole batch before anything reaches a segment
  // file or RocksDB; the pages stay where they were. An implementation may alter the bytes to
  // simulate a device that corrupts data (the store must then detect it on read).
  virtual absl::Status BeforeWrite(absl::Span<std::string> page_bytes) { return absl::OkStatus(); }

  // Called between a batch's two phases: its bytes are appended to a segment file, its metadata
  // not yet committed. `sync` fdatasyncs the segment when StoreOptions::ssd_sync_writes is set and
  // does nothing otherwise. A non-OK status makes the tier treat the batch as failed: it truncates
  // the segment back, commits no metadata, and the pages stay where they were.
  virtual absl::Status Sync(const std::function<absl::Status()>& sync) { return sync(); }
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_SSD_ENV_H_
