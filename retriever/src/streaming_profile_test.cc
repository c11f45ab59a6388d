#include "pagoda/retriever/streaming_profile.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace pagoda::retriever {
namespace {

constexpr char kGood[] =
    "# calibrated on code_dev\n"
    "pagoda-streaming-profile 1\n"
    "num_layers 3\n"
    "num_kv_heads 2\n"
    "\n"
    "sink_tokens 64\n"
    "window_tokens 256\n"
    "head 0 1 1 0.95 0.02\n"
    "head 2 0 1 0.9 0.04\n"
    "head 2 1 0 0.5 0.3\n";

TEST(StreamingProfileTest, ParsesFlagsAndSizes) {
  auto p = ParseStreamingProfile(kGood);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_layers, 3);
  EXPECT_EQ(p->num_kv_heads, 2);
  EXPECT_EQ(p->sink_tokens, 64);
  EXPECT_EQ(p->window_tokens, 256);
  EXPECT_EQ(p->num_streaming(), 2);
  EXPECT_FALSE(p->is_streaming(0, 0));
  EXPECT_TRUE(p->is_streaming(0, 1));
  EXPECT_FALSE(p->is_streaming(1, 0)) << "an unlisted head is dense";
  EXPECT_TRUE(p->is_streaming(2, 0));
  EXPECT_FALSE(p->is_streaming(2, 1)) << "listed, not streaming";
  EXPECT_FALSE(p->is_streaming(3, 0)) << "out of range is dense";
  EXPECT_FALSE(p->is_streaming(-1, 1));
  EXPECT_FALSE(p->is_streaming(0, 2));
  EXPECT_EQ(p->layer_flags(2)[0], 1);
  EXPECT_EQ(p->layer_flags(2)[1], 0);
  ASSERT_EQ(p->heads.size(), 3u);
  EXPECT_FLOAT_EQ(p->heads[1].kept_mass, 0.9f);
  EXPECT_FLOAT_EQ(p->heads[2].output_error, 0.3f);
}

TEST(StreamingProfileTest, FormatSaveLoadRoundTrip) {
  auto p = ParseStreamingProfile(kGood);
  ASSERT_TRUE(p.ok());
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/streaming_profile_", getpid(), ".txt");
  ASSERT_TRUE(SaveStreamingProfile(*p, path).ok());
  auto q = LoadStreamingProfile(path);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->flags, p->flags);
  EXPECT_EQ(q->sink_tokens, p->sink_tokens);
  EXPECT_EQ(q->window_tokens, p->window_tokens);
  EXPECT_EQ(FormatStreamingProfile(*q), FormatStreamingProfile(*p));
  std::remove(path.c_str());
  EXPECT_EQ(LoadStreamingProfile(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(StreamingProfileTest, MakeChecksHeads) {
  EXPECT_TRUE(MakeStreamingProfile(2, 2, 0, 16, {{1, 1, true, 1.f, 0.f}}).ok());
  EXPECT_FALSE(MakeStreamingProfile(2, 2, 0, 16, {{2, 0, true, 1.f, 0.f}}).ok());
  EXPECT_FALSE(
      MakeStreamingProfile(2, 2, 0, 16, {{1, 1, true, 1.f, 0.f}, {1, 1, false, 1.f, 0.f}}).ok());
  EXPECT_FALSE(MakeStreamingProfile(0, 2, 0, 16, {}).ok());
  EXPECT_FALSE(MakeStreamingProfile(2, 2, -1, 16, {}).ok());
  EXPECT_FALSE(MakeStreamingProfile(2, 2, 4, 0, {}).ok());
}

TEST(StreamingProfileTest, RejectsMalformedFiles) {
  const std::string head = "pagoda-streaming-profile 1\nnum_layers 3\nnum_kv_heads 2\n";
  const std::string sizes = "sink_tokens 4\nwindow_tokens 8\n";
  const struct {
    std::string text;
    const char* why;
  } bad[] = {
      {"", "empty"},
      {"num_layers 3\n", "no magic"},
      {"pagoda-streaming-profile 2\nnum_layers 1\n", "version 2"},
      {head + sizes + "colour blue\n", "unknown key"},
      {head + sizes + "num_layers 4\n", "repeated key"},
      {head + "sink_tokens 4\n", "missing window_tokens"},
      {head + sizes + "window_tokens x\n", "malformed number"},
      {head + "sink_tokens -4\nwindow_tokens 8\n", "negative sink"},
      {head + "sink_tokens 4\nwindow_tokens 0\n", "window 0"},
      {"pagoda-streaming-profile 1\nhead 0 0 1 0.5 0.1\n" + std::string("num_layers 3\n"),
       "head before the dimensions"},
      {head + sizes + "head 3 0 1 0.5 0.1\n", "layer out of range"},
      {head + sizes + "head 0 2 1 0.5 0.1\n", "KV head out of range"},
      {head + sizes + "head 0 0 2 0.5 0.1\n", "flag 2"},
      {head + sizes + "head 0 0 1 1.5 0.1\n", "kept mass above 1"},
      {head + sizes + "head 0 0 1 0.5 nan\n", "NaN error"},
      {head + sizes + "head 0 0 1 0.5\n", "missing field"},
      {head + sizes + "head 0 0 1 0.5 0.1\nhead 0 0 0 0.5 0.1\n", "head twice"},
  };
  for (const auto& b : bad) {
    const auto p = ParseStreamingProfile(b.text);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << b.why;
  }
}

}  // namespace
}  // namespace pagoda::retriever
