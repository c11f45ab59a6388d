#include "ssd_tier.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace pagoda {
namespace {

constexpr size_t kPageKeyBytes = 20;

// The one place RocksDB statuses become absl::Status.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("SSD tier: ", std::string(what), ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
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
  char b[1 + kPageKeyBytes];  // b[0] = 'P' for the meta key; the data key is b + 1
  PageKeyBuf(uint32_t tenant, const PageKey& key) {
    b[0] = 'P';
    PutBE32(b + 1, tenant);
    PutBE64(b + 5, key.hi);
    PutBE64(b + 13, key.lo);
  }
  rocksdb::Slice data() const { return rocksdb::Slice(b + 1, kPageKeyBytes); }
  rocksdb::Slice meta() const { return rocksdb::Slice(b, sizeof(b)); }
};

void EncodeMeta(const SsdPageMeta& m, char out[16]) {
  std::memcpy(out, &m.layout, 4);  // little-endian hosts only (x86-64, aarch64)
  std::memcpy(out + 4, &m.size, 4);
  std::memcpy(out + 8, &m.checksum, 8);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SsdTier>> SsdTier::Open(const std::string& dir, SsdEnv* env,
                                                       bool sync_writes) {
  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = true;
  db_opts.create_missing_column_families = true;
  db_opts.max_background_jobs = 2;
  // Both column families flush together, so a page's bytes and its metadata reach disk together
  // even when the WAL is off.
  db_opts.atomic_flush = true;
  rocksdb::ColumnFamilyOptions pages_opts;
  pages_opts.enable_blob_files = true;
  pages_opts.min_blob_size = 0;  // every page's bytes go to blob files; the LSM holds references
  pages_opts.blob_file_size = 256ULL << 20;
  pages_opts.enable_blob_garbage_collection = true;
  pages_opts.write_buffer_size = 64ULL << 20;
  pages_opts.max_write_buffer_number = 3;
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
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"pages", pages_opts},
      {"meta", meta_opts}};
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
  t->pages_cf_ = handles[1];
  t->meta_cf_ = handles[2];
  t->custom_env_ = env != nullptr;
  t->env_ = env != nullptr ? env : &t->default_env_;
  t->sync_writes_ = sync_writes;
  return t;
}

SsdTier::~SsdTier() {
  if (db_ == nullptr) return;
  rocksdb::FlushOptions fo;
  db_->Flush(fo, {pages_cf_, meta_cf_}).PermitUncheckedError();
  db_->DestroyColumnFamilyHandle(pages_cf_).PermitUncheckedError();
  db_->DestroyColumnFamilyHandle(meta_cf_).PermitUncheckedError();
  db_->DestroyColumnFamilyHandle(default_cf_).PermitUncheckedError();
  db_->Close().PermitUncheckedError();
  delete db_;
}

