#include "test_util.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>

#include "xxhash.h"

namespace pagoda::testing {

TempDir::TempDir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/pagoda-kvstore-test-XXXXXX";
  char* p = mkdtemp(tmpl.data());
  if (p == nullptr) abort();
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

PageLayout SmallLayout() {
  PageLayout l;
  l.dtype = DType::kFp16;
  l.kv_heads = 1;
  l.head_dim = 64;
  l.page_tokens = 16;
  return l;
}

PageLayout OtherLayout() {
  PageLayout l;
  l.dtype = DType::kBf16;
  l.kv_heads = 2;
  l.head_dim = 64;
  l.page_tokens = 16;
  return l;
}

std::vector<uint8_t> PageBytesFor(const PageLayout& layout, std::string_view tenant,
                                  const PageKey& key, uint32_t salt) {
  std::vector<uint8_t> out(layout.PageBytes());
  uint64_t state = XXH3_64bits(tenant.data(), tenant.size()) ^ key.hi ^
                   (key.lo * 0x9E3779B97F4A7C15ULL) ^ (static_cast<uint64_t>(salt) << 32) ^
                   0x5DEECE66DULL;
  for (size_t i = 0; i < out.size(); i += 8) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    std::memcpy(out.data() + i, &state, std::min<size_t>(8, out.size() - i));
  }
  return out;
}

PageKey TestKey(uint64_t i) { return PageKey{0xABCD000000000000ULL + i, i * 7919 + 1}; }

StoreOptions SmallStoreOptions(uint64_t host_pages, const std::string& data_dir) {
  StoreOptions o;
  o.layouts = {SmallLayout()};
  o.host_capacity_bytes = host_pages * SmallLayout().PageBytes();
  o.segment_bytes = SmallLayout().PageBytes();
  o.data_dir = data_dir;
  return o;
}

}  // namespace pagoda::testing
