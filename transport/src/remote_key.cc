#include "pagoda/transport/remote_key.h"

#include <xxhash.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace pagoda {
namespace {

// Frame: magic[4] | version u8 | payload | xxh64(magic..payload) u64. Little-endian integers.
constexpr uint8_t kVersion = 1;
constexpr char kKeyMagic[4] = {'P', 'G', 'R', 'K'};
constexpr char kAddrMagic[4] = {'P', 'G', 'W', 'A'};
constexpr uint64_t kSeed = 0x7061676f64614b59ULL;  // fixed: keys must verify in every process

void PutU32(std::string* out, uint32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* out, uint64_t v) { out->append(reinterpret_cast<const char*>(&v), 8); }

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool U8(uint8_t* v) { return Bytes(v, 1); }
  bool U32(uint32_t* v) { return Bytes(v, 4); }
  bool U64(uint64_t* v) { return Bytes(v, 8); }
  bool Str(size_t n, std::string* s) {
    if (in_.size() < n) return false;
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool empty() const { return in_.empty(); }

 private:
  bool Bytes(void* v, size_t n) {
    if (in_.size() < n) return false;
    std::memcpy(v, in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  std::string_view in_;
};

std::string Seal(const char (&magic)[4], const std::string& payload) {
  std::string out(magic, 4);
  out.push_back(static_cast<char>(kVersion));
  out += payload;
  PutU64(&out, XXH64(out.data(), out.size(), kSeed));
  return out;
}

// Verifies the frame and returns the payload.
absl::StatusOr<std::string_view> Open(const char (&magic)[4], std::string_view bytes,
                                      const char* what) {
  if (bytes.size() < 4 + 1 + 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", bytes.size(), " bytes is too short"));
  }
  if (std::memcmp(bytes.data(), magic, 4) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": wrong magic (not a Pagoda ", what, ")"));
  }
  if (static_cast<uint8_t>(bytes[4]) != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unsupported version ", static_cast<int>(bytes[4])));
  }
  uint64_t sum;
  std::memcpy(&sum, bytes.data() + bytes.size() - 8, 8);
  if (sum != XXH64(bytes.data(), bytes.size() - 8, kSeed)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": checksum mismatch (damaged bytes)"));
  }
  return bytes.substr(5, bytes.size() - 5 - 8);
}

}  // namespace

std::string EncodeRemoteKey(const RemoteKey& key) {
  std::string payload;
  payload.push_back(static_cast<char>(key.kind));
  PutU64(&payload, key.base);
  PutU64(&payload, key.length);
  PutU32(&payload, static_cast<uint32_t>(key.transport_key.size()));
  payload += key.transport_key;
  return Seal(kKeyMagic, payload);
}

absl::StatusOr<RemoteKey> DecodeRemoteKey(std::string_view bytes) {
  auto payload = Open(kKeyMagic, bytes, "remote key");
  if (!payload.ok()) return payload.status();
  Reader r(*payload);
  RemoteKey key;
  uint8_t kind;
  uint32_t tk_len;
  if (!r.U8(&kind) || !r.U64(&key.base) || !r.U64(&key.length) || !r.U32(&tk_len) ||
      !r.Str(tk_len, &key.transport_key) || !r.empty()) {
    return absl::InvalidArgumentError("remote key: malformed payload");
  }
  if (kind != static_cast<uint8_t>(MemoryKind::kHost) &&
      kind != static_cast<uint8_t>(MemoryKind::kCuda)) {
    return absl::InvalidArgumentError(absl::StrCat("remote key: unknown memory kind ", kind));
  }
  key.kind = static_cast<MemoryKind>(kind);
  if (key.length == 0) return absl::InvalidArgumentError("remote key: empty registration");
  if (key.base + key.length < key.base) {
    return absl::InvalidArgumentError("remote key: base + length overflows");
  }
  if (key.transport_key.empty()) return absl::InvalidArgumentError("remote key: no transport key");
  return key;
}

std::string EncodePeerAddress(std::string_view transport_address) {
  std::string payload;
  PutU32(&payload, static_cast<uint32_t>(transport_address.size()));
  payload.append(transport_address);
  return Seal(kAddrMagic, payload);
}

absl::StatusOr<std::string> DecodePeerAddress(std::string_view bytes) {
  auto payload = Open(kAddrMagic, bytes, "peer address");
  if (!payload.ok()) return payload.status();
  Reader r(*payload);
  uint32_t len;
  std::string addr;
  if (!r.U32(&len) || len == 0 || !r.Str(len, &addr) || !r.empty()) {
    return absl::InvalidArgumentError("peer address: malformed payload");
  }
  return addr;
}

}  // namespace pagoda
