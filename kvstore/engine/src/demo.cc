// pagoda_demo: a short tour of the page store with a host tier and an SSD tier under --data-dir.
// Puts chained-hash pages, reads them back verifying every byte, shows demotion to SSD and
// promotion on a hit, restarts the store and recovers the SSD pages. Exits 0 when every byte read
// was right. Run it twice: the second run finds the first run's pages on SSD.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "pagoda/kvstore/prefix.h"
#include "pagoda/kvstore/store.h"
#include "xxhash.h"

namespace {

using namespace pagoda;

constexpr char kTenant[] = "demo";

// Stand-in KV bytes of a page: a function of its key, so any reader can check them.
std::vector<uint8_t> FakeKv(const PageLayout& layout, const PageKey& key) {
  std::vector<uint8_t> b(layout.PageBytes());
  uint64_t x = key.hi ^ key.lo;
  for (size_t i = 0; i < b.size(); i += 8) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    std::memcpy(b.data() + i, &x, std::min<size_t>(8, b.size() - i));
  }
  return b;
}

void PrintStats(const char* when, Store& s) {
  const StoreStats st = s.Stats();
  std::printf(
      "  [%s] pages=%llu host=%llu (%.1f MiB) ssd=%llu | demoted=%llu promoted=%llu "
      "hits host/ssd=%llu/%llu misses=%llu\n",
      when, (unsigned long long)st.pages, (unsigned long long)st.tiers[1].pages,
      st.tiers[1].used_bytes / 1048576.0, (unsigned long long)st.tiers[2].pages,
      (unsigned long long)st.tiers[1].evictions, (unsigned long long)st.tiers[1].promotions,
      (unsigned long long)st.tiers[1].hits, (unsigned long long)st.tiers[2].hits,
      (unsigned long long)st.misses);
}

// Reads every key back and compares with FakeKv; returns the number of wrong or missing pages.
int VerifyAll(Store& s, const PageLayout& layout, const std::vector<PageKey>& keys) {
  int bad = 0;
  std::vector<uint8_t> out(layout.PageBytes());
  for (const PageKey& k : keys) {
    auto info = s.Get(kTenant, k, absl::MakeSpan(out));
    if (!info.ok() || out != FakeKv(layout, k)) {
      std::printf("  page %s: %s\n", k.Hex().c_str(),
                  info.ok() ? "WRONG BYTES" : info.status().ToString().c_str());
      ++bad;
    }
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Pagoda page store demo: host + SSD tiers, demotion, promotion, restart"};
  std::string data_dir = "./pagoda-data";
  int pages = 48;
  app.add_option("--data-dir", data_dir, "directory of the SSD tier (created if missing)");
  app.add_option("--pages", pages, "pages of the demo prompt (host holds 32)")
      ->check(CLI::Range(1, 4096));
  CLI11_PARSE(app, argc, argv);

  const PageLayout layout{DType::kBf16, 8, 128, 16};  // Llama-3-8B-like: 64 KiB per page
  StoreOptions options;
  options.data_dir = data_dir;
  options.layouts = {layout};
  options.host_capacity_bytes = 32 * layout.PageBytes();
  options.segment_bytes = layout.PageBytes();
  options.watermarks[1] = Watermarks{0.9, 0.7};

  std::printf("pagoda_demo: layout %s (%llu bytes per page), host tier %llu KiB, SSD tier in %s\n",
              layout.ToString().c_str(), (unsigned long long)layout.PageBytes(),
              (unsigned long long)options.host_capacity_bytes / 1024, data_dir.c_str());
  auto opened = Store::Open(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "open failed: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Store> store = std::move(*opened);
  std::printf("1. opened; recovered %llu pages from SSD\n",
              (unsigned long long)store->Stats().tiers[2].pages);

  // A prompt of pages*16 tokens, keyed the way a worker would: chained hash with model, layer,
  // tenant salt.
  std::vector<int32_t> tokens(static_cast<size_t>(pages) * layout.page_tokens);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7919) % 32000);
  const PageKeyExtra extra{"demo-llama-8b", 0, "demo-tenant-salt"};
  const std::vector<PageKey> keys = ChainPageKeys(tokens, layout.page_tokens, extra);
  const size_t cached = store->LongestCachedPrefix(kTenant, keys);
  std::printf("2. prompt of %zu tokens = %zu pages; longest cached prefix: %zu pages\n",
              tokens.size(), keys.size(), cached);

  int written = 0;
  for (size_t i = cached; i < keys.size(); ++i) {
    const auto bytes = FakeKv(layout, keys[i]);
    absl::Status s = store->Put(kTenant, keys[i], layout, bytes);
    if (absl::IsAlreadyExists(s)) continue;
    if (!s.ok()) {
      std::fprintf(stderr, "put failed: %s\n", s.ToString().c_str());
      return 1;
    }
    ++written;
  }
  std::printf("3. wrote %d pages (two-phase: reserve a host slot, copy + checksum, commit)\n",
              written);
  PrintStats("after writes", *store);

  int bad = VerifyAll(*store, layout, keys);
  std::printf("4. read back all %zu pages, verifying bytes and checksums: %s\n", keys.size(),
              bad == 0 ? "all correct" : "ERRORS");
  PrintStats("after reads (SSD hits promote to host)", *store);

  auto lease = store->AcquireRead(kTenant, keys.front());
  if (lease.ok()) {
    const uint8_t* p = store->HostArenaInfo().base + lease->arena_offset;
    std::vector<uint8_t> copy(p, p + lease->size);
    const bool ok = PageChecksum(copy.data(), copy.size()) == lease->checksum;
    std::printf(
        "5. zero-copy lease %llu on page 0: arena offset %llu, tenant memfd %d, checksum %s\n",
        (unsigned long long)lease->lease_id, (unsigned long long)lease->arena_offset,
        store->TenantArenaFd(kTenant).value_or(-1), ok ? "verified" : "MISMATCH");
    bad += ok ? 0 : 1;
    store->ReleaseRead(lease->lease_id).IgnoreError();
  } else {
    std::printf("5. lease failed: %s\n", lease.status().ToString().c_str());
    ++bad;
  }

  // Push everything down to SSD, then restart: host pages are a cache, SSD pages survive.
  auto moved = store->Demote(kTenant, keys, Tier::kSsd);
  std::printf("6. demoted %zu pages to SSD; restarting the store\n", moved.ok() ? *moved : 0);
  store.reset();
  opened = Store::Open(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "reopen failed: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  store = std::move(*opened);
  std::printf(
      "7. reopened: rebuilt the page table from SSD metadata: %llu pages; cached prefix %zu\n",
      (unsigned long long)store->Stats().tiers[2].pages, store->LongestCachedPrefix(kTenant, keys));
  bad += VerifyAll(*store, layout, keys);
  PrintStats("after restart + reads", *store);
  moved = store->Demote(kTenant, keys, Tier::kSsd);
  std::printf("8. left %zu more pages on SSD so the next run finds the whole prompt cached\n",
              moved.ok() ? *moved : 0);
  std::printf("%s\n", bad == 0 ? "pagoda_demo: OK, every byte verified"
                               : "pagoda_demo: FAILED, wrong or missing pages");
  return bad == 0 ? 0 : 1;
}
