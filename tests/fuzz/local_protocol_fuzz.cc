// libFuzzer target: the local zero-copy path's records (pagoda/service/local_protocol.h), served
// by the real LocalServer on a unix socket. Each input is one client connection's byte stream
// (when its first byte is odd, after a valid Hello, so the fuzzer reaches Reserve / Commit /
// Abort / Acquire / Release); the harness half-closes and reads until the server closes. The
// server must neither crash nor hang: it answers or closes, and releases what the connection held.
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "local_server.h"
#include "pagoda/service/local_protocol.h"
#include "pagoda/service/unix_socket.h"
#include "service_fixture.h"
#include "spdlog/spdlog.h"

namespace {

pagoda::service::LocalServer* started = nullptr;

pagoda::service::LocalServer& Server(std::string* path) {
  static std::string socket_path;
  static pagoda::service::LocalServer* server = [] {
    pagoda::fuzz::ServiceFixture& f = pagoda::fuzz::ServiceFixture::Get();
    // The server logs each connection's end at info: ~1 GB of log per hour of fuzzing.
    spdlog::set_level(spdlog::level::warn);
    char dir[] = "/tmp/pagoda-fuzz-XXXXXX";
    if (mkdtemp(dir) == nullptr) std::abort();
    socket_path = std::string(dir) + "/s";
    static const std::string root = dir;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(root, ec);
    });
    auto* s = new pagoda::service::LocalServer(f.store.get(), f.auth.get(), f.metrics.get(),
                                               pagoda::service::LocalServerOptions{});
    if (!s->Start(socket_path).ok()) std::abort();
    started = s;
    return s;
  }();
  *path = socket_path;
  return *server;
}

std::string Hello() {
  using namespace pagoda::local;
  const std::string tenant = pagoda::fuzz::kTenant, token = pagoda::fuzz::kToken;
  HelloRequest req{static_cast<uint32_t>(tenant.size()), static_cast<uint32_t>(token.size())};
  FrameHeader h;
  h.op = static_cast<uint16_t>(Op::kHello);
  h.count = 1;
  h.payload_bytes = static_cast<uint32_t>(sizeof(req) + tenant.size() + token.size());
  std::string out(reinterpret_cast<const char*>(&h), sizeof(h));
  out.append(reinterpret_cast<const char*>(&req), sizeof(req));
  return out + tenant + token;
}

}  // namespace

// Replay runs (replay_main.cc): the server's threads stop before exit destroys the store they
// serve from (TSan saw a worker still serving the last input read freed memory).
extern "C" void PagodaFuzzReplayDone() {
  if (started != nullptr) started->Stop();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string path;
  Server(&path);
  if (size == 0) return 0;
  std::string stream = (data[0] & 1) ? Hello() : std::string();
  stream.append(reinterpret_cast<const char*>(data + 1), size - 1);
  absl::StatusOr<int> fd = pagoda::local::ConnectUnix(path);
  if (!fd.ok()) std::abort();
  timeval tv{10, 0};  // the server must answer or close well within this
  setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(*fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  // The server may close early (bad frame): a failed write is part of the game.
  (void)pagoda::local::WriteAll(*fd, stream.data(), stream.size());
  ::shutdown(*fd, SHUT_WR);
  char buf[65536];
  while (true) {
    ssize_t n = ::recv(*fd, buf, sizeof(buf), 0);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      __builtin_trap();  // the server neither answered nor closed: a hang
    }
    break;
  }
  ::close(*fd);
  return 0;
}
