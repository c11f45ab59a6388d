// e2e_bench --mode diffusion: a diffusion-LM response generated in blocks over a trace layer,
// served by DiffusionSession and an embedded Store.
//
// The traces come from an autoregressive model; no diffusion LM is at hand, so the workload is
// simulated on its real K/V and queries: the prompt is positions [0, first traced query); the
// response is `blocks` blocks of `block_tokens` positions after it. Each block is denoised in
// `denoise_steps` steps. At step s the first (s+1)/S of the block's tokens (left to right, or in
// a random "confidence" order with --unmask random) are final: their K/V are the trace's. The
// others are still masked: their K/V are the trace's plus noise (noise x the layer's rms x N(0,1),
// fresh every step, fading linearly over the steps), as a mask token's K/V move with the context.
// Every step's queries are the trace's queries at the block's positions, attending bidirectionally
// (the whole block, no causal mask). After the last step the block is committed.
// Baseline in the same run: dense bidirectional attention with the same CPU kernel over every page
// (prompt + clean blocks + the noisy block, i.e. what a step without any cache attends).
// Reported: output error vs that baseline (relative L2 per query token x head), bytes per step
// (cached bytes reused, fetched by tier, block bytes rewritten into the pool, and what recomputing
// and rewriting the whole sequence's KV every step would move, the no-cache case), committed bytes
// per block, step time split and the ratio to dense.
#include "diffusion_mode.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "pagoda/client/diffusion_session.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

double Rms(const std::vector<uint16_t>& x) {
  double s = 0;
  for (uint16_t e : x) {
    const double f = kernels::HalfToFloat(e);
    s += f * f;
  }
  return std::sqrt(s / std::max<size_t>(x.size(), 1));
}

}  // namespace

