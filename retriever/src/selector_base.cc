#include "selector_base.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "pagoda/kernels/reference.h"

namespace pagoda::retriever::internal {

std::vector<int32_t> Plan::KeptPages() const {
  std::vector<int32_t> kept;
  for (int32_t p = 0; p < sink_end; ++p) kept.push_back(p);
  for (int32_t p = window_begin; p < pages; ++p) kept.push_back(p);
  return kept;
}

SelectorBase::SelectorBase(const SelectorOptions& options, int sub_pages)
    : options_(options),
      pool_(options.dtype, options.kv_heads, options.head_dim, options.page_tokens, sub_pages),
      streaming_(options.kv_heads, 0) {
  for (int h : options.streaming_kv_heads) streaming_[h] = 1;  // validated by ValidateOptions
}

absl::Status SelectorBase::CheckKeys(absl::Span<const uint16_t> keys, int64_t num_tokens) const {
  if (num_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("selector: need at least one token, got ", num_tokens));
  }
  const int64_t want = static_cast<int64_t>(options_.kv_heads) * num_tokens * options_.head_dim;
  if (static_cast<int64_t>(keys.size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("selector: keys must be [kv_heads=", options_.kv_heads, ", ", num_tokens,
                     ", head_dim=", options_.head_dim, "] = ", want, " values, got ", keys.size()));
  }
  if (pool_.tokens() + num_tokens > INT32_MAX) {
    return absl::InvalidArgumentError("selector: sequence longer than 2^31 - 1 tokens");
  }
  for (uint16_t k : keys) {
    if (!std::isfinite(kernels::ToFloat(k, options_.dtype))) {
      return absl::InvalidArgumentError("selector: non-finite key");
    }
  }
  return absl::OkStatus();
}

absl::Status SelectorBase::Prefill(absl::Span<const uint16_t> keys, int64_t num_tokens) {
  if (prefilled_) return absl::FailedPreconditionError("selector: Prefill called twice");
  if (absl::Status s = CheckKeys(keys, num_tokens); !s.ok()) return s;
  if (absl::Status s = pool_.Append(keys, num_tokens); !s.ok()) return s;
  prefilled_ = true;
  if (absl::Status s = OnPrefill(keys, num_tokens); !s.ok()) {
    pool_ = KeyPool(options_.dtype, options_.kv_heads, options_.head_dim, options_.page_tokens,
                    pool_.sub_pages());
    prefilled_ = false;
    return s;
  }
  return absl::OkStatus();
}

absl::Status SelectorBase::Append(absl::Span<const uint16_t> keys, int64_t num_tokens) {
  if (!prefilled_) return absl::FailedPreconditionError("selector: Append before Prefill");
  if (deferred_ > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "selector: the keys of ", deferred_, " earlier tokens are deferred (SupplyKeys first)"));
  }
  if (absl::Status s = CheckKeys(keys, num_tokens); !s.ok()) return s;
  const int64_t first = pool_.tokens();
  if (absl::Status s = pool_.Append(keys, num_tokens); !s.ok()) return s;
  return OnAppend(first, num_tokens);
}

absl::Status SelectorBase::AppendDeferred(int64_t num_tokens) {
  if (!prefilled_) return absl::FailedPreconditionError("selector: AppendDeferred before Prefill");
  if (!LateCapable()) {
    return absl::FailedPreconditionError(
        "selector: this policy takes no late reads (louiskv with trigger_late, rescoring every "
        "resident page, without the coverage trigger does)");
  }
  if (num_tokens < 1 || this->num_tokens() + num_tokens > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("selector: cannot defer ", num_tokens, " tokens after ", this->num_tokens()));
  }
  deferred_ += num_tokens;
  return absl::OkStatus();
}

absl::Status SelectorBase::SupplyKeys(absl::Span<const uint16_t> keys, int64_t num_tokens) {
  if (deferred_ == 0) return absl::FailedPreconditionError("selector: no keys are deferred");
  if (num_tokens > deferred_) {
    return absl::InvalidArgumentError(absl::StrCat("selector: keys for ", num_tokens,
                                                   " tokens, only ", deferred_, " are deferred"));
  }
  if (absl::Status s = CheckKeys(keys, num_tokens); !s.ok()) return s;
  const int64_t first = pool_.tokens();
  if (absl::Status s = pool_.Append(keys, num_tokens); !s.ok()) return s;
  deferred_ -= num_tokens;
  return OnAppend(first, num_tokens);
}

