// libFuzzer target: the SSD tier's on-disk records as a restart reads them back. A template tier
// (format record, two tenants, three pages in a segment) is made once; each input is a list of
// raw RocksDB edits (puts and deletes of arbitrary keys and values in the default, "meta" and
// "locations" column families: the format version, 'T' tenant, 'P' page and 'L' location
// records) applied to the template's database (kept open for the run), checkpointed into a copy
// and undone. Then the real SsdTier opens the copy (format check,
// live-byte rebuild from 'L'), lists tenants and pages ('P' decode; malformed records go to
// `bad` and are deleted) and reads every page. Nothing may crash; a page read OK has the size
// its record names.
//
// Input: repeated [op u8][key len u8][key][value len u16 LE][value]; op % 3 = column family,
// op & 0x80 = delete.
#include <rocksdb/db.h>
#include <rocksdb/utilities/checkpoint.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
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

// The template's database, open once for the whole run: each input's edits are applied to it, a
// checkpoint of it becomes the tier the input opens, and the edits are then undone (no database
// open per input besides the tier's own). Reopened from the template every kReopenEvery inputs
// so its write-ahead log and memtables stay small.
class EditDb {
 public:
  static constexpr int kReopenEvery = 512;

  explicit EditDb(const std::string& tmpl)
      : tmpl_(tmpl), base_(fs::path(tmpl).parent_path().string() + "/base") {}
  ~EditDb() { Close(); }

  // Applies the input's edits, checkpoints the database into `work` (with the template's segment
  // files beside it) and undoes the edits. Aborts on a harness failure (not the code under test).
  void CheckpointWithEdits(const uint8_t* p, size_t n, const std::string& work) {
    if (db_ == nullptr || ++uses_ > kReopenEvery) Reopen();
    struct Edit {
      rocksdb::ColumnFamilyHandle* cf;
      std::string key, value;
      bool del;
    };
    std::vector<Edit> edits;
    size_t i = 0;
    while (i + 2 <= n) {  // a record cut short ends the list
      const uint8_t op = p[i], klen = p[i + 1];
      i += 2;
      if (i + klen + 2 > n) break;
      std::string key(reinterpret_cast<const char*>(p + i), klen);
      i += klen;
      const size_t vlen = p[i] | (size_t{p[i + 1]} << 8);
      i += 2;
      if (i + vlen > n) break;
      edits.push_back({handles_[(op & 0x7f) % 3], std::move(key),
                       std::string(reinterpret_cast<const char*>(p + i), vlen), (op & 0x80) != 0});
      i += vlen;
    }
    // What each edited key held before, to put back afterwards (first edit of a key only).
    struct Saved {
      rocksdb::ColumnFamilyHandle* cf;
      std::string key, value;
      bool present;
    };
    std::vector<Saved> saved;
    for (const Edit& e : edits) {
      bool seen = false;
      for (const Saved& s : saved) seen = seen || (s.cf == e.cf && s.key == e.key);
      if (seen) continue;
      Saved s{e.cf, e.key, {}, false};
      s.present = db_->Get(rocksdb::ReadOptions(), e.cf, e.key, &s.value).ok();
      saved.push_back(std::move(s));
    }
    for (const Edit& e : edits) {
      if (e.del) {
        (void)db_->Delete(rocksdb::WriteOptions(), e.cf, e.key);
      } else {
        (void)db_->Put(rocksdb::WriteOptions(), e.cf, e.key, e.value);
      }
    }
    rocksdb::Checkpoint* cp = nullptr;
    // log_size_for_flush at its maximum: the live log is copied, never a flush per input.
    rocksdb::Status st = rocksdb::Checkpoint::Create(db_, &cp);
    if (st.ok()) st = cp->CreateCheckpoint(work, std::numeric_limits<uint64_t>::max());
    delete cp;
    std::error_code ec;
    if (st.ok()) fs::copy(tmpl_ + "/segments", work + "/segments", fs::copy_options::recursive, ec);
    if (!st.ok() || ec) {
      std::fprintf(stderr, "ssd_records_fuzz: checkpoint into %s: %s %s\n", work.c_str(),
                   st.ToString().c_str(), ec.message().c_str());
      std::abort();
    }
    for (const Saved& s : saved) {
      const rocksdb::Status undo = s.present
                                       ? db_->Put(rocksdb::WriteOptions(), s.cf, s.key, s.value)
                                       : db_->Delete(rocksdb::WriteOptions(), s.cf, s.key);
      if (!undo.ok()) std::abort();
    }
  }

 private:
  void Close() {
    for (auto* h : handles_) (void)db_->DestroyColumnFamilyHandle(h);
    handles_.clear();
    delete db_;
    db_ = nullptr;
  }
  void Reopen() {
    if (db_ != nullptr) Close();
    std::error_code ec;
    fs::remove_all(base_, ec);
    if (!ec) fs::copy(tmpl_, base_, fs::copy_options::recursive, ec);
    if (ec) std::abort();
    // Small memtables: an edit list is a few records.
    rocksdb::ColumnFamilyOptions cf;
    cf.write_buffer_size = 1 << 20;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, cf}, {"meta", cf}, {"locations", cf}};
    rocksdb::DBOptions o;
    // No WAL preallocation (on tmpfs fallocate zeroes ~70 MB; the tier under test opens with it
    // off too).
    o.allow_fallocate = false;
    if (!rocksdb::DB::Open(o, base_, cfs, &handles_, &db_).ok()) std::abort();
    uses_ = 1;
  }

  const std::string tmpl_, base_;
  rocksdb::DB* db_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  int uses_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& tmpl = Template();
  static EditDb* edits = new EditDb(tmpl);  // never destroyed: libFuzzer exits from anywhere
  const std::string work = fs::path(tmpl).parent_path().string() + "/work";
  std::error_code ec;
  fs::remove_all(work, ec);
  if (ec) {  // the harness's own directory, not the code under test: say why before stopping
    std::fprintf(stderr, "ssd_records_fuzz: clearing %s: %s\n", work.c_str(), ec.message().c_str());
    std::abort();
  }
  edits->CheckpointWithEdits(data, size, work);
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
