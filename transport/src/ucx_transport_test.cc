// Loopback UCX transfers between two transports of this process, over each transport family.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "pagoda/transport/remote_key.h"
#include "pagoda/transport/transport.h"
#include "transport/src/test_pattern.h"

namespace pagoda {
namespace {

using ::pagoda::testing::FillPattern;
using ::pagoda::testing::FirstMismatch;

constexpr uint64_t kServerSeed = 7;

// A server transport exposing one pattern-filled host region, and a connected client.
class Loopback {
 public:
  Loopback(const std::string& tls, size_t bytes, absl::Duration timeout = absl::Seconds(20))
      : region(bytes) {
    TransportOptions opts;
    opts.ucx_tls = tls;
    opts.op_timeout = timeout;
    // Shared memory is only used without UCX's peer-failure mode (see TransportOptions).
    opts.detect_peer_failure = tls == "tcp";
    auto s = Transport::Create(opts);
    EXPECT_TRUE(s.ok()) << s.status();
    server = std::move(*s);
    auto c = Transport::Create(opts);
    EXPECT_TRUE(c.ok()) << c.status();
    client = std::move(*c);
    FillPattern(region.data(), region.size(), kServerSeed, 0);
    auto mem = server->Register(region.data(), region.size(), MemoryKind::kHost);
    EXPECT_TRUE(mem.ok()) << mem.status();
    registration = std::move(*mem);
    auto key = registration->PackRemoteKey();
    EXPECT_TRUE(key.ok()) << key.status();
    packed_key = *key;
    auto ep = client->Connect(server->address());
    EXPECT_TRUE(ep.ok()) << ep.status();
    endpoint = std::move(*ep);
    auto remote_mem = endpoint->ImportRemoteKey(packed_key);
    EXPECT_TRUE(remote_mem.ok()) << remote_mem.status();
    remote = std::move(*remote_mem);
  }

  std::vector<uint8_t> region;
  std::unique_ptr<Transport> server;
  std::unique_ptr<Transport> client;
  std::unique_ptr<RegisteredMemory> registration;
  std::string packed_key;
  std::unique_ptr<TransportEndpoint> endpoint;
  std::unique_ptr<RemoteMemory> remote;
};

class UcxLoopbackTest : public ::testing::TestWithParam<std::string> {};

INSTANTIATE_TEST_SUITE_P(Tls, UcxLoopbackTest, ::testing::Values("tcp", "tcp,sm,self"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (c == ',') c = '_';
                           }
                           return n;
                         });

struct Shape {
  size_t op_bytes;
  size_t ops;
  bool scattered;  // remote offsets shuffled with gaps vs back to back
};

// Remote offsets for a batch: back to back, or shuffled slots with a gap after each.
std::vector<uint64_t> Offsets(const Shape& s, std::mt19937_64& rng) {
  std::vector<uint64_t> off(s.ops);
  size_t stride = s.scattered ? s.op_bytes + 13 : s.op_bytes;
  for (size_t i = 0; i < s.ops; ++i) off[i] = 5 + i * stride;
  if (s.scattered) std::shuffle(off.begin(), off.end(), rng);
  return off;
}

TEST_P(UcxLoopbackTest, ReadsAndWritesAreByteExactAcrossSizesAndBatchShapes) {
  const std::vector<Shape> shapes = {
      {1, 1, false},      {7, 3, true},     {4096, 17, true},
      {16384, 64, false}, {65539, 9, true}, {1 << 20, 4, true},
  };
  Loopback lb(GetParam(), 8 << 20);
  std::mt19937_64 rng(42);
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(::testing::Message() << shape.op_bytes << " B x " << shape.ops
                                      << (shape.scattered ? " scattered" : " contiguous"));
    std::vector<uint64_t> offsets = Offsets(shape, rng);
    // Read: every local buffer must hold exactly the remote bytes at its offset; the guard bytes
    // around each local buffer must be untouched.
    const size_t guard = 16;
    std::vector<uint8_t> local(shape.ops * (shape.op_bytes + guard), 0xA5);
    std::vector<TransferOp> ops;
    for (size_t i = 0; i < shape.ops; ++i) {
      ops.push_back({local.data() + i * (shape.op_bytes + guard), offsets[i], shape.op_bytes});
    }
    auto fut = lb.endpoint->Post(TransferDirection::kRead, *lb.remote, ops);
    ASSERT_TRUE(fut.ok()) << fut.status();
    ASSERT_TRUE(fut->WaitAll().ok()) << fut->WaitAll();
    for (size_t i = 0; i < shape.ops; ++i) {
      const uint8_t* p = local.data() + i * (shape.op_bytes + guard);
      ASSERT_EQ(FirstMismatch(p, shape.op_bytes, kServerSeed, offsets[i]), shape.op_bytes) << i;
      for (size_t g = 0; g < guard; ++g) ASSERT_EQ(p[shape.op_bytes + g], 0xA5) << i;
    }

    // Write a new pattern into the same places; everything else in the region must keep the old.
    const uint64_t seed = 1000 + shape.op_bytes;
    std::vector<std::vector<uint8_t>> src(shape.ops, std::vector<uint8_t>(shape.op_bytes));
    ops.clear();
    for (size_t i = 0; i < shape.ops; ++i) {
      FillPattern(src[i].data(), shape.op_bytes, seed, offsets[i]);
      ops.push_back({src[i].data(), offsets[i], shape.op_bytes});
    }
    auto wfut = lb.endpoint->Post(TransferDirection::kWrite, *lb.remote, ops);
    ASSERT_TRUE(wfut.ok()) << wfut.status();
    ASSERT_TRUE(wfut->WaitAll().ok()) << wfut->WaitAll();
    // A write reported complete is in remote memory: check it without any further sync.
    std::vector<bool> written(lb.region.size(), false);
    for (size_t i = 0; i < shape.ops; ++i) {
      ASSERT_EQ(FirstMismatch(lb.region.data() + offsets[i], shape.op_bytes, seed, offsets[i]),
                shape.op_bytes);
      for (size_t b = 0; b < shape.op_bytes; ++b) written[offsets[i] + b] = true;
    }
    for (size_t b = 0; b < lb.region.size(); ++b) {
      if (!written[b]) {
        ASSERT_EQ(lb.region[b], testing::PatternByte(kServerSeed, b)) << b;
      }
    }
    FillPattern(lb.region.data(), lb.region.size(), kServerSeed, 0);  // restore for next shape
  }
}

