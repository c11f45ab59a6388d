// Page model of the store: layouts, 128-bit page keys and tiers.
//
// Thread safety: every type here is a value type; const methods are safe to call concurrently.
#ifndef PAGODA_KVSTORE_PAGE_H_
#define PAGODA_KVSTORE_PAGE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pagoda {

// Element type of K and V.
enum class DType : uint8_t { kFp16 = 0, kBf16 = 1 };

// Bytes per element of `dtype` (2 for both supported types).
size_t DTypeBytes(DType dtype);
std::string_view DTypeName(DType dtype);

// A stable 32-bit identifier of a PageLayout. The same layout has the same id in every process,
// on every machine and across versions (it is stored on SSD): bits 0-3 dtype, 4-7
// log2(page_tokens), 8-15 kv_heads - 1, 16-31 head_dim.
using LayoutId = uint32_t;

// Shape of one page: the K and V of `page_tokens` consecutive tokens of one layer, all KV heads.
// K and V are each [kv_heads, page_tokens, head_dim] of `dtype`, K first, then V. The bytes are
// opaque to the store; only their size (PageBytes()) matters here.
struct PageLayout {
  DType dtype = DType::kFp16;
  uint32_t kv_heads = 8;      // 1..256
  uint32_t head_dim = 128;    // 8..4096, a multiple of 8
  uint32_t page_tokens = 16;  // a power of two, 1..32768 (16/32/64 are the usual ones)

  // Bytes of one page: K and V, 2 * kv_heads * page_tokens * head_dim * DTypeBytes(dtype).
  uint64_t PageBytes() const;
  // OK when every field is inside its documented range; InvalidArgument naming the field otherwise.
  absl::Status Validate() const;
  // Stable id (see LayoutId). Only meaningful for a layout that passes Validate().
  LayoutId Id() const;
  // Inverse of Id(); InvalidArgument for an id that does not decode to a valid layout.
  static absl::StatusOr<PageLayout> FromId(LayoutId id);
  // "bf16 kv_heads=8 head_dim=128 page_tokens=16".
  std::string ToString() const;

  friend bool operator==(const PageLayout&, const PageLayout&) = default;
};

// 128-bit page key, opaque to the store (clients derive it with ChainPageKey, see prefix.h).
struct PageKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  // 32 lowercase hex digits, hi first.
  std::string Hex() const;
  // Inverse of Hex(); accepts upper or lower case. InvalidArgument unless exactly 32 hex digits.
  static absl::StatusOr<PageKey> FromHex(std::string_view hex);

  friend bool operator==(const PageKey&, const PageKey&) = default;
  friend auto operator<=>(const PageKey&, const PageKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const PageKey& k) {
    return H::combine(std::move(h), k.hi, k.lo);
  }
};

// Storage tiers, fastest first. A page lives in exactly one tier at a time.
enum class Tier : uint8_t { kGpu = 0, kHost = 1, kSsd = 2 };
inline constexpr int kNumTiers = 3;
std::string_view TierName(Tier tier);

// Checksum of page bytes as stored and verified by the store: XXH3-64 with seed 0. Exposed so a
// reader of a zero-copy lease (or a client on the other side of a transfer) can verify the bytes.
uint64_t PageChecksum(const void* data, size_t size);

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_PAGE_H_
