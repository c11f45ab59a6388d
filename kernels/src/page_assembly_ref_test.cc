// The prefill page assembly's reference: pages in the store's layout at their offsets, head
// checksums equal to HeadPageChecksum of the written heads, strided rows, checksum-only pages,
// and bad input refused before anything is written.
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

constexpr int32_t kPages = 5, kPage = 4, kHeads = 3, kDim = 8;
constexpr int64_t kHalf = int64_t{kPage} * kDim * 2, kPageBytes = 2 * kHeads * kHalf;

struct Problem {
  std::vector<uint16_t> k, v;  // rows with a padded token stride
  int64_t stride_token = kHeads * kDim + 5;
  std::vector<uint8_t> dst;
  std::vector<int64_t> offsets;
  std::vector<uint64_t> sums;
  PageAssemblyParams params() {
    PageAssemblyParams p;
    p.dtype = DType::kFloat16;
    p.num_pages = kPages;
    p.page_size = kPage;
    p.num_kv_heads = kHeads;
    p.head_dim = kDim;
    p.k = k.data();
    p.v = v.data();
    p.k_stride_token = p.v_stride_token = stride_token;
    p.k_stride_head = p.v_stride_head = kDim;
    p.dst = dst.data();
    p.dst_bytes = static_cast<int64_t>(dst.size());
    p.dst_offset = offsets.data();
    p.head_sums = sums.data();
    return p;
  }
};

Problem Make(int seed) {
  std::mt19937 rng(seed);
  Problem pr;
  const size_t n = static_cast<size_t>(kPages) * kPage * pr.stride_token;
  for (size_t i = 0; i < n; ++i) {
    pr.k.push_back(static_cast<uint16_t>(rng()));
    pr.v.push_back(static_cast<uint16_t>(rng()));
  }
  pr.dst.assign(8 * kPageBytes, 0xab);
  pr.offsets = {3 * kPageBytes, 0, -1, 7 * kPageBytes, kPageBytes + 16};  // page 2: sums only
  pr.sums.assign(kPages * kHeads, 0);
  return pr;
}

TEST(PageAssemblyRefTest, WritesTheStoreLayoutAndItsHeadChecksums) {
  Problem pr = Make(1);
  const std::vector<uint8_t> before = pr.dst;
  ASSERT_TRUE(AssemblePagesReference(pr.params()).ok());
  std::vector<bool> touched(pr.dst.size(), false);
  for (int32_t i = 0; i < kPages; ++i) {
    // The page as the store keeps it, built here element by element.
    std::vector<uint16_t> want(kPageBytes / 2);
    for (int32_t h = 0; h < kHeads; ++h) {
      for (int32_t t = 0; t < kPage; ++t) {
        for (int32_t d = 0; d < kDim; ++d) {
          const int64_t src = (int64_t{i} * kPage + t) * pr.stride_token + h * kDim + d;
          want[(h * kPage + t) * kDim + d] = pr.k[src];
          want[((kHeads + h) * kPage + t) * kDim + d] = pr.v[src];
        }
      }
    }
    const uint8_t* w = reinterpret_cast<const uint8_t*>(want.data());
    for (int32_t h = 0; h < kHeads; ++h) {
      EXPECT_EQ(pr.sums[i * kHeads + h],
                HeadPageChecksum(w + h * kHalf, w + (kHeads + h) * kHalf, kHalf))
          << "page " << i << " head " << h;
    }
    if (pr.offsets[i] < 0) continue;
    EXPECT_EQ(std::memcmp(pr.dst.data() + pr.offsets[i], w, kPageBytes), 0) << "page " << i;
    for (int64_t b = 0; b < kPageBytes; ++b) touched[pr.offsets[i] + b] = true;
  }
  for (size_t b = 0; b < pr.dst.size(); ++b) {
    if (!touched[b]) {
      ASSERT_EQ(pr.dst[b], before[b]) << "byte " << b << " written";
    }
  }
}

TEST(PageAssemblyRefTest, BadInputIsRefusedBeforeAnythingIsWritten) {
  Problem pr = Make(2);
  const std::vector<uint8_t> dst0 = pr.dst;
  const std::vector<uint64_t> sums0 = pr.sums;
  auto expect_bad = [&](const PageAssemblyParams& p, absl::StatusCode code, const char* what) {
    EXPECT_EQ(AssemblePagesReference(p).code(), code) << what;
    EXPECT_EQ(pr.dst, dst0) << what;
    EXPECT_EQ(pr.sums, sums0) << what;
  };
  using C = absl::StatusCode;
  PageAssemblyParams p = pr.params();
  p.dtype = static_cast<DType>(9);
  expect_bad(p, C::kInvalidArgument, "dtype");
  p = pr.params();
  p.head_dim = 3;  // page_size * head_dim * 2 = 24 bytes: not a multiple of 16
  expect_bad(p, C::kInvalidArgument, "half not a multiple of 16");
  p = pr.params();
  p.k = nullptr;
  expect_bad(p, C::kInvalidArgument, "null k");
  p = pr.params();
  p.k_stride_head = -1;
  expect_bad(p, C::kInvalidArgument, "negative stride");
  pr.offsets[3] = 7 * kPageBytes + 1;  // runs past dst
  expect_bad(pr.params(), C::kOutOfRange, "offset past the end");
  pr.offsets[3] = kPageBytes + kPageBytes / 2;  // overlaps page 4's
  expect_bad(pr.params(), C::kInvalidArgument, "overlapping pages");
}

}  // namespace
}  // namespace pagoda::kernels
