#include "ssd_tier.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/listener.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "ssd_segments.h"

namespace pagoda {
namespace {

constexpr size_t kPageKeyBytes = 20;
constexpr uint32_t kFormatVersion = 2;
constexpr char kFormatVersionKey[] = "format_version";
constexpr size_t kMetaBytes = 24;
constexpr size_t kLocKeyBytes = 9;
constexpr size_t kLocValueBytes = kPageKeyBytes + 4;
// Compaction moves live pages in appends of about this many bytes.
constexpr uint64_t kCompactBatchBytes = 4ULL << 20;

// The one place RocksDB statuses become absl::Status.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("SSD tier: ", std::string(what), ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  return absl::UnavailableError(msg);
}

void PutBE32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (24 - 8 * i));
}
void PutBE64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (56 - 8 * i));
}
uint32_t GetBE32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t GetBE64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

struct PageKeyBuf {
  char b[1 + kPageKeyBytes];  // b[0] = 'P' for the meta key; the page key is b + 1
  PageKeyBuf(uint32_t tenant, const PageKey& key) {
    b[0] = 'P';
    PutBE32(b + 1, tenant);
    PutBE64(b + 5, key.hi);
    PutBE64(b + 13, key.lo);
  }
  rocksdb::Slice pk() const { return rocksdb::Slice(b + 1, kPageKeyBytes); }
  rocksdb::Slice meta() const { return rocksdb::Slice(b, sizeof(b)); }
};

void EncodeMeta(const SsdPageMeta& m, SegmentLocation at, char out[kMetaBytes]) {
  std::memcpy(out, &m.layout, 4);  // little-endian hosts only (x86-64, aarch64)
  std::memcpy(out + 4, &m.size, 4);
  std::memcpy(out + 8, &m.checksum, 8);
  std::memcpy(out + 16, &at.segment, 4);
  std::memcpy(out + 20, &at.offset, 4);
}

bool DecodeMeta(const rocksdb::Slice& v, SsdPageMeta* m, SegmentLocation* at) {
  if (v.size() != kMetaBytes) return false;
  std::memcpy(&m->layout, v.data(), 4);
  std::memcpy(&m->size, v.data() + 4, 4);
  std::memcpy(&m->checksum, v.data() + 8, 8);
  std::memcpy(&at->segment, v.data() + 16, 4);
  std::memcpy(&at->offset, v.data() + 20, 4);
  return true;
}

struct LocKeyBuf {
  char b[kLocKeyBytes];
  explicit LocKeyBuf(SegmentLocation at) {
    b[0] = 'L';
    PutBE32(b + 1, at.segment);
    PutBE32(b + 5, at.offset);
  }
  rocksdb::Slice slice() const { return rocksdb::Slice(b, sizeof(b)); }
};

