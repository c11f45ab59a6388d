// Streaming-head profiles: which (layer, KV head) of a model attend only the attention sinks and a
// local window (LServe / DuoAttention "streaming heads"), and the sink / window sizes they use.
//
// A profile is measured offline on attention traces (bench/retriever/streaming_profile, which
// writes it) and loaded by the prefill and decode paths: a streaming head attends the first
// sink_tokens and the last window_tokens tokens before its query (PrefillParams / DecodeParams
// is_streaming), is never selected or fetched for, and its pages outside the window may leave
// the GPU early. Every head the profile does not mark streaming is dense, so an empty profile (no
// head streaming) is always safe.
//
// File format (text, one record per line, '#' starts a comment line, blank lines ignored):
//   pagoda-streaming-profile 1        first line: magic and format version
//   num_layers 12                     layers of the model          (once, >= 1)
//   num_kv_heads 4                    KV heads per layer           (once, >= 1)
//   sink_tokens 64                    attention sinks kept         (once, >= 0)
//   window_tokens 256                 local window kept            (once, >= 1)
//   head 4 0 1 0.9012 0.0312          layer kv_head streaming(0|1) kept_mass output_error
// `head` lines are optional, each (layer, kv_head) at most once; kept_mass and output_error are
// the calibration numbers behind the decision (informational, finite, kept_mass in [0, 1]). A
// (layer, KV head) without a head line is dense.
//
// Thread safety: StreamingProfile is a plain value; const methods are safe to call concurrently.
#ifndef PAGODA_RETRIEVER_STREAMING_PROFILE_H_
#define PAGODA_RETRIEVER_STREAMING_PROFILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pagoda::retriever {

// What calibration measured for one (layer, KV head) with the profile's sink and window.
struct StreamingHeadInfo {
  int32_t layer = 0;
  int32_t kv_head = 0;
  bool streaming = false;
  float kept_mass = 0.f;     // mean share of the dense attention mass on sink + window
  float output_error = 0.f;  // mean |o_streaming - o_dense| / |o_dense| of its query heads
};

struct StreamingProfile {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t sink_tokens = 0;
  int32_t window_tokens = 0;
  // Measured heads, in the file's order (the flags below are derived from them).
  std::vector<StreamingHeadInfo> heads;
  // [num_layers * num_kv_heads], 1 = streaming. Kept consistent with `heads` by
  // MakeStreamingProfile and the loader.
  std::vector<uint8_t> flags;

  // True iff (layer, kv_head) is a streaming head. Out-of-range indices are dense (false).
  bool is_streaming(int32_t layer, int32_t kv_head) const {
    if (layer < 0 || layer >= num_layers || kv_head < 0 || kv_head >= num_kv_heads) return false;
    return flags[static_cast<size_t>(layer) * num_kv_heads + kv_head] != 0;
  }
  // The layer's [num_kv_heads] flags, ready for PrefillParams / DecodeParams::is_streaming.
  // Precondition: 0 <= layer < num_layers.
  const uint8_t* layer_flags(int32_t layer) const {
    return flags.data() + static_cast<size_t>(layer) * num_kv_heads;
  }
  // Streaming heads in the whole model.
  int32_t num_streaming() const;
};

// Builds a profile from measured heads (checks ranges and duplicates like the loader).
absl::StatusOr<StreamingProfile> MakeStreamingProfile(int32_t num_layers, int32_t num_kv_heads,
                                                      int32_t sink_tokens, int32_t window_tokens,
                                                      std::vector<StreamingHeadInfo> heads);

// Parses the text format above. InvalidArgument naming the line for anything else (bad magic or
// version, unknown or repeated key, missing key, out-of-range or malformed number, a head line
// before num_layers / num_kv_heads, a repeated head).
absl::StatusOr<StreamingProfile> ParseStreamingProfile(absl::string_view text);

// Reads and parses a file (NotFound when it cannot be opened).
absl::StatusOr<StreamingProfile> LoadStreamingProfile(const std::string& path);

// The text format of `profile` (ParseStreamingProfile(FormatStreamingProfile(p)) gives p back,
// numbers at 6 significant digits).
std::string FormatStreamingProfile(const StreamingProfile& profile);

// Writes the text format to path (through path + ".tmp" and a rename, so a reader never sees a
// partial file). Internal for I/O errors.
absl::Status SaveStreamingProfile(const StreamingProfile& profile, const std::string& path);

}  // namespace pagoda::retriever

#endif  // PAGODA_RETRIEVER_STREAMING_PROFILE_H_
