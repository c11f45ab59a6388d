// cluster_bench: what louiskv's prompt clustering costs as the prompt grows, whole-prompt k-means
// (the baseline, quadratic) against windowed k-means (SelectorOptions::cluster_window_tokens,
// linear), both the kernels' CPU reference through retriever::ClusterPrompt. Keys are synthetic
// (fp16, a few hundred random topics plus noise, so k-means has structure to find); the time does
// not depend on their values beyond the iteration count, which is fixed.
//
//   build/bench/retriever/cluster_bench --tokens 4096,8192,16384 --window 1024
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "pagoda/kernels/dtype.h"
#include "pagoda/retriever/prompt_clusters.h"

namespace {

double Seconds(const pagoda::retriever::SelectorOptions& o, const std::vector<uint16_t>& keys,
               int64_t n, int reps) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    auto c = pagoda::retriever::ClusterPrompt(o, keys, n);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (!c.ok()) {
      std::fprintf(stderr, "ClusterPrompt: %s\n", std::string(c.status().message()).c_str());
      return -1;
    }
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> tokens = {4096, 8192, 16384};
  int window = 1024, head_dim = 128, kv_heads = 1, reps = 3;
  int64_t max_whole = 16384;
  CLI::App app{"louiskv prompt clustering: whole-prompt vs windowed k-means"};
  app.add_option("--tokens", tokens, "prompt lengths")->delimiter(',');
  app.add_option("--window", window, "cluster_window_tokens of the windowed runs");
  app.add_option("--head-dim", head_dim, "head dimension");
  app.add_option("--kv-heads", kv_heads, "KV heads");
  app.add_option("--reps", reps, "runs per point (median)");
  app.add_option("--max-whole", max_whole, "longest prompt clustered whole (it is quadratic)");
  CLI11_PARSE(app, argc, argv);

  pagoda::retriever::SelectorOptions o;
  o.kv_heads = kv_heads;
  o.q_heads = kv_heads;
  o.head_dim = head_dim;
  o.page_tokens = 16;
  o.dtype = pagoda::kernels::DType::kFloat16;
  std::printf(
      "louiskv clustering, %d KV head(s), head_dim %d, %d tokens/cluster, %d iterations, "
      "one thread; median of %d\n",
      kv_heads, head_dim, o.cluster_tokens, o.kmeans_iters, reps);
  std::printf("| prompt tokens | whole prompt | windows of %d | whole / windowed |\n", window);
  std::printf("| --- | --- | --- | --- |\n");
  for (int64_t n : tokens) {
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> topics(static_cast<size_t>(256) * head_dim);
    for (float& x : topics) x = g(rng);
    std::vector<uint16_t> keys(static_cast<size_t>(kv_heads) * n * head_dim);
    for (size_t t = 0; t < keys.size() / head_dim; ++t) {
      const float* c = &topics[(rng() % 256) * head_dim];
      for (int i = 0; i < head_dim; ++i) {
        keys[t * head_dim + i] = pagoda::kernels::FloatToHalf(c[i] + 0.3f * g(rng));
      }
    }
    pagoda::retriever::SelectorOptions whole = o, windowed = o;
    whole.cluster_window_tokens = 0;
    windowed.cluster_window_tokens = window;
    const double tw = Seconds(windowed, keys, n, reps);
    if (n <= max_whole) {
      const double t0 = Seconds(whole, keys, n, std::max(1, reps / 3));
      std::printf("| %lld | %.3f s | %.3f s | %.1fx |\n", static_cast<long long>(n), t0, tw,
                  t0 / tw);
    } else {
      std::printf("| %lld | (not run) | %.3f s | |\n", static_cast<long long>(n), tw);
    }
    std::fflush(stdout);
  }
  return 0;
}
