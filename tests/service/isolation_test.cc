// Tenant isolation on every data path of a real pagodad (issue 14): a client of one tenant,
// speaking the protocols by hand the way a hostile one would, cannot read or write another
// tenant's pages at their known offsets (local shared memory, UCX, gRPC); what it was given it
// cannot truncate, and damaging it cannot crash pagodad. The socket's mode, group and peer
// allow-list hold.
#include <fcntl.h>
#include <grp.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "pagoda.grpc.pb.h"
#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"
#include "pagoda/transport/remote_key.h"
#include "pagoda/transport/transport.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

constexpr char kTenants[] = R"(
tenants:
  alice: {token: alice-secret}
  bob: {token: bob-secret}
security: {allow_unknown_tenants: false}
)";

std::string Frame(local::Op op, uint32_t count, const std::string& payload) {
  local::FrameHeader h;
  h.op = static_cast<uint16_t>(op);
  h.count = count;
  h.payload_bytes = static_cast<uint32_t>(payload.size());
  return std::string(reinterpret_cast<char*>(&h), sizeof(h)) + payload;
}

template <typename T>
std::string Bytes(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(T));
}

// The local protocol spoken by hand: Hello, the memfd it brings, raw Acquire / Reserve.
class RawLocal {
 public:
  ~RawLocal() {
    if (map_ != nullptr) munmap(map_, size_);
    if (memfd_ >= 0) close(memfd_);
    if (sock_ >= 0) close(sock_);
  }
  // Connects and says Hello; the Hello reply's code (0 = OK).
  int Open(const std::string& path, const std::string& tenant, const std::string& token) {
    absl::StatusOr<int> fd = local::ConnectUnix(path);
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (!fd.ok()) return -1;
    sock_ = *fd;
    local::HelloRequest r{static_cast<uint32_t>(tenant.size()),
                          static_cast<uint32_t>(token.size())};
    const std::string req = Frame(local::Op::kHello, 1, Bytes(r) + tenant + token);
    // A peer refused at accept gets an error frame and a closed socket, which can come before
    // this write (then EPIPE): the frame is still there to read.
    (void)local::WriteAll(sock_, req.data(), req.size());
    local::FrameHeader h{};
    absl::StatusOr<int> passed = local::ReadWithFd(sock_, &h, sizeof(h));
    if (!passed.ok()) return -1;
    std::string body(h.payload_bytes, '\0');
    EXPECT_TRUE(local::ReadAll(sock_, body.data(), body.size()).ok());
    if (h.op == static_cast<uint16_t>(local::Op::kError)) {
      local::ErrorReply e;
      memcpy(&e, body.data(), sizeof(e));
      error_ = body.substr(sizeof(e));
      return e.code;
    }
    local::HelloReply reply;
    memcpy(&reply, body.data(), sizeof(reply));
    if (reply.code != 0) return reply.code;
    memfd_ = *passed;
    size_ = reply.arena_bytes;
    segment_ = reply.segment_bytes;
    void* m = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
    EXPECT_NE(m, MAP_FAILED);
    map_ = static_cast<uint8_t*>(m);
    return 0;
  }
  local::AcquireReply Acquire(PageKey k) {
    local::AcquireRequest a{k.hi, k.lo};
    std::string body = Exchange(Frame(local::Op::kAcquire, 1, Bytes(a)));
    local::AcquireReply r{};
    if (body.size() >= sizeof(r)) memcpy(&r, body.data(), sizeof(r));
    return r;
  }
  local::ReserveReply Reserve(PageKey k, const PageLayout& l) {
    local::ReserveRequest rr{k.hi, k.lo, l.Id(), 0, l.PageBytes()};
    std::string body = Exchange(Frame(local::Op::kReserve, 1, Bytes(rr)));
    local::ReserveReply r{};
    if (body.size() >= sizeof(r)) memcpy(&r, body.data(), sizeof(r));
    return r;
  }
  // Sends a request and returns the reply's body.
  std::string Exchange(const std::string& req) {
    EXPECT_TRUE(local::WriteAll(sock_, req.data(), req.size()).ok());
    local::FrameHeader h{};
    if (!local::ReadAll(sock_, &h, sizeof(h)).ok()) return "";
    std::string body(h.payload_bytes, '\0');
    EXPECT_TRUE(local::ReadAll(sock_, body.data(), body.size()).ok());
    return body;
  }
  // Moves its own mapping elsewhere (mremap).
  bool Remap() {
    void* m = mremap(map_, size_, size_, MREMAP_MAYMOVE);
    if (m == MAP_FAILED) return false;
    map_ = static_cast<uint8_t*>(m);
    return true;
  }
  int sock() const { return sock_; }
  int memfd() const { return memfd_; }
  uint8_t* map() const { return map_; }
  uint64_t size() const { return size_; }
  uint64_t segment() const { return segment_; }
  const std::string& error() const { return error_; }

