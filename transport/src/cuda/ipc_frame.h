// Framing for CUDA IPC handles carried between processes: magic, version, payload, FNV-1a 64
// checksum, so damaged or foreign bytes are rejected before they reach the driver. Header-only,
// no dependency beyond the standard library (it also builds on the GPU machine).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace pagoda::internal {

inline uint64_t Fnv1a64(const void* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

inline std::string SealFrame(const char (&magic)[5], std::string_view payload) {
  std::string out(magic, 4);
  out.push_back('\x01');
  out.append(payload);
  uint64_t h = Fnv1a64(out.data(), out.size());
  out.append(reinterpret_cast<const char*>(&h), 8);
  return out;
}

// The payload, or nullopt when the frame is damaged or of another kind.
inline std::optional<std::string_view> OpenFrame(const char (&magic)[5], std::string_view bytes) {
  if (bytes.size() < 13 || std::memcmp(bytes.data(), magic, 4) != 0 || bytes[4] != '\x01') {
    return std::nullopt;
  }
  uint64_t h;
  std::memcpy(&h, bytes.data() + bytes.size() - 8, 8);
  if (h != Fnv1a64(bytes.data(), bytes.size() - 8)) return std::nullopt;
  return bytes.substr(5, bytes.size() - 13);
}

}  // namespace pagoda::internal
