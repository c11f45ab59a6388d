// pagoda_raw_socket_peer: the raw baseline of pagoda_service_bench's batched rows. A plain TCP
// socket loop in its own process: it accepts one connection on 127.0.0.1:<port> and serves
// RawCommand requests until the peer closes: kPut reads `bytes` bytes into its buffer and
// answers one byte, kGet sends `bytes` bytes from its buffer. No checksums, no store: the bytes
// a batch of pages would move, and one round trip per batch.
//
//   pagoda_raw_socket_peer <port>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "pagoda/service/stream_wire.h"
#include "raw_command.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <port>\n", argv[0]);
    return 2;
  }
  int port = 0;
  absl::StatusOr<int> lfd = pagoda::stream::ListenTcp("127.0.0.1", std::atoi(argv[1]), &port);
  if (!lfd.ok()) {
    std::fprintf(stderr, "%s\n", lfd.status().ToString().c_str());
    return 1;
  }
  const int fd = accept(*lfd, nullptr, nullptr);
  if (fd < 0 || !pagoda::stream::ConfigureSocket(fd, absl::Seconds(60)).ok()) return 1;
  std::vector<uint8_t> buf;
  pagoda::bench::RawCommand cmd;
  while (pagoda::stream::ReadAll(fd, &cmd, sizeof(cmd)).ok()) {
    if (buf.size() < cmd.bytes) buf.resize(cmd.bytes);
    if (cmd.op == pagoda::bench::RawCommand::kPut) {
      if (!pagoda::stream::ReadAll(fd, buf.data(), cmd.bytes).ok()) return 1;
      const uint8_t ack = 1;
      const iovec iov{const_cast<uint8_t*>(&ack), 1};
      if (!pagoda::stream::WriteAllV(fd, {&iov, 1}).ok()) return 1;
    } else {
      const iovec iov{buf.data(), cmd.bytes};
      if (!pagoda::stream::WriteAllV(fd, {&iov, 1}).ok()) return 1;
    }
  }
  return 0;
}