// Syncs segment bytes before RocksDB flushes metadata that may point at them, so that a flushed
// record never outlives its bytes (a flush makes records durable without a WAL sync).
class SyncSegmentsOnFlush : public rocksdb::EventListener {
 public:
  void OnFlushBegin(rocksdb::DB*, const rocksdb::FlushJobInfo&) override {
    if (SegmentSet* s = segments.load(std::memory_order_acquire); s != nullptr) {
      s->SyncAll().IgnoreError();  // a failed sync shows up as a checksum failure, never as bytes
    }
  }
  std::atomic<SegmentSet*> segments{nullptr};
};

}  // namespace

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Open(const std::string& dir,
                                                       const SsdTierOptions& options) {
  std::error_code ec;
  const bool existed = std::filesystem::exists(dir + "/CURRENT", ec);
  rocksdb::DBOptions db_opts;
  if (existed) {
    // Refuse another format before opening: opening would add column families to it.
    std::vector<std::string> names;
    if (absl::Status s = FromRocks(rocksdb::DB::ListColumnFamilies(db_opts, dir, &names),
                                   "list column families of " + dir);
        !s.ok()) {
      return s;
    }
    const absl::flat_hash_set<std::string> have(names.begin(), names.end());
    if (have.contains("pages")) {
      return absl::FailedPreconditionError(
          absl::StrCat("SSD tier: ", dir,
                       " holds on-disk format version 1 (page bytes as RocksDB blobs); this build "
                       "reads version ",
                       kFormatVersion,
                       " only. Move the directory away (its pages are a cache) or read it "
                       "with an older build"));
    }
    if (!have.contains("meta") || !have.contains("locations")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "SSD tier: ", dir, " is a RocksDB database of an unknown format (no \"meta\" and ",
          "\"locations\" column families); this build reads SSD tier format version ",
          kFormatVersion, " only"));
    }
  }
  db_opts.create_if_missing = !existed;
  db_opts.create_missing_column_families = !existed;
  db_opts.max_background_jobs = 2;
  // No preallocated WAL space: on a small file system it would take tens of MiB up front.
  db_opts.allow_fallocate = false;
  // Both column families flush together, so a page's 'P' and 'L' records reach disk together.
  db_opts.atomic_flush = true;
  auto listener = std::make_shared<SyncSegmentsOnFlush>();
  db_opts.listeners.push_back(listener);
  rocksdb::ColumnFamilyOptions meta_opts;
  meta_opts.write_buffer_size = 16ULL << 20;
  // Metadata records are small and random (keys are hashes): compression saves little and its
  // decode dominated the restart scan; larger blocks mean fewer block decodes per record.
  meta_opts.compression = rocksdb::kNoCompression;
  {
    rocksdb::BlockBasedTableOptions table;
    table.block_size = 64 << 10;
    meta_opts.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  }
  rocksdb::ColumnFamilyOptions loc_opts = meta_opts;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"meta", meta_opts},
      {"locations", loc_opts}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  if (absl::Status s =
          FromRocks(rocksdb::DB::Open(db_opts, dir, cfs, &handles, &db), "open " + dir);
      !s.ok()) {
    return s;
  }
  std::unique_ptr<SsdTier> t(new SsdTier());
  t->db_ = db;
  t->default_cf_ = handles[0];
  t->meta_cf_ = handles[1];
  t->loc_cf_ = handles[2];
  t->options_ = options;
  t->custom_env_ = options.env != nullptr;
  t->env_ = options.env != nullptr ? options.env : &t->default_env_;
  if (absl::Status s = t->CheckFormat(dir, existed); !s.ok()) return s;
  if (absl::Status s = t->LoadSegments(dir); !s.ok()) return s;
  listener->segments.store(t->segments_.get(), std::memory_order_release);
  t->listener_ = std::move(listener);
  t->ballast_path_ = dir + "/segments/ballast";
  t->ballast_bytes_ = 4ULL << 20;
  t->RestoreBallast();
  t->compactor_ = std::thread([tier = t.get()] { tier->CompactionLoop(); });
  return t;
}

absl::Status SsdTier::CheckFormat(const std::string& dir, bool existed) {
  if (!existed) {
    char v[4];
    std::memcpy(v, &kFormatVersion, 4);
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return FromRocks(db_->Put(wo, default_cf_, kFormatVersionKey, rocksdb::Slice(v, 4)),
                     "write format version");
  }
  std::string v;
  rocksdb::Status rs = db_->Get(rocksdb::ReadOptions(), default_cf_, kFormatVersionKey, &v);
  if (rs.IsNotFound()) {
    return absl::FailedPreconditionError(
        absl::StrCat("SSD tier: ", dir, " has no format version record; this build reads SSD ",
                     "tier format version ", kFormatVersion, " only"));
  }
  if (absl::Status s = FromRocks(rs, "read format version"); !s.ok()) return s;
  uint32_t version = 0;
  if (v.size() == 4) std::memcpy(&version, v.data(), 4);
  if (v.size() != 4 || version != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("SSD tier: ", dir, " has on-disk format version ",
                     v.size() == 4 ? absl::StrCat(version) : "(malformed)",
                     "; this build reads version ", kFormatVersion, " only"));
  }
  return absl::OkStatus();
}