int RunDiffusionLayer(const DiffusionArgs& a, const TraceFiles& files) {
  auto tr = LoadTrace(files);
  if (!tr.ok()) {
    std::fprintf(stderr, "%s\n", tr.status().ToString().c_str());
    return 1;
  }
  if (tr->v.empty()) {
    std::fprintf(stderr, "%s L%d: no values file, skipped\n", tr->doc.c_str(), tr->layer);
    return 0;
  }
  const int kv = tr->kv_heads, qh = tr->q_heads, hd = tr->head_dim, P = 16;
  const int64_t T = tr->tokens, first = tr->first_query(), B = a.block_tokens;
  const int S = a.denoise_steps;
  const int64_t blocks = std::min<int64_t>(a.blocks, tr->queries / B);
  if (first % P != 0 || B % P != 0 || blocks < 1 || S < 1) {
    std::fprintf(stderr, "diffusion: need whole-page prompt and blocks, blocks >= 1, steps >= 1\n");
    return 1;
  }
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>(t);  // positions stand in

  const PageLayout layout{DType::kFp16, static_cast<uint32_t>(kv), static_cast<uint32_t>(hd),
                          static_cast<uint32_t>(P)};
  const uint64_t page_bytes = layout.PageBytes();
  const std::string ssd = a.ssd_dir + "/diff_" + tr->doc + "_L" + std::to_string(tr->layer);
  std::filesystem::remove_all(ssd);
  StoreOptions so;
  so.layouts = {layout};
  so.host_capacity_bytes = static_cast<uint64_t>(a.host_pages) * page_bytes;
  so.segment_bytes = page_bytes * 16;
  so.data_dir = ssd;
  auto store = Store::Open(so);
  if (!store.ok()) {
    std::fprintf(stderr, "store: %s\n", store.status().ToString().c_str());
    return 1;
  }
  const int64_t end = first + blocks * B;
  const int32_t all_pages = static_cast<int32_t>(end / P);
  DiffusionSessionOptions o;
  o.layout = layout;
  o.q_heads = qh;
  o.layer = static_cast<uint32_t>(tr->layer);
  o.model_id = "trace:" + tr->doc;
  o.block_tokens = static_cast<int32_t>(B);
  o.sparse = a.budget_tokens > 0;
  if (o.sparse) {
    auto policy = retriever::ParsePolicy(a.policy);
    if (!policy.ok()) {
      std::fprintf(stderr, "%s\n", policy.status().ToString().c_str());
      return 1;
    }
    o.policy = *policy;
    o.selector.budget_tokens = a.budget_tokens;
    o.selector.sink_pages = a.sink_pages;
    o.selector.window_pages = a.window_pages;
  }
  o.pool_pages = a.pool_pages > 0 ? a.pool_pages
                 : o.sparse       ? static_cast<int32_t>(2 * (kv * (a.budget_tokens / P) + B / P))
                                  : all_pages;
  auto session = DiffusionSession::Create(store->get(), MakeCpuWorkerBackend(), o);
  if (!session.ok()) {
    std::fprintf(stderr, "session: %s\n", session.status().ToString().c_str());
    return 1;
  }
  auto slice = [&](const std::vector<uint16_t>& x, int64_t from, int64_t n) {
    std::vector<uint16_t> out(static_cast<size_t>(kv) * n * hd);
    for (int h = 0; h < kv; ++h) {
      std::memcpy(&out[h * n * hd], &x[(h * T + from) * hd], n * hd * 2);
    }
    return out;
  };
  if (absl::Status s = (*session)->Prefill(absl::MakeConstSpan(ids).subspan(0, first),
                                           slice(tr->k, 0, first), slice(tr->v, 0, first));
      !s.ok()) {
    std::fprintf(stderr, "prefill: %s\n", s.ToString().c_str());
    return 1;
  }

  // Dense baseline pool: every page of [0, end), the open block rewritten each step.
  std::vector<uint16_t> dense_pool(static_cast<size_t>(all_pages) * 2 * kv * P * hd, 0);
  auto put_token = [&](int64_t t, const uint16_t* k, const uint16_t* v, int64_t stride) {
    uint16_t* page = &dense_pool[(t / P) * 2 * kv * P * hd];
    for (int h = 0; h < kv; ++h) {
      std::memcpy(page + (h * P + t % P) * hd, k + h * stride, hd * 2);
      std::memcpy(page + ((kv + h) * P + t % P) * hd, v + h * stride, hd * 2);
    }
  };
  for (int64_t t = 0; t < first; ++t) put_token(t, &tr->k[t * hd], &tr->v[t * hd], T * hd);

  const double rms_k = Rms(tr->k), rms_v = Rms(tr->v);
  std::mt19937 rng(1234 + tr->layer);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<double> err;
  double sel = 0, xfer = 0, attn = 0, dense_s = 0;
  uint64_t reused = 0, rewritten = 0, uploaded = 0, committed = 0, nocache = 0;
  uint64_t from_tier[kNumTiers] = {0, 0, 0};
  int64_t steps = 0;
  const size_t nq = static_cast<size_t>(qh) * hd;
  std::vector<uint16_t> q(B * nq), out(q.size()), ref(q.size()), bk, bv;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t b0 = first + b * B;
    std::vector<int64_t> order(B);  // order[i]: the i-th token of the block to become final
    std::iota(order.begin(), order.end(), 0);
    if (a.unmask == "random") std::shuffle(order.begin(), order.end(), rng);
    for (int64_t i = 0; i < B; ++i) {
      for (int h = 0; h < qh; ++h) {
        std::memcpy(&q[i * nq + h * hd], &tr->q[(h * tr->queries + (b0 - first + i)) * hd], hd * 2);
      }
    }
    for (int s = 0; s < S; ++s) {
      bk = slice(tr->k, b0, B);
      bv = slice(tr->v, b0, B);
      const int64_t final_tokens = (s + 1) * B / S;
      const float sigma = a.noise * static_cast<float>(S - 1 - s) / static_cast<float>(S);
      for (int64_t r = final_tokens; r < B; ++r) {  // still masked
        const int64_t i = order[r];
        for (int h = 0; h < kv; ++h) {
          for (int d = 0; d < hd; ++d) {
            const size_t e = (h * B + i) * hd + d;
            bk[e] = kernels::FloatToHalf(kernels::HalfToFloat(bk[e]) +
                                         static_cast<float>(sigma * rms_k) * normal(rng));
            bv[e] = kernels::FloatToHalf(kernels::HalfToFloat(bv[e]) +
                                         static_cast<float>(sigma * rms_v) * normal(rng));
          }
        }
      }
      auto st = (*session)->Denoise(q, bk, bv, absl::MakeSpan(out));
      if (!st.ok()) {
        std::fprintf(stderr, "block %ld step %d: %s\n", static_cast<long>(b), s,
                     st.status().ToString().c_str());
        return 1;
      }
      ++steps;
      sel += st->select_s;
      xfer += st->transfer_s;
      attn += st->attention_s;
      reused += st->bytes_reused;
      rewritten += st->bytes_rewritten;
      uploaded += st->bytes_uploaded;
      for (int j = 0; j < kNumTiers; ++j) from_tier[j] += st->bytes_from_tier[j];
      nocache += static_cast<uint64_t>(st->cached_pages + B / P) * page_bytes;

      // Dense bidirectional baseline over every page up to the block's end.
      for (int64_t i = 0; i < B; ++i) put_token(b0 + i, &bk[i * hd], &bv[i * hd], B * hd);
      const int32_t pages = static_cast<int32_t>((b0 + B) / P);
      std::vector<int32_t> indptr{0}, indices, last;
      for (int h = 0; h < kv; ++h) {
        for (int32_t p = 0; p < pages; ++p) indices.push_back(p);
        indptr.push_back(static_cast<int32_t>(indices.size()));
        last.push_back(P);
      }
      kernels::DecodeParams dp;
      dp.kv =
          kernels::PackedPagedKV(kernels::DType::kFloat16, all_pages, P, kv, hd, dense_pool.data());
      dp.table = kernels::PageTable{kv, indptr.data(), indices.data(), last.data()};
      dp.batch = 1;
      dp.num_qo_heads = qh;
      const auto d0 = Clock::now();
      for (int64_t i = 0; i < B; ++i) {
        dp.q = &q[i * nq];
        dp.o = &ref[i * nq];
        if (absl::Status ds = kernels::SparseDecodeReference(dp); !ds.ok()) {
          std::fprintf(stderr, "dense: %s\n", ds.ToString().c_str());
          return 1;
        }
      }
      dense_s += std::chrono::duration<double>(Clock::now() - d0).count();
      for (int64_t i = 0; i < B * qh; ++i) {
        double num = 0, den = 0;
        for (int d = 0; d < hd; ++d) {
          const double x = kernels::HalfToFloat(out[i * hd + d]);
          const double y = kernels::HalfToFloat(ref[i * hd + d]);
          num += (x - y) * (x - y);
          den += y * y;
        }
        err.push_back(std::sqrt(num / std::max(den, 1e-30)));
      }
    }
    auto c = (*session)->CommitBlock(absl::MakeConstSpan(ids).subspan(b0, B));
    if (!c.ok()) {
      std::fprintf(stderr, "commit %ld: %s\n", static_cast<long>(b), c.status().ToString().c_str());
      return 1;
    }
    committed += c->bytes_committed;
  }
  double mean_err = 0;
  for (double e : err) mean_err += e;
  mean_err /= std::max<size_t>(err.size(), 1);
  const double n = static_cast<double>(steps);
  const double step_us = (sel + xfer + attn) / n * 1e6;
  std::printf(
      "%-9s L%02d diffusion blocks=%ld x %ld tok, %d steps/block, unmask=%s ctx=%ld..%ld "
      "budget=%ld pool=%d | err mean=%.4f p99=%.4f | KiB/step reused=%.1f ssd=%.1f host=%.1f "
      "rewritten=%.1f upload=%.1f no-cache rewrite=%.1f | commit KiB/block=%.1f | "
      "us/step select=%.1f transfer=%.1f attn=%.1f total=%.1f | dense attn=%.1f us | "
      "sparse/dense=%.3f\n",
      tr->doc.c_str(), tr->layer, static_cast<long>(blocks), static_cast<long>(B), S,
      a.unmask.c_str(), static_cast<long>(first + B), static_cast<long>(end),
      static_cast<long>(o.sparse ? a.budget_tokens : 0), o.pool_pages, mean_err,
      Percentile(err, 0.99), reused / n / 1024, from_tier[static_cast<int>(Tier::kSsd)] / n / 1024,
      from_tier[static_cast<int>(Tier::kHost)] / n / 1024, rewritten / n / 1024,
      uploaded / n / 1024, nocache / n / 1024, committed / static_cast<double>(blocks) / 1024,
      sel / n * 1e6, xfer / n * 1e6, attn / n * 1e6, step_us, dense_s / n * 1e6,
      step_us / (dense_s / n * 1e6));
  std::fflush(stdout);
  session->reset();
  store->reset();
  std::filesystem::remove_all(ssd);
  return 0;
}

}  // namespace pagoda::bench
