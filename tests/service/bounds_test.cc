// Bounded resources of a real pagodad (issue 14): idle local connections hold no thread and are
// limited and reaped; stalled Put streams, local connections and UCX reservations that hold
// reservations are cancelled and their reservations aborted; bad config values are refused at
// start; the embedded default listens on loopback only.
#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "pagoda.grpc.pb.h"
#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

std::string Config(const std::string& server_keys, const std::string& extra_yaml = "") {
  std::string c = TestConfigYaml();
  if (!server_keys.empty()) {
    c = absl::StrReplaceAll(c, {{"http_port: 0}", "http_port: 0, " + server_keys + "}"}});
  }
  return c + extra_yaml;
}

std::unique_ptr<PagodadProcess> Start(const std::string& yaml, std::vector<std::string> args = {}) {
  PagodadProcess::Options o;
  o.config_yaml = yaml;
  o.extra_args = std::move(args);
  absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

int Threads(pid_t pid) {
  int n = 0;
  DIR* d = opendir(absl::StrCat("/proc/", pid, "/task").c_str());
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

// Polls `f` until it is true or `seconds` pass.
template <typename F>
bool Eventually(F f, double seconds = 10) {
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  while (std::chrono::steady_clock::now() < until) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return f();
}

void ExpectCleanStop(PagodadProcess& s) {
  absl::StatusOr<int> rc = s.Stop(SIGTERM);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, 0) << s.Log();
}

const PageKey kKey{0xB0B, 7};

// Whether a fresh client can write kKey now (i.e. no reservation holds it).
bool KeyWritable(const PagodadProcess& s, const std::string& tenant) {
  absl::StatusOr<std::unique_ptr<Client>> c =
      Client::Connect(s.ClientOpts(tenant, DataPathKind::kRemote));
  if (!c.ok()) return false;
  const PageLayout l = SmallLayout();
  absl::Status st = (*c)->Put({{kKey, l.Id(), PageBytes(kKey, l.PageBytes())}})[0];
  return st.ok();
}

TEST(BoundsTest, IdleLocalConnectionsHoldNoThreadAndAreLimitedAndReaped) {
  auto server = Start(Config("local_max_connections: 64, local_handshake_ms: 500"));
  ASSERT_NE(server, nullptr);
  const int before = Threads(server->pid());
  ASSERT_GT(before, 0);
  std::vector<int> idle;
  for (int i = 0; i < 300; ++i) {
    absl::StatusOr<int> fd = local::ConnectUnix(server->local_socket());
    ASSERT_TRUE(fd.ok()) << fd.status();
    idle.push_back(*fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_LE(Threads(server->pid()), before + 2) << "idle connections must not hold threads";
  // The ones past the limit were refused with a clear error.
  int refused = 0;
  for (int fd : idle) {
    local::FrameHeader h{};
    if (::recv(fd, &h, sizeof(h), MSG_DONTWAIT) == sizeof(h) &&
        h.op == static_cast<uint16_t>(local::Op::kError)) {
      ++refused;
    }
  }
  EXPECT_GE(refused, 300 - 64);
  // Idle ones that never said Hello are closed after the handshake deadline; then a real client
  // gets the local path again.
  EXPECT_TRUE(Eventually([&] {
    absl::StatusOr<std::unique_ptr<Client>> c =
        Client::Connect(server->ClientOpts("t", DataPathKind::kLocal));
    return c.ok() && (*c)->data_path() == std::string("local");
  }));
  for (int fd : idle) ::close(fd);
  ExpectCleanStop(*server);
}

TEST(BoundsTest, StalledPutStreamIsCancelledAndItsReservationAborted) {
  auto server = Start(Config("reservation_timeout_ms: 300"));
  ASSERT_NE(server, nullptr);
  auto stub = v1::Pagoda::NewStub(
      grpc::CreateChannel(server->target(), grpc::InsecureChannelCredentials()));
  const PageLayout l = SmallLayout();
  grpc::ClientContext ctx;
  v1::PutResponse resp;
  auto w = stub->Put(&ctx, &resp);
  v1::PutRequest msg;
  msg.mutable_begin()->set_tenant("t");
  v1::PutPage* p = msg.mutable_begin()->add_pages();
  p->mutable_key()->set_hi(kKey.hi);
  p->mutable_key()->set_lo(kKey.lo);
  p->set_layout_id(l.Id());
  p->set_size(l.PageBytes());
  ASSERT_TRUE(w->Write(msg));
  // The stream now holds the reservation and sends nothing more: the server cancels it and the
  // key becomes writable again.
  EXPECT_TRUE(Eventually([&] { return KeyWritable(*server, "t"); }));
  grpc::Status s = w->Finish();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(server->Log().find("made no progress"), std::string::npos);
  ExpectCleanStop(*server);
}

TEST(BoundsTest, LocalConnectionHoldingReservationsIdleIsClosed) {
  auto server = Start(Config("reservation_timeout_ms: 300"));
  ASSERT_NE(server, nullptr);
  absl::StatusOr<int> fd = local::ConnectUnix(server->local_socket());
  ASSERT_TRUE(fd.ok());
  auto frame = [](local::Op op, const std::string& payload) {
    local::FrameHeader h;
    h.op = static_cast<uint16_t>(op);
    h.count = 1;
    h.payload_bytes = static_cast<uint32_t>(payload.size());
    return std::string(reinterpret_cast<char*>(&h), sizeof(h)) + payload;
  };
  local::HelloRequest hr{1, 0};
  std::string req = frame(local::Op::kHello, std::string(reinterpret_cast<char*>(&hr), 8) + "t");
  ASSERT_TRUE(local::WriteAll(*fd, req.data(), req.size()).ok());
  local::FrameHeader h{};
  absl::StatusOr<int> memfd = local::ReadWithFd(*fd, &h, sizeof(h));
  ASSERT_TRUE(memfd.ok());
  if (*memfd >= 0) ::close(*memfd);
  std::string body(h.payload_bytes, '\0');
  ASSERT_TRUE(local::ReadAll(*fd, body.data(), body.size()).ok());
  const PageLayout l = SmallLayout();
  local::ReserveRequest rr{kKey.hi, kKey.lo, l.Id(), 0, l.PageBytes()};
  req = frame(local::Op::kReserve, std::string(reinterpret_cast<char*>(&rr), sizeof(rr)));
  ASSERT_TRUE(local::WriteAll(*fd, req.data(), req.size()).ok());
  ASSERT_TRUE(local::ReadAll(*fd, &h, sizeof(h)).ok());
  body.assign(h.payload_bytes, '\0');
  ASSERT_TRUE(local::ReadAll(*fd, body.data(), body.size()).ok());
  local::ReserveReply rep;
  memcpy(&rep, body.data(), sizeof(rep));
  ASSERT_EQ(rep.code, 0);
  EXPECT_FALSE(KeyWritable(*server, "t"));  // being written
  EXPECT_TRUE(Eventually([&] { return KeyWritable(*server, "t"); }));
  // The server closed the connection (after an error frame saying why).
  ASSERT_TRUE(local::ReadAll(*fd, &h, sizeof(h)).ok());
  EXPECT_EQ(h.op, static_cast<uint16_t>(local::Op::kError));
  ::close(*fd);
  ExpectCleanStop(*server);
}

TEST(BoundsTest, UcxReservationExpiresWithoutFurtherCalls) {
  auto server = Start(Config("ucx: true, reservation_timeout_ms: 300"));
  ASSERT_NE(server, nullptr);
  auto stub = v1::Pagoda::NewStub(
      grpc::CreateChannel(server->target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::PutBegin begin;
  begin.set_tenant("t");
  v1::PutPage* p = begin.add_pages();
  p->mutable_key()->set_hi(kKey.hi);
  p->mutable_key()->set_lo(kKey.lo);
  p->set_layout_id(SmallLayout().Id());
  p->set_size(SmallLayout().PageBytes());
  v1::UcxReserveResponse resp;
  grpc::Status g = stub->UcxReserve(&ctx, begin, &resp);
  if (g.error_code() == grpc::StatusCode::FAILED_PRECONDITION) GTEST_SKIP() << "no UCX here";
  ASSERT_TRUE(g.ok()) << g.error_message();
  ASSERT_EQ(resp.slots(0).status().code(), 0);
  EXPECT_TRUE(Eventually([&] { return KeyWritable(*server, "t"); }));
  ExpectCleanStop(*server);
}

// Local addresses of the TCP sockets `pid` listens on ("127.0.0.1", "::1", "0.0.0.0", ...).
std::vector<std::string> ListeningAddresses(pid_t pid) {
  std::set<std::string> inodes;
  const std::string dir = absl::StrCat("/proc/", pid, "/fd");
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      char buf[64] = {};
      if (readlink((dir + "/" + e->d_name).c_str(), buf, sizeof(buf) - 1) > 0 &&
          strncmp(buf, "socket:[", 8) == 0) {
        inodes.insert(std::string(buf + 8, strlen(buf) - 9));
      }
    }
    closedir(d);
  }
  std::vector<std::string> out;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/net/", table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
      if (f.size() < 10 || f[3] != "0A" || !inodes.count(f[9])) continue;  // 0A = LISTEN
      const std::string hex = f[1].substr(0, f[1].find(':'));
      if (hex == "0100007F" || hex == "0000000000000000FFFF00000100007F") {  // also v4-mapped
        out.push_back("127.0.0.1");
      } else if (hex == "00000000000000000000000001000000") {
        out.push_back("::1");
      } else {
        out.push_back(hex);
      }
    }
  }
  return out;
}

TEST(BoundsTest, EmbeddedDefaultListensOnLoopbackOnlyUcxIncluded) {
  // The embedded default's network settings (loopback), with free ports and UCX turned on.
  auto server = Start(
      "server: {grpc_port: 0, http_port: 0, ucx: true}\n"
      "store: {host_bytes: 64MiB, ssd_bytes: 64MiB}\n");
  ASSERT_NE(server, nullptr);
  std::vector<std::string> addrs = ListeningAddresses(server->pid());
  EXPECT_GE(addrs.size(), 2u);  // gRPC, HTTP (and UCX's tcp listener where UCX works)
  for (const std::string& a : addrs) {
    EXPECT_TRUE(a == "127.0.0.1" || a == "::1") << "listening on " << a;
  }
  ExpectCleanStop(*server);
}

TEST(BoundsTest, OutOfRangeConfigValuesAreRefusedAtStart) {
  for (const auto& [yaml, key] : std::vector<std::pair<std::string, std::string>>{
           {Config("max_message_bytes: 2GiB"), "max_message_bytes"},
           {Config("local_max_connections: 0"), "local_max_connections"},
           {absl::StrReplaceAll(TestConfigYaml(),
                                {{"grpc_host: 127.0.0.1", "grpc_host: 0.0.0.0, ucx: true"}}),
            "ucx_net_devices"},
       }) {
    PagodadProcess::Options o;
    o.config_yaml = yaml;
    absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
    ASSERT_FALSE(p.ok()) << key;
    EXPECT_NE(p.status().message().find(key), std::string::npos) << p.status();
  }
}

}  // namespace
}  // namespace pagoda::testing
