// The operators' HTTP endpoint of pagodad (/metrics, /healthz), served by civetweb — the HTTP
// server prometheus-cpp's pull exposer is built on — with a pool of worker threads, so a slow or
// silent client holds one worker (until its request times out) while probes and scrapes go on.
// GET (and HEAD) only; it serves operators and Prometheus, never page bytes.
//
// Thread safety: the handler runs concurrently on the worker threads and must be thread-safe.
// Construction and destruction from one thread; the destructor stops the server and waits for
// the handlers in flight.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

namespace pagoda::service {

struct HttpReply {
  int status = 200;
  std::string content_type = "text/plain; version=0.0.4; charset=utf-8";
  std::string body;
};

struct HttpServerOptions {
  // Connections served at once; one more client than this waits in the listen queue.
  int worker_threads = 4;
  // A client that has not sent its whole request (or read the reply) by then is dropped.
  int request_timeout_ms = 5000;
};

class HttpServer {
 public:
  // `handler(path)` answers a GET of `path` (query string stripped).
  using Handler = std::function<HttpReply(const std::string& path)>;

  // Binds host:port (an IPv4 address; port 0 = any free port) and starts serving.
  // Errors: InvalidArgument for a bad host or port, Unavailable when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& host, int port,
                                                           Handler handler,
                                                           const HttpServerOptions& options = {});
  ~HttpServer();  // Stops: closes the listener, waits for the handlers in flight.
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port.
  int port() const { return port_; }

 private:
  explicit HttpServer(Handler handler) : handler_(std::move(handler)) {}
  static int OnRequest(mg_connection* conn, void* self);

  Handler handler_;
  std::string host_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace pagoda::service