absl::Status SsdTier::LoadSegments(const std::string& dir) {
  absl::flat_hash_map<uint32_t, uint64_t> live;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  ro.readahead_size = 4 << 20;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, loc_cf_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice k = it->key();
    const rocksdb::Slice v = it->value();
    if (k.size() != kLocKeyBytes || k[0] != 'L' || v.size() != kLocValueBytes) continue;
    uint32_t size = 0;
    std::memcpy(&size, v.data() + kPageKeyBytes, 4);
    live[GetBE32(k.data() + 1)] += size;
  }
  if (absl::Status s = FromRocks(it->status(), "scan locations"); !s.ok()) return s;
  auto set =
      SegmentSet::Open(dir + "/segments", options_.segment_bytes, options_.direct_writes, live);
  if (!set.ok()) return set.status();
  segments_ = std::move(*set);
  return absl::OkStatus();
}

SsdTier::~SsdTier() {
  if (compactor_.joinable()) {
    {
      absl::MutexLock l(&compact_mu_);
      stopping_ = true;
    }
    compactor_.join();
  }
  if (db_ == nullptr) return;
  if (segments_ != nullptr) segments_->SyncAll().IgnoreError();
  rocksdb::FlushOptions fo;
  db_->Flush(fo, {meta_cf_, loc_cf_}).PermitUncheckedError();
  db_->DestroyColumnFamilyHandle(meta_cf_).PermitUncheckedError();
  db_->DestroyColumnFamilyHandle(loc_cf_).PermitUncheckedError();
  db_->DestroyColumnFamilyHandle(default_cf_).PermitUncheckedError();
  db_->Close().PermitUncheckedError();
  delete db_;
}

absl::Status SsdTier::WriteMeta(rocksdb::WriteBatch* batch, std::string_view what) {
  rocksdb::WriteOptions wo;
  // The WAL is always on, so a crash replays records and deletes in order; with sync_writes each
  // commit also syncs it, without it Sync() (a checkpoint), Flush() and close do.
  wo.sync = options_.sync_writes;
  rocksdb::Status s = db_->Write(wo, batch);
  if (s.IsNoSpace() || s.IsIOError()) {
    // A full file system stops RocksDB until it is resumed. The ballast gives it room (so that
    // the deletes that make room go through); one retry, the error stands if it fails again.
    ReleaseBallast();
    if (db_->Resume().ok()) s = db_->Write(wo, batch);
  }
  return FromRocks(s, what);
}

absl::Status SsdTier::AppendAndCommit(absl::Span<const SsdPageMeta> metas,
                                      absl::Span<const char* const> bytes, bool via_env,
                                      rocksdb::WriteBatch* batch) {
  std::vector<iovec> iov(metas.size());
  uint64_t total = 0;
  for (size_t i = 0; i < metas.size(); ++i) {
    iov[i].iov_base = const_cast<char*>(bytes[i]);
    iov[i].iov_len = metas[i].size;
    total += metas[i].size;
  }
  absl::StatusOr<SegmentLocation> at = segments_->Append(iov, total);
  if (!at.ok()) return at.status();
  auto sync = [&]() -> absl::Status {
    return options_.sync_writes ? segments_->Sync(at->segment) : absl::OkStatus();
  };
  if (absl::Status s = via_env ? env_->Sync(sync) : sync(); !s.ok()) {
    segments_->TakeBack(*at);
    return s;
  }
  SegmentLocation loc = *at;
  for (const SsdPageMeta& m : metas) {
    PageKeyBuf k(m.tenant, m.key);
    char meta[kMetaBytes];
    EncodeMeta(m, loc, meta);
    char lv[kLocValueBytes];
    std::memcpy(lv, k.pk().data(), kPageKeyBytes);
    std::memcpy(lv + kPageKeyBytes, &m.size, 4);
    if (absl::Status s =
            FromRocks(batch->Put(meta_cf_, k.meta(), rocksdb::Slice(meta, kMetaBytes)), "batch");
        !s.ok()) {
      segments_->TakeBack(*at);
      return s;
    }
    if (absl::Status s = FromRocks(
            batch->Put(loc_cf_, LocKeyBuf(loc).slice(), rocksdb::Slice(lv, kLocValueBytes)),
            "batch");
        !s.ok()) {
      segments_->TakeBack(*at);
      return s;
    }
    loc.offset += m.size;
  }
  if (absl::Status s = WriteMeta(batch, "write metadata"); !s.ok()) {
    // The records may have half-landed (a WAL write that failed to sync): never reuse these
    // offsets. A store batch's records are taken back where they landed, so that the store's view
    // (not on SSD) holds; compaction's are left, as either version points at intact bytes.
    segments_->SealActive();
    if (via_env) {
      rocksdb::WriteBatch undo;
      loc = *at;
      for (const SsdPageMeta& m : metas) {
        undo.Delete(meta_cf_, PageKeyBuf(m.tenant, m.key).meta()).PermitUncheckedError();
        undo.Delete(loc_cf_, LocKeyBuf(loc).slice()).PermitUncheckedError();
        loc.offset += m.size;
      }
      WriteMeta(&undo, "undo").IgnoreError();
    }
    return s;
  }
  segments_->AddLive(at->segment, total);
  return absl::OkStatus();
}

