// A peer in another process that dies (SIGKILL) or stops (SIGSTOP) mid-transfer: every batch ends
// with an explicit error, nothing hangs, and no op is reported done that did not happen.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "pagoda/transport/transport.h"
#include "transport/src/test_pattern.h"

extern char** environ;

namespace pagoda {
namespace {

using ::pagoda::testing::FillPattern;
using ::pagoda::testing::FirstMismatch;

constexpr uint64_t kPeerSeed = 3;

// The helper process from transport_peer_main.cc.
class Peer {
 public:
  Peer(const std::string& tls, uint64_t bytes, bool detect = true) {
    int out[2], in[2];
    EXPECT_EQ(pipe(out), 0);
    EXPECT_EQ(pipe(in), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    std::string bytes_s = std::to_string(bytes), seed_s = std::to_string(kPeerSeed);
    std::string detect_s = detect ? "1" : "0";
    std::vector<char*> argv = {const_cast<char*>(PAGODA_TRANSPORT_PEER_BIN),
                               const_cast<char*>("--bytes"),
                               bytes_s.data(),
                               const_cast<char*>("--seed"),
                               seed_s.data(),
                               const_cast<char*>("--tls"),
                               const_cast<char*>(tls.c_str()),
                               nullptr};
    EXPECT_EQ(posix_spawn(&pid_, PAGODA_TRANSPORT_PEER_BIN, &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(in[0]);
    from_ = fdopen(out[0], "r");
    to_ = fdopen(in[1], "w");
    address_ = ReadField("ADDR");
    key_ = ReadField("KEY");
  }
  ~Peer() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (from_) fclose(from_);
    if (to_) fclose(to_);
  }
  void Signal(int sig) { kill(pid_, sig); }
  // Stops the peer and returns once it is really stopped.
  void Stop() {
    kill(pid_, SIGSTOP);
    int status = 0;
    EXPECT_EQ(waitpid(pid_, &status, WUNTRACED), pid_);
    EXPECT_TRUE(WIFSTOPPED(status));
  }
  void Kill() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  const std::string& address() const { return address_; }
  const std::string& key() const { return key_; }

 private:
  std::string ReadField(const char* name) {
    char line[8192];
    if (fgets(line, sizeof(line), from_) == nullptr) return "";
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    std::string prefix = absl::StrCat(name, " ");
    EXPECT_TRUE(absl::StartsWith(s, prefix)) << s;
    return absl::HexStringToBytes(s.substr(prefix.size()));
  }

  pid_t pid_ = -1;
  FILE* from_ = nullptr;
  FILE* to_ = nullptr;
  std::string address_, key_;
};

struct Connected {
  std::unique_ptr<Transport> transport;
  std::unique_ptr<TransportEndpoint> ep;
  std::unique_ptr<RemoteMemory> remote;
};

Connected ConnectTo(const Peer& peer, const std::string& tls, absl::Duration timeout,
                    bool detect = true) {
  Connected c;
  TransportOptions opts;
  opts.ucx_tls = tls;
  opts.detect_peer_failure = detect;
  opts.op_timeout = timeout;
  auto t = Transport::Create(opts);
  EXPECT_TRUE(t.ok()) << t.status();
  c.transport = std::move(*t);
  auto ep = c.transport->Connect(peer.address());
  EXPECT_TRUE(ep.ok()) << ep.status();
  if (!ep.ok()) return c;
  c.ep = std::move(*ep);
  auto r = c.ep->ImportRemoteKey(peer.key());
  EXPECT_TRUE(r.ok()) << r.status();
  if (r.ok()) c.remote = std::move(*r);
  return c;
}

constexpr uint64_t kPeerBytes = 32 << 20;
constexpr size_t kPage = 64 << 10;

class PeerDeathTest : public ::testing::TestWithParam<TransferDirection> {};

INSTANTIATE_TEST_SUITE_P(Direction, PeerDeathTest,
                         ::testing::Values(TransferDirection::kRead, TransferDirection::kWrite),
                         [](const auto& info) {
                           return info.param == TransferDirection::kRead ? "Read" : "Write";
                         });

TEST_P(PeerDeathTest, KilledPeerGivesErrorsNotHangsAndNoFalseSuccess) {
  const TransferDirection dir = GetParam();
  Peer peer("tcp", kPeerBytes);
  Connected c = ConnectTo(peer, "tcp", absl::Seconds(20));
  ASSERT_NE(c.remote, nullptr);

  // Keep batches of the whole region flowing, kill the peer while they do.
  constexpr int kBatches = 12;
  std::vector<std::vector<uint8_t>> bufs(kBatches, std::vector<uint8_t>(kPeerBytes));
  std::vector<TransferFuture> futures;
  std::vector<std::vector<TransferOp>> batches(kBatches);
  for (int b = 0; b < kBatches; ++b) {
    if (dir == TransferDirection::kWrite) FillPattern(bufs[b].data(), kPeerBytes, 50 + b, 0);
    for (size_t p = 0; p < kPeerBytes / kPage; ++p) {
      batches[b].push_back({bufs[b].data() + p * kPage, p * kPage, kPage});
    }
  }
  for (int b = 0; b < kBatches; ++b) {
    auto f = c.ep->Post(dir, *c.remote, batches[b]);
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), absl::StatusCode::kUnavailable) << f.status();
      break;
    }
    futures.push_back(*f);
    if (b == 2) peer.Kill();
  }
  int failed_ops = 0;
  for (size_t b = 0; b < futures.size(); ++b) {
    ASSERT_TRUE(futures[b].WaitFor(absl::Seconds(30))) << "batch " << b << " hangs";
    const auto& results = futures[b].Wait();
    bool any_failed = false;
    for (size_t i = 0; i < results.size(); ++i) {
      if (!results[i].ok()) {
        ++failed_ops;
        any_failed = true;
        continue;
      }
      if (dir == TransferDirection::kRead) {
        // An op reported OK must hold the peer's exact bytes.
        ASSERT_EQ(FirstMismatch(bufs[b].data() + i * kPage, kPage, kPeerSeed, i * kPage), kPage)
            << "batch " << b << " op " << i << " reported OK with wrong bytes";
      }
    }
    if (dir == TransferDirection::kWrite && any_failed) {
      // An unflushed write batch can't know which puts landed: none may claim success.
      for (const auto& r : results) EXPECT_FALSE(r.ok()) << "batch " << b;
    }
  }
  EXPECT_GT(failed_ops, 0) << "the peer died, yet every op succeeded";
  EXPECT_FALSE(c.ep->health().ok());
  std::vector<uint8_t> buf(16);
  auto again = c.ep->Post(TransferDirection::kRead, *c.remote, {{buf.data(), 0, 16}});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable) << again.status();
}

