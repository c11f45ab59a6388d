// Helpers shared by the engine's tests: temporary directories and deterministic page bytes.
#ifndef PAGODA_KVSTORE_TEST_UTIL_H_
#define PAGODA_KVSTORE_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "pagoda/kvstore/page.h"
#include "pagoda/kvstore/store.h"

namespace pagoda::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// fp16, 1 KV head, head_dim 64, 16 tokens: 4 KiB pages (small, so tests stay fast).
PageLayout SmallLayout();
// The same shape in bf16 with 2 heads: 8 KiB pages (a second layout class).
PageLayout OtherLayout();

// Deterministic bytes of a page: a function of (tenant, key, salt) so that any reader can check
// what it got, and pages of different keys differ everywhere.
std::vector<uint8_t> PageBytesFor(const PageLayout& layout, std::string_view tenant,
                                  const PageKey& key, uint32_t salt = 0);
PageKey TestKey(uint64_t i);

// Options of a small store: host capacity of `host_pages` SmallLayout pages, segments of one page
// class each, SSD under `data_dir` (empty: none).
StoreOptions SmallStoreOptions(uint64_t host_pages, const std::string& data_dir);

}  // namespace pagoda::testing

#endif  // PAGODA_KVSTORE_TEST_UTIL_H_
