// Malformed requests get a clear error, change nothing, and the server keeps serving: wrong
// sizes, unknown layouts, bad tokens, oversized messages, protocol abuse, garbage on the ports.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "pagoda.grpc.pb.h"
#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

class MalformedTest : public ::testing::Test {
 protected:
  void StartServer(PagodadProcess::Options o = {}) {
    absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
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
  std::unique_ptr<Client> Connect(DataPathKind path, const std::string& token = "",
                                  const std::string& tenant = "t") {
    ClientOptions o = server_->ClientOpts(tenant, path);
    o.token = token;
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  // The server still answers and still stores and serves bytes correctly.
  void ExpectStillServing(const std::string& token = "") {
    for (DataPathKind path : {DataPathKind::kLocal, DataPathKind::kRemote}) {
      std::unique_ptr<Client> c = Connect(path, token, "probe");
      ASSERT_NE(c, nullptr);
      PageKey k{0x5EED, static_cast<uint64_t>(probe_++)};
      std::vector<uint8_t> data = PageBytes(k, SmallLayout().PageBytes());
      ASSERT_TRUE(c->Put({{k, SmallLayout().Id(), data}})[0].ok());
      std::vector<uint8_t> out(data.size());
      ASSERT_TRUE(c->Get({{k, absl::MakeSpan(out)}})[0].status.ok());
      EXPECT_EQ(out, data);
    }
  }
  std::unique_ptr<PagodadProcess> server_;
  int probe_ = 0;
};

class MalformedPathTest : public MalformedTest,
                          public ::testing::WithParamInterface<DataPathKind> {};

TEST_P(MalformedPathTest, WrongSizeUnknownLayoutAndDuplicatesStoreNothing) {
  StartServer();
  std::unique_ptr<Client> c = Connect(GetParam());
  ASSERT_NE(c, nullptr);
  const PageLayout l = SmallLayout();
  PageKey good{1, 1}, bad{1, 2};
  std::vector<uint8_t> ok_bytes = PageBytes(good, l.PageBytes());
  std::vector<uint8_t> short_bytes(l.PageBytes() - 1, 7);
  std::vector<uint8_t> long_bytes(l.PageBytes() + 256, 7);

  struct Case {
    const char* what;
    std::vector<PutPage> batch;
  } cases[] = {
      {"short page", {{good, l.Id(), ok_bytes}, {bad, l.Id(), short_bytes}}},
      {"long page", {{good, l.Id(), ok_bytes}, {bad, l.Id(), long_bytes}}},
      {"undecodable layout id", {{good, l.Id(), ok_bytes}, {bad, 0xFFFFFFFFu, ok_bytes}}},
      {"duplicate key", {{good, l.Id(), ok_bytes}, {good, l.Id(), ok_bytes}}},
  };
  for (const Case& k : cases) {
    std::vector<absl::Status> st = c->Put(k.batch);
    ASSERT_EQ(st.size(), 2u);
    for (const absl::Status& s : st) {
      EXPECT_FALSE(s.ok()) << k.what;
      EXPECT_TRUE(absl::IsInvalidArgument(s) || absl::IsAborted(s)) << k.what << ": " << s;
    }
    absl::StatusOr<std::vector<bool>> ex = c->Exists({good, bad});
    ASSERT_TRUE(ex.ok());
    EXPECT_FALSE((*ex)[0]) << k.what << ": the valid page of a rejected batch was stored";
    EXPECT_FALSE((*ex)[1]) << k.what;
  }
  // A valid layout the server was not configured for: InvalidArgument, nothing stored.
  PageLayout unregistered{DType::kBf16, 3, 64, 32};
  std::vector<uint8_t> ub(unregistered.PageBytes(), 1);
  absl::Status s = c->Put({{bad, unregistered.Id(), ub}})[0];
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_FALSE((*c->Exists({bad}))[0]);
  // A buffer too small for the page: InvalidArgument, and the buffer's tail is untouched.
  ASSERT_TRUE(c->Put({{good, l.Id(), ok_bytes}})[0].ok());
  std::vector<uint8_t> small(l.PageBytes() / 2, 0xCD);
  GetResult r = c->Get({{good, absl::MakeSpan(small)}})[0];
  EXPECT_TRUE(absl::IsInvalidArgument(r.status)) << r.status;
  ExpectStillServing();
}

INSTANTIATE_TEST_SUITE_P(Paths, MalformedPathTest,
                         ::testing::Values(DataPathKind::kLocal, DataPathKind::kRemote),
                         [](const auto& info) {
                           return info.param == DataPathKind::kLocal ? std::string("Local")
                                                                     : std::string("Remote");
                         });

TEST_F(MalformedTest, BadTokenIsRejectedAndChangesNothing) {
  PagodadProcess::Options o;
  o.extra_args = {"--token", "right-token"};
  StartServer(o);
  // Local path: the Hello is refused, so Connect fails.
  ClientOptions lo = server_->ClientOpts("t", DataPathKind::kLocal);
  lo.token = "wrong-token";
  absl::StatusOr<std::unique_ptr<Client>> lc = Client::Connect(lo);
  ASSERT_FALSE(lc.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(lc.status())) << lc.status();
  // Remote path: every call answers Unauthenticated.
  for (const char* token : {"wrong-token", ""}) {
    std::unique_ptr<Client> rc = Connect(DataPathKind::kRemote, token);
    ASSERT_NE(rc, nullptr);
    PageKey k{2, 2};
    std::vector<uint8_t> data = PageBytes(k, SmallLayout().PageBytes());
    absl::Status s = rc->Put({{k, SmallLayout().Id(), data}})[0];
    EXPECT_TRUE(absl::IsUnauthenticated(s)) << s;
    EXPECT_TRUE(absl::IsUnauthenticated(rc->Exists({k}).status()));
    EXPECT_TRUE(absl::IsUnauthenticated(rc->Stats().status()));
  }
  std::unique_ptr<Client> good = Connect(DataPathKind::kRemote, "right-token");
  ASSERT_NE(good, nullptr);
  EXPECT_FALSE((*good->Exists({PageKey{2, 2}}))[0]);
  ExpectStillServing("right-token");
}

TEST_F(MalformedTest, OversizedMessageIsRefused) {
  PagodadProcess::Options o;
  o.config_yaml = TestConfigYaml() + "\n";
  o.config_yaml.replace(o.config_yaml.find("http_port: 0}"), 13,
                        "http_port: 0, max_message_bytes: 1MiB, get_chunk_bytes: 256KiB}");
  StartServer(o);
  auto channel = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Pagoda::NewStub(channel);
  const PageLayout l = LargeLayout();  // 2 MiB: one chunk of it is over the 1 MiB cap
  std::vector<uint8_t> data = PageBytes(PageKey{3, 3}, l.PageBytes());
  grpc::ClientContext ctx;
  v1::PutResponse resp;
  auto w = stub->Put(&ctx, &resp);
  v1::PutRequest msg;
  v1::PutPage* p = msg.mutable_begin()->add_pages();
  msg.mutable_begin()->set_tenant("t");
  p->mutable_key()->set_hi(3);
  p->mutable_key()->set_lo(3);
  p->set_layout_id(l.Id());
  p->set_size(data.size());
  p->set_checksum(PageChecksum(data.data(), data.size()));
  w->Write(msg);
  msg.Clear();
  msg.mutable_chunk()->set_page_index(0);
  msg.mutable_chunk()->set_data(data.data(), data.size());
  w->Write(msg);
  w->WritesDone();
  grpc::Status s = w->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  // The same page in chunks under the cap goes through, byte-exact (remote path, 256 KiB chunks).
  ClientOptions co = server_->ClientOpts("t", DataPathKind::kRemote);
  co.chunk_bytes = 256 << 10;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(co);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE((*(*c)->Exists({PageKey{3, 3}}))[0]) << "the refused Put left a page";
  // gRPC refuses the oversized message and ends the call before the server's handler sees its
  // stream fail, so the handler may still hold the page's reservation for a moment after the
  // client got RESOURCE_EXHAUSTED ("being written"); it is aborted then, never committed.
  absl::Status put = (*c)->Put({{PageKey{3, 3}, l.Id(), data}})[0];
  for (int i = 0;
       i < 250 && absl::IsAlreadyExists(put) && absl::StrContains(put.message(), "being written");
       ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    put = (*c)->Put({{PageKey{3, 3}, l.Id(), data}})[0];
  }
  ASSERT_TRUE(put.ok()) << put;
  std::vector<uint8_t> out(data.size());
  ASSERT_TRUE((*c)->Get({{PageKey{3, 3}, absl::MakeSpan(out)}})[0].status.ok());
  EXPECT_EQ(out, data);
  ExpectStillServing();
}

// Raw Put streams that lie: chunks out of range, missing bytes, a wrong checksum.
TEST_F(MalformedTest, LyingPutStreamsCommitNothing) {
  StartServer();
  auto stub = v1::Pagoda::NewStub(
      grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
  const PageLayout l = SmallLayout();
  std::vector<uint8_t> data = PageBytes(PageKey{4, 4}, l.PageBytes());
  auto put = [&](uint64_t checksum, std::vector<std::pair<uint64_t, size_t>> chunks,
                 v1::PutResponse* resp) {
    grpc::ClientContext ctx;
    auto w = stub->Put(&ctx, resp);
    v1::PutRequest msg;
    msg.mutable_begin()->set_tenant("t");
    v1::PutPage* p = msg.mutable_begin()->add_pages();
    p->mutable_key()->set_hi(4);
    p->mutable_key()->set_lo(4);
    p->set_layout_id(l.Id());
    p->set_size(data.size());
    p->set_checksum(checksum);
    w->Write(msg);
    for (auto [off, len] : chunks) {
      msg.Clear();
      msg.mutable_chunk()->set_page_index(0);
      msg.mutable_chunk()->set_offset(off);
      msg.mutable_chunk()->set_data(std::string(len, 'x'));
      w->Write(msg);
    }
    w->WritesDone();
    return w->Finish();
  };
  const uint64_t right = PageChecksum(data.data(), data.size());
  v1::PutResponse r1, r2, r3, r4;
  // A chunk past the end of the page: the call fails as a whole.
  grpc::Status s = put(right, {{0, data.size()}, {data.size(), 1}}, &r1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  // A gap (chunk not at the next offset).
  s = put(right, {{8, 8}}, &r2);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  // Too few bytes: the page is aborted with DataLoss.
  s = put(right, {{0, data.size() / 2}}, &r3);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(r3.results_size(), 1);
  EXPECT_EQ(r3.results(0).code(), static_cast<int>(absl::StatusCode::kDataLoss));
  // All bytes, but not the ones the checksum names.
  s = put(right, {{0, data.size()}}, &r4);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(r4.results(0).code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_NE(r4.results(0).message().find("checksum"), std::string::npos);
  // The unary form: inline bytes that are short, or that the checksum does not describe.
  for (size_t len : {data.size() / 2, data.size()}) {
    grpc::ClientContext ctx;
    v1::PutBegin begin;
    begin.set_tenant("t");
    v1::PutPage* p = begin.add_pages();
    p->mutable_key()->set_hi(4);
    p->mutable_key()->set_lo(4);
    p->set_layout_id(l.Id());
    p->set_size(data.size());
    p->set_checksum(right ^ 1);
    p->set_data(data.data(), len);
    v1::PutResponse resp;
    ASSERT_TRUE(stub->PutInline(&ctx, begin, &resp).ok());
    ASSERT_EQ(resp.results_size(), 1);
    EXPECT_EQ(resp.results(0).code(), static_cast<int>(absl::StatusCode::kDataLoss)) << len;
  }
  std::unique_ptr<Client> c = Connect(DataPathKind::kRemote);
  EXPECT_FALSE((*c->Exists({PageKey{4, 4}}))[0]);
  // Begin-less and empty streams.
  {
    grpc::ClientContext ctx;
    v1::PutResponse resp;
    auto w = stub->Put(&ctx, &resp);
    v1::PutRequest msg;
    msg.mutable_chunk()->set_page_index(0);
    w->Write(msg);
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::PutResponse resp;
    auto w = stub->Put(&ctx, &resp);
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  // An empty or over-long key batch.
  {
    grpc::ClientContext ctx;
    v1::KeysRequest req;
    req.set_tenant("t");
    v1::ExistsResponse resp;
    EXPECT_EQ(stub->Exists(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  ExpectStillServing();
}

TEST_F(MalformedTest, DeadlinesAreHonoured) {
  StartServer();
  auto stub = v1::Pagoda::NewStub(
      grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
  {  // Already past its deadline: refused.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
    v1::KeysRequest req;
    req.set_tenant("t");
    req.add_keys()->set_hi(1);
    v1::ExistsResponse resp;
    EXPECT_EQ(stub->Exists(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // A Put that stalls past its deadline after reserving: the server gives up, aborts the
  // reservation (the key stays writable) and nothing becomes visible.
  const PageLayout l = SmallLayout();
  std::vector<uint8_t> data = PageBytes(PageKey{11, 11}, l.PageBytes());
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    v1::PutResponse resp;
    auto w = stub->Put(&ctx, &resp);
    v1::PutRequest msg;
    msg.mutable_begin()->set_tenant("t");
    v1::PutPage* p = msg.mutable_begin()->add_pages();
    p->mutable_key()->set_hi(11);
    p->mutable_key()->set_lo(11);
    p->set_layout_id(l.Id());
    p->set_size(data.size());
    p->set_checksum(PageChecksum(data.data(), data.size()));
    ASSERT_TRUE(w->Write(msg));
    msg.Clear();
    msg.mutable_chunk()->set_page_index(0);
    msg.mutable_chunk()->set_data(data.data(), data.size() / 2);
    w->Write(msg);
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    msg.Clear();
    msg.mutable_chunk()->set_page_index(0);
    msg.mutable_chunk()->set_offset(data.size() / 2);
    msg.mutable_chunk()->set_data(data.data() + data.size() / 2, data.size() - data.size() / 2);
    w->Write(msg);
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  std::unique_ptr<Client> c = Connect(DataPathKind::kRemote);
  EXPECT_FALSE((*c->Exists({PageKey{11, 11}}))[0]);
  // The reservation is gone: the key can be written (it would be AlreadyExists if it leaked).
  absl::Status s;
  for (int i = 0; i < 50; ++i) {  // the server notices the cancellation asynchronously
    s = c->Put({{PageKey{11, 11}, l.Id(), data}})[0];
    if (!absl::IsAlreadyExists(s)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(s.ok()) << s;
  ExpectStillServing();
}

// Sends `bytes` on a fresh TCP connection to `port` and closes it.
void SendGarbageTcp(int port, const std::string& bytes) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  (void)!::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  char buf[256];
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  (void)!::recv(fd, buf, sizeof(buf), 0);
  ::close(fd);
}

TEST_F(MalformedTest, GarbageBytesOnThePortsAreHarmless) {
  StartServer();
  std::string noise;
  uint64_t x = 88172645463325252ULL;
  for (int i = 0; i < 70000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    noise.push_back(static_cast<char>(x));
  }
  SendGarbageTcp(server_->grpc_port(), noise);
  SendGarbageTcp(server_->grpc_port(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  SendGarbageTcp(server_->grpc_port(), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + noise);
  SendGarbageTcp(server_->http_port(), noise);
  SendGarbageTcp(server_->http_port(), "POST /metrics HTTP/1.0\r\n\r\n");

  // The local socket answers garbage with an error frame, then closes.
  absl::StatusOr<int> fd = local::ConnectUnix(server_->local_socket());
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(local::WriteAll(*fd, noise.data(), 4096).ok());
  local::FrameHeader h;
  ASSERT_TRUE(local::ReadAll(*fd, &h, sizeof(h)).ok());
  EXPECT_EQ(h.op, static_cast<uint16_t>(local::Op::kError));
  std::string body(h.payload_bytes, '\0');
  ASSERT_TRUE(local::ReadAll(*fd, body.data(), body.size()).ok());
  local::ErrorReply e;
  memcpy(&e, body.data(), sizeof(e));
  EXPECT_EQ(e.code, static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(body.find("bad magic"), std::string::npos) << body;
  char one;
  EXPECT_LE(::recv(*fd, &one, 1, 0), 0) << "connection should be closed (EOF or reset)";
  ::close(*fd);
  ExpectStillServing();
}

// Local protocol abuse: ops before Hello, bad tokens, foreign handles, lying checksums, lying
// frame sizes. Each gets its error; nothing becomes visible.
TEST_F(MalformedTest, LocalProtocolAbuse) {
  PagodadProcess::Options o;
  o.extra_args = {"--token", "tok"};
  StartServer(o);
  auto frame = [](local::Op op, uint32_t count, const std::string& payload) {
    local::FrameHeader h;
    h.op = static_cast<uint16_t>(op);
    h.count = count;
    h.payload_bytes = static_cast<uint32_t>(payload.size());
    return std::string(reinterpret_cast<char*>(&h), sizeof(h)) + payload;
  };
  auto hello = [&](const std::string& tenant, const std::string& token) {
    local::HelloRequest r{static_cast<uint32_t>(tenant.size()),
                          static_cast<uint32_t>(token.size())};
    return frame(local::Op::kHello, 1,
                 std::string(reinterpret_cast<char*>(&r), sizeof(r)) + tenant + token);
  };
  auto exchange = [](int fd, const std::string& req, std::string* body) -> local::FrameHeader {
    EXPECT_TRUE(local::WriteAll(fd, req.data(), req.size()).ok());
    local::FrameHeader h{};
    absl::StatusOr<int> passed = local::ReadWithFd(fd, &h, sizeof(h));
    EXPECT_TRUE(passed.ok());
    if (passed.ok() && *passed >= 0) ::close(*passed);
    body->assign(h.payload_bytes, '\0');
    EXPECT_TRUE(local::ReadAll(fd, body->data(), body->size()).ok());
    return h;
  };
  std::string body;
  {  // an op before Hello
    int fd = *local::ConnectUnix(server_->local_socket());
    local::AcquireRequest a{1, 1};
    local::FrameHeader h = exchange(
        fd, frame(local::Op::kAcquire, 1, std::string(reinterpret_cast<char*>(&a), 16)), &body);
    EXPECT_EQ(h.op, static_cast<uint16_t>(local::Op::kError));
    EXPECT_NE(body.find("Hello must come first"), std::string::npos);
    ::close(fd);
  }
  {  // a wrong token
    int fd = *local::ConnectUnix(server_->local_socket());
    local::FrameHeader h = exchange(fd, hello("t", "nope"), &body);
    local::HelloReply r;
    memcpy(&r, body.data(), sizeof(r));
    EXPECT_EQ(r.code, static_cast<int>(absl::StatusCode::kUnauthenticated));
    EXPECT_EQ(h.op, static_cast<uint16_t>(local::Op::kHello));
    ::close(fd);
  }
  int fd = *local::ConnectUnix(server_->local_socket());
  local::FrameHeader h = exchange(fd, hello("t", "tok"), &body);
  local::HelloReply hr;
  memcpy(&hr, body.data(), sizeof(hr));
  ASSERT_EQ(hr.code, 0);
  // Reserve a page, then commit it with a checksum that does not match the slot (never written).
  const PageLayout l = SmallLayout();
  local::ReserveRequest rr{7, 7, l.Id(), 0, l.PageBytes()};
  h = exchange(fd, frame(local::Op::kReserve, 1, std::string(reinterpret_cast<char*>(&rr), 32)),
               &body);
  local::ReserveReply rep;
  memcpy(&rep, body.data(), sizeof(rep));
  ASSERT_EQ(rep.code, 0);
  local::CommitRequest cr{rep.handle, 0x1234};
  h = exchange(fd, frame(local::Op::kCommit, 1, std::string(reinterpret_cast<char*>(&cr), 16)),
               &body);
  local::CodeReply code;
  memcpy(&code, body.data(), sizeof(code));
  EXPECT_EQ(code.code, static_cast<int>(absl::StatusCode::kDataLoss));
  // Committing it again, or a handle this connection never got: NotFound.
  local::CommitRequest foreign[2] = {{rep.handle, 0}, {rep.handle + 1000, 0}};
  h = exchange(fd, frame(local::Op::kCommit, 2, std::string(reinterpret_cast<char*>(foreign), 32)),
               &body);
  local::CodeReply codes[2];
  memcpy(codes, body.data(), sizeof(codes));
  EXPECT_EQ(codes[0].code, static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_EQ(codes[1].code, static_cast<int>(absl::StatusCode::kNotFound));
  // Wrong size for the layout: InvalidArgument, nothing reserved.
  local::ReserveRequest bad{8, 8, l.Id(), 0, l.PageBytes() + 1};
  h = exchange(fd, frame(local::Op::kReserve, 1, std::string(reinterpret_cast<char*>(&bad), 32)),
               &body);
  memcpy(&rep, body.data(), sizeof(rep));
  EXPECT_EQ(rep.code, static_cast<int>(absl::StatusCode::kInvalidArgument));
  // A frame whose payload size does not match its entry count: error frame, connection closed.
  h = exchange(fd, frame(local::Op::kAcquire, 3, std::string(16, '\0')), &body);
  EXPECT_EQ(h.op, static_cast<uint16_t>(local::Op::kError));
  ::close(fd);
  std::unique_ptr<Client> c = Connect(DataPathKind::kRemote, "tok");
  absl::StatusOr<std::vector<bool>> ex = c->Exists({PageKey{7, 7}, PageKey{8, 8}});
  ASSERT_TRUE(ex.ok());
  EXPECT_FALSE((*ex)[0]);
  EXPECT_FALSE((*ex)[1]);
  ExpectStillServing("tok");
}

}  // namespace
}  // namespace pagoda::testing