 private:
  int sock_ = -1;
  int memfd_ = -1;
  uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t segment_ = 0;
  std::string error_;
};

// The test config with `server_keys` added to its server mapping, then `extra_yaml`.
std::string Config(const std::string& server_keys, const std::string& extra_yaml = "") {
  std::string c = TestConfigYaml();
  if (!server_keys.empty())
    c = absl::StrReplaceAll(c, {{"http_port: 0}", "http_port: 0, " + server_keys + "}"}});
  return c + extra_yaml;
}

std::unique_ptr<PagodadProcess> Start(const std::string& config_yaml,
                                      std::vector<std::string> args = {}) {
  PagodadProcess::Options o;
  o.config_yaml = config_yaml;
  o.extra_args = std::move(args);
  absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

std::unique_ptr<Client> Connect(const PagodadProcess& s, const std::string& tenant,
                                const std::string& token, DataPathKind path) {
  ClientOptions o = s.ClientOpts(tenant, path);
  o.token = token;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

void ExpectCleanStop(PagodadProcess& s) {
  absl::StatusOr<int> rc = s.Stop(SIGTERM);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, 0) << s.Log();
}

// Pages of both tenants, put through the local path: a handful of small pages each, interleaved.
constexpr int kPages = 8;
PageKey KeyOf(int i) { return PageKey{0xF00D, static_cast<uint64_t>(i)}; }
std::vector<uint8_t> BytesOf(const std::string& tenant, int i) {
  return PageBytes(KeyOf(i), SmallLayout().PageBytes(), tenant == "alice" ? 1 : 2);
}
void PutBoth(Client& alice, Client& bob) {
  for (int i = 0; i < kPages; ++i) {
    ASSERT_TRUE(alice.Put({{KeyOf(i), SmallLayout().Id(), BytesOf("alice", i)}})[0].ok());
    ASSERT_TRUE(bob.Put({{KeyOf(i), SmallLayout().Id(), BytesOf("bob", i)}})[0].ok());
  }
}
void ExpectIntact(Client& c, const std::string& tenant) {
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  for (int i = 0; i < kPages; ++i) {
    GetResult r = c.Get({{KeyOf(i), absl::MakeSpan(out)}})[0];
    ASSERT_TRUE(r.status.ok()) << tenant << " " << i << " " << r.status;
    EXPECT_EQ(out, BytesOf(tenant, i)) << tenant << " page " << i << " has wrong bytes";
  }
}

TEST(IsolationTest, LocalMemfdReachesNoOtherTenantsPages) {
  auto server = Start(Config("", kTenants));
  ASSERT_NE(server, nullptr);
  auto alice = Connect(*server, "alice", "alice-secret", DataPathKind::kLocal);
  auto bob = Connect(*server, "bob", "bob-secret", DataPathKind::kLocal);
  ASSERT_TRUE(alice && bob);
  PutBoth(*alice, *bob);

  RawLocal a, b;
  ASSERT_EQ(a.Open(server->local_socket(), "alice", "alice-secret"), 0);
  ASSERT_EQ(b.Open(server->local_socket(), "bob", "bob-secret"), 0);
  // Bob's pages at their known offsets (bob's own leases tell where they are).
  const uint64_t n = SmallLayout().PageBytes();
  for (int i = 0; i < kPages; ++i) {
    local::AcquireReply lb = b.Acquire(KeyOf(i));
    ASSERT_EQ(lb.code, 0);
    local::AcquireReply la = a.Acquire(KeyOf(i));
    ASSERT_EQ(la.code, 0);
    ASSERT_NE(la.offset, lb.offset);
    ASSERT_LE(lb.offset + n, a.size());
    // Bob sees his page; alice's mapping holds nothing of it at the same offset.
    EXPECT_EQ(0, memcmp(b.map() + lb.offset, BytesOf("bob", i).data(), n));
    EXPECT_NE(0, memcmp(a.map() + lb.offset, BytesOf("bob", i).data(), n));
    EXPECT_EQ(0, memcmp(a.map() + la.offset, BytesOf("alice", i).data(), n));
    // Alice scribbles over bob's offsets (and everything else she was given).
    memset(a.map() + lb.offset, 0xEE, n);
  }
  // No other path works either: alice's token does not open bob's tenant.
  RawLocal impostor;
  EXPECT_EQ(impostor.Open(server->local_socket(), "bob", "alice-secret"),
            static_cast<int>(absl::StatusCode::kUnauthenticated));
  // Bob's pages are untouched on every path.
  ExpectIntact(*bob, "bob");
  auto bob_remote = Connect(*server, "bob", "bob-secret", DataPathKind::kRemote);
  ASSERT_NE(bob_remote, nullptr);
  ExpectIntact(*bob_remote, "bob");
  ExpectIntact(*alice, "alice");  // alice only wrote over offsets that are not hers
  ExpectCleanStop(*server);
}

TEST(IsolationTest, TruncatingOrPunchingTheMemfdCannotCrashPagodad) {
  auto server = Start(Config("", kTenants));
  ASSERT_NE(server, nullptr);
  auto alice = Connect(*server, "alice", "alice-secret", DataPathKind::kLocal);
  auto bob = Connect(*server, "bob", "bob-secret", DataPathKind::kLocal);
  ASSERT_TRUE(alice && bob);
  PutBoth(*alice, *bob);
  RawLocal a;
  ASSERT_EQ(a.Open(server->local_socket(), "alice", "alice-secret"), 0);
  // Sealed: it can be neither shrunk (pagodad's next access would SIGBUS) nor grown.
  EXPECT_EQ(ftruncate(a.memfd(), 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(a.memfd(), static_cast<off_t>(a.size() + 4096)), -1);
  const int seals = fcntl(a.memfd(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  // Remapping or unmapping its own view changes nothing for the server.
  EXPECT_TRUE(a.Remap());
  // Punching holes (allowed by the seals) destroys only alice's own pages, which are then caught
  // by their checksums: never served, never a crash.
  ASSERT_EQ(fallocate(a.memfd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                      static_cast<off_t>(a.size())),
            0);
  std::vector<uint8_t> out(SmallLayout().PageBytes());
  for (int i = 0; i < kPages; ++i) {
    GetResult r = alice->Get({{KeyOf(i), absl::MakeSpan(out)}})[0];
    EXPECT_FALSE(r.status.ok()) << "a page whose bytes were destroyed was served";
    EXPECT_TRUE(absl::IsDataLoss(r.status) || absl::IsNotFound(r.status)) << r.status;
  }
  ExpectIntact(*bob, "bob");
  // Alice writes again and reads back.
  ASSERT_TRUE(alice->Put({{KeyOf(100), SmallLayout().Id(), BytesOf("alice", 100)}})[0].ok());
  GetResult r = alice->Get({{KeyOf(100), absl::MakeSpan(out)}})[0];
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(out, BytesOf("alice", 100));
  ExpectCleanStop(*server);  // exit 0, not SIGBUS (135)
}

TEST(IsolationTest, UcxKeyReachesOnlyItsTenantsPages) {
  auto server = Start(Config("ucx: true", kTenants));
  ASSERT_NE(server, nullptr);
  auto alice = Connect(*server, "alice", "alice-secret", DataPathKind::kRemote);
  auto bob = Connect(*server, "bob", "bob-secret", DataPathKind::kRemote);
  ASSERT_TRUE(alice && bob);
  PutBoth(*alice, *bob);
  auto stub = v1::Pagoda::NewStub(
      grpc::CreateChannel(server->target(), grpc::InsecureChannelCredentials()));
  auto hello = [&](const std::string& tenant, const std::string& token) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::UcxHelloRequest req;
    req.set_tenant(tenant);
    v1::UcxHelloResponse resp;
    grpc::Status g = stub->UcxHello(&ctx, req, &resp);
    EXPECT_TRUE(g.ok()) << g.error_message();
    return resp;
  };
  v1::UcxHelloResponse ha = hello("alice", "alice-secret");
  v1::UcxHelloResponse hb = hello("bob", "bob-secret");
  if (ha.worker_address().empty()) GTEST_SKIP() << "no UCX on this machine";
  EXPECT_NE(ha.arena_key(), hb.arena_key());  // one registration per tenant
  {                                           // alice's token does not get bob's key
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer alice-secret");
    v1::UcxHelloRequest req;
    req.set_tenant("bob");
    v1::UcxHelloResponse resp;
    EXPECT_EQ(stub->UcxHello(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // Bob's pages' offsets, from bob's own leases.
  std::vector<uint64_t> bob_offsets;
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer bob-secret");
    v1::UcxAcquireRequest req;
    req.set_tenant("bob");
    for (int i = 0; i < kPages; ++i) {
      v1::PageKey* k = req.add_keys();
      k->set_hi(KeyOf(i).hi);
      k->set_lo(KeyOf(i).lo);
    }
    v1::UcxAcquireResponse resp;
    ASSERT_TRUE(stub->UcxAcquire(&ctx, req, &resp).ok());
    for (const v1::UcxLease& l : resp.leases()) {
      ASSERT_EQ(l.status().code(), 0);
      bob_offsets.push_back(l.offset());
    }
  }
  absl::StatusOr<std::unique_ptr<Transport>> t = Transport::Create();
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<std::string> addr = DecodePeerAddress(ha.worker_address());
  ASSERT_TRUE(addr.ok());
  absl::StatusOr<std::unique_ptr<TransportEndpoint>> ep = (*t)->Connect(*addr);
  ASSERT_TRUE(ep.ok()) << ep.status();
  absl::StatusOr<std::unique_ptr<RemoteMemory>> mem = (*ep)->ImportRemoteKey(ha.arena_key());
  ASSERT_TRUE(mem.ok()) << mem.status();
  const uint64_t n = SmallLayout().PageBytes();
  std::vector<uint8_t> got(n), junk(n, 0xEE);
  for (int i = 0; i < kPages; ++i) {
    TransferOp op{got.data(), bob_offsets[i], n};
    absl::StatusOr<TransferFuture> f = (*ep)->Post(TransferDirection::kRead, **mem, {&op, 1});
    ASSERT_TRUE(f.ok()) << f.status();
    ASSERT_TRUE(f->WaitAll().ok());
    EXPECT_NE(got, BytesOf("bob", i)) << "alice's UCX key read bob's page " << i;
    TransferOp w{junk.data(), bob_offsets[i], n};
    f = (*ep)->Post(TransferDirection::kWrite, **mem, {&w, 1});
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(f->WaitAll().ok());
  }
  // Past the end of her registration: refused before anything moves.
  TransferOp past{got.data(), (*mem)->length(), n};
  EXPECT_FALSE((*ep)->Post(TransferDirection::kRead, **mem, {&past, 1}).ok());
  mem->reset();
  ep->reset();
  ExpectIntact(*bob, "bob");
  ExpectCleanStop(*server);
}

TEST(IsolationTest, GrpcTokensBindTenants) {
  auto server = Start(Config("", kTenants));
  ASSERT_NE(server, nullptr);
  auto bob = Connect(*server, "bob", "bob-secret", DataPathKind::kRemote);
  ASSERT_NE(bob, nullptr);
  ASSERT_TRUE(bob->Put({{KeyOf(1), SmallLayout().Id(), BytesOf("bob", 1)}})[0].ok());
  ClientOptions o = server->ClientOpts("bob", DataPathKind::kRemote);
  o.token = "alice-secret";
  absl::StatusOr<std::unique_ptr<Client>> impostor = Client::Connect(o);
  if (impostor.ok()) {
    std::vector<uint8_t> out(SmallLayout().PageBytes());
    EXPECT_TRUE(
        absl::IsUnauthenticated((*impostor)->Get({{KeyOf(1), absl::MakeSpan(out)}})[0].status));
    EXPECT_TRUE(absl::IsUnauthenticated(
        (*impostor)->Put({{KeyOf(2), SmallLayout().Id(), BytesOf("bob", 2)}})[0]));
  } else {
    EXPECT_TRUE(absl::IsUnauthenticated(impostor.status())) << impostor.status();
  }
  EXPECT_FALSE((*bob->Exists({KeyOf(2)}))[0]);
  ExpectCleanStop(*server);
}

TEST(IsolationTest, SocketModeGroupAndPeerAllowList) {
  const gid_t my_gid = getgid();
  struct group* g = getgrgid(my_gid);
  ASSERT_NE(g, nullptr);
  {
    auto server =
        Start(Config(absl::StrCat("local_socket_group: ", g->gr_name),
                     "security: {local_allowed_uids: [" + std::to_string(getuid()) + "]}\n"));
    ASSERT_NE(server, nullptr);
    struct stat st {};
    ASSERT_EQ(stat(server->local_socket().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0660u);
    EXPECT_EQ(st.st_gid, my_gid);
    auto c = Connect(*server, "x", "", DataPathKind::kLocal);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->data_path(), "local");
    ExpectCleanStop(*server);
    EXPECT_NE(server->Log().find("uid " + std::to_string(getuid())), std::string::npos)
        << "peer credentials are logged";
  }
  {  // Neither our uid nor any of our groups is allowed: refused at connect, and logged.
    auto server = Start(Config("",
                               "security: {local_allowed_uids: [4000000001], "
                               "local_allowed_gids: [4000000002]}\n"));
    ASSERT_NE(server, nullptr);
    RawLocal r;
    EXPECT_EQ(r.Open(server->local_socket(), "x", ""),
              static_cast<int>(absl::StatusCode::kPermissionDenied));
    EXPECT_NE(r.error().find("not allowed"), std::string::npos) << r.error();
    ClientOptions o = server->ClientOpts("x", DataPathKind::kLocal);
    EXPECT_FALSE(Client::Connect(o).ok());
    ExpectCleanStop(*server);
    EXPECT_NE(server->Log().find("refused"), std::string::npos);
  }
  // An unknown group is a clear error at start.
  PagodadProcess::Options o;
  o.config_yaml = Config("local_socket_group: no-such-group-pagoda");
  absl::StatusOr<std::unique_ptr<PagodadProcess>> bad = PagodadProcess::Start(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("no-such-group-pagoda"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace pagoda::testing
