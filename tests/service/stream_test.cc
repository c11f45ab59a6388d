// The stream data path (issue 15): page bytes on a TCP connection to pagodad's data port, one
// gRPC control call per batch. Byte-exact round trips through the client, and the server's
// answers to misuse of the raw protocol (unknown ticket, another tenant's ticket, a frame that
// does not match its call, bytes that do not match their checksum): a clear error, nothing
// stored, and the connection closed when its stream may be out of step.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "pagoda.grpc.pb.h"
#include "pagoda/service/stream_wire.h"
#include "pagodad_process.h"

namespace pagoda::testing {
namespace {

std::unique_ptr<PagodadProcess> StartServer(const std::string& yaml = TestConfigYaml()) {
  PagodadProcess::Options o;
  o.config_yaml = yaml;
  absl::StatusOr<std::unique_ptr<PagodadProcess>> p = PagodadProcess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

std::unique_ptr<Client> RemoteClient(const PagodadProcess& s, const std::string& tenant,
                                     bool stream = true) {
  ClientOptions o = s.ClientOpts(tenant, DataPathKind::kRemote);
  o.remote_stream = stream;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

TEST(StreamPathTest, BatchesRoundTripByteExact) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> c = RemoteClient(*server, "tenant-s");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->data_path(), "stream");
  const PageLayout layouts[] = {SmallLayout(), PageLayout{}, LargeLayout()};
  std::vector<std::vector<uint8_t>> data;
  std::vector<PutPage> puts;
  for (int i = 0; i < 66; ++i) {
    const PageLayout& l = layouts[i % 3];
    data.push_back(PageBytes(PageKey{5, uint64_t(i)}, l.PageBytes()));
  }
  for (int i = 0; i < 66; ++i)
    puts.push_back({PageKey{5, uint64_t(i)}, layouts[i % 3].Id(), data[i]});
  for (const absl::Status& s : c->Put(puts)) ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(absl::IsAlreadyExists(c->Put({puts[4]})[0]));

  // Every page back in one batch, plus a missing key and a too-small buffer in the middle.
  std::vector<std::vector<uint8_t>> out(68);
  std::vector<GetPage> gets;
  for (int i = 0; i < 66; ++i) {
    out[i].assign(layouts[i % 3].PageBytes() + (i % 2) * 100, 0xEE);  // some buffers larger
    gets.push_back({PageKey{5, uint64_t(i)}, absl::MakeSpan(out[i])});
  }
  out[66].resize(1 << 20);
  gets.insert(gets.begin() + 10, GetPage{PageKey{6, 6}, absl::MakeSpan(out[66])});
  out[67].resize(100);
  gets.insert(gets.begin() + 20, GetPage{PageKey{5, 2}, absl::MakeSpan(out[67])});  // 2 MiB page
  std::vector<GetResult> got = c->Get(gets);
  ASSERT_EQ(got.size(), 68u);
  EXPECT_TRUE(absl::IsNotFound(got[10].status)) << got[10].status;
  EXPECT_TRUE(absl::IsInvalidArgument(got[20].status)) << got[20].status;
  EXPECT_NE(got[20].status.message().find("buffer"), std::string_view::npos) << got[20].status;
  for (size_t j = 0; j < gets.size(); ++j) {
    if (j == 10 || j == 20) continue;
    const int i = static_cast<int>(gets[j].key.lo);
    ASSERT_TRUE(got[j].status.ok()) << j << ": " << got[j].status;
    EXPECT_EQ(got[j].size, data[i].size());
    EXPECT_EQ(got[j].layout, layouts[i % 3].Id());
    EXPECT_EQ(0, std::memcmp(out[i].data(), data[i].data(), data[i].size())) << "page " << i;
  }
  // The same pages read over the gRPC fallback path and through the async API.
  std::unique_ptr<Client> g = RemoteClient(*server, "tenant-s", /*stream=*/false);
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->data_path(), "remote");
  std::vector<uint8_t> via_grpc(LargeLayout().PageBytes());
  ASSERT_TRUE(g->Get({{PageKey{5, 2}, absl::MakeSpan(via_grpc)}})[0].status.ok());
  EXPECT_EQ(via_grpc, data[2]);
  std::vector<uint8_t> via_async(LargeLayout().PageBytes());
  std::vector<GetResult> a = c->GetAsync({{PageKey{5, 5}, absl::MakeSpan(via_async)}}).get();
  ASSERT_TRUE(a[0].status.ok()) << a[0].status;
  EXPECT_EQ(via_async, data[5]);
}

TEST(StreamPathTest, MalformedBatchStoresNothingAndTheNextBatchWorks) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> c = RemoteClient(*server, "tenant-m");
  ASSERT_NE(c, nullptr);
  const PageLayout l = PageLayout{};
  std::vector<uint8_t> good = PageBytes(PageKey{1, 1}, l.PageBytes());
  std::vector<uint8_t> short_page(l.PageBytes() - 8, 1);
  // One page of the wrong size fails the whole batch (its bytes were on the wire already).
  std::vector<absl::Status> st =
      c->Put({{PageKey{1, 1}, l.Id(), good}, {PageKey{1, 2}, l.Id(), short_page}});
  for (const absl::Status& s : st) EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  absl::StatusOr<std::vector<bool>> e = c->Exists({PageKey{1, 1}, PageKey{1, 2}});
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e, (std::vector<bool>{false, false}));
  ASSERT_TRUE(c->Put({{PageKey{1, 1}, l.Id(), good}})[0].ok());
  std::vector<uint8_t> out(l.PageBytes());
  ASSERT_TRUE(c->Get({{PageKey{1, 1}, absl::MakeSpan(out)}})[0].status.ok());
  EXPECT_EQ(out, good);
}

