// Byte-exact round trips through a real pagodad: several concurrent clients, both data paths,
// the async API, the zero-copy local path seen from the shared arena itself.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

class RoundTripTest : public ::testing::TestWithParam<DataPathKind> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start({});
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = std::move(*p);
  }
  void TearDown() override {
    if (server_ && server_->pid() > 0) {
      absl::StatusOr<int> rc = server_->Stop(SIGTERM);
      ASSERT_TRUE(rc.ok()) << rc.status();
      EXPECT_EQ(*rc, 0) << server_->Log();
    }
  }
  std::unique_ptr<PagodadProcess> server_;
};

TEST_P(RoundTripTest, ConcurrentClientsAreByteExact) {
  const PageLayout layouts[] = {SmallLayout(), PageLayout{}, LargeLayout()};
  constexpr int kThreads = 4;
  constexpr int kPagesPerThread = 24;  // 8 of each layout; ~17 MiB per thread at most
  std::vector<std::vector<PageKey>> keys(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      absl::StatusOr<std::unique_ptr<Client>> c =
          Client::Connect(server_->ClientOpts("tenant-rt", GetParam()));
      if (!c.ok()) {
        ADD_FAILURE() << c.status();
        failures++;
        return;
      }
      // Remote clients move bytes on the stream data path (issue 15) when the server offers it.
      EXPECT_EQ((*c)->data_path(), GetParam() == DataPathKind::kLocal ? "local" : "stream");
      std::vector<std::vector<uint8_t>> data;
      std::vector<PutPage> puts;
      for (int i = 0; i < kPagesPerThread; ++i) {
        const PageLayout& l = layouts[i % 3];
        PageKey k{0xABC000 + uint64_t(t), uint64_t(i)};
        keys[t].push_back(k);
        data.push_back(PageBytes(k, l.PageBytes()));
      }
      for (int i = 0; i < kPagesPerThread; ++i) {
        puts.push_back({keys[t][i], layouts[i % 3].Id(), data[i]});
      }
      // Two batches, so concurrent batches interleave on the server.
      std::vector<absl::Status> st = (*c)->Put(absl::MakeConstSpan(puts).subspan(0, 12));
      std::vector<absl::Status> st2 = (*c)->Put(absl::MakeConstSpan(puts).subspan(12));
      st.insert(st.end(), st2.begin(), st2.end());
      for (int i = 0; i < kPagesPerThread; ++i) {
        if (!st[i].ok()) {
          ADD_FAILURE() << "put " << i << ": " << st[i];
          failures++;
        }
      }
      std::vector<std::vector<uint8_t>> out(kPagesPerThread);
      std::vector<GetPage> gets;
      for (int i = 0; i < kPagesPerThread; ++i) {
        out[i].assign(layouts[i % 3].PageBytes() + 7, 0xEE);  // larger than needed
        gets.push_back({keys[t][i], absl::MakeSpan(out[i])});
      }
      std::vector<GetResult> got = (*c)->Get(gets);
      for (int i = 0; i < kPagesPerThread; ++i) {
        ASSERT_TRUE(got[i].status.ok()) << got[i].status;
        EXPECT_EQ(got[i].size, data[i].size());
        EXPECT_EQ(got[i].layout, layouts[i % 3].Id());
        EXPECT_EQ(0, memcmp(out[i].data(), data[i].data(), data[i].size())) << "page " << i;
        EXPECT_EQ(out[i][data[i].size()], 0xEE) << "wrote past the page";
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);

  // Every client's pages are readable, byte-exact, by a fresh client on the other path.
  absl::StatusOr<std::unique_ptr<Client>> other = Client::Connect(
      server_->ClientOpts("tenant-rt", GetParam() == DataPathKind::kLocal ? DataPathKind::kRemote
                                                                          : DataPathKind::kLocal));
  ASSERT_TRUE(other.ok()) << other.status();
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPagesPerThread; ++i) {
      const PageLayout& l = layouts[i % 3];
      std::vector<uint8_t> out(l.PageBytes());
      std::vector<GetResult> got = (*other)->Get({{keys[t][i], absl::MakeSpan(out)}});
      ASSERT_TRUE(got[0].status.ok()) << got[0].status;
      EXPECT_EQ(out, PageBytes(keys[t][i], l.PageBytes()));
    }
  }
  // Keys are immutable: a second put of the same key is AlreadyExists and keeps the old bytes.
  std::vector<uint8_t> different = PageBytes(keys[0][1], PageLayout{}.PageBytes(), 99);
  std::vector<absl::Status> again = (*other)->Put({{keys[0][1], PageLayout{}.Id(), different}});
  EXPECT_TRUE(absl::IsAlreadyExists(again[0])) << again[0];
  std::vector<uint8_t> out(PageLayout{}.PageBytes());
  ASSERT_TRUE((*other)->Get({{keys[0][1], absl::MakeSpan(out)}})[0].status.ok());
  EXPECT_EQ(out, PageBytes(keys[0][1], PageLayout{}.PageBytes()));
}