absl::Status SsdTier::WriteBatch(absl::Span<const SsdPageWrite> pages,
                                 absl::Span<const std::pair<uint32_t, std::string>> tenants) {
  absl::MutexLock l(&write_mu_);
  rocksdb::WriteBatch batch;
  for (const auto& [id, name] : tenants) {
    char k[5] = {'T'};
    PutBE32(k + 1, id);
    if (absl::Status s = FromRocks(batch.Put(meta_cf_, rocksdb::Slice(k, 5), name), "batch");
        !s.ok()) {
      return s;
    }
  }
  if (pages.empty()) return WriteMeta(&batch, "write tenants");
  // With a custom fault seam the bytes are copied so the seam may alter them; without one the
  // append points straight at the caller's bytes (one pwritev, no copy).
  std::vector<std::string> copies;
  if (custom_env_) {
    copies.reserve(pages.size());
    for (const SsdPageWrite& p : pages) {
      copies.emplace_back(reinterpret_cast<const char*>(p.bytes), p.meta.size);
    }
    if (absl::Status s = env_->BeforeWrite(absl::MakeSpan(copies)); !s.ok()) return s;
  }
  std::vector<SsdPageMeta> metas;
  std::vector<const char*> bytes;
  metas.reserve(pages.size());
  bytes.reserve(pages.size());
  for (size_t i = 0; i < pages.size(); ++i) {
    metas.push_back(pages[i].meta);
    bytes.push_back(custom_env_ ? copies[i].data() : reinterpret_cast<const char*>(pages[i].bytes));
  }
  return AppendAndCommit(metas, bytes, /*via_env=*/true, &batch);
}

absl::Status SsdTier::Read(uint32_t tenant, const PageKey& key, std::string* out) {
  PageKeyBuf k(tenant, key);
  // Twice at most: compaction may move the page (and unlink its old segment) between reading its
  // record and reading its bytes; the record read again then points at the new place.
  for (int attempt = 0;; ++attempt) {
    std::string v;
    rocksdb::ReadOptions ro;
    ro.verify_checksums = true;
    if (absl::Status s = FromRocks(db_->Get(ro, meta_cf_, k.meta(), &v), "read page " + key.Hex());
        !s.ok()) {
      return s;
    }
    SsdPageMeta m;
    SegmentLocation at;
    if (!DecodeMeta(v, &m, &at)) {
      return absl::DataLossError(
          absl::StrCat("SSD tier: page ", key.Hex(), ": malformed metadata record"));
    }
    // A corrupt record's size is refused before a buffer of that size exists (found by fuzzing:
    // a record naming 1 GiB made every read of it allocate and zero 1 GiB).
    absl::Status s = segments_->CheckRange(at, m.size);
    if (s.ok()) {
      out->resize(m.size);
      s = segments_->Read(at, out->data(), m.size);
    }
    if (!absl::IsNotFound(s)) return s;
    if (attempt == 1) {
      return absl::DataLossError(absl::StrCat("SSD tier: page ", key.Hex(),
                                              ": its record points into segment ", at.segment,
                                              ", which is missing"));
    }
  }
}