absl::Status SelectorBase::LateQuery(absl::Span<const uint16_t> q) {
  if (!query_owed_) return absl::FailedPreconditionError("selector: no query is owed");
  auto qf = QueryToFloat(q);
  if (!qf.ok()) return qf.status();
  OnLateQuery(*qf);
  query_owed_ = false;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> SelectorBase::QueryToFloat(absl::Span<const uint16_t> q) const {
  const size_t want = static_cast<size_t>(options_.q_heads) * options_.head_dim;
  if (q.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("selector: query must be [q_heads=", options_.q_heads,
                     ", head_dim=", options_.head_dim, "] = ", want, " values, got ", q.size()));
  }
  std::vector<float> qf(want);
  for (size_t i = 0; i < want; ++i) {
    qf[i] = kernels::ToFloat(q[i], options_.dtype);
    if (!std::isfinite(qf[i])) return absl::InvalidArgumentError("selector: non-finite query");
  }
  return qf;
}

absl::StatusOr<Selection> SelectorBase::Select(absl::Span<const uint16_t> q) {
  auto request = BeginSelect(q);
  if (!request.ok()) return request.status();
  std::vector<std::vector<float>> mass;
  if (!request->empty()) {
    auto scored = ScoreOnHost(*request, q);
    if (!scored.ok()) return scored.status();
    mass = *std::move(scored);
  }
  return FinishSelect(mass);
}

absl::StatusOr<ScoreRequest> SelectorBase::BeginSelect(absl::Span<const uint16_t> q,
                                                       bool closed_form) {
  if (!prefilled_) return absl::FailedPreconditionError("selector: Select before Prefill");
  if (query_owed_) {
    return absl::FailedPreconditionError("selector: the last step's query is owed (LateQuery)");
  }
  const bool no_query = q.empty() && closed_form;
  const bool late = no_query || deferred_ > 0;
  if (late && !(closed_form && StepsLate())) {
    return absl::FailedPreconditionError(
        "selector: this step needs its query and every key (CanStepLate is false)");
  }
  std::vector<float> qf;
  if (!no_query) {
    auto converted = QueryToFloat(q);
    if (!converted.ok()) return converted.status();
    qf = *std::move(converted);
  }
  Plan plan;
  plan.tokens = num_tokens();
  const int P = options_.page_tokens;
  if (options_.budget_tokens > plan.tokens) {
    return absl::InvalidArgumentError(absl::StrCat("selector: budget of ", options_.budget_tokens,
                                                   " tokens is larger than the visible context of ",
                                                   plan.tokens,
                                                   " tokens (read the whole context instead)"));
  }
  plan.pages = static_cast<int32_t>((plan.tokens + P - 1) / P);
  plan.budget_pages = static_cast<int32_t>(options_.budget_tokens / P);
  plan.sink_end = std::min(options_.sink_pages, plan.pages);
  plan.window_begin = std::max(plan.sink_end, plan.pages - options_.window_pages);
  plan.last_page_len = static_cast<int32_t>(plan.tokens - static_cast<int64_t>(plan.pages - 1) * P);
  if (plan.kept() > plan.budget_pages) {
    return absl::InvalidArgumentError(absl::StrCat("selector: budget of ", plan.budget_pages,
                                                   " pages is smaller than the ", plan.kept(),
                                                   " always-kept pages (sinks + window)"));
  }
  begun_ = false;
  closed_form_ = closed_form;
  auto request = BeginChoose(q, qf, plan);
  closed_form_ = false;
  if (!request.ok()) return request.status();
  if (late && request->steady.empty()) {
    return absl::InternalError("selector: a late step did not come in closed form");
  }
  if (no_query) query_owed_ = true;
  if (!request->steady.empty()) return request;  // complete: nothing to finish
  begun_ = true;
  requested_.clear();  // per head, how many masses FinishSelect takes (none: empty request)
  if (!request->empty()) {
    for (const auto& pages : request->pages) requested_.push_back(pages.size());
  }
  return request;
}

absl::StatusOr<Selection> SelectorBase::FinishSelect(absl::Span<const std::vector<float>> mass) {
  if (!begun_) return absl::FailedPreconditionError("selector: FinishSelect without BeginSelect");
  if (mass.size() != requested_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("selector: masses for ", mass.size(),
                                                   " KV heads, the request has ", requested_.size(),
                                                   " (none when it is empty)"));
  }
  for (size_t h = 0; h < mass.size(); ++h) {
    if (mass[h].size() != requested_[h]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "selector: ", mass[h].size(), " masses for KV head ", h, ", requested ", requested_[h]));
    }
    for (float m : mass[h]) {
      if (!std::isfinite(m)) return absl::InvalidArgumentError("selector: non-finite mass");
    }
  }
  begun_ = false;
  return FinishChoose(mass);
}