TEST_P(RoundTripTest, AsyncFuturesAndCallbacks) {
  absl::StatusOr<std::unique_ptr<Client>> c =
      Client::Connect(server_->ClientOpts("tenant-async", GetParam()));
  ASSERT_TRUE(c.ok()) << c.status();
  const PageLayout l{};
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutPage> puts;
  std::vector<PageKey> keys;
  for (int i = 0; i < 16; ++i) keys.push_back(PageKey{77, uint64_t(i)});
  for (const PageKey& k : keys) data.push_back(PageBytes(k, l.PageBytes()));
  for (int i = 0; i < 16; ++i) puts.push_back({keys[i], l.Id(), data[i]});
  std::future<std::vector<absl::Status>> put = (*c)->PutAsync(puts);
  for (const absl::Status& s : put.get()) ASSERT_TRUE(s.ok()) << s;

  std::future<absl::StatusOr<size_t>> prefix = (*c)->LongestPrefixAsync(keys);
  std::vector<PageKey> with_missing = keys;
  with_missing.insert(with_missing.begin() + 5, PageKey{1, 1});
  std::future<absl::StatusOr<size_t>> prefix2 = (*c)->LongestPrefixAsync(with_missing);
  std::future<absl::StatusOr<std::vector<bool>>> exists = (*c)->ExistsAsync(with_missing);
  ASSERT_TRUE(prefix.get().ok());
  absl::StatusOr<size_t> p2 = prefix2.get();
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(*p2, 5u);
  absl::StatusOr<std::vector<bool>> ex = exists.get();
  ASSERT_TRUE(ex.ok());
  for (size_t i = 0; i < with_missing.size(); ++i) EXPECT_EQ((*ex)[i], i != 5) << i;

  std::vector<std::vector<uint8_t>> out(16, std::vector<uint8_t>(l.PageBytes()));
  std::vector<GetPage> gets;
  for (int i = 0; i < 16; ++i) gets.push_back({keys[i], absl::MakeSpan(out[i])});
  std::promise<std::vector<GetResult>> done;
  (*c)->GetAsync(gets, [&](std::vector<GetResult> r) { done.set_value(std::move(r)); });
  std::vector<GetResult> got = done.get_future().get();
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(got[i].status.ok()) << got[i].status;
    EXPECT_EQ(out[i], data[i]);
  }
}

