// The decode worker's sequence edits and bidirectional blocks (DecodeWorker::Extend, Truncate,
// AttendBlock, CommitBlock; decode_worker.h): what a diffusion LM's decoding needs of the worker.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "decode_worker_impl.h"
#include "pagoda/kernels/dtype.h"
#include "worker_select.h"

namespace pagoda {

using worker_internal::Clock;
using worker_internal::LayerState;
using worker_internal::Sequence;
using worker_internal::Since;

absl::StatusOr<Sequence*> DecodeWorker::Impl::Editable(SequenceId id, const char* what) {
  auto found = Usable(id, what);
  if (!found.ok()) return found.status();
  Sequence& seq = **found;
  if (layout_pages_) {
    return absl::UnimplementedError(
        absl::StrCat("policy louiskv: ", what,
                     " is not served (its cluster layout is built once, from the "
                     "whole prompt)"));
  }
  if (o_.stream.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": a sequence on a rolling-window stream cannot be edited"));
  }
  for (const LayerState& ls : seq.layers) {
    if (!ls.ready) return absl::FailedPreconditionError("the sequence is not prefilled");
  }
  return &seq;
}

void DecodeWorker::Impl::ReleaseBlock(LayerState& ls) {
  for (size_t i = 0; i < ls.block.size(); ++i) {
    if (ls.block[i] >= 0) pool_.ReleaseOwned(static_cast<int>(i % kv_), ls.block[i]);
  }
  block_pages_ -= static_cast<int64_t>(ls.block.size()) / kv_;
  ls.block.clear();
  ls.block_tokens = 0;
}

absl::Status DecodeWorker::Impl::Extend(SequenceId id, absl::Span<const int32_t> token_ids) {
  auto found = Editable(id, "Extend");
  if (!found.ok()) return found.status();
  Sequence& seq = **found;
  if (token_ids.empty()) return absl::InvalidArgumentError("Extend: no tokens");
  for (const LayerState& ls : seq.layers) {
    if (ls.tokens % P_ != 0) {
      return absl::FailedPreconditionError(absl::StrCat("Extend: the sequence holds ", ls.tokens,
                                                        " tokens, not a multiple of page_tokens ",
                                                        P_, " (an open page)"));
    }
  }
  seq.tokens.insert(seq.tokens.end(), token_ids.begin(), token_ids.end());
  seq.prompt_len = static_cast<int64_t>(seq.tokens.size());
  for (LayerState& ls : seq.layers) {
    ls.ready = false;  // until Prefill or CommitBlock writes the new tokens (StartSelector)
    ls.prompt_keys.assign(kv_, {});
  }
  return absl::OkStatus();
}