absl::Status SsdTier::WriteBatch(absl::Span<const SsdPageWrite> pages,
                                 absl::Span<const std::pair<uint32_t, std::string>> tenants) {
  // With a custom fault seam the bytes are copied so the seam may alter them; without one the
  // batch points straight at the caller's bytes (RocksDB copies them once into its write batch).
  std::vector<std::string> copies;
  if (custom_env_) {
    copies.reserve(pages.size());
    for (const SsdPageWrite& p : pages) {
      copies.emplace_back(reinterpret_cast<const char*>(p.bytes), p.meta.size);
    }
    if (absl::Status s = env_->BeforeWrite(absl::MakeSpan(copies)); !s.ok()) return s;
  }
  rocksdb::WriteBatch batch;
  for (size_t i = 0; i < pages.size(); ++i) {
    const SsdPageWrite& p = pages[i];
    PageKeyBuf k(p.meta.tenant, p.meta.key);
    rocksdb::Slice value =
        custom_env_ ? rocksdb::Slice(copies[i])
                    : rocksdb::Slice(reinterpret_cast<const char*>(p.bytes), p.meta.size);
    char meta[16];
    EncodeMeta(p.meta, meta);
    if (absl::Status s = FromRocks(batch.Put(pages_cf_, k.data(), value), "batch"); !s.ok()) {
      return s;
    }
    if (absl::Status s =
            FromRocks(batch.Put(meta_cf_, k.meta(), rocksdb::Slice(meta, 16)), "batch");
        !s.ok()) {
      return s;
    }
  }
  for (const auto& [id, name] : tenants) {
    char k[5] = {'T'};
    PutBE32(k + 1, id);
    if (absl::Status s = FromRocks(batch.Put(meta_cf_, rocksdb::Slice(k, 5), name), "batch");
        !s.ok()) {
      return s;
    }
  }
  rocksdb::WriteOptions wo;
  // Without sync_writes the WAL is skipped: page bytes would be written twice (WAL, then blob
  // file) for a durability the cache does not need. A crash then loses the pages demoted since the
  // last flush (and may bring back pages promoted or removed since then, with their right bytes);
  // it never tears a page, because bytes and metadata flush atomically.
  wo.disableWAL = !sync_writes_;
  if (absl::Status s = FromRocks(db_->Write(wo, &batch), "write"); !s.ok()) return s;
  absl::Status synced = env_->Sync([this]() -> absl::Status {
    if (!sync_writes_) return absl::OkStatus();
    return FromRocks(db_->SyncWAL(), "sync WAL");
  });
  if (!synced.ok()) {
    // The batch may or may not be durable; take it back so the caller's view (not on SSD) holds.
    std::vector<std::pair<uint32_t, PageKey>> keys;
    for (const SsdPageWrite& p : pages) keys.emplace_back(p.meta.tenant, p.meta.key);
    Delete(keys).IgnoreError();
    return synced;
  }
  return absl::OkStatus();
}

absl::Status SsdTier::Read(uint32_t tenant, const PageKey& key, std::string* out) {
  PageKeyBuf k(tenant, key);
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  return FromRocks(db_->Get(ro, pages_cf_, k.data(), out), "read page " + key.Hex());
}

absl::Status SsdTier::Delete(absl::Span<const std::pair<uint32_t, PageKey>> pages) {
  rocksdb::WriteBatch batch;
  for (const auto& [tenant, key] : pages) {
    PageKeyBuf k(tenant, key);
    batch.Delete(pages_cf_, k.data()).PermitUncheckedError();
    batch.Delete(meta_cf_, k.meta()).PermitUncheckedError();
  }
  rocksdb::WriteOptions wo;
  wo.disableWAL = !sync_writes_;
  return FromRocks(db_->Write(wo, &batch), "delete");
}

absl::Status SsdTier::DeleteRawMeta(std::string_view meta_key) {
  rocksdb::WriteOptions wo;
  wo.disableWAL = !sync_writes_;
  return FromRocks(db_->Delete(wo, meta_cf_, rocksdb::Slice(meta_key.data(), meta_key.size())),
                   "delete meta");
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
    const rocksdb::Slice v = it->value();
    if (k.size() != 1 + kPageKeyBytes || v.size() != 16) {
      bad(std::string_view(k.data(), k.size()));
      continue;
    }
    SsdPageMeta m;
    m.tenant = GetBE32(k.data() + 1);
    m.key.hi = GetBE64(k.data() + 5);
    m.key.lo = GetBE64(k.data() + 13);
    std::memcpy(&m.layout, v.data(), 4);
    std::memcpy(&m.size, v.data() + 4, 4);
    std::memcpy(&m.checksum, v.data() + 8, 8);
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
  rocksdb::FlushOptions fo;
  return FromRocks(db_->Flush(fo, {pages_cf_, meta_cf_}), "flush");
}

absl::Status SsdTier::WriteMetaOnlyForBench(absl::Span<const SsdPageMeta> metas) {
  rocksdb::WriteBatch batch;
  for (const SsdPageMeta& m : metas) {
    PageKeyBuf k(m.tenant, m.key);
    char meta[16];
    EncodeMeta(m, meta);
    batch.Put(meta_cf_, k.meta(), rocksdb::Slice(meta, 16)).PermitUncheckedError();
  }
  rocksdb::WriteOptions wo;
  wo.disableWAL = true;
  return FromRocks(db_->Write(wo, &batch), "write meta");
}

}  // namespace pagoda
