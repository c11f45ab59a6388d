#include "pagoda/kvstore/prefix.h"

#include <cstring>
#include <string>

#include "xxhash.h"

namespace pagoda {
namespace {

// Appends integers little-endian whatever the host byte order, so keys match across machines.
void PutU32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void PutU64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

}  // namespace

PageKey ChainPageKey(const PageKey& parent, absl::Span<const int32_t> tokens,
                     const PageKeyExtra& extra, uint64_t seed) {
  std::string buf;
  buf.reserve(4 + 16 + 12 + extra.model_id.size() + extra.salt.size() + 4 + tokens.size() * 4);
  buf.append("PGK1");
  PutU64(buf, parent.hi);
  PutU64(buf, parent.lo);
  PutU32(buf, static_cast<uint32_t>(extra.model_id.size()));
  buf.append(extra.model_id);
  PutU32(buf, extra.layer);
  PutU32(buf, static_cast<uint32_t>(extra.salt.size()));
  buf.append(extra.salt);
  PutU32(buf, static_cast<uint32_t>(tokens.size()));
  for (int32_t t : tokens) PutU32(buf, static_cast<uint32_t>(t));
  const XXH128_hash_t h = XXH3_128bits_withSeed(buf.data(), buf.size(), seed);
  return PageKey{h.high64, h.low64};
}

std::vector<PageKey> ChainPageKeys(absl::Span<const int32_t> tokens, uint32_t page_tokens,
                                   const PageKeyExtra& extra, uint64_t seed) {
  std::vector<PageKey> keys;
  if (page_tokens == 0) return keys;
  PageKey parent;
  for (size_t start = 0; start + page_tokens <= tokens.size(); start += page_tokens) {
    parent = ChainPageKey(parent, tokens.subspan(start, page_tokens), extra, seed);
    keys.push_back(parent);
  }
  return keys;
}

}  // namespace pagoda