absl::Status SsdTier::Delete(absl::Span<const std::pair<uint32_t, PageKey>> pages) {
  absl::MutexLock l(&write_mu_);
  // The location record a page record points to goes with it only when it names that page: a
  // corrupt page record pointing at another page's bytes must not take that page's location (and
  // so its bytes, at the next compaction) or its live bytes with it. Live bytes come off by the
  // location record's size, the number its segment's count was built from at open.
  rocksdb::WriteBatch batch;
  std::vector<std::pair<uint32_t, uint64_t>> freed;  // (segment, bytes)
  absl::flat_hash_set<uint64_t> gone;                // a page listed twice frees its place once
  rocksdb::PinnableSlice v;
  for (const auto& [tenant, key] : pages) {
    const PageKeyBuf k(tenant, key);
    batch.Delete(meta_cf_, k.meta()).PermitUncheckedError();
    v.Reset();
    SsdPageMeta m;
    SegmentLocation at;
    if (!db_->Get(rocksdb::ReadOptions(), meta_cf_, k.meta(), &v).ok() || !DecodeMeta(v, &m, &at) ||
        at.segment == 0 || gone.contains(uint64_t{at.segment} << 32 | at.offset)) {
      continue;
    }
    const LocKeyBuf loc(at);
    v.Reset();
    if (!db_->Get(rocksdb::ReadOptions(), loc_cf_, loc.slice(), &v).ok()) continue;
    if (v.size() == kLocValueBytes && std::memcmp(v.data(), k.pk().data(), kPageKeyBytes) != 0) {
      continue;  // another page's
    }
    batch.Delete(loc_cf_, loc.slice()).PermitUncheckedError();
    gone.insert(uint64_t{at.segment} << 32 | at.offset);
    if (v.size() != kLocValueBytes) continue;  // malformed: counted nowhere, named no page
    uint32_t size = 0;
    std::memcpy(&size, v.data() + kPageKeyBytes, 4);
    freed.emplace_back(at.segment, size);
  }
  if (absl::Status s = WriteMeta(&batch, "delete"); !s.ok()) return s;
  uint32_t compact = 0;
  for (const auto& [segment, size] : freed) {
    if (segments_->SubLive(segment, size)) {
      segments_->Remove(segment);
    } else if (compact == 0 && segments_->DeadFraction(segment) >= options_.compact_dead_fraction) {
      compact = segment;
    }
  }
  if (compact != 0) {
    // In the background: a delete never waits for a segment to be rewritten.
    absl::MutexLock c(&compact_mu_);
    to_compact_.insert(compact);
  }
  return absl::OkStatus();
}

absl::Status SsdTier::CompactSegment(uint32_t segment) { return Compact(segment); }

void SsdTier::ReleaseBallast() { unlink(ballast_path_.c_str()); }