TEST_P(UcxLoopbackTest, CallbackGetsOneStatusPerOp) {
  Loopback lb(GetParam(), 1 << 20);
  std::vector<uint8_t> local(4 * 4096);
  std::vector<TransferOp> ops;
  for (int i = 0; i < 4; ++i) ops.push_back({local.data() + i * 4096, uint64_t(i) * 8192, 4096});
  absl::Notification called;
  size_t count = 0;
  bool all_ok = false;
  auto fut = lb.endpoint->Post(TransferDirection::kRead, *lb.remote, ops,
                               [&](const std::vector<absl::Status>& results) {
                                 count = results.size();
                                 all_ok = true;
                                 for (const auto& r : results) all_ok &= r.ok();
                                 called.Notify();
                               });
  ASSERT_TRUE(fut.ok());
  ASSERT_TRUE(called.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(count, 4u);
  EXPECT_TRUE(all_ok);
  EXPECT_TRUE(fut->Done());
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(FirstMismatch(local.data() + i * 4096, 4096, kServerSeed, i * 8192), 4096u);
  }
}

TEST_P(UcxLoopbackTest, ConcurrentEndpointsAndThreadsStayByteExact) {
  constexpr int kClients = 3;
  constexpr int kThreadsPerClient = 2;
  constexpr size_t kSlice = 256 << 10;  // each thread owns one slice of the server region
  constexpr size_t kPage = 16 << 10;
  Loopback lb(GetParam(), kClients * kThreadsPerClient * kSlice);
  std::vector<std::unique_ptr<Transport>> clients;
  std::vector<std::unique_ptr<TransportEndpoint>> eps;
  std::vector<std::unique_ptr<RemoteMemory>> remotes;
  for (int c = 0; c < kClients; ++c) {
    TransportOptions opts;
    opts.ucx_tls = GetParam();
    auto t = Transport::Create(opts);
    ASSERT_TRUE(t.ok()) << t.status();
    auto ep = (*t)->Connect(lb.server->address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    auto r = (*ep)->ImportRemoteKey(lb.packed_key);
    ASSERT_TRUE(r.ok()) << r.status();
    clients.push_back(std::move(*t));
    eps.push_back(std::move(*ep));
    remotes.push_back(std::move(*r));
  }
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kClients * kThreadsPerClient);
  for (int c = 0; c < kClients; ++c) {
    for (int t = 0; t < kThreadsPerClient; ++t) {
      threads.emplace_back([&, c, t] {
        const int id = c * kThreadsPerClient + t;
        const uint64_t base = id * kSlice;
        std::string& fail = failures[id];
        for (int round = 0; round < 8 && fail.empty(); ++round) {
          const uint64_t seed = 100 + id * 10 + round;
          std::vector<uint8_t> out(kSlice), in(kSlice);
          FillPattern(out.data(), kSlice, seed, base);
          std::vector<TransferOp> w, r;
          // Reverse page order so a swapped offset would show.
          for (size_t p = 0; p < kSlice / kPage; ++p) {
            size_t q = kSlice / kPage - 1 - p;
            w.push_back({out.data() + q * kPage, base + q * kPage, kPage});
            r.push_back({in.data() + q * kPage, base + q * kPage, kPage});
          }
          auto wf = eps[c]->Post(TransferDirection::kWrite, *remotes[c], w);
          if (!wf.ok() || !wf->WaitAll().ok()) {
            fail = "write failed";
            break;
          }
          auto rf = eps[c]->Post(TransferDirection::kRead, *remotes[c], r);
          if (!rf.ok() || !rf->WaitAll().ok()) {
            fail = "read failed";
            break;
          }
          size_t bad = FirstMismatch(in.data(), kSlice, seed, base);
          if (bad != kSlice) fail = "mismatch at " + std::to_string(bad);
        }
      });
    }
  }
  for (auto& th : threads) th.join();
  for (size_t i = 0; i < failures.size(); ++i) EXPECT_EQ(failures[i], "") << "thread " << i;
}

