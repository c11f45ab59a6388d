// The CUDA decode backend (DiffusionSession's) against the CPU one: the same uploads and tables
// must give the same outputs within fp16 / bf16 rounding, and both backends must refuse the same
// bad inputs without writing anything. (The decode path's CUDA backend is the worker's:
// client/worker/worker_backend_cuda_test.cc.) Tests that need the CUDA
// backend skip when it is Unavailable (no CUDA build, no device: CI); the CPU half of the
// validation tests always runs.
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/client/decode_backend.h"
#include "pagoda/kernels/dtype.h"

namespace pagoda {
namespace {

// The CUDA backend, or why there is none (the caller skips on Unavailable).
absl::StatusOr<std::unique_ptr<DecodeBackend>> Cuda(bool mapped = false) {
  CudaDecodeBackendOptions o;
  o.mapped_upload = mapped;
  return MakeCudaDecodeBackend(o);
}

#define SKIP_WITHOUT_CUDA(backend)                                              \
  if (!(backend).ok()) {                                                        \
    ASSERT_TRUE(absl::IsUnavailable((backend).status())) << (backend).status(); \
    GTEST_SKIP() << (backend).status();                                         \
  }

uint16_t ToBits(DType dt, float f) {
  return dt == DType::kBf16 ? kernels::FloatToBf16(f) : kernels::FloatToHalf(f);
}
std::vector<uint16_t> Random(DType dt, size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> g(0.f, scale);
  std::vector<uint16_t> x(n);
  for (auto& e : x) e = ToBits(dt, g(rng));
  return x;
}

TEST(CudaDecodeBackendTest, AttendMatchesCpuOnRandomTables) {
  auto cuda = Cuda();
  SKIP_WITHOUT_CUDA(cuda);
  const PageLayout layout{DType::kFp16, 4, 64, 16};
  const int q_heads = 8, slots = 300;
  std::unique_ptr<DecodeBackend> cpu = MakeCpuDecodeBackend();
  ASSERT_TRUE(cpu->Init(layout, q_heads, slots).ok());
  ASSERT_TRUE((*cuda)->Init(layout, q_heads, slots).ok());
  std::mt19937 rng(3);
  const std::vector<uint16_t> pool = Random(DType::kFp16, slots * layout.PageBytes() / 2, rng);
  std::vector<int32_t> all(slots);
  for (int32_t i = 0; i < slots; ++i) all[i] = slots - 1 - i;  // reversed: a real scatter
  std::vector<uint8_t> bytes(pool.size() * 2);
  std::memcpy(bytes.data(), pool.data(), bytes.size());
  // Pages listed in reverse slot order: page i of staging is pool page i, bound for slot all[i].
  ASSERT_TRUE(cpu->Upload(all, bytes).ok());
  ASSERT_TRUE((*cuda)->Upload(all, bytes).ok());
  for (int trial = 0; trial < 12; ++trial) {
    std::vector<int32_t> indptr{0}, indices, last;
    for (int r = 0; r < 4; ++r) {
      int n = static_cast<int>(rng() % 40);
      if (r == trial % 4) n = trial < 4 ? 0 : (trial < 8 ? 1 : 280);
      for (int j = 0; j < n; ++j) indices.push_back(static_cast<int32_t>(rng() % slots));
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last.push_back(static_cast<int32_t>(1 + rng() % 16));
    }
    const kernels::PageTable table{4, indptr.data(), indices.data(), last.data()};
    const std::vector<uint16_t> q = Random(DType::kFp16, q_heads * 64, rng, 0.5f);
    std::vector<uint16_t> a(q.size()), b(q.size());
    ASSERT_TRUE(cpu->Attend(q, table, absl::MakeSpan(a)).ok());
    absl::Status s = (*cuda)->Attend(q, table, absl::MakeSpan(b));
    ASSERT_TRUE(s.ok()) << s;
    for (size_t i = 0; i < a.size(); ++i) {
      const double x = kernels::HalfToFloat(a[i]), y = kernels::HalfToFloat(b[i]);
      ASSERT_NEAR(y, x, 2e-3 + 4e-3 * std::abs(x)) << "trial " << trial << " elem " << i;
    }
  }
}

// Validation, on both backends: the same inputs are refused with the same codes.
class BackendValidationTest : public testing::TestWithParam<std::string> {
 protected:
  static constexpr int kQ = 8, kSlots = 6;
  const PageLayout layout_{DType::kFp16, 2, 64, 16};

