// A minimal HTTP/1.0 server for /metrics and /healthz: one thread, one request per connection,
// GET only. It serves operators and Prometheus, not page bytes.
//
// Thread safety: Start/Stop from one thread; the handler runs on the server thread.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pagoda::service {

struct HttpReply {
  int status = 200;
  std::string content_type = "text/plain; version=0.0.4; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  // `handler(path)` answers a GET of `path` (query string stripped).
  using Handler = std::function<HttpReply(const std::string& path)>;

  explicit HttpServer(Handler handler);
  ~HttpServer();  // Stops.

  // Binds host:port (port 0 = any free port) and starts serving; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  void Loop();
  void Serve(int fd);

  Handler handler_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace pagoda::service
