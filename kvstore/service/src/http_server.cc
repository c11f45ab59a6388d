#include "http_server.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace pagoda::service {
namespace {

// civetweb reports connection-level trouble (timeouts, malformed requests) here; the client gets
// its 4xx from civetweb, the operator a debug line rather than stderr noise.
int LogMessage(const mg_connection*, const char* message) {
  spdlog::debug("http: {}", message);
  return 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& host, int port,
                                                              Handler handler,
                                                              const HttpServerOptions& options) {
  in_addr addr{};
  if (inet_pton(AF_INET, host.c_str(), &addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("http: not an IPv4 address: '", host, "'"));
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("http: port out of range: ", port));
  }
  if (options.worker_threads < 1 || options.request_timeout_ms < 1) {
    return absl::InvalidArgumentError("http: worker_threads and request_timeout_ms must be >= 1");
  }
  static std::once_flag init;
  std::call_once(init, [] { mg_init_library(0); });

  std::unique_ptr<HttpServer> server(new HttpServer(std::move(handler)));
  server->host_ = host;
  const std::string listen = absl::StrCat(host, ":", port);
  const std::string threads = absl::StrCat(options.worker_threads);
  const std::string timeout = absl::StrCat(options.request_timeout_ms);
  // No document_root: civetweb serves no files, only the handler below.
  const char* mg_options[] = {
      "listening_ports", listen.c_str(),      "num_threads", threads.c_str(), "request_timeout_ms",
      timeout.c_str(),   "enable_keep_alive", "no",          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  callbacks.log_message = LogMessage;
  mg_context* ctx = mg_start(&callbacks, server.get(), mg_options);
  if (ctx == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("http: cannot listen on ", listen, " (port in use?)"));
  }
  mg_set_request_handler(ctx, "/", &HttpServer::OnRequest, server.get());
  mg_server_port ports[1];
  std::memset(ports, 0, sizeof(ports));
  if (mg_get_server_ports(ctx, 1, ports) < 1 || ports[0].port <= 0) {
    mg_stop(ctx);
    return absl::InternalError(absl::StrCat("http: no bound port for ", listen));
  }
  server->port_ = ports[0].port;
  server->ctx_ = ctx;
  return server;
}

HttpServer::~HttpServer() {
  if (ctx_ == nullptr) return;
  // civetweb's accept loop polls in 2 s quanta and sees the stop flag only between polls; a
  // connection wakes it, so a stop takes milliseconds instead of up to 2 s.
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    mg_stop(ctx_);
    stopped = true;
  });
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  if (inet_pton(AF_INET, host_.c_str(), &addr.sin_addr) != 1 || addr.sin_addr.s_addr == 0) {
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);  // bound to 0.0.0.0
  }
  while (!stopped) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0) {
      (void)::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
      ::close(fd);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stopper.join();
}

int HttpServer::OnRequest(mg_connection* conn, void* self) {
  const mg_request_info* info = mg_get_request_info(conn);
  HttpReply reply;
  const bool head =
      info->request_method != nullptr && std::strcmp(info->request_method, "HEAD") == 0;
  if (info->request_method == nullptr || (std::strcmp(info->request_method, "GET") != 0 && !head)) {
    reply = {405, "text/plain", "only GET\n"};
  } else if (info->local_uri == nullptr || info->local_uri[0] != '/') {
    reply = {400, "text/plain", "bad request\n"};
  } else {
    reply = static_cast<HttpServer*>(self)->handler_(info->local_uri);
  }
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s"
            "\r\n",
            reply.status, mg_get_response_code_text(conn, reply.status), reply.content_type.c_str(),
            reply.body.size(), reply.status == 405 ? "Allow: GET, HEAD\r\n" : "");
  if (!head) mg_write(conn, reply.body.data(), reply.body.size());
  return reply.status;  // non-zero: handled
}

}  // namespace pagoda::service
