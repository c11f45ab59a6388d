#include "http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"

namespace pagoda::service {
namespace {

// A connected TCP socket to 127.0.0.1:port whose reads give up after 10 s (a test fails, never
// hangs); -1 when the connect fails.
int Connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Sends `request` on a fresh connection and reads the reply to EOF.
std::string Exchange(int port, const std::string& request) {
  int fd = Connect(port);
  if (fd < 0) return "connect failed";
  (void)!::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

std::string Get(int port, const std::string& path) {
  return Exchange(port, "GET " + path + " HTTP/1.1\r\nHost: t\r\n\r\n");
}

HttpReply Routes(const std::string& path) {
  if (path == "/healthz") return {200, "text/plain", "ok\n"};
  if (path == "/metrics") return {200, "text/plain; version=0.0.4", "m_total 1\n"};
  return {404, "text/plain", "not found\n"};
}

TEST(HttpServerTest, AnswersGetWithTheHandlersReply) {
  absl::StatusOr<std::unique_ptr<HttpServer>> s = HttpServer::Start("127.0.0.1", 0, Routes);
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->port();
  ASSERT_GT(port, 0);
  std::string r = Get(port, "/healthz?verbose=1");  // the query string is not part of the path
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 200 OK\r\n")) << r;
  EXPECT_TRUE(absl::EndsWith(r, "\r\n\r\nok\n")) << r;
  EXPECT_TRUE(absl::StrContains(r, "Content-Length: 3\r\n")) << r;
  r = Get(port, "/metrics");
  EXPECT_TRUE(absl::StrContains(r, "Content-Type: text/plain; version=0.0.4\r\n")) << r;
  EXPECT_TRUE(absl::EndsWith(r, "m_total 1\n")) << r;
  r = Get(port, "/nope");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 404 Not Found")) << r;
  r = Exchange(port, "HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 200")) << r;
  EXPECT_TRUE(absl::EndsWith(r, "\r\n\r\n")) << "HEAD carries no body: " << r;
}

TEST(HttpServerTest, RejectsOtherMethodsAndGarbageWithoutCallingTheHandler) {
  std::atomic<int> calls{0};
  absl::StatusOr<std::unique_ptr<HttpServer>> s =
      HttpServer::Start("127.0.0.1", 0, [&](const std::string& p) {
        ++calls;
        return Routes(p);
      });
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->port();
  std::string r = Exchange(port, "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 405")) << r;
  // A TLS ClientHello start, then garbage (22 bytes with embedded NULs: the length comes from the
  // array, a hand count read past it).
  constexpr char kNotHttp[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n";
  r = Exchange(port, std::string(kNotHttp, sizeof(kNotHttp) - 1));
  EXPECT_FALSE(absl::StrContains(r, " 200 ")) << r;
  EXPECT_EQ(calls.load(), 0);
  // Still serving after the garbage.
  r = Get(port, "/healthz");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 200")) << r;
  EXPECT_EQ(calls.load(), 1);
}

TEST(HttpServerTest, ASlowClientDoesNotHoldTheProbe) {
  absl::StatusOr<std::unique_ptr<HttpServer>> s = HttpServer::Start("127.0.0.1", 0, Routes);
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->port();
  // A client that sent half a request and then goes quiet (the old one-thread server served
  // nobody else until it timed out).
  int slow = Connect(port);
  ASSERT_GE(slow, 0);
  const std::string half = "GET /metrics HTTP/1.1\r\nHost: t\r\n";
  ASSERT_EQ(::send(slow, half.data(), half.size(), MSG_NOSIGNAL), ssize_t(half.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server has picked it up
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    std::string r = Get(port, "/healthz");
    ASSERT_TRUE(absl::StartsWith(r, "HTTP/1.1 200")) << r;
    // Far below the 5 s request timeout that releases the slow client's worker (and below the
    // 2 s a one-connection-at-a-time server made every probe wait).
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1000));
  }
  // The slow client still gets its answer once it finishes its request.
  ASSERT_EQ(::send(slow, "\r\n", 2, MSG_NOSIGNAL), 2);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(slow, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(slow);
  EXPECT_TRUE(absl::EndsWith(out, "m_total 1\n")) << out;
}

TEST(HttpServerTest, AHandlerThatBlocksDoesNotHoldTheProbe) {
  absl::Notification entered, release;
  absl::StatusOr<std::unique_ptr<HttpServer>> s =
      HttpServer::Start("127.0.0.1", 0, [&](const std::string& path) {
        if (path == "/metrics") {  // a scrape stuck behind a slow store
          entered.Notify();
          release.WaitForNotificationWithTimeout(absl::Seconds(20));
        }
        return Routes(path);
      });
  ASSERT_TRUE(s.ok()) << s.status();
  const int port = (*s)->port();
  std::string scrape;
  std::thread scraper([&] { scrape = Get(port, "/metrics"); });
  ASSERT_TRUE(entered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  std::string r = Get(port, "/healthz");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 200")) << r;
  EXPECT_FALSE(release.HasBeenNotified()) << "the probe was answered while the scrape blocked";
  release.Notify();
  scraper.join();
  EXPECT_TRUE(absl::EndsWith(scrape, "m_total 1\n")) << scrape;
}

TEST(HttpServerTest, StopsWithAnIdleClientConnected) {
  absl::StatusOr<std::unique_ptr<HttpServer>> s = HttpServer::Start("127.0.0.1", 0, Routes);
  ASSERT_TRUE(s.ok()) << s.status();
  int idle = Connect((*s)->port());
  ASSERT_GE(idle, 0);
  const auto t0 = std::chrono::steady_clock::now();
  s->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(8));
  ::close(idle);
}

TEST(HttpServerTest, BadAddressesAreClearErrors) {
  EXPECT_EQ(HttpServer::Start("not-an-ip", 0, Routes).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpServer::Start("127.0.0.1", 70000, Routes).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<HttpServer>> a = HttpServer::Start("127.0.0.1", 0, Routes);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<std::unique_ptr<HttpServer>> b =
      HttpServer::Start("127.0.0.1", (*a)->port(), Routes);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable) << b.status();
}

}  // namespace
}  // namespace pagoda::service