TEST_P(UcxLoopbackTest, BadBatchesAreRejectedAndPostNothing) {
  Loopback lb(GetParam(), 1 << 20);
  std::vector<uint8_t> src(4096, 0x11);
  const uint64_t len = lb.remote->length();
  struct Case {
    const char* name;
    std::vector<TransferOp> ops;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {"empty", {}, absl::StatusCode::kInvalidArgument},
      {"null local", {{nullptr, 0, 16}}, absl::StatusCode::kInvalidArgument},
      {"zero length", {{src.data(), 0, 0}}, absl::StatusCode::kInvalidArgument},
      {"past end", {{src.data(), len - 100, 4096}}, absl::StatusCode::kOutOfRange},
      {"offset past end", {{src.data(), len + 1, 1}}, absl::StatusCode::kOutOfRange},
      {"wrapping", {{src.data(), ~0ULL - 10, 4096}}, absl::StatusCode::kOutOfRange},
      // A valid op first: the bad second op must stop the whole batch.
      {"good then bad",
       {{src.data(), 0, 4096}, {src.data(), len, 1}},
       absl::StatusCode::kOutOfRange},
  };
  for (const Case& c : cases) {
    auto fut = lb.endpoint->Post(TransferDirection::kWrite, *lb.remote, c.ops);
    EXPECT_EQ(fut.status().code(), c.code) << c.name << ": " << fut.status();
  }
  // Nothing reached the server.
  EXPECT_EQ(FirstMismatch(lb.region.data(), lb.region.size(), kServerSeed, 0), lb.region.size());
  EXPECT_TRUE(lb.endpoint->health().ok());
}

