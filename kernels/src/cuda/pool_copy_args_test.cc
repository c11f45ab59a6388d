// Host-side checks of gpu::CopyPoolToPool: bad shapes are rejected before anything is enqueued,
// so no GPU is needed (CI runs this).
#include "gtest/gtest.h"
#include "pagoda/kernels/pool_copy_cuda.h"

namespace pagoda::kernels {
namespace {

TEST(PoolCopyCudaArgs, BadShapesRejectedBeforeTouchingTheDevice) {
  // Pointers that would fault if anything touched them: the checks must come first.
  auto* bogus = reinterpret_cast<uint8_t*>(0x10);
  const auto* ids = reinterpret_cast<const int32_t*>(0x20);
  PoolToPoolParams p{bogus, 8, 64, bogus, 8, 64, 64, ids, ids, 4};
  p.page_bytes = 0;
  EXPECT_EQ(gpu::CopyPoolToPool(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.page_bytes = 128;  // above both strides
  EXPECT_EQ(gpu::CopyPoolToPool(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.page_bytes = 64;
  p.src_slots = 0;
  EXPECT_EQ(gpu::CopyPoolToPool(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.src_slots = 8;
  p.dst_pages = nullptr;
  EXPECT_EQ(gpu::CopyPoolToPool(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.dst_pages = ids;
  p.num_pages = -3;
  EXPECT_EQ(gpu::CopyPoolToPool(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.num_pages = 0;
  EXPECT_TRUE(gpu::CopyPoolToPool(p, nullptr).ok()) << "nothing to copy is not an error";
}

}  // namespace
}  // namespace pagoda::kernels
