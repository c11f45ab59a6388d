// A Mooncake-format request trace (FAST'25 release): one JSON object per line with
// `timestamp` (ms from the trace start), `input_length`, `output_length` (tokens) and `hash_ids`
// (the prompt's blocks of `block_tokens` tokens, as integers; equal ids at equal positions are
// the same prefix; the last block may be partial).
//
// Thread safety: plain data and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagoda/kvstore/page.h"

namespace pagoda::trace {

struct TraceRequest {
  double timestamp_ms = 0;
  uint32_t input_length = 0;
  uint32_t output_length = 0;
  std::vector<uint64_t> hash_ids;
};

// Parses JSONL text; InvalidArgument naming the line for a malformed line (bad JSON, missing
// field, negative or non-integer id). Empty lines are skipped. Requests keep file order.
absl::StatusOr<std::vector<TraceRequest>> ParseTrace(const std::string& text);
// Reads and parses a file; NotFound when it cannot be read.
absl::StatusOr<std::vector<TraceRequest>> LoadTrace(const std::string& path);

// Tokens of block `i` of `r`: block_tokens, except a last block that covers the rest of the
// input (at least 1, at most block_tokens).
uint32_t BlockTokens(const TraceRequest& r, size_t i, uint32_t block_tokens);

// The request's chained page keys: key i = ChainPageKey(key i-1, {hash_ids[i]}, model "trace"),
// so a key commits to its whole prefix, as an engine's block keys do.
std::vector<PageKey> ChainKeys(const TraceRequest& r);

// A synthetic trace of `n` requests with shared prefixes (for tests): `prefixes` distinct
// system prompts of 1-3 blocks, a third of the requests continuing an earlier request, each
// adding 1-4 fresh blocks, 1 ms apart.
std::vector<TraceRequest> SyntheticTrace(size_t n, size_t prefixes, uint64_t seed);

}  // namespace pagoda::trace