TEST_P(RoundTripTest, ControlCallsAct) {
  absl::StatusOr<std::unique_ptr<Client>> c =
      Client::Connect(server_->ClientOpts("tenant-ctl", GetParam()));
  ASSERT_TRUE(c.ok()) << c.status();
  const PageLayout l = SmallLayout();
  std::vector<PageKey> keys = ChainPageKeys(std::vector<int32_t>(64, 3), 16, {"m", 0, "s"});
  ASSERT_EQ(keys.size(), 4u);
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutPage> puts;
  for (const PageKey& k : keys) data.push_back(PageBytes(k, l.PageBytes()));
  for (size_t i = 0; i < keys.size(); ++i) puts.push_back({keys[i], l.Id(), data[i]});
  for (const absl::Status& s : (*c)->Put(puts)) ASSERT_TRUE(s.ok()) << s;

  EXPECT_TRUE((*c)->Pin({keys[0]})[0].ok());
  EXPECT_TRUE((*c)->Unpin({keys[0]})[0].ok());
  EXPECT_EQ((*c)->Unpin({keys[0]})[0].code(), absl::StatusCode::kFailedPrecondition);
  std::vector<absl::Status> rm = (*c)->Remove({keys[2], PageKey{9, 9}});
  EXPECT_TRUE(rm[0].ok()) << rm[0];
  EXPECT_TRUE(absl::IsNotFound(rm[1])) << rm[1];
  absl::StatusOr<size_t> prefix = (*c)->LongestPrefix(keys);
  ASSERT_TRUE(prefix.ok());
  EXPECT_EQ(*prefix, 2u);
  std::vector<uint8_t> out(l.PageBytes());
  EXPECT_TRUE(absl::IsNotFound((*c)->Get({{keys[2], absl::MakeSpan(out)}})[0].status));
  absl::StatusOr<size_t> moved = (*c)->Prefetch(keys);
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(*moved, 0u);  // everything is already in the host tier
  EXPECT_EQ((*c)->Prefetch(keys, "tape").status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<ServiceStats> st = (*c)->Stats();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->pages, 3u);
  ASSERT_FALSE(st->tiers.empty());
  EXPECT_EQ(st->tiers[0].name, "host");
  EXPECT_EQ(st->tiers[0].pages, 3u);

  // /metrics and /healthz answer in Prometheus text / plain text.
  absl::StatusOr<std::string> m = HttpGet(server_->http_port(), "/metrics");
  ASSERT_TRUE(m.ok());
  EXPECT_NE(m->find("200 OK"), std::string::npos);
  EXPECT_NE(m->find("pagoda_tier_used_bytes{tier=\"host\"}"), std::string::npos) << *m;
  EXPECT_NE(m->find("pagoda_request_seconds_bucket"), std::string::npos);
  EXPECT_NE(m->find("pagoda_page_bytes_total"), std::string::npos);
  absl::StatusOr<std::string> h = HttpGet(server_->http_port(), "/healthz");
  ASSERT_TRUE(h.ok());
  EXPECT_NE(h->find("200 OK"), std::string::npos);
  EXPECT_NE(HttpGet(server_->http_port(), "/nope")->find("404"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Paths, RoundTripTest,
                         ::testing::Values(DataPathKind::kLocal, DataPathKind::kRemote),
                         [](const auto& info) {
                           return info.param == DataPathKind::kLocal ? std::string("Local")
                                                                     : std::string("Remote");
                         });

// The local path really is shared memory: the page's bytes sit in the arena mapping the server
// hands out, at the offset a read lease names.
TEST(LocalZeroCopyTest, PageBytesLiveInTheSharedArena) {
  absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start({});
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<std::unique_ptr<Client>> c =
      Client::Connect((*p)->ClientOpts("zc", DataPathKind::kLocal));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->data_path(), "local");
  const PageLayout l{};
  PageKey key{42, 4242};
  std::vector<uint8_t> data = PageBytes(key, l.PageBytes());
  ASSERT_TRUE((*c)->Put({{key, l.Id(), data}})[0].ok());

  // Speak the local protocol by hand: Hello, receive the memfd, map it, Acquire, compare.
  absl::StatusOr<int> fd = local::ConnectUnix((*p)->local_socket());
  ASSERT_TRUE(fd.ok()) << fd.status();
  std::string hello;
  local::FrameHeader h;
  h.op = static_cast<uint16_t>(local::Op::kHello);
  h.count = 1;
  h.payload_bytes = sizeof(local::HelloRequest) + 2;
  local::HelloRequest hr{2, 0};
  hello.append(reinterpret_cast<char*>(&h), sizeof(h));
  hello.append(reinterpret_cast<char*>(&hr), sizeof(hr));
  hello += "zc";
  ASSERT_TRUE(local::WriteAll(*fd, hello.data(), hello.size()).ok());
  local::FrameHeader rh;
  absl::StatusOr<int> arena_fd = local::ReadWithFd(*fd, &rh, sizeof(rh));
  ASSERT_TRUE(arena_fd.ok());
  ASSERT_GE(*arena_fd, 0);
  std::string body(rh.payload_bytes, '\0');
  ASSERT_TRUE(local::ReadAll(*fd, body.data(), body.size()).ok());
  local::HelloReply reply;
  memcpy(&reply, body.data(), sizeof(reply));
  ASSERT_EQ(reply.code, 0);
  void* arena = mmap(nullptr, reply.arena_bytes, PROT_READ, MAP_SHARED, *arena_fd, 0);
  ASSERT_NE(arena, MAP_FAILED);

  local::FrameHeader ah;
  ah.op = static_cast<uint16_t>(local::Op::kAcquire);
  ah.count = 1;
  ah.payload_bytes = sizeof(local::AcquireRequest);
  local::AcquireRequest ar{key.hi, key.lo};
  std::string req(reinterpret_cast<char*>(&ah), sizeof(ah));
  req.append(reinterpret_cast<char*>(&ar), sizeof(ar));
  ASSERT_TRUE(local::WriteAll(*fd, req.data(), req.size()).ok());
  ASSERT_TRUE(local::ReadAll(*fd, &rh, sizeof(rh)).ok());
  ASSERT_EQ(rh.op, ah.op);
  body.assign(rh.payload_bytes, '\0');
  ASSERT_TRUE(local::ReadAll(*fd, body.data(), body.size()).ok());
  local::AcquireReply lease;
  memcpy(&lease, body.data(), sizeof(lease));
  ASSERT_EQ(lease.code, 0);
  ASSERT_EQ(lease.size, data.size());
  EXPECT_EQ(lease.checksum, PageChecksum(data.data(), data.size()));
  EXPECT_EQ(0, memcmp(static_cast<uint8_t*>(arena) + lease.offset, data.data(), data.size()));
  munmap(arena, reply.arena_bytes);
  close(*arena_fd);
  close(*fd);  // the server releases the lease this connection left open
  absl::StatusOr<int> rc = (*p)->Stop(SIGTERM);
  ASSERT_TRUE(rc.ok());
  EXPECT_EQ(*rc, 0);
}

}  // namespace
}  // namespace pagoda::testing

