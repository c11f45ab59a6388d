#include "resp_client.h"

#include <hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace pagoda::bench {
namespace {

struct FreeReply {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, FreeReply>;

absl::Status ContextError(redisContext* c, const char* what) {
  return absl::UnavailableError(absl::StrCat("redis ", what, ": ", c->errstr));
}

}  // namespace

void RespClient::Free::operator()(redisContext* c) const { redisFree(c); }

absl::StatusOr<RespClient> RespClient::Connect(int port) {
  redisContext* c = redisConnect("127.0.0.1", port);
  if (c == nullptr) return absl::ResourceExhaustedError("redis: cannot allocate a context");
  RespClient client(c);
  if (c->err != 0) return ContextError(c, absl::StrCat("connect :", port).c_str());
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return client;
}

absl::Status RespClient::Set(const std::string& key, absl::Span<const uint8_t> value) {
  Reply r(static_cast<redisReply*>(
      redisCommand(ctx_.get(), "SET %b %b", key.data(), key.size(), value.data(), value.size())));
  if (!r) return ContextError(ctx_.get(), "SET");
  if (r->type != REDIS_REPLY_STATUS) {
    return absl::InternalError(absl::StrCat("redis SET: ", r->type == REDIS_REPLY_ERROR
                                                               ? std::string(r->str, r->len)
                                                               : "unexpected reply"));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> RespClient::Get(const std::string& key, absl::Span<uint8_t> out) {
  Reply r(static_cast<redisReply*>(redisCommand(ctx_.get(), "GET %b", key.data(), key.size())));
  if (!r) return ContextError(ctx_.get(), "GET");
  if (r->type == REDIS_REPLY_NIL) return absl::NotFoundError("redis GET: no such key");
  if (r->type != REDIS_REPLY_STRING) return absl::InternalError("redis GET: unexpected reply");
  if (r->len > out.size()) {
    return absl::OutOfRangeError(
        absl::StrCat("redis GET: value of ", r->len, " bytes, buffer of ", out.size()));
  }
  std::memcpy(out.data(), r->str, r->len);
  return r->len;
}

absl::StatusOr<std::string> RespClient::Command(std::initializer_list<std::string> args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  Reply r(static_cast<redisReply*>(
      redisCommandArgv(ctx_.get(), static_cast<int>(argv.size()), argv.data(), lens.data())));
  if (!r) return ContextError(ctx_.get(), "command");
  if (r->type == REDIS_REPLY_ERROR) {
    return absl::InternalError(absl::StrCat("redis: ", std::string(r->str, r->len)));
  }
  if (r->type != REDIS_REPLY_STATUS && r->type != REDIS_REPLY_STRING) {
    return absl::InternalError("redis: reply is not a status or string");
  }
  return std::string(r->str, r->len);
}

}  // namespace pagoda::bench