TEST(PeerStallTest, StoppedPeerTimesOutWithDeadlineExceeded) {
  Peer peer("tcp", 1 << 20);
  // Declared before the transport: after a timeout a late reply of an emulated (tcp) read may
  // still land until the transport is gone (see TransportEndpoint::Post).
  std::vector<uint8_t> buf(4096);
  Connected c = ConnectTo(peer, "tcp", absl::Milliseconds(500));
  ASSERT_NE(c.remote, nullptr);
  // Warm up (wire-up done, bytes right) before stopping the peer.
  auto ok = c.ep->Post(TransferDirection::kRead, *c.remote, {{buf.data(), 4096, 4096}});
  ASSERT_TRUE(ok.ok());
  ASSERT_TRUE(ok->WaitAll().ok());
  ASSERT_EQ(FirstMismatch(buf.data(), 4096, kPeerSeed, 4096), 4096u);

  peer.Stop();  // alive but silent: a TCP read emulated over active messages can't finish
  std::fill(buf.begin(), buf.end(), 0);
  auto f = c.ep->Post(TransferDirection::kRead, *c.remote, {{buf.data(), 0, 4096}});
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->WaitFor(absl::Seconds(20))) << "stalled transfer hangs";
  EXPECT_EQ(f->Wait()[0].code(), absl::StatusCode::kDeadlineExceeded) << f->Wait()[0];
  EXPECT_EQ(c.ep->health().code(), absl::StatusCode::kDeadlineExceeded);
  c = Connected();  // the transport goes first, then the stopped peer is killed
}

// Regression: a batch stuck in UCX's pending queue (shared memory, software-emulated reads to a
// stopped peer) times out; destroying the transport afterwards purges those requests, whose
// completions must not reach a half-destroyed progress thread (it crashed once).
TEST(PeerStallTest, StoppedPeerOverSharedMemoryTimesOutAndShutsDownCleanly) {
  Peer peer("tcp,sm,self", 8 << 20, /*detect=*/false);
  std::vector<uint8_t> buf(8 << 20);
  Connected c = ConnectTo(peer, "tcp,sm,self", absl::Milliseconds(500), /*detect=*/false);
  ASSERT_NE(c.remote, nullptr);
  peer.Stop();
  std::vector<TransferOp> ops;
  for (size_t p = 0; p < 64; ++p) ops.push_back({buf.data() + p * kPage, p * kPage, kPage});
  // Two batches in flight, like a pipelined reader.
  auto f1 = c.ep->Post(TransferDirection::kRead, *c.remote, ops);
  auto f2 = c.ep->Post(TransferDirection::kRead, *c.remote, ops);
  ASSERT_TRUE(f1.ok() && f2.ok());
  int failed = 0;
  for (auto* f : {&*f1, &*f2}) {
    ASSERT_TRUE(f->WaitFor(absl::Seconds(20))) << "stalled transfer hangs";
    for (const auto& r : f->Wait()) failed += !r.ok();
  }
  EXPECT_GT(failed, 0);
  c = Connected();  // must not crash
}

}  // namespace
}  // namespace pagoda
