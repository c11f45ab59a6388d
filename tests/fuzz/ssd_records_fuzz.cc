// libFuzzer target: the SSD tier's on-disk records as a restart reads them back and as deletes and
// compaction act on them. A template tier (format record, two tenants, three pages in one sealed
// segment) is made once; each input is a list of raw RocksDB edits (puts and deletes of arbitrary
// keys and values in the default, "meta" and "locations" column families: the format version, 'T'
// tenant, 'P' page and 'L' location records) applied to the template's database (kept open for
// the run), checkpointed into a copy and undone. Then the real SsdTier opens the copy (format
// check, live-byte rebuild from 'L'), lists tenants and pages ('P' decode; malformed records go to
// `bad` and are deleted), reads every page, deletes some (the template's second page, twice, and
// every other listed page with an odd key.lo), compacts the template's segment and reads again.
// Nothing may crash or allocate by a record's say-so; a page read OK has the size its record
// names; a page read OK before and after has the same bytes; and a template page whose own 'P'
// and 'L' records no edit touched and that was not deleted still reads OK after it all — damaged
// records cost their own pages, never another's.
//
// Input: repeated [op u8][key len u8][key][value len u16 LE][value]; op % 3 = column family,
// op & 0x80 = delete.
#include <rocksdb/db.h>
#include <rocksdb/utilities/checkpoint.h>
#include <sys/resource.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <optional>
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
  // files beside it) and undoes the edits; returns the keys edited, as column family index + key.
  // Aborts on a harness failure (not the code under test).
  std::vector<std::string> CheckpointWithEdits(const uint8_t* p, size_t n,
                                               const std::string& work) {
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
    std::vector<std::string> touched;
    for (const Saved& s : saved) {
      const rocksdb::Status undo = s.present
                                       ? db_->Put(rocksdb::WriteOptions(), s.cf, s.key, s.value)
                                       : db_->Delete(rocksdb::WriteOptions(), s.cf, s.key);
      if (!undo.ok()) std::abort();
      for (size_t c = 0; c < handles_.size(); ++c) {
        if (handles_[c] == s.cf) touched.push_back(std::to_string(c) + s.key);
      }
    }
    return touched;
  }

  // The template's 'L' key (locations column family) of each page key (20 bytes), as written.
  std::vector<std::pair<std::string, std::string>> TemplateLocations() {
    if (db_ == nullptr) Reopen();
    std::vector<std::pair<std::string, std::string>> out;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handles_[2]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (it->value().size() >= 20) {
        out.emplace_back(it->value().ToString().substr(0, 20), it->key().ToString());
      }
    }
    return out;
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

// A page key as the tier writes it in its records (20 bytes: tenant u32, key.hi u64, key.lo u64,
// big-endian).
std::string PageKeyBytes(uint32_t tenant, const pagoda::PageKey& k) {
  std::string s;
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>(tenant >> (8 * i)));
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>(k.hi >> (8 * i)));
  for (int i = 7; i >= 0; --i) s.push_back(static_cast<char>(k.lo >> (8 * i)));
  return s;
}