// A raw data connection and gRPC stub, speaking the protocol by hand.
class RawStream {
 public:
  explicit RawStream(const PagodadProcess& s)
      : stub_(v1::Pagoda::NewStub(
            grpc::CreateChannel(s.target(), grpc::InsecureChannelCredentials()))) {
    grpc::ClientContext ctx;
    v1::HealthResponse h;
    EXPECT_TRUE(stub_->Health(&ctx, v1::HealthRequest(), &h).ok());
    port_ = static_cast<int>(h.data_port());
  }
  ~RawStream() {
    if (fd_ >= 0) close(fd_);
  }
  int port() const { return port_; }
  // Connects and reads the hello; returns the ticket.
  std::string Open() {
    absl::StatusOr<int> fd = stream::ConnectTcp("127.0.0.1", port_, absl::Seconds(5));
    EXPECT_TRUE(fd.ok()) << fd.status();
    fd_ = *fd;
    EXPECT_TRUE(stream::ConfigureSocket(fd_, absl::Seconds(5)).ok());
    stream::StreamHello hello;
    EXPECT_TRUE(stream::ReadAll(fd_, &hello, sizeof(hello)).ok());
    EXPECT_EQ(hello.magic, stream::kHelloMagic);
    return std::string(reinterpret_cast<const char*>(hello.ticket), stream::kTicketBytes);
  }
  grpc::Status Get(const std::string& tenant, const std::string& ticket, uint64_t seq,
                   const PageKey& key, v1::BatchResponse* resp) {
    v1::StreamGetRequest req;
    req.set_tenant(tenant);
    req.set_ticket(ticket);
    req.set_seq(seq);
    req.add_keys()->set_hi(key.hi);
    req.mutable_keys(0)->set_lo(key.lo);
    req.add_capacity(1 << 20);
    grpc::ClientContext ctx;
    return stub_->StreamGet(&ctx, req, resp);
  }
  // A StreamPut of one page whose frame says `frame_seq`, whose bytes are `bytes` and whose
  // trailer claims `checksum`.
  grpc::Status Put(const std::string& tenant, const std::string& ticket, uint64_t seq,
                   uint64_t frame_seq, const PageKey& key, const PageLayout& l,
                   const std::vector<uint8_t>& bytes, uint64_t checksum, v1::PutResponse* resp) {
    v1::StreamPutRequest req;
    req.set_ticket(ticket);
    req.set_seq(seq);
    req.mutable_begin()->set_tenant(tenant);
    v1::PutPage* p = req.mutable_begin()->add_pages();
    p->mutable_key()->set_hi(key.hi);
    p->mutable_key()->set_lo(key.lo);
    p->set_layout_id(l.Id());
    p->set_size(bytes.size());
    stream::StreamFrameHeader frame;
    frame.count = 1;
    frame.seq = frame_seq;
    frame.payload_bytes = bytes.size();
    // Header, page bytes, then the trailer with the page's checksum.
    iovec iov[3] = {{&frame, sizeof(frame)},
                    {const_cast<uint8_t*>(bytes.data()), bytes.size()},
                    {&checksum, sizeof(checksum)}};
    EXPECT_TRUE(stream::WriteAllV(fd_, {iov, 3}).ok());  // fits the socket buffers
    grpc::ClientContext ctx;
    return stub_->StreamPut(&ctx, req, resp);
  }
  // Whether the server closed the connection (reads EOF within a second).
  bool ClosedByServer() {
    absl::Status s = stream::ConfigureSocket(fd_, absl::Seconds(1));
    char b;
    return s.ok() && recv(fd_, &b, 1, 0) == 0;
  }
  int fd() const { return fd_; }

 private:
  std::unique_ptr<v1::Pagoda::Stub> stub_;
  int port_ = 0;
  int fd_ = -1;
};

