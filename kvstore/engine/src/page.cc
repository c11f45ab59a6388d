#include "pagoda/kvstore/page.h"

#include <bit>

#include "absl/strings/str_format.h"
#include "checksum.h"

namespace pagoda {

size_t DTypeBytes(DType dtype) { return 2; }

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFp16:
      return "fp16";
    case DType::kBf16:
      return "bf16";
  }
  return "unknown";
}

std::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kGpu:
      return "gpu";
    case Tier::kHost:
      return "host";
    case Tier::kSsd:
      return "ssd";
  }
  return "unknown";
}

uint64_t PageLayout::PageBytes() const {
  return 2ULL * kv_heads * page_tokens * head_dim * DTypeBytes(dtype);
}

absl::Status PageLayout::Validate() const {
  if (dtype != DType::kFp16 && dtype != DType::kBf16) {
    return absl::InvalidArgumentError(
        absl::StrFormat("page layout: unknown dtype %d", static_cast<int>(dtype)));
  }
  if (kv_heads < 1 || kv_heads > 256) {
    return absl::InvalidArgumentError(
        absl::StrFormat("page layout: kv_heads %u outside 1..256", kv_heads));
  }
  if (head_dim < 8 || head_dim > 4096 || head_dim % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("page layout: head_dim %u must be a multiple of 8 in 8..4096", head_dim));
  }
  if (page_tokens < 1 || page_tokens > 32768 || !std::has_single_bit(page_tokens)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "page layout: page_tokens %u must be a power of two in 1..32768", page_tokens));
  }
  return absl::OkStatus();
}

LayoutId PageLayout::Id() const {
  const uint32_t log2_tokens = static_cast<uint32_t>(std::countr_zero(page_tokens));
  return (static_cast<uint32_t>(dtype) & 0xF) | ((log2_tokens & 0xF) << 4) |
         (((kv_heads - 1) & 0xFF) << 8) | ((head_dim & 0xFFFF) << 16);
}

absl::StatusOr<PageLayout> PageLayout::FromId(LayoutId id) {
  PageLayout l;
  l.dtype = static_cast<DType>(id & 0xF);
  l.page_tokens = 1u << ((id >> 4) & 0xF);
  l.kv_heads = ((id >> 8) & 0xFF) + 1;
  l.head_dim = id >> 16;
  if (absl::Status s = l.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layout id %#x does not decode to a valid layout: %s", id, s.message()));
  }
  return l;
}

std::string PageLayout::ToString() const {
  return absl::StrFormat("%s kv_heads=%u head_dim=%u page_tokens=%u", DTypeName(dtype), kv_heads,
                         head_dim, page_tokens);
}

std::string PageKey::Hex() const { return absl::StrFormat("%016x%016x", hi, lo); }

absl::StatusOr<PageKey> PageKey::FromHex(std::string_view hex) {
  if (hex.size() != 32) {
    return absl::InvalidArgumentError(
        absl::StrFormat("page key: want 32 hex digits, got %d characters", hex.size()));
  }
  uint64_t parts[2] = {0, 0};
  for (size_t i = 0; i < 32; ++i) {
    const char c = hex[i];
    uint64_t v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      return absl::InvalidArgumentError(
          absl::StrFormat("page key: '%c' at position %d is not a hex digit", c, i));
    }
    parts[i / 16] = (parts[i / 16] << 4) | v;
  }
  return PageKey{parts[0], parts[1]};
}

uint64_t PageChecksum(const void* data, size_t size) { return Xxh3(data, size); }

}  // namespace pagoda