TEST_P(UcxLoopbackTest, RemoteMemoryOfAnotherEndpointIsRejected) {
  Loopback a(GetParam(), 1 << 20);
  Loopback b(GetParam(), 1 << 20);
  std::vector<uint8_t> buf(64);
  auto fut = a.endpoint->Post(TransferDirection::kRead, *b.remote, {{buf.data(), 0, 64}});
  EXPECT_EQ(fut.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(UcxLoopbackTest, DamagedKeysAndAddressesAreRejected) {
  Loopback lb(GetParam(), 1 << 20);
  std::string key = lb.packed_key;
  for (size_t i : {size_t{0}, size_t{5}, key.size() / 2, key.size() - 1}) {
    std::string bad = key;
    bad[i] ^= 1;
    EXPECT_EQ(lb.endpoint->ImportRemoteKey(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << i;
  }
  EXPECT_EQ(lb.endpoint->ImportRemoteKey("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(lb.endpoint->ImportRemoteKey(lb.server->address()).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::string addr = lb.server->address();
  addr[addr.size() / 2] ^= 1;
  EXPECT_EQ(lb.client->Connect(addr).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(lb.client->Connect(lb.packed_key).status().code(), absl::StatusCode::kInvalidArgument);
  // The good key still works after all that.
  EXPECT_TRUE(lb.endpoint->ImportRemoteKey(lb.packed_key).ok());
}

TEST_P(UcxLoopbackTest, RegisterRejectsBadRangesAndUnreachableKinds) {
  TransportOptions opts;
  opts.ucx_tls = GetParam();
  auto t = Transport::Create(opts);
  ASSERT_TRUE(t.ok());
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ((*t)->Register(nullptr, 4096, MemoryKind::kHost).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*t)->Register(buf.data(), 0, MemoryKind::kHost).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*t)->Register(buf.data(), ~size_t{0}, MemoryKind::kHost).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (!ProbeTransportCapabilities().ucx_cuda_memory) {
    EXPECT_EQ((*t)->Register(buf.data(), buf.size(), MemoryKind::kCuda).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

TEST_P(UcxLoopbackTest, TransportAllocatedMemoryMovesExactBytes) {
  Loopback lb(GetParam(), 4096);
  auto pool = lb.server->Allocate(1 << 20);
  ASSERT_TRUE(pool.ok()) << pool.status();
  ASSERT_NE((*pool)->base(), nullptr);
  EXPECT_EQ((*pool)->length(), size_t{1} << 20);
  FillPattern((*pool)->base(), 1 << 20, 99, 0);
  auto remote = lb.endpoint->ImportRemoteKey(*(*pool)->PackRemoteKey());
  ASSERT_TRUE(remote.ok()) << remote.status();
  auto local = lb.client->Allocate(256 << 10);
  ASSERT_TRUE(local.ok());
  auto* dst = static_cast<uint8_t*>((*local)->base());
  std::vector<TransferOp> ops;
  for (int i = 0; i < 4; ++i)
    ops.push_back({dst + i * (64 << 10), (3 - i) * uint64_t{200000}, 64 << 10});
  auto f = lb.endpoint->Post(TransferDirection::kRead, **remote, ops);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->WaitAll().ok()) << f->WaitAll();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(FirstMismatch(dst + i * (64 << 10), 64 << 10, 99, (3 - i) * 200000), 64u << 10);
  }
  EXPECT_EQ(lb.server->Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UcxTransportTest, RejectsNonsenseOptions) {
  TransportOptions opts;
  opts.op_timeout = absl::ZeroDuration();
  EXPECT_EQ(Transport::Create(opts).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UcxTransportTest, CapabilitiesFallBackCleanlyWithoutRdma) {
  TransportCapabilities caps = ProbeTransportCapabilities();
  EXPECT_GE(caps.rdma_devices, 0);
  EXPECT_FALSE(caps.ucx_version.empty());
  TransportOptions opts;  // automatic choice
  auto t = Transport::Create(opts);
  ASSERT_TRUE(t.ok()) << t.status();
  if (caps.rdma_devices == 0 && std::getenv("UCX_TLS") == nullptr) {
    EXPECT_EQ((*t)->name(), "ucx(tcp,sm,self)");
  }
}

TEST(UcxTransportTest, EverythingMayOutliveTheTransport) {
  std::vector<uint8_t> region(1 << 16);
  std::unique_ptr<RegisteredMemory> mem;
  std::unique_ptr<TransportEndpoint> ep;
  std::unique_ptr<RemoteMemory> remote;
  {
    auto server = Transport::Create();
    auto client = Transport::Create();
    ASSERT_TRUE(server.ok() && client.ok());
    mem = std::move(*(*server)->Register(region.data(), region.size(), MemoryKind::kHost));
    ep = std::move(*(*client)->Connect((*server)->address()));
    remote = std::move(*ep->ImportRemoteKey(*mem->PackRemoteKey()));
  }
  std::vector<uint8_t> buf(64);
  EXPECT_FALSE(ep->Post(TransferDirection::kRead, *remote, {{buf.data(), 0, 64}}).ok());
  remote.reset();
  ep.reset();
  mem.reset();
}

}  // namespace
}  // namespace pagoda