TEST(StreamPathTest, TicketsAreCheckedAndBoundToOneTenant) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  RawStream raw(*server);
  ASSERT_GT(raw.port(), 0);
  const std::string ticket = raw.Open();
  v1::BatchResponse resp;
  grpc::Status s = raw.Get("a", std::string(16, 'x'), 1, PageKey{1, 1}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  // First use binds the connection to tenant "a": a missing page comes back as a frame.
  s = raw.Get("a", ticket, 7, PageKey{1, 1}, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_EQ(resp.results(0).code(), static_cast<int>(absl::StatusCode::kNotFound));
  stream::StreamFrameHeader frame;
  ASSERT_TRUE(stream::ReadAll(raw.fd(), &frame, sizeof(frame)).ok());
  EXPECT_EQ(frame.seq, 7u);
  EXPECT_EQ(frame.count, 1u);
  EXPECT_EQ(frame.payload_bytes, 0u);
  stream::StreamPageHeader h;
  ASSERT_TRUE(stream::ReadAll(raw.fd(), &h, sizeof(h)).ok());
  EXPECT_EQ(h.code, static_cast<int>(absl::StatusCode::kNotFound));
  // Tenant "b" cannot use tenant "a"'s connection.
  s = raw.Get("b", ticket, 8, PageKey{1, 1}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
}

TEST(StreamPathTest, ABadFrameOrBadBytesStoreNothing) {
  std::unique_ptr<PagodadProcess> server = StartServer();
  ASSERT_NE(server, nullptr);
  const PageLayout l = SmallLayout();
  const std::vector<uint8_t> bytes = PageBytes(PageKey{3, 3}, l.PageBytes());
  std::unique_ptr<Client> c = RemoteClient(*server, "t");
  ASSERT_NE(c, nullptr);
  {
    // A frame whose seq is not the call's: refused, nothing stored, connection closed.
    RawStream raw(*server);
    const std::string ticket = raw.Open();
    v1::PutResponse resp;
    grpc::Status s = raw.Put("t", ticket, 5, 6, PageKey{3, 3}, l, bytes,
                             PageChecksum(bytes.data(), bytes.size()), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_TRUE(raw.ClosedByServer());
    EXPECT_FALSE((*c->Exists({PageKey{3, 3}}))[0]);
  }
  {
    // Bytes that do not match the checksum given in the call: DataLoss, page aborted.
    RawStream raw(*server);
    const std::string ticket = raw.Open();
    v1::PutResponse resp;
    grpc::Status s = raw.Put("t", ticket, 9, 9, PageKey{3, 3}, l, bytes,
                             PageChecksum(bytes.data(), bytes.size()) ^ 1, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(resp.results_size(), 1);
    EXPECT_EQ(resp.results(0).code(), static_cast<int>(absl::StatusCode::kDataLoss));
    EXPECT_FALSE((*c->Exists({PageKey{3, 3}}))[0]);
    // The stream stayed in step: the same connection writes the page correctly next.
    s = raw.Put("t", ticket, 10, 10, PageKey{3, 3}, l, bytes,
                PageChecksum(bytes.data(), bytes.size()), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.results(0).code(), 0);
  }
  std::vector<uint8_t> out(l.PageBytes());
  ASSERT_TRUE(c->Get({{PageKey{3, 3}, absl::MakeSpan(out)}})[0].status.ok());
  EXPECT_EQ(out, bytes);
}

TEST(StreamPathTest, ServerWithoutDataPortServesBytesOverGrpc) {
  std::string yaml = TestConfigYaml();
  const std::string from = "http_port: 0}";
  yaml.replace(yaml.find(from), from.size(), "http_port: 0, data_port: -1}");
  std::unique_ptr<PagodadProcess> server = StartServer(yaml);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> c = RemoteClient(*server, "t");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->data_path(), "remote");
  absl::StatusOr<ServiceHealth> h = c->Health();
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->data_port, 0);
  const PageLayout l = LargeLayout();
  std::vector<uint8_t> data = PageBytes(PageKey{4, 4}, l.PageBytes());
  ASSERT_TRUE(c->Put({{PageKey{4, 4}, l.Id(), data}})[0].ok());
  std::vector<uint8_t> out(l.PageBytes());
  ASSERT_TRUE(c->Get({{PageKey{4, 4}, absl::MakeSpan(out)}})[0].status.ok());
  EXPECT_EQ(out, data);
}

TEST(StreamPathTest, TheDataPortFlagOverridesTheConfig) {
  std::string yaml = TestConfigYaml();
  const std::string from = "http_port: 0}";
  yaml.replace(yaml.find(from), from.size(), "http_port: 0, data_port: -1}");
  for (const char* port : {"0", "-1"}) {
    SCOPED_TRACE(port);
    PagodadProcess::Options o;
    o.config_yaml = std::string(port) == "0" ? yaml : TestConfigYaml();
    o.extra_args = {"--data-port", port};
    absl::StatusOr<std::unique_ptr<PagodadProcess>> server = PagodadProcess::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    std::unique_ptr<Client> c = RemoteClient(**server, "t");
    ASSERT_NE(c, nullptr);
    absl::StatusOr<ServiceHealth> h = c->Health();
    ASSERT_TRUE(h.ok());
    if (std::string(port) == "0") {  // the config turned the path off, the flag on a free port
      EXPECT_GT(h->data_port, 0);
      EXPECT_EQ(c->data_path(), "stream");
    } else {  // the config's free port, the flag off
      EXPECT_EQ(h->data_port, 0);
      EXPECT_EQ(c->data_path(), "remote");
    }
  }
  // Out of range: pagodad refuses to start.
  PagodadProcess::Options bad;
  bad.extra_args = {"--data-port", "70000"};
  EXPECT_FALSE(PagodadProcess::Start(bad).ok());
}

}  // namespace
}  // namespace pagoda::testing
