// store_index_eval: the store-wide page index (RetroLM-style retrieval across documents) on real
// keys. Every document of a trace directory is put into one StoreIndex per layer (a page = its
// mean key per KV head, keyed by a PageKey); each document's queries (sum over the GQA group)
// then search it. Baseline in the same run: the exact flat index. Prints, per index kind, recall@k
// against flat, search time and its ratio to flat, the share of hits from other documents, and
// checks that a removed document never comes back. --distractors N adds N synthetic pages to see
// the index at store scale.
//
//   store_index_eval --traces DIR [--page-tokens 16] [--k 32] [--stride 8] [--distractors N]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/retriever/store_index.h"
#include "trace.h"

namespace pagoda::bench {
namespace {

using retriever::AnnKind;
using retriever::StoreIndex;

struct Doc {
  int id = 0;
  TraceLayer trace;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int Main(int argc, char** argv) {
  setenv("OMP_NUM_THREADS", "1", 1);
  CLI::App app{"Store-wide page index across documents"};
  std::string dir;
  int page_tokens = 16, k = 32, stride = 8;
  int64_t distractors = 0;
  app.add_option("--traces", dir, "trace directory")->required();
  app.add_option("--page-tokens", page_tokens, "tokens per page")->check(CLI::PositiveNumber);
  app.add_option("--k", k, "pages retrieved per search")->check(CLI::PositiveNumber);
  app.add_option("--stride", stride, "search every N-th query")->check(CLI::PositiveNumber);
  app.add_option("--distractors", distractors,
                 "extra synthetic pages (Gaussian, per-dimension mean and spread of the real "
                 "pages) to measure the index at store scale");
  CLI11_PARSE(app, argc, argv);
  omp_set_num_threads(1);
  auto files = FindTraces(dir);
  if (!files.ok()) {
    std::fprintf(stderr, "%s\n", std::string(files.status().message()).c_str());
    return 1;
  }
  std::map<int, std::vector<TraceFiles>> by_layer;
  for (const TraceFiles& f : *files) by_layer[f.layer].push_back(f);
  absl::PrintF("traces: %s, page %d tokens, k %d, every %d-th query\n\n", dir, page_tokens, k,
               stride);
  absl::PrintF(
      "| layer | docs | pages (synthetic) | index | recall@k vs flat | search us | time vs flat | "
      "hits from "
      "other docs | add us/page | removed doc returned "
      "|\n|---|---|---|---|---|---|---|---|---|---|\n");
  int failures = 0;
  for (auto& [layer, list] : by_layer) {
    std::vector<Doc> docs;
    for (size_t i = 0; i < list.size(); ++i) {
      auto t = LoadTrace(list[i]);
      if (!t.ok()) {
        std::fprintf(stderr, "%s\n", std::string(t.status().message()).c_str());
        return 1;
      }
      docs.push_back({static_cast<int>(i), *std::move(t)});
    }
    const int kv = docs[0].trace.kv_heads, d = docs[0].trace.head_dim;
    // Page mean keys of every full page of every document: [kv, d] per page.
    std::vector<std::pair<PageKey, std::vector<float>>> pages;
    for (const Doc& doc : docs) {
      const TraceLayer& t = doc.trace;
      if (t.kv_heads != kv || t.head_dim != d) continue;
      for (int64_t p = 0; p < t.tokens / page_tokens; ++p) {
        std::vector<float> v(static_cast<size_t>(kv) * d, 0.f);
        for (int h = 0; h < kv; ++h) {
          for (int64_t j = p * page_tokens; j < (p + 1) * page_tokens; ++j) {
            for (int i = 0; i < d; ++i) {
              v[h * d + i] += kernels::HalfToFloat(t.k[(h * t.tokens + j) * d + i]) / page_tokens;
            }
          }
        }
        pages.push_back({PageKey{static_cast<uint64_t>(doc.id), static_cast<uint64_t>(p)}, v});
      }
    }
    // Synthetic pages of "other documents" (doc id 1000+) at the real pages' statistics.
    if (distractors > 0 && !pages.empty()) {
      const size_t w = pages[0].second.size();
      std::vector<double> mean(w, 0), sq(w, 0);
      for (const auto& pg : pages) {
        for (size_t i = 0; i < w; ++i) {
          mean[i] += pg.second[i];
          sq[i] += double{pg.second[i]} * pg.second[i];
        }
      }
      std::mt19937 rng(11);
      std::normal_distribution<float> g;
      const double n = static_cast<double>(pages.size());
      for (int64_t p = 0; p < distractors; ++p) {
        std::vector<float> v(w);
        for (size_t i = 0; i < w; ++i) {
          const double m = mean[i] / n;
          v[i] = static_cast<float>(m + std::sqrt(std::max(0.0, sq[i] / n - m * m)) * g(rng));
        }
        pages.push_back({PageKey{1000, static_cast<uint64_t>(p)}, v});
      }
    }
    // Queries: sum over each group's query heads, every stride-th step of every document.
    struct Query {
      int doc, head;
      std::vector<float> q;
    };
    std::vector<Query> queries;
    for (const Doc& doc : docs) {
      const TraceLayer& t = doc.trace;
      if (t.kv_heads != kv || t.head_dim != d) continue;
      const int group = t.q_heads / kv;
      for (int64_t s = 0; s < t.queries; s += stride) {
        for (int h = 0; h < kv; ++h) {
          std::vector<float> q(d, 0.f);
          for (int g = 0; g < group; ++g) {
            for (int i = 0; i < d; ++i) {
              q[i] += kernels::HalfToFloat(t.q[((h * group + g) * t.queries + s) * d + i]);
            }
          }
          queries.push_back({doc.id, h, q});
        }
      }
    }
    std::vector<std::vector<PageKey>> exact;
    double flat_us = 0;
    for (AnnKind kind : {AnnKind::kFlat, AnnKind::kIvf, AnnKind::kHnsw}) {
      retriever::StoreIndexOptions o;
      o.kv_heads = kv;
      o.index.kind = kind;
      o.index.dim = d;
      auto index = StoreIndex::Create(o);
      if (!index.ok()) return 1;
      std::vector<float> sample;
      for (size_t i = 0; i < pages.size(); i += std::max<size_t>(1, pages.size() / 20000)) {
        sample.insert(sample.end(), pages[i].second.begin(), pages[i].second.end());
      }
      if (absl::Status st = (*index)->Train(sample); !st.ok()) {
        std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
        return 1;
      }
      const auto a0 = std::chrono::steady_clock::now();
      for (size_t b = 0; b < pages.size(); b += 4096) {
        std::vector<PageKey> keys;
        std::vector<float> vecs;
        for (size_t i = b; i < std::min(pages.size(), b + 4096); ++i) {
          keys.push_back(pages[i].first);
          vecs.insert(vecs.end(), pages[i].second.begin(), pages[i].second.end());
        }
        if (!(*index)->AddBatch(keys, vecs).ok()) return 1;
      }
      const double add_us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a0).count() /
          pages.size();
      std::vector<double> times;
      double hit = 0, total = 0, other = 0;
      for (size_t qi = 0; qi < queries.size(); ++qi) {
        const Query& q = queries[qi];
        const auto t0 = std::chrono::steady_clock::now();
        auto found = (*index)->Search(q.head, q.q, k);
        times.push_back(
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count());
        if (!found.ok()) return 1;
        std::vector<PageKey> keys;
        for (const auto& h : *found) {
          keys.push_back(h.key);
          other += h.key.hi != static_cast<uint64_t>(q.doc) ? 1 : 0;
        }
        if (kind == AnnKind::kFlat) exact.push_back(keys);
        absl::flat_hash_set<PageKey> want(exact[qi].begin(), exact[qi].end());
        for (const PageKey& key : keys) hit += want.contains(key) ? 1 : 0;
        total += static_cast<double>(exact[qi].size());
      }
      const double us = Median(times);
      if (kind == AnnKind::kFlat) flat_us = us;
      // Drop document 0 from the store: no search may return its pages afterwards.
      for (const auto& [key, v] : pages) {
        if (key.hi == 0 && !(*index)->Remove(key).ok()) return 1;
      }
      std::fflush(stdout);
      int returned = 0;
      for (const Query& q : queries) {
        auto found = (*index)->Search(q.head, q.q, k);
        if (!found.ok()) return 1;
        for (const auto& h : *found) returned += h.key.hi == 0 ? 1 : 0;
      }
      failures += returned;
      const char* name = kind == AnnKind::kFlat ? "flat" : kind == AnnKind::kIvf ? "ivf" : "hnsw";
      absl::PrintF("| %d | %d | %d (%d) | %s | %.3f | %.1f | %.2f | %.3f | %.1f | %d |\n", layer,
                   docs.size(), pages.size(), distractors, name, hit / total, us, us / flat_us,
                   other / (queries.size() * static_cast<double>(k)), add_us, returned);
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace pagoda::bench

int main(int argc, char** argv) { return pagoda::bench::Main(argc, argv); }