absl::Status DecodeWorker::Impl::Truncate(SequenceId id, int64_t tokens) {
  auto found = Editable(id, "Truncate");
  if (!found.ok()) return found.status();
  Sequence& seq = **found;
  int64_t shortest = std::numeric_limits<int64_t>::max();
  for (const LayerState& ls : seq.layers) shortest = std::min(shortest, ls.tokens);
  if (tokens < P_ || tokens % P_ != 0 || tokens > shortest) {
    return absl::InvalidArgumentError(absl::StrCat("Truncate to ", tokens,
                                                   " tokens: want a multiple of page_tokens ", P_,
                                                   " in [", P_, ", ", shortest, "]"));
  }
  // The kept pages are read back from the store: the ones still queued must be there first.
  (void)Flush();
  if (!seq.failed.ok()) return seq.failed;
  const int64_t pages = tokens / P_;
  for (LayerState& ls : seq.layers) {
    Unhold(ls);
    ReleaseBlock(ls);
    for (int h = 0; h < kv_; ++h) {
      if (ls.tail[h] >= 0) pool_.ReleaseOwned(h, ls.tail[h]);
      // The pages cut off leave the pool: a later page under the same key (the same tokens
      // written again, e.g. a re-denoised block) must never meet these bytes there.
      for (size_t p = pages; p < ls.keys.size(); ++p) pool_.Forget(ls.keys[p], h);
    }
    for (int32_t p = static_cast<int32_t>(pages); p < ls.pinned; ++p) {
      (void)store_->Unpin(o_.tenant, ls.keys[p]);
    }
    for (int32_t slot : ls.sum_slots) {
      slot_page_[slot] = -1;
      free_sum_.push_back(slot);
    }
    LayerState fresh;
    fresh.tail.assign(kv_, -1);
    fresh.prompt_keys.assign(kv_, {});
    fresh.prompt_values.assign(kv_, {});
    fresh.pinned = std::min<int32_t>(ls.pinned, static_cast<int32_t>(pages));
    ls = std::move(fresh);
  }
  seq.tokens.resize(tokens);
  seq.prompt_len = tokens;
  for (int l = 0; l < o_.num_layers; ++l) {
    absl::Status s = LoadCachedPages(seq, l, pages);
    if (s.ok()) s = StartSelector(id, seq.layers[l], l);
    if (!s.ok()) {
      seq.failed = s;
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint16_t>> DecodeWorker::Impl::MeanQuery(const TensorView& q) {
  const int64_t n = q.shape[0], row = int64_t{o_.q_heads} * d_;
  std::vector<uint16_t> host(static_cast<size_t>(n * row));
  if (q.device == Device::kCpu) {
    for (int64_t i = 0; i < n; ++i) {
      for (int j = 0; j < o_.q_heads; ++j) {
        const uint16_t* src = q.At(i, j, 0);
        std::copy(src, src + d_, host.begin() + i * row + int64_t{j} * d_);
      }
    }
  } else if (absl::Status s = backend_->CopyToHost(q, absl::MakeSpan(host)); !s.ok()) {
    return s;
  }
  const bool bf16 = o_.layout.dtype == DType::kBf16;
  std::vector<float> sum(row, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < row; ++j) {
      const uint16_t x = host[i * row + j];
      sum[j] += bf16 ? kernels::Bf16ToFloat(x) : kernels::HalfToFloat(x);
    }
  }
  std::vector<uint16_t> mean(row);
  for (int64_t j = 0; j < row; ++j) {
    const float m = sum[j] / static_cast<float>(n);
    mean[j] = bf16 ? kernels::FloatToBf16(m) : kernels::FloatToHalf(m);
  }
  return mean;
}

absl::StatusOr<WorkerStepStats> DecodeWorker::Impl::AttendBlock(
    SequenceId id, int layer, const TensorView& q, const TensorView& k, const TensorView& v,
    const TensorView& o, absl::Span<const uint8_t> keep_pages) {
  // Everything that can be refused is checked before anything changes.
  auto found = Usable(id, layer, "AttendBlock");
  if (!found.ok()) return found.status();
  Sequence& seq = **found;
  if (layout_pages_) {
    return absl::UnimplementedError(
        "policy louiskv: AttendBlock is not served (its cluster layout is built once, from the "
        "whole prompt)");
  }
  const Device dev = backend_->device();
  const DType dt = o_.layout.dtype;
  const absl::StatusOr<int64_t> chunk = ChunkRows(q, k, v, o);
  if (!chunk.ok()) return chunk.status();
  const int64_t n = *chunk;
  if (n < 1) return absl::InvalidArgumentError("AttendBlock: an empty block");
  if (dev == Device::kCpu) {
    for (const auto& [t, what] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}}) {
      if (absl::Status s = worker_internal::CheckFinite(*t, dt, what); !s.ok()) return s;
    }
  }
  LayerState& ls = seq.layers[layer];
  if (!ls.ready) return absl::FailedPreconditionError("the sequence's layer is not prefilled");
  if (ls.tokens % P_ != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("AttendBlock: layer ", layer, " holds ", ls.tokens,
                     " tokens; a block starts on a page boundary (page_tokens ", P_, ")"));
  }
  const int64_t bp = (n + P_ - 1) / P_;
  const bool same_block = !ls.block.empty() && ls.block_tokens == n;
  if (!keep_pages.empty()) {
    if (static_cast<int64_t>(keep_pages.size()) != bp) {
      return absl::InvalidArgumentError(absl::StrCat("keep_pages has ", keep_pages.size(),
                                                     " flags; the block has ", bp, " pages"));
    }
    const bool keeps =
        std::any_of(keep_pages.begin(), keep_pages.end(), [](uint8_t f) { return f != 0; });
    if (keeps && !same_block) {
      return absl::InvalidArgumentError(
          absl::StrCat("keep_pages keeps pages no earlier AttendBlock of ", n, " tokens wrote"));
    }
  }
  WorkerStepStats stats;
  const Clock::time_point t0 = Clock::now();

  // 1. Select the context pages for the block's mean query (every page when the budget covers it).
  const bool dense = worker_internal::BudgetCovers(o_, ls.tokens);
  std::vector<std::vector<int32_t>> chosen(kv_);
  if (!dense) {
    auto mean = MeanQuery(q);
    if (!mean.ok()) return mean.status();
    if (device_select_) {
      if (dev != Device::kCpu) {
        return absl::UnimplementedError(
            "AttendBlock: quest's block selection runs on a host backend only for now");
      }
      auto budget = worker_internal::PlanQuestBudget(o_, ls);
      if (!budget.ok()) return budget.status();
      QuestRequest req;
      req.top_k = budget->top_k;
      req.reduce = o_.selector.group_reduce;
      req.cand.assign(ls.sum_slots.begin() + budget->sink_end,
                      ls.sum_slots.begin() + budget->window_begin);
      req.keep.assign(ls.sum_slots.begin(), ls.sum_slots.begin() + budget->sink_end);
      req.keep.insert(req.keep.end(), ls.sum_slots.begin() + budget->window_begin,
                      ls.sum_slots.begin() + budget->pages);
      req.cand_indptr = {0, static_cast<int32_t>(req.cand.size())};
      req.keep_indptr = {0, static_cast<int32_t>(req.keep.size())};
      req.last_len = {budget->last_len};
      const TensorView qm = TensorView::Contiguous(mean->data(), dt, {1, o_.q_heads, d_});
      std::vector<int32_t> out_indptr, out_indices;
      if (absl::Status s = backend_->SelectQuest(qm, req, out_indptr, out_indices); !s.ok()) {
        return s;
      }
      for (int h = 0; h < kv_; ++h) {
        for (int32_t i = out_indptr[h]; i < out_indptr[h + 1]; ++i) {
          chosen[h].push_back(slot_page_[out_indices[i]]);
        }
        std::sort(chosen[h].begin(), chosen[h].end());
      }
    } else {
      auto sel = ls.selector->Select(*mean);
      if (!sel.ok()) return sel.status();
      for (int h = 0; h < kv_; ++h) {
        chosen[h].assign(sel->pages.indices.begin() + sel->pages.indptr[h],
                         sel->pages.indices.begin() + sel->pages.indptr[h + 1]);
        std::sort(chosen[h].begin(), chosen[h].end());
      }
    }
    ++stats.retrievals;
  }
  std::vector<std::vector<int32_t>> rows =
      worker_internal::BlockRows(o_, layer, ls, dense, std::move(chosen));
  const int64_t pages = ls.tokens / P_;
  const int64_t old_bp = static_cast<int64_t>(ls.block.size()) / kv_;
  for (int h = 0; h < kv_; ++h) {
    for (int32_t p : rows[h]) {
      if (p < 0 || p >= pages) return absl::InternalError("a block row names a page out of range");
    }
    const int64_t room = pool_.Available(h) + (same_block ? 0 : old_bp - bp);
    if (static_cast<int64_t>(rows[h].size()) > room) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the block of layer ", layer, " reads ", rows[h].size(),
                       " context head-pages of KV head ", h, " besides its own ", bp,
                       " pages; the pool has room for ", room,
                       " (raise pool_slots_per_head or lower the budget)"));
    }
  }
  stats.select_s = Since(t0);

  // 2. The block's K/V into its owned slots (pages the caller kept are not rewritten).
  ++epoch_;  // everything resolved below is used in this epoch: none of it is evicted meanwhile
  if (!same_block) {
    ReleaseBlock(ls);
    ls.block.assign(static_cast<size_t>(bp) * kv_, -1);
    block_pages_ += bp;
    for (int64_t j = 0; j < bp; ++j) {
      for (int h = 0; h < kv_; ++h) {
        ls.block[j * kv_ + h] = pool_.AllocOwned(h, epoch_);
        if (ls.block[j * kv_ + h] < 0) {  // the room was checked above
          seq.failed = absl::InternalError("the pool overcommitted despite the block check");
          return seq.failed;
        }
      }
    }
    ls.block_tokens = n;
  }
  const Clock::time_point t1 = Clock::now();
  for (int64_t j = 0; j < bp;) {  // runs of pages to write, one WriteTokens each
    if (!keep_pages.empty() && keep_pages[j] != 0) {
      ++j;
      continue;
    }
    int64_t end = j;
    while (end < bp && (keep_pages.empty() || keep_pages[end] == 0)) ++end;
    const int64_t first = j * P_, rows_n = std::min(n, end * P_) - first;
    std::vector<int32_t> slots, positions;
    for (int64_t r = 0; r < rows_n; ++r) {
      const int64_t page = (first + r) / P_;
      slots.insert(slots.end(), ls.block.begin() + page * kv_, ls.block.begin() + (page + 1) * kv_);
      positions.push_back(static_cast<int32_t>((first + r) % P_));
    }
    if (absl::Status s =
            backend_->WriteTokens(worker_internal::Rows(k, first, rows_n),
                                  worker_internal::Rows(v, first, rows_n), slots, positions);
        !s.ok()) {
      seq.failed = s;
      return s;
    }
    j = end;
  }
  stats.append_s = Since(t1);

  // 3. Context slots: resident, else one verified gather (and store reads for what fails it).
  std::vector<std::vector<int32_t>> slots(kv_);
  std::vector<HeadFetch> fetches;
  std::vector<FetchOrigin> origins;
  for (int h = 0; h < kv_; ++h) {
    for (int32_t p : rows[h]) {
      int32_t s = pool_.Find(ls.keys[p], h, epoch_);
      if (s >= 0) {
        ++stats.pool_hits;
      } else {
        s = pool_.Insert(ls.keys[p], h, epoch_);
        if (s < 0) {
          seq.failed = absl::InternalError("the pool overcommitted despite the block check");
          return seq.failed;
        }
        fetches.push_back({{h, s}, 0, 0, ls.SumOf(p, h, kv_)});
        origins.push_back({0, ls.keys[p], ls.InLayout(p) ? nullptr : &ls, p});
      }
      slots[h].push_back(s);
    }
  }
  if (!fetches.empty()) {
    DrainCommits();  // pages this sequence committed may still be on their way to the store
    if (!seq.failed.ok()) return seq.failed;
    std::vector<absl::Status> status(1);
    Fetch(layer, origins, fetches, status, stats);
    if (!status[0].ok()) {
      seq.failed = status[0];
      return seq.failed;
    }
  }

  // 4. One sparse decode: query i's row of head h lists the head's context slots and the block's
  // (whole pages but the block's last): every query reads the same pages, no causal mask.
  const Clock::time_point t2 = Clock::now();
  std::vector<int32_t> indptr(1, 0), indices;
  std::vector<int32_t> last(static_cast<size_t>(n) * kv_, static_cast<int32_t>(n - (bp - 1) * P_));
  for (int64_t i = 0; i < n; ++i) {
    for (int h = 0; h < kv_; ++h) {
      indices.insert(indices.end(), slots[h].begin(), slots[h].end());
      for (int64_t j = 0; j < bp; ++j) indices.push_back(ls.block[j * kv_ + h]);
      indptr.push_back(static_cast<int32_t>(indices.size()));
    }
  }
  kernels::PageTable table;
  table.num_rows = static_cast<int32_t>(n * kv_);
  table.indptr = indptr.data();
  table.indices = indices.data();
  table.last_page_len = last.data();
  if (absl::Status s = backend_->Attend(q, table, o); !s.ok()) {
    seq.failed = s;
    return s;
  }
  stats.attend_s = Since(t2);
  for (int h = 0; h < kv_; ++h) {
    stats.attended_head_pages += static_cast<int64_t>(rows[h].size()) + bp;
    for (int64_t j = 0; j < bp; ++j) rows[h].push_back(static_cast<int32_t>(pages + j));
  }
  ls.rows = std::move(rows);
  return stats;
}

