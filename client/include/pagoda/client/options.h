// Options of a Pagoda client connection.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace pagoda {

// How page bytes move between the client and pagodad.
enum class DataPathKind {
  kAuto,    // local zero-copy when the server's unix socket is reachable, else remote
  kLocal,   // shared-memory arena only; Connect fails when it is not reachable
  kRemote,  // bytes over the network (works across machines): see remote_stream and ucx
};

struct ClientOptions {
  // pagodad's gRPC address ("host:port").
  std::string target = "127.0.0.1:50051";
  // Tenant every request acts as, and its bearer token ("" = none). Pages of one tenant are
  // invisible to every other tenant.
  std::string tenant = "default";
  std::string token;

  DataPathKind data_path = DataPathKind::kAuto;
  // Remote page bytes over UCX: when the client would move bytes over gRPC (kRemote, or kAuto
  // without a reachable local path) and the server offers its UCX path, pages are read and
  // written with one-sided UCX operations on pagodad's arena and gRPC carries only control
  // (data_path() reports "ucx"). A server without UCX: bytes over gRPC as before.
  bool ucx = false;
  // Remote page bytes on the server's stream data path (issue 15): each batch is one gRPC call
  // while its bytes cross a TCP connection to pagodad's data port, straight between the socket
  // and the caller's buffers (data_path() reports "stream"). Used when the client would move
  // bytes remotely, the server offers it and it can be reached; otherwise (or false) page bytes
  // go over gRPC streaming (data_path() "remote"). Never used with TLS (tls_ca set): the data
  // connection is not encrypted.
  bool remote_stream = true;
  // Unix socket of the zero-copy path; "" = the one pagodad reports in Health.
  std::string local_socket;
  // Local-path connections kept open (one batch at a time uses one); more lets more threads
  // move pages at once, each counts against the server's server.local_max_connections.
  int local_connections = 4;
  // Prefault each segment of this tenant's pages the first time a slot in it is used
  // (MADV_POPULATE_WRITE), so later copies in that segment never wait on a page fault. The rest
  // of the tenant's memfd (other tenants' segments) is never touched.
  bool prefault_arena = true;

  // TLS: off unless tls_ca is set (PEM of the CA that signed the server's cert). For mTLS also
  // give the client's cert and key.
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;  // override of the name checked in the server's cert

  // Deadline of each call (gRPC deadline; on the local path, the socket read/write timeout).
  // Larger batches of large pages need more.
  absl::Duration timeout = absl::Seconds(30);
  // Threads that run the *Async calls. Each runs one batch at a time.
  int async_threads = 2;
  // Chunk size of remote Put / Get streams (must stay below the server's max_message_bytes).
  uint32_t chunk_bytes = 1u << 20;
  // Largest gRPC message the client accepts.
  int max_message_bytes = 16 << 20;
};

}  // namespace pagoda
