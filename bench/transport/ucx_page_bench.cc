// UCX loopback throughput and latency of page batches through pagoda::Transport, against a peer in
// another process (pagoda_transport_peer), so it is comparable with ucx_perftest's client/server.
// run_ucx_bench.sh runs both with the same UCX_TLS and prints the ratios.
//
//   ucx_page_bench --tls tcp,sm,self --op get --page 65536 --batch 64 --pages 200000
//   ucx_page_bench --tls tcp,sm,self --op lat --pages 20000
// Prints one line: "<op> <MB/s or usec> ..." (MB = 2^20 bytes, as ucx_perftest).
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "pagoda/transport/transport.h"

extern char** environ;

namespace {

struct Peer {
  pid_t pid = -1;
  std::string address, key;
};

bool SpawnPeer(const std::string& tls, uint64_t bytes, bool alloc, bool detect, Peer* peer) {
  int out[2], in[2];
  if (pipe(out) != 0 || pipe(in) != 0) return false;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  std::string b = std::to_string(bytes), a = alloc ? "1" : "0", d = detect ? "1" : "0";
  std::vector<char*> argv = {const_cast<char*>(PAGODA_TRANSPORT_PEER_BIN),
                             const_cast<char*>("--bytes"),
                             b.data(),
                             const_cast<char*>("--tls"),
                             const_cast<char*>(tls.c_str()),
                             const_cast<char*>("--alloc"),
                             a.data(),
                             const_cast<char*>("--detect"),
                             d.data(),
                             nullptr};
  // The peer serves while its stdin stays open: we keep the write end until we kill it.
  if (posix_spawn(&peer->pid, PAGODA_TRANSPORT_PEER_BIN, &fa, nullptr, argv.data(), environ) != 0) {
    return false;
  }
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  close(in[0]);
  FILE* f = fdopen(out[0], "r");
  char line[8192];
  for (const char* tag : {"ADDR ", "KEY "}) {
    std::string s;
    do {  // UCX may log to stdout first
      if (fgets(line, sizeof(line), f) == nullptr) return false;
      s = line;
    } while (s.rfind(tag, 0) != 0);
    std::string* dst = tag[0] == 'A' ? &peer->address : &peer->key;
    s = s.substr(s.find(' ') + 1);
    while (!s.empty() && (s.back() == '\n')) s.pop_back();
    *dst = absl::HexStringToBytes(s);
  }
  return true;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string tls = "tcp,sm,self", op = "get";
  uint64_t page = 64 << 10, batch = 64, pages = 100000, depth = 2, alloc = 1, detect = 1;
  uint64_t region = 0;  // remote slots; 0: max(4 x batch, 256)
  CLI::App app{"UCX page reads/writes over loopback against ucx_perftest-style raw transfers"};
  app.add_option("--tls", tls, "UCX_TLS");
  app.add_option("--op", op, "get, put or lat (latency)")
      ->check(CLI::IsMember({"get", "put", "lat"}));
  app.add_option("--page", page, "page bytes")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "pages per batch")->check(CLI::PositiveNumber);
  app.add_option("--pages", pages, "pages per run")->check(CLI::PositiveNumber);
  app.add_option("--region-pages", region, "remote slots (0: max(4 x batch, 256))");
  app.add_option("--alloc", alloc, "1: memory from the transport, 0: our own");
  app.add_option("--detect", detect, "1: detect peer failure");
  app.add_option("--depth", depth, "batches in flight")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  const bool lat = op == "lat";
  if (lat) {
    page = 8;
    batch = 1;
    depth = 1;
  }
  const uint64_t region_pages = region != 0 ? region : std::max<uint64_t>(batch * 4, 256);
  Peer peer;
  if (!SpawnPeer(tls, region_pages * page, alloc != 0, detect != 0, &peer)) {
    std::fprintf(stderr, "cannot start peer\n");
    return 1;
  }
  int rc = 0;
  {
    pagoda::TransportOptions opts;
    opts.ucx_tls = tls;
    opts.detect_peer_failure = detect != 0;
    auto t = pagoda::Transport::Create(opts);
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      kill(peer.pid, SIGKILL);
      return 1;
    }
    auto ep = (*t)->Connect(peer.address);
    auto remote = ep.ok() ? (*ep)->ImportRemoteKey(peer.key)
                          : absl::StatusOr<std::unique_ptr<pagoda::RemoteMemory>>(ep.status());
    if (!remote.ok()) {
      std::fprintf(stderr, "%s\n", remote.status().ToString().c_str());
      kill(peer.pid, SIGKILL);
      return 1;
    }
    // Local pages in one registered buffer (as a pool would be); remote pages scattered.
    std::vector<uint8_t> own;
    absl::StatusOr<std::unique_ptr<pagoda::RegisteredMemory>> reg;
    if (alloc != 0) {
      reg = (*t)->Allocate(depth * batch * page);
    } else {
      own.assign(depth * batch * page, 1);
      reg = (*t)->Register(own.data(), own.size(), pagoda::MemoryKind::kHost);
    }
    if (!reg.ok()) {
      std::fprintf(stderr, "%s\n", reg.status().ToString().c_str());
      kill(peer.pid, SIGKILL);
      return 1;
    }
    auto* local = static_cast<uint8_t*>((*reg)->base());
    const auto dir =
        op == "put" ? pagoda::TransferDirection::kWrite : pagoda::TransferDirection::kRead;
    std::vector<std::vector<pagoda::TransferOp>> ops(depth);
    uint64_t slot = 0;
    for (uint64_t d = 0; d < depth; ++d) {
      for (uint64_t i = 0; i < batch; ++i) {
        slot = (slot * 7 + 3) % region_pages;  // scattered remote slots
        ops[d].push_back({local + (d * batch + i) * page, slot * page, page});
      }
    }
    auto run = [&](uint64_t n_pages, std::vector<double>* lat_us) -> bool {
      std::deque<pagoda::TransferFuture> inflight;
      uint64_t posted = 0, next = 0;
      while (posted < n_pages || !inflight.empty()) {
        while (posted < n_pages && inflight.size() < depth) {
          auto t0 = std::chrono::steady_clock::now();
          auto f = (*ep)->Post(dir, **remote, ops[next++ % depth]);
          if (!f.ok()) return false;
          if (lat_us != nullptr) {
            if (!f->WaitAll().ok()) return false;
            lat_us->push_back(Seconds(t0, std::chrono::steady_clock::now()) * 1e6);
          } else {
            inflight.push_back(*f);
          }
          posted += batch;
        }
        if (!inflight.empty()) {
          if (!inflight.front().WaitAll().ok()) return false;
          inflight.pop_front();
        }
      }
      return true;
    };
    if (rc == 0) {
      std::vector<double> lat_us;
      bool ok = run(std::min<uint64_t>(pages / 10 + batch, 10000), nullptr);  // warm up
      auto t0 = std::chrono::steady_clock::now();
      ok = ok && run(pages, lat ? &lat_us : nullptr);
      double s = Seconds(t0, std::chrono::steady_clock::now());
      if (!ok) {
        std::fprintf(stderr, "transfer failed: %s\n", (*ep)->health().ToString().c_str());
        rc = 1;
      } else if (lat) {
        std::sort(lat_us.begin(), lat_us.end());
        std::printf("lat tls=%s median_usec=%.3f p99_usec=%.3f\n", tls.c_str(),
                    lat_us[lat_us.size() / 2], lat_us[lat_us.size() * 99 / 100]);
      } else {
        std::printf("%s tls=%s detect=%d page=%llu batch=%llu MBps=%.1f\n", op.c_str(), tls.c_str(),
                    static_cast<int>(detect), static_cast<unsigned long long>(page),
                    static_cast<unsigned long long>(batch), pages * page / s / (1 << 20));
      }
    }
  }
  kill(peer.pid, SIGKILL);
  waitpid(peer.pid, nullptr, 0);
  return rc;
}
