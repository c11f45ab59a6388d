// `pagoda bench`: puts then gets synthetic pages from several client threads, with a progress
// bar, and prints throughput and batch latency percentiles. (The published comparison against
// Redis is bench/service/, which this does not replace.)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <thread>

#include "absl/strings/str_format.h"
#include "cli.h"
#include "progress.h"
#include "table.h"

namespace pagoda::cli {
namespace {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * double(v.size())))];
}

}  // namespace

int Bench(const ClientOptions& options, const BenchArgs& args) {
  absl::StatusOr<std::unique_ptr<Client>> probe = Client::Connect(options);
  if (!probe.ok()) {
    std::cerr << "pagoda: " << probe.status() << "\n";
    return 1;
  }
  const LayoutId layout = LayoutForBytes(**probe, args.page_bytes);
  if (layout == 0) {
    std::cerr << "pagoda: the server accepts no layout of " << args.page_bytes
              << "-byte pages (see `pagoda status`)\n";
    return 1;
  }
  const int threads = std::max(1, args.threads);
  const uint64_t per_thread = std::max<uint64_t>(1, args.pages / threads);
  const uint64_t total = per_thread * threads;
  const uint64_t pb = args.page_bytes;
  const uint64_t run =
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::vector<std::unique_ptr<Client>> clients;
  for (int t = 0; t < threads; ++t) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options);
    if (!c.ok()) {
      std::cerr << "pagoda: " << c.status() << "\n";
      return 1;
    }
    clients.push_back(std::move(*c));
  }
  std::atomic<uint64_t> errors{0};
  Table table({"op", "pages", "page", "batch", "threads", "GiB/s", "pages/s", "p50 us", "p99 us"});
  for (const char* op : {"put", "get"}) {
    std::atomic<uint64_t> done{0};
    std::vector<std::vector<double>> lat(threads);
    Progress progress(op, total);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        std::vector<uint8_t> buf(pb * args.batch);
        for (uint64_t i = 0; i < per_thread; i += args.batch) {
          const uint64_t n = std::min<uint64_t>(args.batch, per_thread - i);
          std::vector<PutPage> puts;
          std::vector<GetPage> gets;
          for (uint64_t j = 0; j < n; ++j) {
            PageKey key{run, (uint64_t(t) << 40) | (i + j)};
            uint8_t* p = buf.data() + j * pb;
            if (op[0] == 'p') {
              FillPage(key, p, pb);
              puts.push_back({key, layout, absl::MakeConstSpan(p, pb)});
            } else {
              gets.push_back({key, absl::MakeSpan(p, pb)});
            }
          }
          const auto t0 = std::chrono::steady_clock::now();
          if (op[0] == 'p') {
            for (const absl::Status& s : clients[t]->Put(puts)) errors += !s.ok();
          } else {
            for (const GetResult& r : clients[t]->Get(gets)) errors += !r.status.ok();
          }
          lat[t].push_back(
              std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                  .count());
          const uint64_t d = done += n;
          if (t == 0) progress.Update(d, double(d * pb));
        }
      });
    }
    for (std::thread& w : workers) w.join();
    progress.Update(total, double(total * pb));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<double> all;
    for (const auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    table.Add({op, std::to_string(total), Bytes(double(pb)), std::to_string(args.batch),
               std::to_string(threads),
               absl::StrFormat("%.2f", double(total * pb) / secs / (1 << 30)),
               absl::StrFormat("%.0f", double(total) / secs),
               absl::StrFormat("%.1f", Percentile(all, 0.50)),
               absl::StrFormat("%.1f", Percentile(all, 0.99))});
  }
  std::cout << "data path: " << clients[0]->data_path() << "\n" << table.Render();
  if (errors > 0) {
    std::cerr << "pagoda: " << errors << " pages failed (host tier full? use fewer --pages)\n";
    return 1;
  }
  return 0;
}

}  // namespace pagoda::cli
