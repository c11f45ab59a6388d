#include "worker_select.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/dtype.h"

namespace pagoda::worker_internal {

absl::Status ValidateWorkerOptions(const DecodeWorkerOptions& o) {
  if (o.tenant.empty()) return absl::InvalidArgumentError("tenant is empty");
  if (absl::Status s = o.layout.Validate(); !s.ok()) return s;
  if (o.num_layers < 1 || o.num_layers > 1024) {
    return absl::InvalidArgumentError("num_layers must be in [1, 1024]");
  }
  if (o.q_heads < 1 || o.q_heads % static_cast<int>(o.layout.kv_heads) != 0) {
    return absl::InvalidArgumentError("q_heads must be a positive multiple of layout.kv_heads");
  }
  if (o.pool_slots_per_head < 1) {
    return absl::InvalidArgumentError("pool_slots_per_head must be >= 1");
  }
  if (o.boundary_threshold < -1.f || o.boundary_threshold > 1.f) {
    return absl::InvalidArgumentError("boundary_threshold must be in [-1, 1]");
  }
  if (o.stream.has_value()) {
    const retriever::SelectorOptions& sel = o.selector;
    if (o.policy != retriever::Policy::kStreaming || o.boundary_trigger ||
        static_cast<uint32_t>(sel.sink_pages) != o.stream->sink_pages ||
        static_cast<uint32_t>(sel.window_pages) > o.stream->window_pages) {
      return absl::InvalidArgumentError(
          "stream mode needs policy streaming, no boundary trigger, selector.sink_pages == "
          "stream.sink_pages and selector.window_pages <= stream.window_pages");
    }
    if (o.stream->window_pages < 1) return absl::InvalidArgumentError("stream.window_pages >= 1");
  }
  if (!o.layer_thresholds.empty() && static_cast<int>(o.layer_thresholds.size()) != o.num_layers) {
    return absl::InvalidArgumentError("layer_thresholds must be empty or hold num_layers values");
  }
  for (float t : o.layer_thresholds) {
    if (!(t >= -1.f && t <= 1.f)) {
      return absl::InvalidArgumentError("layer_thresholds must be in [-1, 1]");
    }
  }
  if (o.streaming_sink_pages < 0 || o.streaming_window_pages < 1) {
    return absl::InvalidArgumentError("streaming_sink_pages >= 0 and streaming_window_pages >= 1");
  }
  if (!o.layer_streaming_heads.empty()) {
    if (static_cast<int>(o.layer_streaming_heads.size()) != o.num_layers) {
      return absl::InvalidArgumentError(
          "layer_streaming_heads must be empty or hold one list per layer");
    }
    for (const auto& heads : o.layer_streaming_heads) {
      retriever::SelectorOptions sel = SelectorShape(o);
      sel.streaming_kv_heads = heads;
      if (absl::Status s = retriever::ValidateOptions(sel); !s.ok()) return s;
    }
  }
  if (o.policy == retriever::Policy::kBoundary) {
    // Its rows address a cluster-ordered layout: a natural prompt page is not a row entry there.
    if (o.pin_prompt) {
      return absl::InvalidArgumentError(
          "pin_prompt attends natural prompt pages every step; policy louiskv attends pages of "
          "its cluster-ordered layout (use a page policy with pin_prompt)");
    }
    if (!o.layer_streaming_heads.empty() && o.streaming_sink_pages > o.selector.sink_pages) {
      return absl::InvalidArgumentError(
          "with policy louiskv, streaming_sink_pages must be <= selector.sink_pages (pages past "
          "the sinks are cluster-ordered)");
    }
  }
  if (o.select_threads < 0 || o.select_threads > 256) {
    return absl::InvalidArgumentError("select_threads must be in [0, 256]");
  }
  if (o.prepare_host_bytes < -1) {
    return absl::InvalidArgumentError("prepare_host_bytes must be -1 (all), 0 (none) or a size");
  }
  if (!(o.lease_seconds > 0 && o.lease_seconds <= 60)) {
    return absl::InvalidArgumentError("lease_seconds must be in (0, 60]");
  }
  return retriever::ValidateOptions(SelectorShape(o));
}

retriever::SelectorOptions SelectorShape(const DecodeWorkerOptions& o) {
  retriever::SelectorOptions s = o.selector;
  s.kv_heads = static_cast<int>(o.layout.kv_heads);
  s.q_heads = o.q_heads;
  s.head_dim = static_cast<int>(o.layout.head_dim);
  s.page_tokens = static_cast<int>(o.layout.page_tokens);
  s.dtype = o.layout.dtype == DType::kBf16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat16;
  s.token_spans = false;  // the worker attends page ids; louiskv need not map tokens back
  return s;
}

absl::Status CheckFinite(const TensorView& t, DType dtype, const char* what) {
  const uint16_t mask = dtype == DType::kBf16 ? 0x7f80 : 0x7c00;
  for (int64_t a = 0; a < t.shape[0]; ++a) {
    for (int64_t b = 0; b < t.shape[1]; ++b) {
      const uint16_t* row = t.At(a, b, 0);
      for (int64_t c = 0; c < t.shape[2]; ++c) {
        if ((row[c] & mask) == mask) {
          return absl::InvalidArgumentError(
              absl::StrCat(what, " is not finite at [", a, ", ", b, ", ", c, "]"));
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace {

void SortUnique(std::vector<int32_t>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

// Streaming heads attend their sink and window pages only (and the pinned prompt), whatever the
// selector chose for them; their hints are dropped.
// A streaming head's pages (ascending) in a row whose open page is cur.
void StreamingRow(const DecodeWorkerOptions& o, int32_t cur, int32_t pinned,
                  std::vector<int32_t>& row) {
  row.clear();
  for (int32_t p = 0; p < o.streaming_sink_pages && p <= cur; ++p) row.push_back(p);
  for (int32_t p = std::max(0, cur - o.streaming_window_pages + 1); p <= cur; ++p) {
    row.push_back(p);
  }
  for (int32_t p = 0; p < pinned && p < cur; ++p) row.push_back(p);
  SortUnique(row);
}

void StreamingRows(const DecodeWorkerOptions& o, const std::vector<int>& heads, int32_t cur,
                   LayerState& ls) {
  for (int h : heads) {
    StreamingRow(o, cur, ls.pinned, ls.rows[h]);
    if (static_cast<size_t>(h) < ls.prefetch.size()) ls.prefetch[h].clear();
  }
}

}  // namespace

namespace {
const std::vector<int>& StreamingHeads(const DecodeWorkerOptions& o, int layer) {
  static const std::vector<int> kNone;
  return o.layer_streaming_heads.empty() ? kNone : o.layer_streaming_heads[layer];
}
// Merges the ascending run [mid, end) of `row` into its ascending [begin, mid) and drops
// duplicates, in linear time (rows hold thousands of pages; a sort per row per layer shows up).
void MergeUnique(std::vector<int32_t>& row, size_t mid) {
  std::inplace_merge(row.begin(), row.begin() + static_cast<std::ptrdiff_t>(mid), row.end());
  row.erase(std::unique(row.begin(), row.end()), row.end());
}
// Adds the pinned prompt pages below the open page to an ascending row.
void AddPinned(const LayerState& ls, int32_t cur, std::vector<int32_t>& row) {
  const size_t mid = row.size();
  for (int32_t p = 0; p < ls.pinned && p < cur; ++p) row.push_back(p);
  if (row.size() > mid) MergeUnique(row, mid);
}
}  // namespace

bool BudgetCovers(const DecodeWorkerOptions& o, int64_t tokens) {
  const int P = static_cast<int>(o.layout.page_tokens);
  return (o.selector.budget_tokens / P) * P >= tokens;
}

bool DenseRows(const DecodeWorkerOptions& o, int layer, LayerState& ls) {
  const int P = static_cast<int>(o.layout.page_tokens);
  if (!BudgetCovers(o, ls.tokens)) return false;
  const int32_t cur = static_cast<int32_t>((ls.tokens - 1) / P);
  ls.rows.assign(o.layout.kv_heads, {});
  ls.prefetch.clear();
  for (auto& row : ls.rows) {
    for (int32_t p = 0; p <= cur; ++p) row.push_back(p);
  }
  StreamingRows(o, StreamingHeads(o, layer), cur, ls);
  ls.retrieved.clear();
  return true;
}

absl::StatusOr<bool> RetrievalDue(const DecodeWorkerOptions& o, LayerState& ls,
                                  absl::Span<const uint16_t> q) {
  bool fire = ls.retrieved.empty() || !ls.trigger.has_value();
  if (ls.trigger.has_value()) {
    std::vector<float> qf(q.size());
    for (size_t i = 0; i < q.size(); ++i) {
      qf[i] =
          o.layout.dtype == DType::kBf16 ? kernels::Bf16ToFloat(q[i]) : kernels::HalfToFloat(q[i]);
    }
    auto observed = ls.trigger->Observe(qf);
    if (!observed.ok()) return observed.status();
    fire = fire || *observed;
  }
  return fire;
}

absl::Status PageRows(const DecodeWorkerOptions& o, int layer, LayerState& ls) {
  const int kv = static_cast<int>(o.layout.kv_heads);
  const int P = static_cast<int>(o.layout.page_tokens);
  const int32_t cur = static_cast<int32_t>((ls.tokens - 1) / P);
  if (static_cast<int>(ls.retrieved.size()) != kv) {
    return absl::InternalError("page rows without a retrieval");
  }
  ls.rows.assign(kv, {});
  for (int h = 0; h < kv; ++h) {
    std::vector<int32_t>& row = ls.rows[h];
    row = ls.retrieved[h];  // ascending
    if (!std::is_sorted(row.begin(), row.end())) SortUnique(row);
    const size_t mid = row.size();
    for (int32_t p = std::max(0, cur - o.selector.window_pages + 1); p <= cur; ++p) {
      row.push_back(p);
    }
    MergeUnique(row, mid);
    AddPinned(ls, cur, row);
    if (row.empty() || row.back() != cur || row.front() < 0) {
      return absl::InternalError("a selection does not end at the open page");
    }
  }
  StreamingRows(o, StreamingHeads(o, layer), cur, ls);
  return absl::OkStatus();
}

std::vector<std::vector<int32_t>> BlockRows(const DecodeWorkerOptions& o, int layer,
                                            const LayerState& ls, bool dense,
                                            std::vector<std::vector<int32_t>> chosen) {
  const int P = static_cast<int>(o.layout.page_tokens);
  const int32_t pages = static_cast<int32_t>(ls.tokens / P);
  chosen.resize(o.layout.kv_heads);
  for (auto& row : chosen) {
    if (dense) {
      row.resize(pages);
      for (int32_t p = 0; p < pages; ++p) row[p] = p;
    } else {
      AddPinned(ls, pages, row);
    }
  }
  for (int h : StreamingHeads(o, layer)) StreamingRow(o, pages - 1, ls.pinned, chosen[h]);
  return chosen;
}

absl::StatusOr<QuestBudget> PlanQuestBudget(const DecodeWorkerOptions& o, const LayerState& ls) {
  const int P = static_cast<int>(o.layout.page_tokens);
  QuestBudget b;
  b.pages = static_cast<int32_t>((ls.tokens + P - 1) / P);
  b.sink_end = std::min(o.selector.sink_pages, b.pages);
  b.window_begin = std::max(b.sink_end, b.pages - o.selector.window_pages);
  b.last_len = static_cast<int32_t>(ls.tokens - int64_t{b.pages - 1} * P);
  const int32_t budget_pages = static_cast<int32_t>(o.selector.budget_tokens / P);
  const int32_t kept = b.sink_end + (b.pages - b.window_begin);
  if (kept > budget_pages) {
    return absl::InvalidArgumentError(absl::StrCat("selector: budget of ", budget_pages,
                                                   " pages is smaller than the ", kept,
                                                   " always-kept pages (sinks + window)"));
  }
  b.top_k = budget_pages - kept;
  return b;
}

void ListSteady(const DecodeWorkerOptions& o, int layer, LayerState& ls,
                retriever::ScoreRequest& request) {
  const int kv = static_cast<int>(o.layout.kv_heads);
  request.pages.assign(kv, {});
  request.first_candidate.assign(kv, 0);
  ls.from_list.assign(kv, 0);
  ls.steady_cb.assign(kv, 0);
  // Held and stored on the backend since the last retrieval: named there, not listed — unless
  // this step retrieved (a new resident set) or the window moved past held pages for some head
  // (they compete again): then every head lists its candidates and they are held afresh
  // (ls.rehold).
  bool named = ls.held && ls.list_saved && !request.retrieved;
  ls.rehold = ls.held && request.retrieved;
  const std::vector<int>& streaming = StreamingHeads(o, layer);  // they keep no candidates
  for (int h = 0; h < kv && named; ++h) {
    if (std::find(streaming.begin(), streaming.end(), h) != streaming.end()) continue;
    const retriever::SteadyRow& row = request.steady[h];
    if (row.cand_begin < ls.held_lo[h] ||
        row.cand_end - ls.held_lo[h] > static_cast<int32_t>(ls.held_slots[h].size())) {
      named = false;
      ls.rehold = true;
    }
  }
  for (int h = 0; h < kv; ++h) {
    retriever::SteadyRow& row = request.steady[h];
    std::vector<int32_t>& pages = request.pages[h];
    for (int32_t p = 0; p < row.sink_end; ++p) pages.push_back(p);
    for (int32_t p = row.window_begin; p < row.pages; ++p) pages.push_back(p);
    request.first_candidate[h] = static_cast<int32_t>(pages.size());
    ls.steady_cb[h] = row.cand_begin;
    if (named) {
      ls.from_list[h] = 1;
      continue;
    }
    const absl::Span<const int32_t> res = ls.selector->ResidentPages(h);
    pages.insert(pages.end(), res.begin() + row.cand_begin, res.begin() + row.cand_end);
  }
  // The layer's streaming heads attend their own pages, all kept, nothing chosen.
  for (int h : StreamingHeads(o, layer)) {
    std::vector<int32_t>& pages = request.pages[h];
    retriever::SteadyRow& row = request.steady[h];
    ls.from_list[h] = 0;
    StreamingRow(o, row.pages - 1, ls.pinned, pages);
    request.first_candidate[h] = static_cast<int32_t>(pages.size());
    row = {static_cast<int32_t>(pages.size()), row.pages, row.pages, 0, 0, 0};
  }
}

absl::StatusOr<std::optional<bool>> BeginRows(const DecodeWorkerOptions& o, int layer,
                                              LayerState& ls, absl::Span<const uint16_t> q,
                                              retriever::ScoreRequest& request) {
  const int kv = static_cast<int>(o.layout.kv_heads);
  request = retriever::ScoreRequest{};
  if (DenseRows(o, layer, ls)) return true;
  ls.prefetch.clear();
  if (o.policy == retriever::Policy::kBoundary) {
    // Its step stops at the exact rescoring; FinishRows completes it with the masses, or, for a
    // step in closed form, the backend chooses (see BeginRows' contract).
    auto begun = ls.selector->BeginSelect(q, /*closed_form=*/true);
    if (!begun.ok()) return begun.status();
    request = *std::move(begun);
    if (!request.steady.empty()) ListSteady(o, layer, ls, request);
    return std::optional<bool>();
  }
  auto fire = RetrievalDue(o, ls, q);
  if (!fire.ok()) return fire.status();
  bool fresh = false;  // a selector may serve its last choice again (lserve's reuse steps)
  if (*fire) {
    auto sel = ls.selector->Select(q);
    if (!sel.ok()) return sel.status();
    fresh = sel->retrieved;
    ls.retrieved.assign(kv, {});
    for (int h = 0; h < kv; ++h) {
      ls.retrieved[h].assign(sel->pages.indices.begin() + sel->pages.indptr[h],
                             sel->pages.indices.begin() + sel->pages.indptr[h + 1]);
    }
    ls.prefetch = sel->prefetch;
  }
  if (absl::Status s = PageRows(o, layer, ls); !s.ok()) return s;
  return std::optional<bool>(fresh);
}

absl::StatusOr<bool> FinishRows(const DecodeWorkerOptions& o, int layer, LayerState& ls,
                                absl::Span<const std::vector<float>> mass) {
  const int kv = static_cast<int>(o.layout.kv_heads);
  const int P = static_cast<int>(o.layout.page_tokens);
  const int32_t cur = static_cast<int32_t>((ls.tokens - 1) / P);
  // Page ids of louiskv's cluster-ordered layout (ascending, the open page last): the worker
  // keeps the layout's clustered pages as store pages of their own (LayerState::layout_keys).
  auto sel = ls.selector->FinishSelect(mass);
  if (!sel.ok()) return sel.status();
  ls.rows.assign(kv, {});
  for (int h = 0; h < kv; ++h) {
    ls.rows[h].assign(sel->pages.indices.begin() + sel->pages.indptr[h],
                      sel->pages.indices.begin() + sel->pages.indptr[h + 1]);
    const std::vector<int32_t>& row = ls.rows[h];
    if (row.empty() || row.back() != cur || !std::is_sorted(row.begin(), row.end()) ||
        static_cast<int64_t>(row.size()) >
            o.selector.budget_tokens / P + o.selector.window_pages + 1) {
      return absl::InternalError("louiskv selected a row the worker cannot attend");
    }
  }
  if (sel->retrieved) ls.prefetch = sel->prefetch;
  StreamingRows(o, StreamingHeads(o, layer), cur, ls);
  return sel->retrieved;
}

}  // namespace pagoda::worker_internal
