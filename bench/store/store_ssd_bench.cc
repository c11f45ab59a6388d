// SSD tier write/read against raw sequential file I/O and raw RocksDB, same bytes, same disk, same
// run.
//
//   file     pwrite of every page into one file, then fdatasync; reads: pread of every page
//   rocksdb  DB::Put of every page into a DB with the same blob-file options as the store
//            (enable_blob_files, min_blob_size 0), WAL off (the store's default before issue
//            14), then Flush; reads: DB::Get; deletes: DB::Delete of every key, one at a time.
//            "rocksdb+wal" is the same with RocksDB's default WAL on.
//   pagoda   Store::Demote of every page from the host tier to SSD (4 MiB batches: one pwritev of
//            page bytes into a segment file, one RocksDB write of their metadata), then
//            Store::Flush; reads: Store::Get with promote_on_hit off (metadata lookup, one pread,
//            checksum verify); deletes: Store::Remove of every page, one at a time (page table,
//            then the SSD tier's page record, the location record it names and live bytes).
//            "pagoda+direct" is the same with ssd_direct_writes (O_DIRECT).
// After each write phase every file of the case is fdatasync'd and dropped from the page cache
// (posix_fadvise DONTNEED, this benchmark's files only) so reads go to the device.
//
//   store_ssd_bench [--dir /tmp] [--page_kib 64] [--total_mib 256] [--reps 3]
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_util.h"
#include "pagoda/kvstore/store.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"

