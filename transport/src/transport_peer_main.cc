// A transport peer in its own process, for tests that must kill a peer mid-transfer (and for
// manual experiments). It registers `--bytes` of host memory filled with pattern `--seed`, prints
//   ADDR <hex of Transport::address()>
//   KEY <hex of the packed remote key>
// and then serves until killed or until stdin closes. Commands on stdin:
//   CHECK <offset> <length> <seed>   -> "OK" or "BAD <first bad offset>"
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "pagoda/transport/transport.h"
#include "transport/src/test_pattern.h"

int main(int argc, char** argv) {
  // Dies with the test that spawned it, even one that never reaches its destructors (a sanitizer
  // halting it, a crash): an orphaned peer, stopped or not, keeps ctest waiting on its output.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1;  // the test was gone before prctl took effect
  uint64_t bytes = 64 << 20;
  uint64_t seed = 1;
  std::string tls;
  bool alloc = false, detect = true;
  CLI::App app{"A transport peer in its own process (for tests that kill it mid-transfer)"};
  app.add_option("--bytes", bytes, "registered bytes")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of the test pattern");
  app.add_option("--tls", tls, "UCX_TLS");
  app.add_option("--alloc", alloc, "1: memory from the transport, 0: our own");
  app.add_option("--detect", detect, "1: detect peer failure");
  CLI11_PARSE(app, argc, argv);
  pagoda::TransportOptions opts;
  opts.ucx_tls = tls;
  opts.detect_peer_failure = detect;
  auto transport = pagoda::Transport::Create(opts);
  if (!transport.ok()) {
    std::fprintf(stderr, "transport: %s\n", transport.status().ToString().c_str());
    return 1;
  }
  // Host memory of our own (Register) or from the transport (Allocate, --alloc 1).
  std::vector<uint8_t> own;
  absl::StatusOr<std::unique_ptr<pagoda::RegisteredMemory>> mem;
  if (alloc) {
    mem = (*transport)->Allocate(bytes);
  } else {
    own.resize(bytes);
    mem = (*transport)->Register(own.data(), own.size(), pagoda::MemoryKind::kHost);
  }
  if (!mem.ok()) {
    std::fprintf(stderr, "register: %s\n", mem.status().ToString().c_str());
    return 1;
  }
  uint8_t* base = static_cast<uint8_t*>((*mem)->base());
  pagoda::testing::FillPattern(base, bytes, seed, 0);
  auto key = (*mem)->PackRemoteKey();
  if (!key.ok()) {
    std::fprintf(stderr, "pack: %s\n", key.status().ToString().c_str());
    return 1;
  }
  std::printf("ADDR %s\nKEY %s\n", absl::BytesToHexString((*transport)->address()).c_str(),
              absl::BytesToHexString(*key).c_str());
  std::fflush(stdout);
  std::string cmd;
  while (std::cin >> cmd) {
    if (cmd == "CHECK") {
      uint64_t off = 0, len = 0, s = 0;
      std::cin >> off >> len >> s;
      if (off > bytes || len > bytes - off) {
        std::printf("BAD range\n");
      } else {
        size_t bad = pagoda::testing::FirstMismatch(base + off, len, s, off);
        if (bad == len) {
          std::printf("OK\n");
        } else {
          std::printf("BAD %zu\n", static_cast<size_t>(off + bad));
        }
      }
      std::fflush(stdout);
    }
  }
  return 0;
}