void SsdTier::RestoreBallast() {
  if (ballast_bytes_ == 0) return;
  const int fd = open(ballast_path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (posix_fallocate(fd, 0, static_cast<off_t>(ballast_bytes_)) != 0) {
    close(fd);
    unlink(ballast_path_.c_str());  // no room yet: the next ENOSPC finds none to give up
    return;
  }
  close(fd);
}

void SsdTier::ShrinkSegments(uint64_t limit) {
  absl::MutexLock l(&write_mu_);
  segments_->ShrinkSegments(limit / 16);
}

void SsdTier::WaitForCompactions() {
  absl::MutexLock l(&compact_mu_);
  compact_mu_.Await(absl::Condition(this, &SsdTier::NoCompactionQueued));
}

void SsdTier::CompactionLoop() {
  absl::MutexLock l(&compact_mu_);
  for (;;) {
    compact_mu_.Await(absl::Condition(this, &SsdTier::CompactionQueued));
    if (stopping_) return;
    const uint32_t segment = *to_compact_.begin();
    compact_mu_.Unlock();
    // A failure leaves the segment as it was; a later delete queues it again.
    Compact(segment).IgnoreError();
    compact_mu_.Lock();
    to_compact_.erase(segment);
  }
}

absl::Status SsdTier::Compact(uint32_t segment) {
  // Only one compaction at a time (the background one, or CompactSegment).
  absl::MutexLock one(&compacting_mu_);
  if (segment == 0 || segment == segments_->active() || !segments_->Has(segment)) {
    return absl::OkStatus();
  }
  // The segment's pages in file order, from its 'L' records. It is sealed: nothing new lands in
  // it, and what is deleted from it meanwhile is caught below.
  struct Live {
    uint32_t offset;
    char pk[kPageKeyBytes];
    uint32_t size;
  };
  std::vector<Live> lives;
  {
    char from[kLocKeyBytes];
    LocKeyBuf start({segment, 0});
    std::memcpy(from, start.b, kLocKeyBytes);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), loc_cf_));
    for (it->Seek(rocksdb::Slice(from, kLocKeyBytes)); it->Valid(); it->Next()) {
      const rocksdb::Slice k = it->key();
      // Past this segment's keys ('L' + its id) ends the scan; a malformed key among them is
      // skipped, never taken for the end (the pages after it would be left behind and lost).
      if (!k.starts_with(rocksdb::Slice(from, 5))) break;
      const rocksdb::Slice v = it->value();
      if (k.size() != kLocKeyBytes || v.size() != kLocValueBytes) continue;
      Live l;
      l.offset = GetBE32(k.data() + 5);
      std::memcpy(l.pk, v.data(), kPageKeyBytes);
      std::memcpy(&l.size, v.data() + kPageKeyBytes, 4);
      lives.push_back(l);
    }
    if (absl::Status s = FromRocks(it->status(), "scan segment"); !s.ok()) return s;
  }
  size_t i = 0;
  while (i < lives.size()) {
    // Read a batch of live pages without write_mu_ (the slow part: writers go on meanwhile)...
    const size_t first = i;
    std::vector<std::string> bufs;
    uint64_t batch_bytes = 0;
    for (; i < lives.size() && batch_bytes < kCompactBatchBytes; ++i) {
      // The range is checked before a buffer is sized by the record (a corrupt size must not
      // allocate gigabytes); unreadable: left pointing here, it reads as DataLoss once it is gone.
      std::string bytes;
      const SegmentLocation at{segment, lives[i].offset};
      if (segments_->CheckRange(at, lives[i].size).ok()) {
        bytes.resize(lives[i].size);
        if (!segments_->Read(at, bytes.data(), bytes.size()).ok()) bytes.clear();
      }
      batch_bytes += lives[i].size;
      bufs.push_back(std::move(bytes));
    }
    // ...then, under it, move those still recorded at their old place and append them.
    absl::MutexLock l(&write_mu_);
    rocksdb::WriteBatch batch;
    std::vector<SsdPageMeta> metas;
    std::vector<const char*> ptrs;
    uint64_t moved = 0, dropped = 0;
    for (size_t j = first; j < i; ++j) {
      const Live& lv = lives[j];
      const std::string& bytes = bufs[j - first];
      const SegmentLocation old{segment, lv.offset};
      char mk[1 + kPageKeyBytes] = {'P'};
      std::memcpy(mk + 1, lv.pk, kPageKeyBytes);
      std::string v;
      SsdPageMeta m;
      SegmentLocation at;
      if (!db_->Get(rocksdb::ReadOptions(), meta_cf_, rocksdb::Slice(mk, sizeof(mk)), &v).ok() ||
          !DecodeMeta(v, &m, &at) || at.segment != segment || at.offset != lv.offset) {
        // Deleted or rewritten meanwhile (its delete already took its live bytes off), or a
        // stale location record.
        batch.Delete(loc_cf_, LocKeyBuf(old).slice()).PermitUncheckedError();
        continue;
      }
      if (bytes.size() != m.size) {
        dropped += lv.size;
        continue;
      }
      batch.Delete(loc_cf_, LocKeyBuf(old).slice()).PermitUncheckedError();
      m.tenant = GetBE32(lv.pk);
      m.key.hi = GetBE64(lv.pk + 4);
      m.key.lo = GetBE64(lv.pk + 12);
      metas.push_back(m);
      ptrs.push_back(bytes.data());
      moved += m.size;
    }
    const uint64_t limit = disk_limit_.load();
    if (!metas.empty() && limit != 0 && segments_->GetUsage().file_bytes + moved > limit) {
      return absl::OkStatus();  // no room for a second copy: the segment stays as it is
    }
    if (metas.empty()) {
      if (absl::Status s = WriteMeta(&batch, "compact"); !s.ok()) return s;
    } else if (absl::Status s = AppendAndCommit(metas, ptrs, /*via_env=*/false, &batch); !s.ok()) {
      return s;  // what moved stays moved; the segment's last page deleted unlinks it
    }
    if (segments_->SubLive(segment, moved + dropped)) {
      // Nothing lives in it any more (its other pages were deleted meanwhile).
      break;
    }
  }
  // The moved pages' new records and bytes are made durable before the old bytes go.
  if (absl::Status s = segments_->SyncAll(); !s.ok()) return s;
  if (absl::Status s = FromRocks(db_->Flush(rocksdb::FlushOptions(), {meta_cf_, loc_cf_}), "flush");
      !s.ok()) {
    return s;
  }
  absl::MutexLock l(&write_mu_);
  segments_->Remove(segment);
  return absl::OkStatus();
}

