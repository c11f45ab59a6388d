// The SSD tier: page bytes as RocksDB blob values, page metadata in a separate column family so
// that a restart rebuilds the page table by reading metadata only.
//
// On-disk format (version 1; all keys big-endian so they sort by tenant, then key):
//   column family "pages" (blob files, min_blob_size 0): key = tenant u32 | key.hi u64 | key.lo
//   u64,
//     value = the page bytes.
//   column family "meta": 'P' + the same 20 bytes -> layout id u32 | size u32 | checksum u64 (LE);
//     'T' + tenant u32 -> tenant name.
// A page's two records are written in one WriteBatch, so a page is either wholly there or not.
//
// Thread safety: RocksDB is thread-safe; Read() may run concurrently with everything. Writes,
// deletes and Flush are called with the store's lock held (SsdEnv relies on that).
#ifndef PAGODA_KVSTORE_SSD_TIER_H_
#define PAGODA_KVSTORE_SSD_TIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/ssd_env.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace pagoda {

struct SsdPageMeta {
  uint32_t tenant = 0;
  PageKey key;
  LayoutId layout = 0;
  uint32_t size = 0;
  uint64_t checksum = 0;
};

struct SsdPageWrite {
  SsdPageMeta meta;
  const uint8_t* bytes = nullptr;  // meta.size bytes, valid during WriteBatch
};

class SsdTier {
 public:
  // Opens or creates the database under `dir`. `env` must outlive the tier (null: default).
  static absl::StatusOr<std::unique_ptr<SsdTier>> Open(const std::string& dir, SsdEnv* env,
                                                       bool sync_writes);
  ~SsdTier();

  // Writes pages (and tenant names not yet on disk) atomically: all or nothing. On a failed sync
  // the batch's records are deleted again.
  absl::Status WriteBatch(absl::Span<const SsdPageWrite> pages,
                          absl::Span<const std::pair<uint32_t, std::string>> tenants);
  // Reads a page's bytes into *out. NotFound when absent; DataLoss when RocksDB reports the record
  // corrupt. The caller verifies the checksum.
  absl::Status Read(uint32_t tenant, const PageKey& key, std::string* out);
  // Deletes pages' records (both column families) in one batch.
  absl::Status Delete(absl::Span<const std::pair<uint32_t, PageKey>> pages);
  // Calls fn for every page's metadata (no page bytes are read). A malformed metadata record is
  // passed to bad(key bytes) and skipped.
  absl::Status ForEachPage(const std::function<void(const SsdPageMeta&)>& fn,
                           const std::function<void(std::string_view)>& bad);
  absl::Status ForEachTenant(const std::function<void(uint32_t, std::string_view)>& fn);
  // Deletes a raw metadata key reported by ForEachPage's `bad`.
  absl::Status DeleteRawMeta(std::string_view meta_key);
  // Estimated number of page records (for reserving the page table on rebuild).
  uint64_t EstimatePages();
  absl::Status Flush();
  // Writes metadata records only (no page bytes). For benchmarks of rebuild; never used by the
  // store.
  absl::Status WriteMetaOnlyForBench(absl::Span<const SsdPageMeta> metas);

 private:
  SsdTier() = default;
  rocksdb::DB* db_ = nullptr;
  rocksdb::ColumnFamilyHandle* pages_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* meta_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  SsdEnv* env_ = nullptr;
  SsdEnv default_env_;
  bool custom_env_ = false;
  bool sync_writes_ = false;
};

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_SSD_TIER_H_