namespace pagoda::testing {
namespace {

// A client never uses another pagodad's arena: the socket must belong to its gRPC target.
TEST(LocalZeroCopyTest, RefusesTheSocketOfAnotherServer) {
  absl::StatusOr<std::unique_ptr<PagodadProcess>> a = PagodadProcess::Start({});
  absl::StatusOr<std::unique_ptr<PagodadProcess>> b = PagodadProcess::Start({});
  ASSERT_TRUE(a.ok() && b.ok());
  ClientOptions o = (*a)->ClientOpts("x", DataPathKind::kLocal);
  o.local_socket = (*b)->local_socket();
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(c.status())) << c.status();
  o.data_path = DataPathKind::kAuto;  // falls back to moving bytes remotely to `a`
  c = Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->data_path(), "stream");
  const PageLayout l = SmallLayout();
  std::vector<uint8_t> data = PageBytes(PageKey{8, 8}, l.PageBytes());
  ASSERT_TRUE((*c)->Put({{PageKey{8, 8}, l.Id(), data}})[0].ok());
  absl::StatusOr<std::unique_ptr<Client>> on_b =
      Client::Connect((*b)->ClientOpts("x", DataPathKind::kRemote));
  ASSERT_TRUE(on_b.ok());
  EXPECT_FALSE((*(*on_b)->Exists({PageKey{8, 8}}))[0]);
}

}  // namespace
}  // namespace pagoda::testing

namespace pagoda::testing {
namespace {

// A local-path server that accepts the Hello and then never answers: the client's call fails
// within its timeout instead of hanging.
TEST(LocalZeroCopyTest, AStuckServerTimesOut) {
  absl::StatusOr<std::unique_ptr<PagodadProcess>> real = PagodadProcess::Start({});
  ASSERT_TRUE(real.ok());
  absl::StatusOr<std::unique_ptr<Client>> probe =
      Client::Connect((*real)->ClientOpts("x", DataPathKind::kRemote));
  ASSERT_TRUE(probe.ok());
  const uint64_t instance = (*probe)->Health()->instance_id;
  ASSERT_NE(instance, 0u);

  const std::string path = (*real)->data_dir() + "/stuck.sock";
  absl::StatusOr<int> listen_fd = local::ListenUnix(path, 4);
  ASSERT_TRUE(listen_fd.ok());
  int arena = memfd_create("stuck-arena", MFD_CLOEXEC);
  ASSERT_EQ(ftruncate(arena, 1 << 20), 0);
  std::atomic<bool> done{false};
  std::thread fake([&] {
    int c = accept(*listen_fd, nullptr, nullptr);
    local::FrameHeader h;
    ASSERT_TRUE(local::ReadAll(c, &h, sizeof(h)).ok());
    std::string payload(h.payload_bytes, '\0');
    ASSERT_TRUE(local::ReadAll(c, payload.data(), payload.size()).ok());
    local::HelloReply reply;
    reply.arena_bytes = 1 << 20;
    reply.instance_id = instance;
    std::string out(reinterpret_cast<char*>(&h), sizeof(h));
    local::FrameHeader* rh = reinterpret_cast<local::FrameHeader*>(out.data());
    rh->payload_bytes = sizeof(reply) + 4;
    out.append(reinterpret_cast<char*>(&reply), sizeof(reply));
    out.append(4, '\0');
    ASSERT_TRUE(local::WriteWithFd(c, out.data(), out.size(), arena).ok());
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(10));  // never answers
    close(c);
  });
  ClientOptions o = (*real)->ClientOpts("x", DataPathKind::kLocal);
  o.local_socket = path;
  o.timeout = absl::Milliseconds(300);
  o.prefault_arena = false;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  const auto t0 = std::chrono::steady_clock::now();
  GetResult r = (*c)->Get({{PageKey{1, 2}, absl::MakeSpan(out)}})[0];
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(r.status.ok());
  EXPECT_LT(secs, 5.0) << "the call should fail after about the 300 ms timeout";
  done = true;
  fake.join();
  close(arena);
  close(*listen_fd);
}

}  // namespace
}  // namespace pagoda::testing