absl::StatusOr<ScoreRequest> SelectorBase::BeginChoose(absl::Span<const uint16_t> q,
                                                       absl::Span<const float> q_float,
                                                       const Plan& plan) {
  auto chosen = Choose(q, q_float, plan);
  if (!chosen.ok()) return chosen.status();
  chosen_ = *std::move(chosen);
  return ScoreRequest{};
}

absl::StatusOr<Selection> SelectorBase::FinishChoose(absl::Span<const std::vector<float>> mass) {
  return std::move(chosen_);
}

absl::StatusOr<std::vector<std::vector<float>>> SelectorBase::ScoreOnHost(
    const ScoreRequest& request, absl::Span<const uint16_t> q) const {
  const int P = options_.page_tokens;
  const int d = options_.head_dim;
  const int group = group_size();
  std::vector<std::vector<float>> mass(request.pages.size());
  std::vector<uint16_t> keys;  // the row's pages' keys: [page][P][d]
  std::vector<int32_t> indptr = {0, 0}, indices, page_len;
  for (size_t h = 0; h < request.pages.size(); ++h) {
    const std::vector<int32_t>& pages = request.pages[h];
    if (pages.empty()) continue;
    keys.assign(pages.size() * P * d, 0);
    indices.resize(pages.size());
    page_len.resize(pages.size());
    for (size_t i = 0; i < pages.size(); ++i) {
      const int64_t first = int64_t{pages[i]} * P;
      page_len[i] = static_cast<int32_t>(std::min<int64_t>(request.tokens, first + P) - first);
      indices[i] = static_cast<int32_t>(i);
      for (int32_t t = 0; t < page_len[i]; ++t) {
        const uint16_t* k = PageToken(static_cast<int>(h), pages[i], t);
        std::copy_n(k, d, keys.data() + (i * P + t) * d);
      }
    }
    indptr[1] = static_cast<int32_t>(pages.size());
    mass[h].resize(pages.size());
    kernels::PageMassParams p;
    p.kv = kernels::PackedPagedKV(options_.dtype, static_cast<int32_t>(pages.size()), P, 1, d,
                                  keys.data());
    p.kv.stride_page = int64_t{P} * d;  // keys only
    p.kv.v = nullptr;
    p.batch = 1;
    p.num_qo_heads = group;
    p.q = q.data() + h * group * d;
    p.indptr = indptr.data();
    p.indices = indices.data();
    p.page_len = page_len.data();
    p.reduce = options_.group_reduce;
    p.mass = mass[h].data();
    if (absl::Status s = kernels::PageMassReference(p); !s.ok()) return s;
  }
  return mass;
}

Selection SelectorBase::FromNaturalPages(std::vector<std::vector<int32_t>> rows,
                                         const Plan& plan) const {
  Selection out;
  const int P = options_.page_tokens;
  out.spans.resize(rows.size());
  out.prefetch.resize(rows.size());
  int64_t tokens = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::vector<int32_t>& pages = rows[r];
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    out.pages.indices.insert(out.pages.indices.end(), pages.begin(), pages.end());
    out.pages.indptr.push_back(static_cast<int32_t>(out.pages.indices.size()));
    int32_t last_len = 0;
    if (!pages.empty()) last_len = pages.back() == plan.pages - 1 ? plan.last_page_len : P;
    out.pages.last_page_len.push_back(last_len);
    std::vector<TokenSpan>& spans = out.spans[r];
    for (int32_t p : pages) {
      const int32_t begin = p * P;
      const int32_t end = static_cast<int32_t>(std::min<int64_t>(plan.tokens, begin + P));
      if (!spans.empty() && spans.back().end == begin) {
        spans.back().end = end;
      } else {
        spans.push_back({begin, end});
      }
      tokens += end - begin;
    }
  }
  out.kv_bytes = tokens * options_.head_dim * 2 /*K and V*/ * 2 /*bytes per element*/;
  return out;
}

void SelectorBase::AddPrefetch(const std::vector<int32_t>& cand, const float* scores,
                               const std::vector<int32_t>& chosen,
                               std::vector<int32_t>* out) const {
  if (options_.prefetch_pages <= 0) return;
  std::vector<int32_t> order;
  for (size_t j = 0; j < cand.size(); ++j) {
    if (!std::binary_search(chosen.begin(), chosen.end(), cand[j]) && std::isfinite(scores[j])) {
      order.push_back(static_cast<int32_t>(j));
    }
  }
  const size_t k = std::min<size_t>(order.size(), options_.prefetch_pages);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  for (size_t i = 0; i < k; ++i) out->push_back(cand[order[i]]);
}

}  // namespace pagoda::retriever::internal
