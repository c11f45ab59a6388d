// The CUDA exact page masses against the CPU reference on random problems.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "gtest/gtest.h"
#include "page_mass_problem.h"
#include "pagoda/kernels/cuda.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::kernels {
namespace {

using testing::MakePageMassProblem;
using testing::PageMassCase;
using testing::PageMassProblem;

// A problem's inputs and masses copied to the device, and its parameters pointing at them.
struct DeviceProblem {
  DeviceProblem(const PageMassCase& c, PageMassProblem& pr)
      : pool(pr.pool.data),
        q(pr.q),
        indptr(pr.indptr),
        indices(pr.indices),
        page_len(pr.page_len),
        mass(pr.mass.size()),
        params(pr.params()) {
    params.kv =
        PackedPagedKV(c.dtype, c.pool_pages, c.page_size, c.kv_heads, c.head_dim, pool.get());
    params.q = q.get();
    params.indptr = indptr.get();
    params.indices = indices.get();
    params.page_len = page_len.get();
    params.mass = mass.get();
  }
  Dev<uint16_t> pool, q;
  Dev<int32_t> indptr, indices, page_len;
  Dev<float> mass;
  PageMassParams params;
};

// A choice over the problem's rows: random kept counts, split and need (need may exceed the
// candidates), random values.
struct Choice {
  std::vector<int32_t> keep, split, need, values, out_indptr = {0};
};
Choice RandomChoice(const PageMassProblem& pr, uint32_t seed) {
  std::mt19937 rng(seed);
  Choice c;
  for (size_t r = 0; r + 1 < pr.indptr.size(); ++r) {
    const int32_t n = pr.indptr[r + 1] - pr.indptr[r];
    const int32_t keep = std::uniform_int_distribution<int32_t>(0, std::min(n, 80))(rng);
    c.keep.push_back(keep);
    c.split.push_back(std::uniform_int_distribution<int32_t>(0, keep)(rng));
    c.need.push_back(std::uniform_int_distribution<int32_t>(0, n - keep + 3)(rng));
    c.out_indptr.push_back(c.out_indptr.back() + keep + std::min(c.need.back(), n - keep));
  }
  for (size_t e = 0; e < pr.indices.size(); ++e) c.values.push_back(rng() % 100000);
  if (c.values.empty()) c.values.push_back(0);
  return c;
}

// The masses against the reference (up to rounding) and, with `choose`, the choice against
// MassSelectReference over the masses the device computed (exactly), `calls` times over one
// workspace. With `tails`, the device reads each row's last entries from a list of the row's own
// (PageMassParams::tails) and the choice names page ids (no values array).
void CheckPageMass(const PageMassCase& c, uint32_t seed, bool choose, int calls = 1,
                   bool tails = false) {
  PageMassProblem pr = MakePageMassProblem(c, seed);
  testing::SplitRows in_tails;
  if (tails) in_tails = testing::SplitIntoTails(pr, seed + 500);
  ASSERT_TRUE(PageMassReference(pr.params()).ok());
  const std::vector<float> want = pr.mass;
  DeviceProblem d(c, pr);
  const int64_t entries = pr.indptr.back();
  const int32_t rows = c.batch * c.kv_heads;
  Dev<uint8_t> ws(gpu::PageMassWorkspaceBytes(entries, c.group));
  CUDA_OK(cudaMemset(ws.get(), 0, gpu::PageMassWorkspaceBytes(entries, c.group)));
  PageMassParams p = d.params;
  // The split form on the device: listed entries, and each row's tail in an allocation of its own.
  std::vector<std::unique_ptr<Dev<int32_t>>> split_bufs;
  std::unique_ptr<Dev<const int32_t*>> d_tails;
  if (tails) {
    auto put = [&](const std::vector<int32_t>& v) {
      return split_bufs.emplace_back(std::make_unique<Dev<int32_t>>(v))->get();
    };
    p.indices = put(in_tails.ids);
    p.page_len = put(in_tails.len);
    p.listed = put(in_tails.listed);
    std::vector<const int32_t*> tail_ptrs;
    for (const std::vector<int32_t>& t : in_tails.tails) {
      tail_ptrs.push_back(t.empty() ? nullptr : put(t));
    }
    d_tails = std::make_unique<Dev<const int32_t*>>(tail_ptrs);
    p.tails = d_tails->get();
    p.tail_len = c.page_size;
  }
  Choice ch = RandomChoice(pr, seed + 1000);
  if (tails) ch.values.assign(pr.indices.begin(), pr.indices.end());  // what the choice names
  Dev<int32_t> keep(ch.keep), split(ch.split), need(ch.need), values(ch.values);
  Dev<int32_t> out_indptr(ch.out_indptr);
  const size_t outs = std::max<size_t>(1, ch.out_indptr.back());
  Dev<int32_t> out(outs), out_entry(outs);
  MassSelectParams sel;
  sel.rows = rows;
  sel.indptr = d.indptr.get();
  sel.keep = keep.get();
  sel.split = split.get();
  sel.need = need.get();
  sel.mass = d.mass.get();
  sel.values = tails ? nullptr : values.get();
  sel.out_indptr = out_indptr.get();
  sel.out = out.get();
  sel.out_entry = out_entry.get();
  gpu::PageMassOptions options;
  options.select = choose ? &sel : nullptr;
  for (int call = 0; call < calls; ++call) {
    CUDA_OK(cudaMemset(d.mass.get(), 0xff, pr.mass.size() * sizeof(float)));
    CUDA_OK(cudaMemset(out.get(), 0xff, outs * 4));
    ASSERT_TRUE(gpu::PageMass(p, entries, ws.get(), options, nullptr).ok());
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> got = d.mass.Host();
    for (int64_t e = 0; e < entries; ++e) {
      ASSERT_NEAR(got[e], want[e], 2e-5 * c.group + 1e-3 * want[e])
          << "call " << call << " entry " << e;
    }
    if (!choose) continue;
    // The choice the reference makes from the device's masses.
    std::vector<float> got_mass = got;
    std::vector<int32_t> want_out(ch.out_indptr.back()), want_entry(ch.out_indptr.back());
    MassSelectParams ref = sel;
    ref.indptr = pr.indptr.data();
    ref.keep = ch.keep.data();
    ref.split = ch.split.data();
    ref.need = ch.need.data();
    ref.mass = got_mass.data();
    ref.values = ch.values.data();
    ref.out_indptr = ch.out_indptr.data();
    ref.out = want_out.data();
    ref.out_entry = want_entry.data();
    ASSERT_TRUE(MassSelectReference(ref).ok());
    std::vector<int32_t> got_out = out.Host(), got_entry = out_entry.Host();
    got_out.resize(want_out.size());
    got_entry.resize(want_entry.size());
    EXPECT_EQ(got_out, want_out) << "call " << call;
    EXPECT_EQ(got_entry, want_entry) << "call " << call;
  }
}

TEST(PageMassGpu, MatchesReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  uint32_t seed = 1;
  for (DType t : {DType::kBFloat16, DType::kFloat16}) {
    for (int d : {64, 128}) {
      for (int group : {1, 4, 8}) {
        for (GroupReduce reduce : {GroupReduce::kSum, GroupReduce::kMax}) {
          PageMassCase c;
          c.dtype = t;
          c.head_dim = d;
          c.group = group;
          c.reduce = reduce;
          c.q_scale = seed % 2 ? 0.5f : 2.f;
          SCOPED_TRACE(::testing::Message() << "d " << d << " group " << group << " seed " << seed);
          CheckPageMass(c, seed, /*choose=*/seed % 2 == 0);
          ++seed;
        }
      }
    }
  }
  // Llama-3-8B shapes, a row of ~600 pages (louiskv's scored set at a 4K budget).
  PageMassCase big;
  big.batch = 2;
  big.kv_heads = 8;
  big.group = 4;
  big.head_dim = 128;
  big.pool_pages = 900;
  big.max_entries = 700;
  CheckPageMass(big, 77, /*choose=*/true);
  // One sequence at 128K with louiskv's default rescoring (every resident page, ~1100 per row):
  // each row spread over many blocks.
  PageMassCase wide = big;
  wide.batch = 1;
  wide.pool_pages = 4096;
  wide.max_entries = 1100;
  CheckPageMass(wide, 78, /*choose=*/true);
  // A row longer than the masses kept in shared memory for the choice (2048).
  PageMassCase longer = wide;
  longer.kv_heads = 2;
  longer.max_entries = 3000;
  CheckPageMass(longer, 79, /*choose=*/true);
}

// Rows ending in stored lists (the decode worker's louiskv candidates): read in place, the same
// masses and choice as the rows listed whole.
TEST(PageMassGpu, RowsEndingInStoredListsMatchTheReference) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    PageMassCase c;
    c.batch = 3;
    c.kv_heads = 4;
    c.max_entries = 200;
    c.group = seed % 2 ? 4 : 8;
    c.head_dim = seed <= 2 ? 128 : 64;
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    CheckPageMass(c, seed, /*choose=*/true, /*calls=*/2, /*tails=*/true);
  }
  PageMassCase big;  // Llama-3-8B shapes, louiskv's scored set at 128K
  big.batch = 1;
  big.kv_heads = 8;
  big.head_dim = 128;
  big.pool_pages = 4096;
  big.max_entries = 1100;
  CheckPageMass(big, 90, /*choose=*/true, /*calls=*/1, /*tails=*/true);
}

