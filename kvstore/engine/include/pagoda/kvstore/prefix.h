// Prefix helpers: the stable, keyed chained hash that turns token ids into page keys.
//
// The key of page i of a sequence is ChainPageKey(key of page i-1, tokens of page i, extra, seed),
// with PageKey{} (all zero) as the parent of page 0. Equal prefixes therefore give equal keys, and
// a key commits to its whole prefix, the model, the layer and the tenant's salt. The hash is
// XXH3-128 over an explicit little-endian encoding with an explicit seed: the same inputs give the
// same key in every process, on every machine (never a randomly seeded hash).
//
// Thread safety: pure functions, safe to call concurrently.
#ifndef PAGODA_KVSTORE_PREFIX_H_
#define PAGODA_KVSTORE_PREFIX_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/types/span.h"
#include "pagoda/kvstore/page.h"

namespace pagoda {

// What a page key commits to besides the tokens and the parent.
struct PageKeyExtra {
  std::string_view model_id;  // e.g. "meta-llama/Llama-3.1-8B@rev"; any bytes
  uint32_t layer = 0;         // transformer layer of the page
  // Per-tenant secret salt. Without knowing it, one tenant cannot compute (and so cannot probe
  // for) another tenant's keys. Any bytes; empty means "no salt".
  std::string_view salt;
};

// Default seed of ChainPageKey. Changing it changes every key (a cache flush).
inline constexpr uint64_t kDefaultPageKeySeed = 0x7061676f64613031ULL;  // "pagoda01"

// Key of a page whose parent page has key `parent` (PageKey{} for the first page) and which holds
// `tokens`. Encoding (all integers little-endian): "PGK1", parent.hi, parent.lo,
// u32 len(model_id), model_id, u32 layer, u32 len(salt), salt, u32 len(tokens), tokens as i32.
PageKey ChainPageKey(const PageKey& parent, absl::Span<const int32_t> tokens,
                     const PageKeyExtra& extra, uint64_t seed = kDefaultPageKeySeed);

// Keys of the full pages of `tokens` split into pages of `page_tokens` tokens (a trailing partial
// page gets no key). Returns an empty vector when page_tokens is 0.
std::vector<PageKey> ChainPageKeys(absl::Span<const int32_t> tokens, uint32_t page_tokens,
                                   const PageKeyExtra& extra, uint64_t seed = kDefaultPageKeySeed);

}  // namespace pagoda

#endif  // PAGODA_KVSTORE_PREFIX_H_
