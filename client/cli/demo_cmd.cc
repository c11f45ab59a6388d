// `pagoda demo`: the main job of the quick start. It plays an inference engine against pagodad:
// requests that share a few long system prompts are prefilled (chained-hash page keys per layer;
// the longest cached prefix is reused, only the rest is written), then decoded (each step reads
// a sparse set of pages per layer — sinks, a local window and a few "retrieved" pages — and
// appends one new page per layer). Every byte read is checked against what was written.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>

#include "absl/strings/str_format.h"
#include "cli.h"
#include "table.h"

namespace pagoda::cli {
namespace {

std::atomic<bool> g_stop{false};
extern "C" void OnSigint(int) { g_stop = true; }

std::vector<int32_t> Tokens(uint64_t seed, int n) {
  std::vector<int32_t> t(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
  for (int i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t[i] = static_cast<int32_t>(x % 128000);  // a Llama-3-sized vocabulary
  }
  return t;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * double(v.size())))];
}

}  // namespace

int Demo(const ClientOptions& options, const DemoArgs& a) {
  struct sigaction sa {};
  sa.sa_handler = OnSigint;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  absl::StatusOr<std::unique_ptr<Client>> conn = Client::Connect(options);
  if (!conn.ok()) {
    std::cerr << "pagoda demo: " << conn.status() << "\n";
    return 1;
  }
  Client& client = **conn;
  const PageLayout layout{};  // fp16, 8 KV heads, head_dim 128, 16 tokens: 64 KiB pages
  const LayoutId layout_id = layout.Id();
  const uint64_t pb = layout.PageBytes();
  const int pt = static_cast<int>(layout.page_tokens);
  const std::string salt = "salt-of-" + options.tenant;  // per-tenant secret in real use

  std::vector<std::vector<int32_t>> prompts;
  for (int p = 0; p < a.prompts; ++p) prompts.push_back(Tokens(1000 + p, a.prompt_tokens));

  uint64_t pages_written = 0, pages_already = 0, prefix_pages = 0, prefix_reused = 0;
  uint64_t pages_read = 0, mismatches = 0, errors = 0;
  std::vector<double> get_us, put_us;
  double get_secs = 0;
  std::vector<uint8_t> buf, expect(pb);
  int done_requests = 0;
  std::cout << absl::StrFormat(
      "pagoda demo: %d requests over %d shared prompts of %d tokens (+%d own tokens each), %d "
      "layers, %s pages, %s path\n",
      a.requests, a.prompts, a.prompt_tokens, a.user_tokens, a.layers, Bytes(double(pb)),
      client.data_path());

  auto put_pages = [&](const std::vector<PageKey>& keys) {
    if (keys.empty()) return;
    buf.resize(keys.size() * pb);
    std::vector<PutPage> puts;
    for (size_t i = 0; i < keys.size(); ++i) {
      FillPage(keys[i], buf.data() + i * pb, pb);
      puts.push_back({keys[i], layout_id, absl::MakeConstSpan(buf.data() + i * pb, pb)});
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<absl::Status> st = client.Put(puts);
    put_us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    for (const absl::Status& s : st) {
      if (s.ok()) {
        ++pages_written;
      } else if (absl::IsAlreadyExists(s)) {
        ++pages_already;
      } else {
        if (errors++ < 3) std::cerr << "put failed: " << s << "\n";
      }
    }
  };

  for (int r = 0; r < a.requests && !g_stop; ++r) {
    std::vector<int32_t> tokens = prompts[r % a.prompts];
    std::vector<int32_t> own = Tokens(50000 + r, a.user_tokens);
    tokens.insert(tokens.end(), own.begin(), own.end());
    std::vector<std::vector<PageKey>> keys(a.layers);
    for (int l = 0; l < a.layers; ++l) {
      keys[l] = ChainPageKeys(tokens, layout.page_tokens,
                              PageKeyExtra{a.model, static_cast<uint32_t>(l), salt});
    }
    // ---- prefill: reuse the cached prefix, write the rest
    absl::StatusOr<size_t> reuse = client.LongestPrefix(keys[0]);
    if (!reuse.ok()) {
      std::cerr << "longest prefix: " << reuse.status() << "\n";
      return 1;
    }
    prefix_pages += keys[0].size() * a.layers;
    prefix_reused += *reuse * a.layers;
    for (int l = 0; l < a.layers; ++l) {
      put_pages(std::vector<PageKey>(keys[l].begin() + static_cast<long>(*reuse), keys[l].end()));
    }
    // ---- decode: sparse reads per layer, one new page per layer per step
    for (int step = 0; step < a.decode_steps && !g_stop; ++step) {
      for (int l = 0; l < a.layers; ++l) {
        const std::vector<PageKey>& k = keys[l];
        std::vector<size_t> pick;
        for (size_t i = 0; i < std::min<size_t>(2, k.size()); ++i) pick.push_back(i);  // sinks
        for (size_t i = k.size() > 8 ? k.size() - 8 : 0; i < k.size(); ++i) pick.push_back(i);
        for (int j = 0; j < 4 && k.size() > 10; ++j) {  // "retrieved" pages
          pick.push_back(2 + (static_cast<size_t>(step * 7 + j * 13 + r) % (k.size() - 10)));
        }
        std::sort(pick.begin(), pick.end());
        pick.erase(std::unique(pick.begin(), pick.end()), pick.end());
        buf.resize(pick.size() * pb);
        std::vector<GetPage> gets;
        for (size_t j = 0; j < pick.size(); ++j) {
          gets.push_back({k[pick[j]], absl::MakeSpan(buf.data() + j * pb, pb)});
        }
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<GetResult> got = client.Get(gets);
        const double us =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count();
        get_us.push_back(us);
        get_secs += us / 1e6;
        for (size_t j = 0; j < got.size(); ++j) {
          if (!got[j].status.ok()) {
            if (errors++ < 3) std::cerr << "get failed: " << got[j].status << "\n";
            continue;
          }
          ++pages_read;
          FillPage(gets[j].key, expect.data(), pb);
          if (memcmp(expect.data(), gets[j].out.data(), pb) != 0) ++mismatches;
        }
      }
      // The step's new tokens fill one page per layer.
      std::vector<int32_t> fresh = Tokens(900000 + r * 1000 + step, pt);
      for (int l = 0; l < a.layers; ++l) {
        PageKey next = ChainPageKey(keys[l].empty() ? PageKey{} : keys[l].back(), fresh,
                                    PageKeyExtra{a.model, static_cast<uint32_t>(l), salt});
        keys[l].push_back(next);
        put_pages({next});
      }
    }
    ++done_requests;
    if (done_requests % 8 == 0 || done_requests == a.requests) {
      std::cout << absl::StrFormat(
          "  %3d/%d requests  prefix reuse %5.1f%%  pages read %llu\n", done_requests, a.requests,
          prefix_pages ? 100.0 * double(prefix_reused) / double(prefix_pages) : 0.0,
          static_cast<unsigned long long>(pages_read));
    }
  }

  Table t({"summary", "value"}, false);
  t.Add({"requests served",
         absl::StrFormat("%d of %d%s", done_requests, a.requests, g_stop ? " (interrupted)" : "")});
  t.Add(
      {"pages written", absl::StrFormat("%llu (%s)", static_cast<unsigned long long>(pages_written),
                                        Bytes(double(pages_written * pb)))});
  t.Add({"pages already cached at put", std::to_string(pages_already)});
  t.Add({"prefix reuse (prefill hits)",
         absl::StrFormat(
             "%llu of %llu pages (%.1f%%)", static_cast<unsigned long long>(prefix_reused),
             static_cast<unsigned long long>(prefix_pages),
             prefix_pages ? 100.0 * double(prefix_reused) / double(prefix_pages) : 0.0)});
  t.Add({"decode pages read", std::to_string(pages_read)});
  t.Add({"decode read rate",
         absl::StrFormat("%.2f GiB/s",
                         get_secs > 0 ? double(pages_read * pb) / get_secs / (1 << 30) : 0.0)});
  t.Add({"decode batch latency p50 / p99",
         absl::StrFormat("%.0f / %.0f us", Percentile(get_us, 0.5), Percentile(get_us, 0.99))});
  t.Add({"put batch latency p50 / p99",
         absl::StrFormat("%.0f / %.0f us", Percentile(put_us, 0.5), Percentile(put_us, 0.99))});
  t.Add({"bytes verified",
         absl::StrFormat("%llu pages, %llu mismatches", static_cast<unsigned long long>(pages_read),
                         static_cast<unsigned long long>(mismatches))});
  t.Add({"errors", std::to_string(errors)});
  std::cout << "\n" << t.Render();
  (void)Stats(client);
  return (mismatches == 0 && errors == 0) ? 0 : 1;
}

}  // namespace pagoda::cli