// Side copies (the decode worker's late reads of q and k): made by the finishing kernel into
// pinned, mapped host memory, exact, with the masses unchanged; misaligned ones refused.
TEST(PageMassGpu, SideCopiesLandOnTheHost) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  PageMassCase c;
  c.batch = 1;
  c.kv_heads = 8;
  c.head_dim = 128;
  c.max_entries = 40;
  PageMassProblem pr = MakePageMassProblem(c, 11);
  ASSERT_TRUE(PageMassReference(pr.params()).ok());
  const std::vector<float> want = pr.mass;
  DeviceProblem d(c, pr);
  const int64_t entries = pr.indptr.back();
  Dev<uint8_t> ws(gpu::PageMassWorkspaceBytes(entries, c.group));
  PageMassParams p = d.params;
  // Two sources: the query itself, and 100,000 bytes of a pattern (more than one pass of the
  // grid's threads).
  std::vector<uint8_t> pattern(100000);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 7 + 3);
  Dev<uint8_t> big(pattern);
  const size_t q_bytes = pr.q.size() * 2;
  void* host = nullptr;
  CUDA_OK(cudaHostAlloc(&host, q_bytes + pattern.size(), cudaHostAllocMapped));
  std::memset(host, 0, q_bytes + pattern.size());
  void* mapped = nullptr;
  CUDA_OK(cudaHostGetDevicePointer(&mapped, host, 0));
  gpu::PageMassOptions options;
  options.copies.n = 2;
  options.copies.src[0] = d.q.get();
  options.copies.dst[0] = mapped;
  options.copies.bytes[0] = static_cast<int64_t>(q_bytes);
  options.copies.src[1] = big.get();
  options.copies.dst[1] = static_cast<uint8_t*>(mapped) + q_bytes;
  options.copies.bytes[1] = static_cast<int64_t>(pattern.size());
  ASSERT_TRUE(gpu::PageMass(p, entries, ws.get(), options, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(std::memcmp(host, pr.q.data(), q_bytes), 0);
  EXPECT_EQ(std::memcmp(static_cast<uint8_t*>(host) + q_bytes, pattern.data(), pattern.size()), 0);
  const std::vector<float> got = d.mass.Host();
  for (int64_t e = 0; e < entries; ++e)
    ASSERT_NEAR(got[e], want[e], 2e-5 * c.group + 1e-3 * want[e]);
  // Misaligned or too many: refused, nothing launched.
  std::memset(host, 0, q_bytes);
  for (int bad = 0; bad < 4; ++bad) {
    gpu::PageMassOptions o = options;
    if (bad == 0) o.copies.bytes[0] -= 2;
    if (bad == 1) o.copies.dst[0] = static_cast<uint8_t*>(mapped) + 8;
    if (bad == 2) o.copies.src[1] = nullptr;
    if (bad == 3) o.copies.n = gpu::SideCopies::kMax + 1;
    EXPECT_EQ(gpu::PageMass(p, entries, ws.get(), o, nullptr).code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(static_cast<uint8_t*>(host)[0], 0);
  CUDA_OK(cudaFreeHost(host));
}

// Many ties (a pool of 6 pages, up to 60 entries a row: repeated pages have equal masses, the
// earlier candidate wins at the threshold), three calls over one workspace.
TEST(PageMassGpu, ChoosesWhatTheReferenceChoosesFromTheSameMasses) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    PageMassCase c;
    c.batch = 5;
    c.kv_heads = 4;
    c.pool_pages = 6;
    c.max_entries = 60;
    c.group = seed % 2 ? 4 : 2;
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    CheckPageMass(c, seed, /*choose=*/true, /*calls=*/3);
  }
}

TEST(PageMassGpu, RejectsUnsupportedShapes) {
  PageMassCase c;
  c.head_dim = 96;
  PageMassProblem pr = MakePageMassProblem(c, 1);
  uint8_t ws[16];
  EXPECT_EQ(gpu::PageMass(pr.params(), 1, ws, {}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  PageMassCase wide;
  wide.group = 16;
  PageMassProblem pw = MakePageMassProblem(wide, 1);
  EXPECT_EQ(gpu::PageMass(pw.params(), 1, ws, {}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  // A choice that is not over the call's rows, indptr and masses.
  PageMassCase ok;
  PageMassProblem po = MakePageMassProblem(ok, 1);
  MassSelectParams sel;
  sel.rows = ok.batch * ok.kv_heads;
  sel.indptr = po.indptr.data();
  sel.mass = po.mass.data();
  sel.keep = sel.split = sel.need = sel.values = sel.out_indptr = po.indptr.data();
  int32_t out[4];
  sel.out = out;
  gpu::PageMassOptions options;
  options.select = &sel;
  for (int bad = 0; bad < 4; ++bad) {
    MassSelectParams b = sel;
    if (bad == 0) b.rows += 1;
    if (bad == 1) b.indptr = po.indices.data();
    if (bad == 2) b.mass = nullptr;
    if (bad == 3) b.out = nullptr;
    options.select = &b;
    EXPECT_EQ(gpu::PageMass(po.params(), 1, ws, options, nullptr).code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

}  // namespace
}  // namespace pagoda::kernels
