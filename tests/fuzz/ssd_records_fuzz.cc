// libFuzzer target: the SSD tier's on-disk records as a restart reads them back. A template tier
// (format record, two tenants, three pages in a segment) is made once; each input is a list of
// raw RocksDB edits (puts and deletes of arbitrary keys and values in the default, "meta" and
// "locations" column families: the format version, 'T' tenant, 'P' page and 'L' location
// records) applied to a copy of it. Then the real SsdTier opens the copy (format check,
// live-byte rebuild from 'L'), lists tenants and pages ('P' decode; malformed records go to
// `bad` and are deleted) and reads every page. Nothing may crash; a page read OK has the size
// its record names.
//
// Input: repeated [op u8][key len u8][key][value len u16 LE][value]; op % 3 = column family,
// op & 0x80 = delete.
#include <rocksdb/db.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "pagoda/kvstore/page.h"
#include "ssd_tier.h"

namespace {

namespace fs = std::filesystem;

const std::string& Template() {
  static const std::string dir = [] {
    // tmpfs: the tier syncs its files; on a disk that alone would cap fuzzing at a few execs/s.
    char buf[] = "/dev/shm/pagoda-fuzz-ssd-XXXXXX";
    if (mkdtemp(buf) == nullptr) std::abort();
    static const std::string root = buf;
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(root, ec);
    });
    const std::string d = root + "/template";
    auto tier = pagoda::SsdTier::Open(d, nullptr, false);
    if (!tier.ok()) std::abort();
    std::vector<uint8_t> bytes(4096, 0x5a);
    std::vector<pagoda::SsdPageWrite> pages;
    for (uint32_t i = 0; i < 3; ++i) {
      pagoda::SsdPageWrite w;
      w.meta.tenant = i % 2;
      w.meta.key = pagoda::PageKey{i + 1, ~uint64_t{i}};
      w.meta.layout = 7;
      w.meta.size = 1024 * (i + 1);
      w.meta.checksum = 0x1234 + i;
      w.bytes = bytes.data();
      pages.push_back(w);
    }
    const std::vector<std::pair<uint32_t, std::string>> tenants = {{0, "a"}, {1, "b"}};
    if (!(*tier)->WriteBatch(pages, tenants).ok() || !(*tier)->Flush().ok()) std::abort();
    return d;
  }();
  return dir;
}

// Applies the edits; false when the input ends mid-record (the rest is ignored).
void ApplyEdits(const std::string& dir, const uint8_t* p, size_t n) {
  // Small memtables: an edit list is a few records, and each memtable's first arena block
  // (write_buffer_size / 8: 8 MiB by default) was allocated and zeroed at every open.
  rocksdb::ColumnFamilyOptions cf;
  cf.write_buffer_size = 1 << 20;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, cf}, {"meta", cf}, {"locations", cf}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::DBOptions o;
  // No WAL preallocation: on tmpfs fallocate zeroes ~70 MB per open, which was most of each exec
  // (the tier under test opens with it off too).
  o.allow_fallocate = false;
  if (!rocksdb::DB::Open(o, dir, cfs, &handles, &db).ok()) std::abort();
  size_t i = 0;
  while (i + 2 <= n) {
    const uint8_t op = p[i], klen = p[i + 1];
    i += 2;
    if (i + klen + 2 > n) break;
    const rocksdb::Slice key(reinterpret_cast<const char*>(p + i), klen);
    i += klen;
    const size_t vlen = p[i] | (size_t{p[i + 1]} << 8);
    i += 2;
    if (i + vlen > n) break;
    const rocksdb::Slice value(reinterpret_cast<const char*>(p + i), vlen);
    i += vlen;
    rocksdb::ColumnFamilyHandle* cf = handles[(op & 0x7f) % 3];
    if (op & 0x80) {
      (void)db->Delete(rocksdb::WriteOptions(), cf, key);
    } else {
      (void)db->Put(rocksdb::WriteOptions(), cf, key, value);
    }
  }
  for (auto* h : handles) (void)db->DestroyColumnFamilyHandle(h);
  delete db;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& tmpl = Template();
  const std::string work = fs::path(tmpl).parent_path().string() + "/work";
  std::error_code ec;
  fs::remove_all(work, ec);
  if (!ec) fs::copy(tmpl, work, fs::copy_options::recursive, ec);
  if (ec) {  // the harness's own copy, not the code under test: say why before stopping
    std::fprintf(stderr, "ssd_records_fuzz: preparing %s: %s\n", work.c_str(),
                 ec.message().c_str());
    std::abort();
  }
  ApplyEdits(work, data, size);
  auto tier = pagoda::SsdTier::Open(work, nullptr, false);
  if (!tier.ok()) return 0;  // refused (format record damaged): a clear error, nothing read
  (void)(*tier)->ForEachTenant([](uint32_t, std::string_view) {});
  std::vector<pagoda::SsdPageMeta> pages;
  std::vector<std::string> bad;
  (void)(*tier)->ForEachPage([&](const pagoda::SsdPageMeta& m) { pages.push_back(m); },
                             [&](std::string_view k) { bad.emplace_back(k); });
  for (const std::string& k : bad) (void)(*tier)->DeleteRawMeta(k);
  for (const pagoda::SsdPageMeta& m : pages) {
    std::string out;
    absl::Status s = (*tier)->Read(m.tenant, m.key, &out);
    if (s.ok() && out.size() != m.size) __builtin_trap();
    // A refused read allocates nothing on the record's say-so (regression: 1 GiB records).
    if (!s.ok() && out.capacity() > (64u << 20)) __builtin_trap();
  }
  (void)(*tier)->EstimatePages();
  (void)(*tier)->Space();
  return 0;
}