bool IsTemplatePage(uint32_t tenant, const pagoda::PageKey& k, uint32_t* index) {
  for (uint32_t i = 0; i < 3; ++i) {
    if (tenant == i % 2 && k == pagoda::PageKey{i + 1, ~uint64_t{i}}) {
      *index = i;
      return true;
    }
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& tmpl = Template();
  static EditDb* edits = new EditDb(tmpl);  // never destroyed: libFuzzer exits from anywhere
  static const auto template_locations = edits->TemplateLocations();
  const std::string work = fs::path(tmpl).parent_path().string() + "/work";
  std::error_code ec;
  fs::remove_all(work, ec);
  if (ec) {  // the harness's own directory, not the code under test: say why before stopping
    std::fprintf(stderr, "ssd_records_fuzz: clearing %s: %s\n", work.c_str(), ec.message().c_str());
    std::abort();
  }
  const std::vector<std::string> touched = edits->CheckpointWithEdits(data, size, work);
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  const long peak_kib = usage.ru_maxrss;
  auto tier = pagoda::SsdTier::Open(work, nullptr, false);
  if (!tier.ok()) return 0;  // refused (format record damaged): a clear error, nothing read
  (void)(*tier)->ForEachTenant([](uint32_t, std::string_view) {});
  std::vector<pagoda::SsdPageMeta> pages;
  std::vector<std::string> bad;
  (void)(*tier)->ForEachPage([&](const pagoda::SsdPageMeta& m) { pages.push_back(m); },
                             [&](std::string_view k) { bad.emplace_back(k); });
  for (const std::string& k : bad) {
    // A malformed page record never reads as a page.
    if (k.size() == 21 && k[0] == 'P') {
      auto be = [&](size_t at, int n) {
        uint64_t v = 0;
        for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(k[at + i]);
        return v;
      };
      std::string out;
      const pagoda::PageKey key{be(5, 8), be(13, 8)};
      if ((*tier)->Read(static_cast<uint32_t>(be(1, 4)), key, &out).ok()) __builtin_trap();
    }
    (void)(*tier)->DeleteRawMeta(k);
  }
  // Reads every page; a page read OK has its record's size, and a refused read allocates nothing
  // on the record's say-so (regression: 1 GiB records).
  auto read_all = [&](std::vector<std::optional<std::string>>* got) {
    got->assign(pages.size(), std::nullopt);
    for (size_t i = 0; i < pages.size(); ++i) {
      std::string out;
      absl::Status s = (*tier)->Read(pages[i].tenant, pages[i].key, &out);
      if (s.ok() && out.size() != pages[i].size) __builtin_trap();
      if (!s.ok() && out.capacity() > (64u << 20)) __builtin_trap();
      if (s.ok()) (*got)[i] = std::move(out);
    }
  };
  std::vector<std::optional<std::string>> before, after;
  read_all(&before);
  (void)(*tier)->EstimatePages();
  (void)(*tier)->Space();
  // Deletes: the template's second page (listed twice) and every other page with an odd key.lo.
  std::vector<std::pair<uint32_t, pagoda::PageKey>> del = {{1, {2, ~uint64_t{1}}},
                                                           {1, {2, ~uint64_t{1}}}};
  std::vector<bool> deleted(pages.size(), false);
  for (size_t i = 0; i < pages.size(); ++i) {
    uint32_t t = 0;
    const bool tp = IsTemplatePage(pages[i].tenant, pages[i].key, &t);
    if ((!tp && (pages[i].key.lo & 1)) || (tp && t == 1)) {
      if (!tp) del.emplace_back(pages[i].tenant, pages[i].key);
      deleted[i] = true;
    }
  }
  (void)(*tier)->Delete(del);
  (*tier)->WaitForCompactions();  // a delete may have queued one
  for (uint32_t segment = 1; segment <= 3; ++segment) (void)(*tier)->CompactSegment(segment);
  read_all(&after);
  for (size_t i = 0; i < pages.size(); ++i) {
    if (deleted[i]) continue;
    if (before[i] && after[i] && *before[i] != *after[i]) __builtin_trap();  // other bytes
    uint32_t t = 0;
    if (!before[i] || !IsTemplatePage(pages[i].tenant, pages[i].key, &t)) continue;
    // A template page whose own records are as written keeps its bytes readable.
    const std::string pk = PageKeyBytes(pages[i].tenant, pages[i].key);
    bool intact = true;
    for (const std::string& k : touched) intact = intact && k != "1P" + pk;
    for (const auto& [page, loc] : template_locations) {
      if (page != pk) continue;
      for (const std::string& k : touched) intact = intact && k != "2" + loc;
    }
    if (intact && !after[i]) __builtin_trap();  // lost to another record's damage
  }
  // Nothing grew the process by a record's say-so (regression: compaction sized a buffer by a
  // location record's 4 GiB; libFuzzer's -rss_limit_mb catches it too, the corpus replay by this).
  getrusage(RUSAGE_SELF, &usage);
  if (usage.ru_maxrss - peak_kib > (512L << 10)) __builtin_trap();
  return 0;
}
