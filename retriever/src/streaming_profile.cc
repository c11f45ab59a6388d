#include "pagoda/retriever/streaming_profile.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace pagoda::retriever {
namespace {

constexpr absl::string_view kMagic = "pagoda-streaming-profile";
constexpr int kVersion = 1;

absl::Status BadLine(int line, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("streaming profile line ", line, ": ", why));
}

absl::Status CheckHead(const StreamingHeadInfo& h, int32_t num_layers, int32_t num_kv_heads) {
  if (h.layer < 0 || h.layer >= num_layers || h.kv_head < 0 || h.kv_head >= num_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("head (", h.layer, ", ", h.kv_head, ") outside ",
                                                   num_layers, " layers x ", num_kv_heads,
                                                   " KV heads"));
  }
  if (!(h.kept_mass >= 0.f && h.kept_mass <= 1.f) || !std::isfinite(h.output_error) ||
      h.output_error < 0.f) {
    return absl::InvalidArgumentError(
        absl::StrCat("head (", h.layer, ", ", h.kv_head,
                     "): kept_mass must be in [0, 1] and output_error finite and >= 0"));
  }
  return absl::OkStatus();
}

}  // namespace

int32_t StreamingProfile::num_streaming() const {
  int32_t n = 0;
  for (uint8_t f : flags) n += f != 0;
  return n;
}

absl::StatusOr<StreamingProfile> MakeStreamingProfile(int32_t num_layers, int32_t num_kv_heads,
                                                      int32_t sink_tokens, int32_t window_tokens,
                                                      std::vector<StreamingHeadInfo> heads) {
  if (num_layers < 1 || num_kv_heads < 1 || num_layers > (1 << 16) || num_kv_heads > (1 << 16)) {
    return absl::InvalidArgumentError(
        "streaming profile: num_layers and num_kv_heads in [1, 65536]");
  }
  if (sink_tokens < 0 || window_tokens < 1) {
    return absl::InvalidArgumentError(
        "streaming profile: sink_tokens must be >= 0 and window_tokens >= 1");
  }
  StreamingProfile p;
  p.num_layers = num_layers;
  p.num_kv_heads = num_kv_heads;
  p.sink_tokens = sink_tokens;
  p.window_tokens = window_tokens;
  p.flags.assign(static_cast<size_t>(num_layers) * num_kv_heads, 0);
  std::vector<uint8_t> seen(p.flags.size(), 0);
  for (const StreamingHeadInfo& h : heads) {
    if (auto s = CheckHead(h, num_layers, num_kv_heads); !s.ok()) return s;
    const size_t i = static_cast<size_t>(h.layer) * num_kv_heads + h.kv_head;
    if (seen[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("streaming profile: head (", h.layer, ", ", h.kv_head, ") listed twice"));
    }
    seen[i] = 1;
    p.flags[i] = h.streaming ? 1 : 0;
  }
  p.heads = std::move(heads);
  return p;
}

absl::StatusOr<StreamingProfile> ParseStreamingProfile(absl::string_view text) {
  int64_t values[4] = {-1, -1, -1, -1};  // num_layers, num_kv_heads, sink_tokens, window_tokens
  constexpr absl::string_view kKeys[4] = {"num_layers", "num_kv_heads", "sink_tokens",
                                          "window_tokens"};
  std::vector<StreamingHeadInfo> heads;
  bool magic = false;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (!magic) {
      int version = 0;
      if (f.size() != 2 || f[0] != kMagic || !absl::SimpleAtoi(f[1], &version)) {
        return BadLine(line_no, absl::StrCat("expected \"", kMagic, " ", kVersion, "\""));
      }
      if (version != kVersion) {
        return BadLine(line_no, absl::StrCat("unsupported version ", version));
      }
      magic = true;
      continue;
    }
    if (f[0] == "head") {
      if (values[0] < 0 || values[1] < 0) {
        return BadLine(line_no, "head before num_layers and num_kv_heads");
      }
      StreamingHeadInfo h;
      int streaming = -1;
      if (f.size() != 6 || !absl::SimpleAtoi(f[1], &h.layer) ||
          !absl::SimpleAtoi(f[2], &h.kv_head) || !absl::SimpleAtoi(f[3], &streaming) ||
          (streaming != 0 && streaming != 1) || !absl::SimpleAtof(f[4], &h.kept_mass) ||
          !absl::SimpleAtof(f[5], &h.output_error)) {
        return BadLine(line_no, "expected \"head LAYER KV_HEAD 0|1 KEPT_MASS OUTPUT_ERROR\"");
      }
      h.streaming = streaming == 1;
      if (auto s = CheckHead(h, static_cast<int32_t>(values[0]), static_cast<int32_t>(values[1]));
          !s.ok()) {
        return BadLine(line_no, s.message());
      }
      heads.push_back(h);
      continue;
    }
    int k = 0;
    while (k < 4 && f[0] != kKeys[k]) ++k;
    if (k == 4) return BadLine(line_no, absl::StrCat("unknown key \"", f[0], "\""));
    if (values[k] >= 0) return BadLine(line_no, absl::StrCat(kKeys[k], " given twice"));
    int64_t v = -1;
    if (f.size() != 2 || !absl::SimpleAtoi(f[1], &v) || v < 0 || v > (int64_t{1} << 30)) {
      return BadLine(line_no, absl::StrCat("expected \"", kKeys[k], " N\" with N in [0, 2^30]"));
    }
    values[k] = v;
  }
  if (!magic) return absl::InvalidArgumentError("streaming profile: empty");
  for (int k = 0; k < 4; ++k) {
    if (values[k] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("streaming profile: no ", kKeys[k]));
    }
  }
  return MakeStreamingProfile(static_cast<int32_t>(values[0]), static_cast<int32_t>(values[1]),
                              static_cast<int32_t>(values[2]), static_cast<int32_t>(values[3]),
                              std::move(heads));
}

absl::StatusOr<StreamingProfile> LoadStreamingProfile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open streaming profile ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  auto p = ParseStreamingProfile(buf.str());
  if (!p.ok())
    return absl::Status(p.status().code(), absl::StrCat(path, ": ", p.status().message()));
  return p;
}

std::string FormatStreamingProfile(const StreamingProfile& p) {
  std::string out = absl::StrCat(kMagic, " ", kVersion, "\n");
  absl::StrAppend(&out, "num_layers ", p.num_layers, "\nnum_kv_heads ", p.num_kv_heads,
                  "\nsink_tokens ", p.sink_tokens, "\nwindow_tokens ", p.window_tokens, "\n");
  absl::StrAppend(&out, "# layer kv_head streaming kept_mass output_error\n");
  for (const StreamingHeadInfo& h : p.heads) {
    absl::StrAppend(&out, absl::StrFormat("head %d %d %d %.6g %.6g\n", h.layer, h.kv_head,
                                          h.streaming ? 1 : 0, h.kept_mass, h.output_error));
  }
  return out;
}

absl::Status SaveStreamingProfile(const StreamingProfile& p, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << FormatStreamingProfile(p);
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace pagoda::retriever
