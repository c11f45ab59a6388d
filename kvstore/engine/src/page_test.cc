#include "pagoda/kvstore/page.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "xxhash.h"

namespace pagoda {
namespace {

TEST(PageLayoutTest, PageBytesCountsKAndV) {
  PageLayout l{DType::kBf16, 8, 128, 16};
  EXPECT_EQ(l.PageBytes(), 2u * 8 * 128 * 16 * 2);
  EXPECT_TRUE(l.Validate().ok());
}

TEST(PageLayoutTest, RejectsOutOfRangeFields) {
  const PageLayout good{DType::kFp16, 8, 128, 16};
  auto with = [&](auto f) {
    PageLayout l = good;
    f(l);
    return l.Validate();
  };
  EXPECT_TRUE(absl::IsInvalidArgument(with([](PageLayout& l) { l.kv_heads = 0; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([](PageLayout& l) { l.kv_heads = 257; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([](PageLayout& l) { l.head_dim = 100; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([](PageLayout& l) { l.head_dim = 0; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([](PageLayout& l) { l.page_tokens = 24; })));
  EXPECT_TRUE(absl::IsInvalidArgument(with([](PageLayout& l) { l.page_tokens = 0; })));
  EXPECT_TRUE(
      absl::IsInvalidArgument(with([](PageLayout& l) { l.dtype = static_cast<DType>(7); })));
  EXPECT_THAT(std::string(with([](PageLayout& l) { l.head_dim = 100; }).message()),
              ::testing::HasSubstr("head_dim"));
}

TEST(PageLayoutTest, IdRoundTripsAndSeparatesLayouts) {
  std::vector<PageLayout> all;
  for (DType d : {DType::kFp16, DType::kBf16}) {
    for (uint32_t heads : {1u, 8u, 256u}) {
      for (uint32_t dim : {8u, 64u, 128u, 4096u}) {
        for (uint32_t tokens : {1u, 16u, 32u, 64u, 32768u}) all.push_back({d, heads, dim, tokens});
      }
    }
  }
  std::set<LayoutId> ids;
  for (const PageLayout& l : all) {
    ASSERT_TRUE(l.Validate().ok()) << l.ToString();
    auto back = PageLayout::FromId(l.Id());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, l);
    ids.insert(l.Id());
  }
  EXPECT_EQ(ids.size(), all.size());
}

TEST(PageLayoutTest, IdIsStableAcrossVersions) {
  // Ids are stored on SSD: this value must never change.
  EXPECT_EQ((PageLayout{DType::kBf16, 8, 128, 16}.Id()), 0x00800741u);
}

TEST(PageLayoutTest, FromIdRejectsGarbage) {
  EXPECT_TRUE(absl::IsInvalidArgument(PageLayout::FromId(0).status()));           // head_dim 0
  EXPECT_TRUE(absl::IsInvalidArgument(PageLayout::FromId(0x00800709).status()));  // dtype 9
}

TEST(PageKeyTest, HexRoundTrip) {
  PageKey k{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(k.Hex(), "0123456789abcdeffedcba9876543210");
  auto back = PageKey::FromHex("0123456789ABCDEFfedcba9876543210");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, k);
}

TEST(PageKeyTest, FromHexRejectsBadInput) {
  EXPECT_TRUE(absl::IsInvalidArgument(PageKey::FromHex("").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(PageKey::FromHex("0123").status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(PageKey::FromHex("0123456789abcdeffedcba987654321g").status()));
}

TEST(PageChecksumTest, IsXxh3AndSeesOneBitFlips) {
  std::vector<uint8_t> b(4096, 7);
  const uint64_t c = PageChecksum(b.data(), b.size());
  EXPECT_EQ(c, XXH3_64bits(b.data(), b.size()));
  for (size_t i : {0ul, 100ul, 4095ul}) {
    b[i] ^= 1;
    EXPECT_NE(PageChecksum(b.data(), b.size()), c);
    b[i] ^= 1;
  }
}

}  // namespace
}  // namespace pagoda
