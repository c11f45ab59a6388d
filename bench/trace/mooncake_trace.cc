#include "mooncake_trace.h"

#include <algorithm>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "pagoda/kvstore/prefix.h"

namespace pagoda::trace {

absl::StatusOr<std::vector<TraceRequest>> ParseTrace(const std::string& text) {
  std::vector<TraceRequest> out;
  std::istringstream in(text);
  std::string line;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat("trace line ", line_no, ": ", why));
    };
    if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
    for (const char* f : {"timestamp", "input_length", "hash_ids"}) {
      if (!j.contains(f)) return bad(absl::StrCat("missing '", f, "'"));
    }
    if (!j["timestamp"].is_number() || j["timestamp"].get<double>() < 0) {
      return bad("timestamp must be a non-negative number");
    }
    if (!j["input_length"].is_number_unsigned()) {
      return bad("input_length must be a non-negative integer");
    }
    if (!j["hash_ids"].is_array()) return bad("hash_ids must be an array");
    TraceRequest r;
    r.timestamp_ms = j["timestamp"].get<double>();
    r.input_length = j["input_length"].get<uint32_t>();
    if (j.contains("output_length") && j["output_length"].is_number_unsigned()) {
      r.output_length = j["output_length"].get<uint32_t>();
    }
    for (const nlohmann::json& id : j["hash_ids"]) {
      if (!id.is_number_unsigned()) return bad("hash_ids must be non-negative integers");
      r.hash_ids.push_back(id.get<uint64_t>());
    }
    out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<std::vector<TraceRequest>> LoadTrace(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read trace '", path, "'"));
  std::stringstream s;
  s << f.rdbuf();
  return ParseTrace(s.str());
}

uint32_t BlockTokens(const TraceRequest& r, size_t i, uint32_t block_tokens) {
  const uint64_t start = static_cast<uint64_t>(i) * block_tokens;
  if (i + 1 < r.hash_ids.size() || r.input_length <= start) return block_tokens;
  return static_cast<uint32_t>(std::clamp<uint64_t>(r.input_length - start, 1, block_tokens));
}

std::vector<PageKey> ChainKeys(const TraceRequest& r) {
  std::vector<PageKey> keys;
  keys.reserve(r.hash_ids.size());
  PageKey parent{};
  const PageKeyExtra extra{"trace", 0, ""};
  for (uint64_t id : r.hash_ids) {
    const int32_t tok[2] = {static_cast<int32_t>(id & 0xffffffff), static_cast<int32_t>(id >> 32)};
    parent = ChainPageKey(parent, tok, extra);
    keys.push_back(parent);
  }
  return keys;
}

std::vector<TraceRequest> SyntheticTrace(size_t n, size_t prefixes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<uint64_t>> heads(prefixes);
  uint64_t next_id = 0;
  for (auto& h : heads) {
    for (size_t b = 0, len = 1 + rng() % 3; b < len; ++b) h.push_back(next_id++);
  }
  std::vector<TraceRequest> out(n);
  for (size_t i = 0; i < n; ++i) {
    TraceRequest& r = out[i];
    r.timestamp_ms = static_cast<double>(i);
    // A third of the requests continue an earlier one (a conversation's next turn).
    r.hash_ids = (i > 0 && rng() % 3 == 0) ? out[rng() % i].hash_ids : heads[rng() % prefixes];
    for (size_t b = 0, len = 1 + rng() % 4; b < len; ++b) r.hash_ids.push_back(next_id++);
    r.input_length = static_cast<uint32_t>(r.hash_ids.size() * 512);
    r.output_length = 100;
  }
  return out;
}

}  // namespace pagoda::trace