absl::Status DecodeWorker::Impl::CommitBlock(SequenceId id, int layer) {
  auto found = Usable(id, layer, "CommitBlock");
  if (!found.ok()) return found.status();
  Sequence& seq = **found;
  LayerState& ls = seq.layers[layer];
  if (ls.block_tokens == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("CommitBlock: layer ", layer, " has no block (AttendBlock first)"));
  }
  const int64_t n = ls.block_tokens;
  if (seq.prompt_len - ls.tokens != n || ls.tokens % P_ != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CommitBlock: layer ", layer, " awaits ", seq.prompt_len - ls.tokens,
        " tokens, its block holds ", n, " (Extend by exactly the block's tokens first)"));
  }
  const int64_t full = n / P_, bp = (n + P_ - 1) / P_;
  if (device_select_ && bp > static_cast<int64_t>(free_sum_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the selection summary table has ", free_sum_.size(), " free slots, this block needs ", bp,
        " (raise DecodeWorkerOptions::summary_slots or close sequences)"));
  }
  auto fail = [&](absl::Status s) {
    seq.failed = s;
    return s;
  };
  // Summaries of every block page from its slots (device selection), in page order.
  if (device_select_) {
    std::vector<int32_t> sum_slots, pool_slots, from(bp, 0), to(bp, P_);
    for (int64_t j = 0; j < bp; ++j) {
      sum_slots.push_back(NewSummarySlot(ls));
      pool_slots.insert(pool_slots.end(), ls.block.begin() + j * kv_,
                        ls.block.begin() + (j + 1) * kv_);
    }
    to.back() = static_cast<int32_t>(n - (bp - 1) * P_);
    if (absl::Status s = backend_->UpdateSummaries(sum_slots, pool_slots, from, to); !s.ok()) {
      return fail(s);
    }
  }
  // Full pages: read back, checksummed and queued for the store; their slots become the pages'
  // cached copies.
  if (full > 0) {
    std::vector<HeadSlot> heads;
    for (int64_t j = 0; j < full; ++j) {
      for (int h = 0; h < kv_; ++h) heads.push_back({h, ls.block[j * kv_ + h]});
    }
    std::vector<uint8_t> bytes(heads.size() * 2 * half_);
    if (absl::Status s = backend_->ReadHeads(heads, absl::MakeSpan(bytes)); !s.ok()) return fail(s);
    for (int64_t j = 0; j < full; ++j) {
      const PageKey key =
          QueuePage(id, seq, layer, PageFromSlots(bytes.data() + j * kv_ * 2 * half_));
      for (int h = 0; h < kv_; ++h) pool_.Adopt(h, ls.block[j * kv_ + h], key, epoch_);
      ls.tokens += P_;
    }
  }
  // A partial last page becomes the open page (its slots stay owned).
  if (bp > full) {
    for (int h = 0; h < kv_; ++h) ls.tail[h] = ls.block[full * kv_ + h];
    ls.tokens += n - full * P_;
  }
  block_pages_ -= bp;
  ls.block.clear();
  ls.block_tokens = 0;
  if (ls.tokens == seq.prompt_len) {
    if (absl::Status s = StartSelector(id, ls, layer); !s.ok()) return fail(s);
  }
  return absl::OkStatus();
}

}  // namespace pagoda