  std::unique_ptr<DecodeBackend> Make() {
    if (GetParam() == "cpu") return MakeCpuDecodeBackend();
    auto b = Cuda(GetParam() == "cuda-mapped");
    return b.ok() ? std::move(*b) : nullptr;
  }
  std::vector<uint8_t> Pages(int n, uint32_t seed) {
    std::mt19937 rng(seed);
    const std::vector<uint16_t> x = Random(DType::kFp16, n * layout_.PageBytes() / 2, rng);
    std::vector<uint8_t> bytes(x.size() * 2);
    std::memcpy(bytes.data(), x.data(), bytes.size());
    return bytes;
  }
  // Attention of a fixed query over slot `slot` (one full page per KV head row).
  std::vector<uint16_t> AttendSlot(DecodeBackend& b, int32_t slot) {
    std::vector<int32_t> indptr{0, 1, 2}, indices{slot, slot}, last{16, 16};
    std::mt19937 rng(5);
    const std::vector<uint16_t> q = Random(DType::kFp16, kQ * 64, rng);
    std::vector<uint16_t> o(q.size(), 0);
    const kernels::PageTable t{2, indptr.data(), indices.data(), last.data()};
    EXPECT_TRUE(b.Attend(q, t, absl::MakeSpan(o)).ok());
    return o;
  }
};

#define MAKE_OR_SKIP(b)                      \
  std::unique_ptr<DecodeBackend> b = Make(); \
  if (b == nullptr) GTEST_SKIP() << "no CUDA decode backend here";

TEST_P(BackendValidationTest, InitRefusesBadShapesAndSecondCall) {
  MAKE_OR_SKIP(b);
  EXPECT_TRUE(absl::IsInvalidArgument(b->Init(layout_, kQ, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(b->Init(layout_, 3, kSlots)));  // not a multiple of 2
  EXPECT_TRUE(absl::IsInvalidArgument(b->Init(PageLayout{DType::kFp16, 2, 64, 3}, kQ, kSlots)));
  EXPECT_TRUE(absl::IsFailedPrecondition(b->Upload({}, {})));  // not initialized
  ASSERT_TRUE(b->Init(layout_, kQ, kSlots).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(b->Init(layout_, kQ, kSlots)));
}

TEST_P(BackendValidationTest, UploadRefusesBadSizesAndSlotsAndWritesNothing) {
  MAKE_OR_SKIP(b);
  ASSERT_TRUE(b->Init(layout_, kQ, kSlots).ok());
  const std::vector<uint8_t> a = Pages(1, 1), three = Pages(3, 2);
  ASSERT_TRUE(b->Upload(std::vector<int32_t>{0}, a).ok());
  const std::vector<uint16_t> before = AttendSlot(*b, 0);
  using Slots = std::vector<int32_t>;
  EXPECT_TRUE(absl::IsInvalidArgument(b->Upload(Slots{0, 1}, three)));          // size mismatch
  EXPECT_TRUE(absl::IsInvalidArgument(b->Upload(Slots{0, 1, 0}, three)));       // repeated
  EXPECT_TRUE(absl::IsInvalidArgument(b->Upload(Slots{0, 1, kSlots}, three)));  // out of range
  EXPECT_TRUE(absl::IsInvalidArgument(b->Upload(Slots{0, -1, 2}, three)));      // negative
  EXPECT_EQ(AttendSlot(*b, 0), before);  // slot 0 kept its page
  EXPECT_TRUE(b->Upload(Slots{}, {}).ok());
  // A valid upload replaces it (through the backend's staging buffer where it has one).
  auto staged = b->StagingBuffer(three.size());
  ASSERT_TRUE(staged.ok()) << staged.status();
  absl::Span<const uint8_t> src = three;
  if (!staged->empty()) {
    ASSERT_GE(staged->size(), three.size());
    std::memcpy(staged->data(), three.data(), three.size());
    src = absl::MakeConstSpan(staged->data(), three.size());
  }
  ASSERT_TRUE(b->Upload(Slots{5, 0, 3}, src).ok());
  EXPECT_NE(AttendSlot(*b, 0), before);
  // The same page in another slot attends the same.
  ASSERT_TRUE(b->Upload(Slots{2}, absl::MakeConstSpan(three).subspan(layout_.PageBytes(),
                                                                     layout_.PageBytes()))
                  .ok());
  EXPECT_EQ(AttendSlot(*b, 2), AttendSlot(*b, 0));
}

TEST_P(BackendValidationTest, AttendRefusesBadSizesAndTablesAndLeavesOutput) {
  MAKE_OR_SKIP(b);
  ASSERT_TRUE(b->Init(layout_, kQ, kSlots).ok());
  std::vector<uint16_t> q(kQ * 64, 0x3c00), o(kQ * 64, 0x1234), short_q(kQ * 64 - 1);
  const std::vector<uint16_t> untouched = o;
  std::vector<int32_t> indptr{0, 1, 2}, indices{0, 1}, last{16, 16};
  kernels::PageTable t{2, indptr.data(), indices.data(), last.data()};
  EXPECT_TRUE(absl::IsInvalidArgument(b->Attend(short_q, t, absl::MakeSpan(o))));
  t.num_rows = 1;
  EXPECT_TRUE(absl::IsInvalidArgument(b->Attend(q, t, absl::MakeSpan(o))));
  t.num_rows = 2;
  last[1] = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(b->Attend(q, t, absl::MakeSpan(o))));
  last[1] = 17;
  EXPECT_TRUE(absl::IsInvalidArgument(b->Attend(q, t, absl::MakeSpan(o))));
  last[1] = 16;
  indices[1] = kSlots;
  EXPECT_TRUE(absl::IsOutOfRange(b->Attend(q, t, absl::MakeSpan(o))));
  indptr[1] = 3;  // decreasing
  indices[1] = 1;
  EXPECT_TRUE(absl::IsInvalidArgument(b->Attend(q, t, absl::MakeSpan(o))));
  EXPECT_EQ(o, untouched);
  indptr[1] = 1;
  EXPECT_TRUE(b->Attend(q, t, absl::MakeSpan(o)).ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendValidationTest,
                         testing::Values("cpu", "cuda", "cuda-mapped"),
                         [](const testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// The CUDA backend's own limits: shapes its kernel does not support are refused at Init.
TEST(CudaDecodeBackendTest, InitRefusesShapesTheKernelDoesNotSupport) {
  auto cuda = Cuda();
  SKIP_WITHOUT_CUDA(cuda);
  EXPECT_TRUE(absl::IsInvalidArgument((*cuda)->Init(PageLayout{DType::kFp16, 2, 96, 16}, 4, 8)));
  auto second = Cuda();
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(absl::IsInvalidArgument((*second)->Init(PageLayout{DType::kFp16, 1, 64, 16}, 16, 8)));
  auto unknown = MakeCudaDecodeBackend(1 << 20);
  EXPECT_TRUE(absl::IsUnavailable(unknown.status())) << unknown.status();
}

}  // namespace
}  // namespace pagoda
