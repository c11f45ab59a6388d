// Bad-argument checks of the CUDA entry points. Every case is rejected on the host before any
// CUDA call, so this test runs in CI without a GPU (pointers are host dummies never dereferenced
// by a kernel).
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/kernels/cuda.h"

namespace pagoda::kernels {
namespace {

using absl::StatusCode;

alignas(16) uint16_t g_elems[4096];
alignas(16) int32_t g_ints[256];
alignas(16) float g_floats[4096];

PagedKV Kv(int32_t dim = 128) { return PackedPagedKV(DType::kBFloat16, 8, 16, 2, dim, g_elems); }

DecodeParams Decode() {
  DecodeParams p;
  p.kv = Kv();
  p.table = {2 * 2, g_ints, g_ints, g_ints};
  p.batch = 2;
  p.num_qo_heads = 8;
  p.q = g_elems;
  p.o = g_elems;
  p.is_streaming = reinterpret_cast<const uint8_t*>(g_ints);
  return p;
}

gpu::DecodePlan PlanFor(const DecodeParams& p) {
  gpu::DecodePlan plan;  // what PlanDecode would return for these shapes, without a device
  plan.batch = p.batch;
  plan.num_qo_heads = p.num_qo_heads;
  plan.num_kv_heads = p.kv.num_kv_heads;
  plan.head_dim = p.kv.head_dim;
  plan.dtype = p.kv.dtype;
  return plan;
}

TEST(CudaArgs, DecodeRejectsBadShapesBeforeTouchingTheDevice) {
  const DecodeParams good = Decode();
  const gpu::DecodePlan plan = PlanFor(good);
  DecodeParams p = good;
  p.kv.head_dim = 96;
  EXPECT_EQ(gpu::PlanDecode(p, false, 100).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu::SparseDecode(plan, p, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
  p = good;
  p.num_qo_heads = 2 * 16;
  EXPECT_EQ(gpu::PlanDecode(p, false, 100).status().code(), StatusCode::kInvalidArgument);
  p = good;
  p.kv.page_size = 24;
  EXPECT_EQ(gpu::SparseDecode(plan, p, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
  p = good;
  p.q = g_elems + 1;  // not 16-byte aligned
  EXPECT_EQ(gpu::SparseDecode(plan, p, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
  p = good;
  p.kv.stride_token = 130;  // not a multiple of 8 elements
  EXPECT_EQ(gpu::SparseDecode(plan, p, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
  p = good;
  p.batch = 3;
  p.table.num_rows = 3 * 2;
  EXPECT_EQ(gpu::SparseDecode(plan, p, nullptr, nullptr).code(), StatusCode::kInvalidArgument)
      << "shapes differ from the plan";
  EXPECT_EQ(gpu::StreamingDecode(plan, good, nullptr, nullptr).code(), StatusCode::kInvalidArgument)
      << "a sparse plan for a streaming run";
  gpu::DecodePlan split = plan;
  split.num_chunks = 4;
  EXPECT_EQ(gpu::SparseDecode(split, good, nullptr, nullptr).code(), StatusCode::kInvalidArgument)
      << "a split plan without workspace";
  gpu::DecodePlanOptions bad_opt;
  bad_opt.min_chunk_tokens = 0;
  EXPECT_EQ(gpu::PlanDecode(good, false, 100, bad_opt).status().code(),
            StatusCode::kInvalidArgument);
  bad_opt = {};
  bad_opt.max_chunks = 1025;  // the fused merge's limit
  EXPECT_EQ(gpu::PlanDecode(good, false, 100, bad_opt).status().code(),
            StatusCode::kInvalidArgument);
  bad_opt = {};
  bad_opt.pipeline_stages = 2;
  EXPECT_EQ(gpu::PlanDecode(good, false, 100, bad_opt).status().code(),
            StatusCode::kInvalidArgument);
  gpu::DecodePlan deep = plan;
  deep.pipeline_stages = 5;
  EXPECT_EQ(gpu::SparseDecode(deep, good, nullptr, nullptr).code(), StatusCode::kInvalidArgument)
      << "a plan with an unsupported pipeline depth";
  EXPECT_EQ(gpu::PlanDecode(good, false, -1).status().code(), StatusCode::kInvalidArgument);
}

PrefillParams Prefill() {
  PrefillParams p;
  p.kv = Kv();
  p.table = {2, g_ints, g_ints, g_ints};
  p.batch = 2;
  p.num_qo_heads = 8;
  p.q_indptr = g_ints;
  p.q = g_elems;
  p.o = g_elems;
  return p;
}

TEST(CudaArgs, PrefillRejectsBadShapesAndTilesBeforeTouchingTheDevice) {
  const PrefillParams good = Prefill();
  gpu::PrefillPlan plan;  // what PlanPrefill would return, without a device
  plan.batch = 2;
  plan.num_qo_heads = 8;
  plan.num_kv_heads = 2;
  plan.head_dim = 128;
  plan.dtype = DType::kBFloat16;
  plan.max_q_tiles = 4;
  gpu::PrefillPlanOptions opt;
  for (int tile : {0, 32, 96, 256}) {
    opt.tile_q = tile;
    EXPECT_EQ(gpu::PlanPrefill(good, 100, opt).status().code(), StatusCode::kInvalidArgument)
        << "tile " << tile;
    gpu::PrefillPlan bad = plan;
    bad.tile_q = tile;
    EXPECT_EQ(gpu::BlockSparsePrefill(bad, good, nullptr, nullptr).code(),
              StatusCode::kInvalidArgument)
        << "tile " << tile;
  }
  EXPECT_EQ(gpu::PlanPrefill(good, -1).status().code(), StatusCode::kInvalidArgument);
  PrefillParams p = good;
  p.kv.head_dim = 96;
  EXPECT_EQ(gpu::PlanPrefill(p, 100).status().code(), StatusCode::kInvalidArgument);
  p = good;
  p.num_qo_heads = 7;
  EXPECT_EQ(gpu::PlanPrefill(p, 100).status().code(), StatusCode::kInvalidArgument);
  p = good;
  p.kv.dtype = static_cast<DType>(5);
  EXPECT_EQ(gpu::PlanPrefill(p, 100).status().code(), StatusCode::kInvalidArgument);
  auto run = [&](const PrefillParams& params) {
    return gpu::BlockSparsePrefill(plan, params, nullptr, nullptr).code();
  };
  p = good;
  p.kv.page_size = 24;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "page size not a power of two";
  p = good;
  p.q = g_elems + 1;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "q not 16-byte aligned";
  p = good;
  p.o = g_elems + 3;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "o not 16-byte aligned";
  p = good;
  p.kv.stride_token = 130;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "stride";
  p = good;
  p.q_indptr = nullptr;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "null q_indptr";
  p = good;
  p.table.num_rows = 3;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "rows != batch";
  p = good;
  p.window_tokens = -1;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "negative window";
  p = good;
  p.select_indptr = g_ints;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "select_indptr without select_pages";
  p = good;
  p.batch = 3;
  p.table.num_rows = 3;
  EXPECT_EQ(run(p), StatusCode::kInvalidArgument) << "shapes differ from the plan";
}

TEST(CudaArgs, SummariesQuestKMeansAndCopiesRejectBadShapes) {
  SummaryUpdateParams up;
  up.kv = Kv();
  up.summaries = {DType::kFloat16, 8, 1, 2, 128, g_elems, g_elems, g_elems, g_ints};
  up.num_updates = 1;
  up.pages = g_ints;
  up.new_count = g_ints;
  EXPECT_EQ(gpu::UpdateSummaries(up, nullptr).code(), StatusCode::kInvalidArgument) << "dtype";
  up.summaries.dtype = DType::kBFloat16;
  up.summaries.sub_pages = 3;
  EXPECT_EQ(gpu::UpdateSummaries(up, nullptr).code(), StatusCode::kInvalidArgument) << "subs";
  up.summaries.sub_pages = 1;
  up.num_updates = 0;
  EXPECT_TRUE(gpu::UpdateSummaries(up, nullptr).ok()) << "nothing to do is not an error";

  QuestParams qp;
  qp.batch = 2;
  qp.num_qo_heads = 8;
  qp.q = g_elems;
  qp.summaries = {DType::kBFloat16, 8, 1, 2, 128, g_elems, g_elems, nullptr, g_ints};
  qp.cand_indptr = qp.cand_pages = qp.keep_indptr = qp.keep_pages = g_ints;
  qp.seq_last_page_len = qp.out_indptr = qp.out_indices = qp.out_last_page_len = g_ints;
  qp.scores = g_floats;
  qp.top_k = 4;
  auto plan = gpu::PlanQuest(qp, 8);
  ASSERT_TRUE(plan.ok()) << plan.status();
  QuestParams q = qp;
  q.batch = 3;
  EXPECT_EQ(gpu::QuestSelect(*plan, q, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
  q = qp;
  q.top_k = -1;
  EXPECT_EQ(gpu::QuestSelect(*plan, q, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
  q = qp;
  q.scores = nullptr;
  EXPECT_EQ(gpu::QuestSelect(*plan, q, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
  q = qp;
  q.summaries.head_dim = 96;
  EXPECT_EQ(gpu::PlanQuest(q, 8).status().code(), StatusCode::kInvalidArgument);
  q = qp;
  q.num_qo_heads = 32 + 2;  // not a multiple of the KV heads... and above 8 per group
  EXPECT_EQ(gpu::PlanQuest(q, 8).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu::PlanQuest(qp, -1).status().code(), StatusCode::kInvalidArgument);

  KMeansParams kp{Kv(), g_ints, 64, 4, g_floats, g_ints, g_ints};
  KMeansParams k = kp;
  k.kv.head_dim = 96;
  k.kv.stride_token = 96;
  EXPECT_EQ(gpu::KMeansAssign(k, nullptr).code(), StatusCode::kInvalidArgument);
  k = kp;
  k.centroids = nullptr;
  EXPECT_EQ(gpu::KMeansAssign(k, nullptr).code(), StatusCode::kInvalidArgument);
  k = kp;
  k.kv.k = g_elems + 1;
  EXPECT_EQ(gpu::KMeansAssign(k, nullptr).code(), StatusCode::kInvalidArgument) << "alignment";
  EXPECT_EQ(gpu::KMeansUpdate(kp, nullptr, nullptr).code(), StatusCode::kInvalidArgument)
      << "no workspace";

  std::vector<uint8_t> pool(1024), staging(1024);
  PageCopyParams cp{pool.data(), 4, 128, 256, g_ints, 2, staging.data()};
  EXPECT_EQ(gpu::GatherPages(cp, nullptr).code(), StatusCode::kInvalidArgument) << "stride";
  cp.pool_stride_bytes = 256;
  cp.num_pages = -1;
  EXPECT_EQ(gpu::ScatterPages(cp, nullptr).code(), StatusCode::kInvalidArgument);
  cp.num_pages = 0;
  EXPECT_TRUE(gpu::GatherPages(cp, nullptr).ok()) << "nothing to copy is not an error";
  TokenRowsParams tr;
  tr.pool = reinterpret_cast<uint8_t*>(g_elems);
  tr.pool_rows = 16;
  tr.row_bytes = 256;
  tr.k = tr.v = reinterpret_cast<const uint8_t*>(g_elems);
  tr.num_rows = kMaxTokenRows + 1;
  EXPECT_EQ(gpu::WriteTokenRows(tr, nullptr).code(), StatusCode::kInvalidArgument) << "rows";
  tr.num_rows = 2;
  tr.v = nullptr;
  EXPECT_EQ(gpu::WriteTokenRows(tr, nullptr).code(), StatusCode::kInvalidArgument) << "null v";
  tr.num_rows = 0;
  EXPECT_TRUE(gpu::WriteTokenRows(tr, nullptr).ok()) << "nothing to write is not an error";
}

}  // namespace
}  // namespace pagoda::kernels