absl::Status SsdTier::DeleteRawMeta(std::string_view meta_key) {
  absl::MutexLock l(&write_mu_);
  rocksdb::WriteBatch batch;
  batch.Delete(meta_cf_, rocksdb::Slice(meta_key.data(), meta_key.size())).PermitUncheckedError();
  return WriteMeta(&batch, "delete meta");
}

absl::Status SsdTier::ForEachPage(const std::function<void(const SsdPageMeta&)>& fn,
                                  const std::function<void(std::string_view)>& bad) {
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  ro.readahead_size = 4 << 20;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, meta_cf_));
  for (it->Seek("P"); it->Valid(); it->Next()) {
    const rocksdb::Slice k = it->key();
    if (k.size() < 1 || k[0] != 'P') break;
    SsdPageMeta m;
    SegmentLocation at;
    if (k.size() != 1 + kPageKeyBytes || !DecodeMeta(it->value(), &m, &at)) {
      bad(std::string_view(k.data(), k.size()));
      continue;
    }
    m.tenant = GetBE32(k.data() + 1);
    m.key.hi = GetBE64(k.data() + 5);
    m.key.lo = GetBE64(k.data() + 13);
    fn(m);
  }
  return FromRocks(it->status(), "scan metadata");
}

absl::Status SsdTier::ForEachTenant(const std::function<void(uint32_t, std::string_view)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_cf_));
  for (it->Seek("T"); it->Valid(); it->Next()) {
    const rocksdb::Slice k = it->key();
    if (k.size() != 5 || k[0] != 'T') break;
    fn(GetBE32(k.data() + 1), std::string_view(it->value().data(), it->value().size()));
  }
  return FromRocks(it->status(), "scan tenants");
}

uint64_t SsdTier::EstimatePages() {
  uint64_t n = 0;
  db_->GetIntProperty(meta_cf_, "rocksdb.estimate-num-keys", &n);
  return n;
}

absl::Status SsdTier::Flush() {
  absl::MutexLock l(&write_mu_);
  // Bytes before the records that point at them.
  if (absl::Status s = segments_->SyncAll(); !s.ok()) return s;
  rocksdb::FlushOptions fo;
  return FromRocks(db_->Flush(fo, {meta_cf_, loc_cf_}), "flush");
}

absl::Status SsdTier::Sync() {
  // Bytes before the records that point at them. Not under write_mu_: appends go on meanwhile
  // (what they add is the next sync's).
  if (absl::Status s = segments_->SyncAll(); !s.ok()) return s;
  return FromRocks(db_->SyncWAL(), "sync WAL");
}

SsdTier::SpaceUsage SsdTier::Space() const {
  const SegmentSet::Usage u = segments_->GetUsage();
  return SpaceUsage{u.segments, u.file_bytes, u.live_bytes};
}

uint64_t SsdTier::FileSystemFreeBytes() const {
  struct statvfs st;
  if (statvfs(ballast_path_.substr(0, ballast_path_.rfind('/')).c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

absl::Status SsdTier::WriteMetaOnlyForBench(absl::Span<const SsdPageMeta> metas) {
  rocksdb::WriteBatch batch;
  for (const SsdPageMeta& m : metas) {
    PageKeyBuf k(m.tenant, m.key);
    char meta[kMetaBytes];
    EncodeMeta(m, SegmentLocation{}, meta);
    batch.Put(meta_cf_, k.meta(), rocksdb::Slice(meta, kMetaBytes)).PermitUncheckedError();
  }
  rocksdb::WriteOptions wo;
  wo.disableWAL = true;
  return FromRocks(db_->Write(wo, &batch), "write meta");
}

}  // namespace pagoda
