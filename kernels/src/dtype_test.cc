#include "pagoda/kernels/dtype.h"

#include <cmath>
#include <cstring>
#include <random>

#include "gtest/gtest.h"

namespace pagoda::kernels {
namespace {

TEST(DType, HalfToFloatMatchesCompilerForAllPatterns) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    _Float16 native;
    std::memcpy(&native, &h, 2);
    const float want = static_cast<float>(native);
    const float got = HalfToFloat(h);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << bits;
    } else {
      EXPECT_EQ(FloatToBits(got), FloatToBits(want)) << bits;
    }
  }
}

TEST(DType, FloatToHalfRoundsLikeCompiler) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any;
  int checked = 0;
  for (int i = 0; i < 2000000; ++i) {
    // Mostly values in and around the half range, some arbitrary bit patterns.
    uint32_t u = any(rng);
    if (i % 4 != 0) u = (u & 0x87ffffffu) | (static_cast<uint32_t>(0x30 + (u >> 27) % 0x20) << 24);
    const float f = BitsToFloat(u);
    const _Float16 native = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &native, 2);
    const uint16_t got = FloatToHalf(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(got)));
    } else {
      ASSERT_EQ(got, want) << "float bits " << std::hex << u;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2000000);
  // Boundaries: largest half, the tie to infinity, the smallest subnormal and its halfway point.
  EXPECT_EQ(FloatToHalf(65504.f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.f), 0x7c00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.f, -25)), 0x0000);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.f), 0x3f80);
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(FloatToBf16(BitsToFloat(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(-INFINITY)), -INFINITY);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 10.f);
  for (int i = 0; i < 100000; ++i) {
    const float f = normal(rng);
    const float r = Bf16ToFloat(FloatToBf16(f));
    ASSERT_LE(std::fabs(r - f), std::fabs(f) * (1.f / 256.f)) << f;
  }
}

}  // namespace
}  // namespace pagoda::kernels