namespace pagoda::bench {
namespace {

namespace fs = std::filesystem;

void DropCache(const std::string& dir) {
  for (const auto& f : fs::recursive_directory_iterator(dir)) {
    if (!f.is_regular_file()) continue;
    const int fd = open(f.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

void Die(const std::string& what) {
  std::fprintf(stderr, "store_ssd_bench: %s\n", what.c_str());
  std::exit(1);
}

struct Result {
  double write_gbps = 0, read_gbps = 0;
  double delete_us = 0;  // per page
};

Result RawFile(const std::string& dir, const std::vector<uint8_t>& src, uint64_t size, uint64_t n) {
  const std::string path = dir + "/raw.dat";
  Result r;
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) Die("open raw file");
  const uint64_t slots = src.size() / size;
  double t0 = NowSec();
  for (uint64_t i = 0; i < n; ++i) {
    if (pwrite(fd, src.data() + (i % slots) * size, size, i * size) != static_cast<ssize_t>(size)) {
      Die("pwrite");
    }
  }
  fdatasync(fd);
  r.write_gbps = n * size / (NowSec() - t0) / 1e9;
  close(fd);
  DropCache(dir);
  std::vector<uint8_t> out(size);
  fd = open(path.c_str(), O_RDONLY);
  t0 = NowSec();
  for (uint64_t i = 0; i < n; ++i) {
    if (pread(fd, out.data(), size, i * size) != static_cast<ssize_t>(size)) Die("pread");
  }
  r.read_gbps = n * size / (NowSec() - t0) / 1e9;
  close(fd);
  return r;
}

Result RawRocksDb(const std::string& dir, const std::vector<uint8_t>& src, uint64_t size,
                  uint64_t n, bool wal) {
  Result r;
  rocksdb::Options o;
  o.create_if_missing = true;
  o.enable_blob_files = true;
  o.min_blob_size = 0;
  o.blob_file_size = 256ULL << 20;
  o.write_buffer_size = 64ULL << 20;
  o.max_write_buffer_number = 3;
  o.max_background_jobs = 2;
  rocksdb::DB* db = nullptr;
  const std::string path = dir + (wal ? "/rocks-wal" : "/rocks");
  if (!rocksdb::DB::Open(o, path, &db).ok()) Die("open rocksdb");
  const uint64_t slots = src.size() / size;
  rocksdb::WriteOptions wo;
  wo.disableWAL = !wal;
  double t0 = NowSec();
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t k[2] = {i, i};
    rocksdb::Status s = db->Put(
        wo, rocksdb::Slice(reinterpret_cast<const char*>(k), 16),
        rocksdb::Slice(reinterpret_cast<const char*>(src.data() + (i % slots) * size), size));
    if (!s.ok()) Die(s.ToString());
  }
  if (!db->Flush(rocksdb::FlushOptions()).ok()) Die("flush");
  r.write_gbps = n * size / (NowSec() - t0) / 1e9;
  DropCache(path);
  std::string out;
  t0 = NowSec();
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t k[2] = {i, i};
    rocksdb::Status s =
        db->Get(rocksdb::ReadOptions(), rocksdb::Slice(reinterpret_cast<const char*>(k), 16), &out);
    if (!s.ok() || out.size() != size) Die("get");
  }
  t0 = NowSec();
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t k[2] = {i, i};
    if (!db->Delete(wo, rocksdb::Slice(reinterpret_cast<const char*>(k), 16)).ok()) Die("delete");
  }
  r.delete_us = (NowSec() - t0) / n * 1e6;
  r.read_gbps = n * size / (NowSec() - t0) / 1e9;
  delete db;
  return r;
}

Result Pagoda(const std::string& dir, const std::vector<uint8_t>& src, const PageLayout& layout,
              uint64_t n, bool direct) {
  Result r;
  const uint64_t size = layout.PageBytes();
  StoreOptions o;
  o.data_dir = dir + (direct ? "/pagoda-direct" : "/pagoda");
  o.ssd_direct_writes = direct;
  o.layouts = {layout};
  o.host_capacity_bytes = (n + 16) * size;
  o.segment_bytes = size;
  o.promote_on_hit = false;
  o.watermarks[1] = Watermarks{1.0, 1.0};  // everything stays in host until the timed demotion
  auto opened = Store::Open(o);
  if (!opened.ok()) Die(opened.status().ToString());
  Store& s = **opened;
  const uint64_t slots = src.size() / size;
  std::vector<PageKey> keys;
  for (uint64_t i = 0; i < n; ++i) {
    keys.push_back(PageKey{i, i});
    absl::Status st = s.Put("bench", keys.back(), layout,
                            absl::MakeConstSpan(src.data() + (i % slots) * size, size));
    if (!st.ok()) Die(st.ToString());
  }
  double t0 = NowSec();
  auto moved = s.Demote("bench", keys, Tier::kSsd);
  if (!moved.ok() || *moved != n) Die("demote");
  if (!s.Flush().ok()) Die("flush");
  r.write_gbps = n * size / (NowSec() - t0) / 1e9;
  DropCache(o.data_dir);
  std::vector<uint8_t> out(size);
  t0 = NowSec();
  for (uint64_t i = 0; i < n; ++i) {
    auto info = s.Get("bench", keys[i], absl::MakeSpan(out));
    if (!info.ok()) Die(info.status().ToString());
  }
  r.read_gbps = n * size / (NowSec() - t0) / 1e9;
  t0 = NowSec();
  for (uint64_t i = 0; i < n; ++i) {
    if (absl::Status st = s.Remove("bench", keys[i]); !st.ok()) Die(st.ToString());
  }
  r.delete_us = (NowSec() - t0) / n * 1e6;
  return r;
}

int Main(int argc, char** argv) {
  std::string base = "/tmp";
  uint64_t page_kib = 64, total_mib = 256;
  int reps = 3;
  CLI::App app{"store_ssd_bench: SSD-tier writes and reads against raw files"};
  app.add_option("--dir", base, "folder for the SSD tier")->check(CLI::ExistingDirectory);
  app.add_option("--page_kib", page_kib, "page size in KiB")->check(CLI::PositiveNumber);
  app.add_option("--total_mib", total_mib, "bytes written per run, MiB")
      ->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "repetitions (medians)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  // A layout of the requested size: bf16, head_dim 128, 16 tokens, kv_heads = page / 8 KiB.
  const PageLayout layout{DType::kBf16, static_cast<uint32_t>(std::max<uint64_t>(1, page_kib / 8)),
                          128, 16};
  const uint64_t size = layout.PageBytes();
  const uint64_t n = (total_mib << 20) / size;
  std::vector<uint8_t> src(64ULL << 20);
  FillBytes(src.data(), src.size(), 7);
  std::printf("store_ssd_bench: %llu pages of %llu KiB (%llu MiB) under %s, %d reps (medians)\n",
              (unsigned long long)n, (unsigned long long)size >> 10,
              (unsigned long long)(n * size) >> 20, base.c_str(), reps);
  std::vector<double> fw, fr, rw, rr, ww, wr, pw, pr, pw_f, pr_f, pw_r, pr_r, dw, dr, dw_f, dr_f;
  std::vector<double> wdel, pdel, pdel_w;
  for (int rep = 0; rep < reps; ++rep) {
    std::string tmpl = base + "/pagoda-ssd-bench-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp");
    const Result f = RawFile(tmpl, src, size, n);
    const Result r = RawRocksDb(tmpl, src, size, n, /*wal=*/false);
    const Result rwal = RawRocksDb(tmpl, src, size, n, /*wal=*/true);
    const Result p = Pagoda(tmpl, src, layout, n, /*direct=*/false);
    const Result d = Pagoda(tmpl, src, layout, n, /*direct=*/true);
    fs::remove_all(tmpl);
    fw.push_back(f.write_gbps), fr.push_back(f.read_gbps);
    rw.push_back(r.write_gbps), rr.push_back(r.read_gbps);
    ww.push_back(rwal.write_gbps), wr.push_back(rwal.read_gbps);
    pw.push_back(p.write_gbps), pr.push_back(p.read_gbps);
    pw_f.push_back(p.write_gbps / f.write_gbps), pr_f.push_back(p.read_gbps / f.read_gbps);
    pw_r.push_back(p.write_gbps / r.write_gbps), pr_r.push_back(p.read_gbps / r.read_gbps);
    dw.push_back(d.write_gbps), dr.push_back(d.read_gbps);
    dw_f.push_back(d.write_gbps / f.write_gbps), dr_f.push_back(d.read_gbps / f.read_gbps);
    wdel.push_back(rwal.delete_us), pdel.push_back(p.delete_us);
    pdel_w.push_back(p.delete_us / rwal.delete_us);
    std::printf(
        "  rep %d: write GB/s file %.2f rocksdb %.2f rocksdb+wal %.2f pagoda %.2f pagoda+direct "
        "%.2f | read GB/s file %.2f rocksdb %.2f rocksdb+wal %.2f pagoda %.2f pagoda+direct "
        "%.2f | delete us/page rocksdb+wal %.2f pagoda %.2f\n",
        rep, f.write_gbps, r.write_gbps, rwal.write_gbps, p.write_gbps, d.write_gbps, f.read_gbps,
        r.read_gbps, rwal.read_gbps, p.read_gbps, d.read_gbps, rwal.delete_us, p.delete_us);
  }
  std::printf(
      "median write GB/s: file %.2f  rocksdb %.2f  rocksdb+wal %.2f  pagoda %.2f  pagoda+direct "
      "%.2f | pagoda/file %.2f  pagoda/rocksdb %.2f  pagoda+direct/file %.2f\n",
      Median(fw), Median(rw), Median(ww), Median(pw), Median(dw), Median(pw_f), Median(pw_r),
      Median(dw_f));
  std::printf(
      "median read  GB/s: file %.2f  rocksdb %.2f  rocksdb+wal %.2f  pagoda %.2f  pagoda+direct "
      "%.2f | pagoda/file %.2f  pagoda/rocksdb %.2f  pagoda+direct/file %.2f\n",
      Median(fr), Median(rr), Median(wr), Median(pr), Median(dr), Median(pr_f), Median(pr_r),
      Median(dr_f));
  std::printf("median delete us/page: rocksdb+wal %.2f  pagoda %.2f | pagoda/rocksdb+wal %.2f\n",
              Median(wdel), Median(pdel), Median(pdel_w));
  return 0;
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) { return pagoda::bench::Main(argc, argv); }
