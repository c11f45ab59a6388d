// The decode worker (decode_worker.h): its state, page commits, the step plan, selection and the
// per-layer attend (sequences: worker_sequences.cc; pool slots and fetches: worker_fetch.cc).
#include "pagoda/client/decode_worker.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "decode_worker_impl.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/head_checksum.h"
#include "pagoda/kernels/reference.h"
#include "pagoda/kvstore/prefix.h"
#include "worker_select.h"
#include "worker_state.h"

namespace pagoda {

using worker_internal::LayerState;
using worker_internal::Rows;
using worker_internal::Sequence;
using worker_internal::Since;
using Clock = worker_internal::Clock;

absl::Status DecodeWorker::Impl::Init() {
  if (absl::Status s = backend_->Init(o_.layout, o_.q_heads, o_.pool_slots_per_head); !s.ok()) {
    return s;
  }
  if (device_select_) {
    if (o_.summary_slots < 1 || o_.summary_slots > (int64_t{1} << 31) - 1) {
      return absl::InvalidArgumentError("summary_slots must be in [1, 2^31)");
    }
    if (absl::Status s = backend_->InitSummaries(o_.summary_slots); !s.ok()) return s;
    free_sum_.resize(o_.summary_slots);
    for (int64_t i = 0; i < o_.summary_slots; ++i) {
      free_sum_[i] = static_cast<int32_t>(o_.summary_slots - 1 - i);
    }
    slot_page_.assign(o_.summary_slots, -1);
  }
  if (backend_->device() == Device::kCuda) {
    // The verified gather reads the store's host pages from the device.
    if (absl::Status s = store_->MapHostTierForGpu(backend_->device_index()); !s.ok()) return s;
  }
  if (o_.prepare_host_bytes != 0) {  // after the GPU mapping, so prepared segments are pinned
    const uint64_t want =
        o_.prepare_host_bytes < 0 ? UINT64_MAX : static_cast<uint64_t>(o_.prepare_host_bytes);
    if (auto got = store_->PrepareHostTier(o_.tenant, o_.layout, want); !got.ok()) {
      return got.status();
    }
  }
  const HostArena arena = store_->HostArenaInfo();
  return backend_->RegisterSource(arena.base, static_cast<int64_t>(arena.size));
}

absl::StatusOr<Sequence*> DecodeWorker::Impl::Find(SequenceId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrCat("unknown sequence ", id));
  return &it->second;
}
const Sequence* DecodeWorker::Impl::Lookup(SequenceId id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second;
}

absl::StatusOr<Sequence*> DecodeWorker::Impl::Usable(SequenceId id, const char* what) {
  if (plan_id_ != 0) return absl::FailedPreconditionError(absl::StrCat(what, " inside a step"));
  auto found = Find(id);
  if (!found.ok()) return absl::InvalidArgumentError(found.status().message());
  if (!(*found)->failed.ok()) return absl::FailedPreconditionError("the sequence failed earlier");
  return *found;
}

absl::StatusOr<Sequence*> DecodeWorker::Impl::Usable(SequenceId id, int layer, const char* what) {
  auto found = Usable(id, what);
  if (found.ok() && (layer < 0 || layer >= o_.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range"));
  }
  return found;
}

absl::StatusOr<int64_t> DecodeWorker::Impl::ChunkRows(const TensorView& q, const TensorView& k,
                                                      const TensorView& v,
                                                      const TensorView& o) const {
  const int64_t n = k.ndim == 3 ? k.shape[0] : -1;
  for (const auto& [t, what, heads] :
       {std::tuple{&k, "k", kv_}, std::tuple{&v, "v", kv_}, std::tuple{&q, "q", o_.q_heads},
        std::tuple{&o, "o", o_.q_heads}}) {
    if (absl::Status s = CheckTensor(*t, what, {n, heads, d_}, o_.layout.dtype, backend_->device());
        !s.ok()) {
      return s;
    }
  }
  return n;
}

void DecodeWorker::Impl::DrainCommits() {
  for (auto& [id, status] : committer_.Drain()) {
    auto it = seqs_.find(id);
    if (it != seqs_.end() && it->second.failed.ok()) {
      it->second.failed = absl::Status(status.code(), absl::StrCat("commit: ", status.message()));
    }
  }
}

void DecodeWorker::Impl::HeadSums(const uint8_t* page, uint64_t* sums) const {
  for (int h = 0; h < kv_; ++h) {
    sums[h] = kernels::HeadPageChecksum(page + h * half_, page + (kv_ + h) * half_, half_);
  }
}

std::vector<uint8_t> DecodeWorker::Impl::PageFromSlots(const uint8_t* slots) {
  // Pool slots hold K then V per head; the store page is K of every head, then V of every head.
  std::vector<uint8_t> page = committer_.TakeBuffer();
  for (int h = 0; h < kv_; ++h) {
    std::memcpy(page.data() + h * half_, slots + h * 2 * half_, half_);
    std::memcpy(page.data() + (kv_ + h) * half_, slots + h * 2 * half_ + half_, half_);
  }
  return page;
}

void DecodeWorker::Impl::KeepPromptRows(LayerState& ls, int h, const uint8_t* k, const uint8_t* v,
                                        int64_t tokens) {
  const uint16_t* kk = reinterpret_cast<const uint16_t*>(k);
  ls.prompt_keys[h].insert(ls.prompt_keys[h].end(), kk, kk + tokens * d_);
  if (!layout_pages_) return;
  const uint16_t* vv = reinterpret_cast<const uint16_t*>(v);
  ls.prompt_values[h].insert(ls.prompt_values[h].end(), vv, vv + tokens * d_);
}

void DecodeWorker::Impl::TakePage(LayerState& ls, const uint8_t* page, bool keep_keys) {
  const size_t at = ls.sums.size();
  ls.sums.resize(at + kv_);
  HeadSums(page, &ls.sums[at]);
  for (int h = 0; h < kv_ && keep_keys; ++h) {
    KeepPromptRows(ls, h, page + h * half_, page + (kv_ + h) * half_, P_);
  }
}

absl::Status DecodeWorker::Impl::EnsureTail(LayerState& ls) {
  for (int h = 0; h < kv_; ++h) {
    if (ls.tail[h] >= 0) continue;
    ls.tail[h] = pool_.AllocOwned(h, epoch_);
    if (ls.tail[h] < 0) {
      return absl::ResourceExhaustedError(
          "the attention pool has no slot for an open page (raise pool_slots_per_head)");
    }
  }
  return absl::OkStatus();
}

void DecodeWorker::Impl::AdoptTail(LayerState& ls, int32_t p, const PageKey& key) {
  ls.SizeResidency(kv_);
  for (int h = 0; h < kv_; ++h) {
    const int32_t slot = pool_.Adopt(h, ls.tail[h], key, epoch_);
    if (slot >= 0) ls.Remember(h, p, slot, pool_.Generation(h, slot));
    ls.tail[h] = -1;
  }
}

absl::Status DecodeWorker::Impl::CommitTail(SequenceId id, Sequence& seq, int layer) {
  LayerState& ls = seq.layers[layer];
  std::vector<HeadSlot> heads;
  for (int h = 0; h < kv_; ++h) heads.push_back({h, ls.tail[h]});
  std::vector<uint8_t> slots(kv_ * 2 * half_);
  if (absl::Status s = backend_->ReadHeads(heads, absl::MakeSpan(slots)); !s.ok()) return s;
  const int32_t p = static_cast<int32_t>(ls.keys.size());  // the page QueuePage adds
  const PageKey key = QueuePage(id, seq, layer, PageFromSlots(slots.data()));
  AdoptTail(ls, p, key);
  return absl::OkStatus();
}

absl::Status DecodeWorker::Impl::CommitTailLater(SequenceId id, Sequence& seq, int layer,
                                                 WorkerStepStats& stats) {
  LayerState& ls = seq.layers[layer];
  std::vector<HeadSlot> heads;
  for (int h = 0; h < kv_; ++h) heads.push_back({h, ls.tail[h]});
  // Tags past the layers' (ObserveQueries / choices, late queries, late keys: one each per layer).
  const int tag = 3 * o_.num_layers + static_cast<int>(pending_commits_.size());
  if (absl::Status s = backend_->StartReadHeads(heads, tag); !s.ok()) return s;
  const int64_t p = static_cast<int64_t>(ls.keys.size());
  const PageKey key =
      ChainPageKey(p == 0 ? PageKey{} : ls.keys[p - 1],
                   absl::MakeConstSpan(seq.tokens).subspan(p * P_, P_), Extra(layer));
  ls.keys.push_back(key);
  ls.sums.resize(static_cast<size_t>(p + 1) * kv_, 0);  // filled in CompleteCommits
  WriteOptions wo;
  wo.stream_id = ls.stream_id;
  wo.pin = o_.pin_prompt && (p + 1) * P_ <= seq.prompt_len;
  if (wo.pin) ls.pinned = static_cast<int32_t>(p + 1);
  // The slots keep the page's bytes until evicted, and any later write to them is ordered after
  // the download on the stream.
  AdoptTail(ls, static_cast<int32_t>(p), key);
  stats.bytes_committed += o_.layout.PageBytes();
  pending_commits_.push_back({id, layer, p, tag, key, wo});
  return absl::OkStatus();
}

void DecodeWorker::Impl::CompleteCommits() {
  for (PendingCommit& c : pending_commits_) {
    auto it = seqs_.find(c.id);
    auto bytes = backend_->FinishCopyToHost(c.tag);
    if (it == seqs_.end()) continue;
    if (!bytes.ok()) {
      if (it->second.failed.ok()) it->second.failed = bytes.status();
      continue;
    }
    std::vector<uint8_t> page = PageFromSlots(reinterpret_cast<const uint8_t*>(bytes->data()));
    HeadSums(page.data(), &it->second.layers[c.layer].sums[c.page * kv_]);
    committer_.Enqueue(c.id, c.key, std::move(page), c.options);
  }
  pending_commits_.clear();
}

PageKey DecodeWorker::Impl::QueuePage(SequenceId id, Sequence& seq, int layer,
                                      std::vector<uint8_t> page) {
  LayerState& ls = seq.layers[layer];
  const int64_t p = static_cast<int64_t>(ls.keys.size());
  const PageKey key =
      ChainPageKey(p == 0 ? PageKey{} : ls.keys[p - 1],
                   absl::MakeConstSpan(seq.tokens).subspan(p * P_, P_), Extra(layer));
  TakePage(ls, page.data(), /*keep_keys=*/!ls.ready && !device_select_);
  ls.keys.push_back(key);
  WriteOptions wo;
  wo.stream_id = ls.stream_id;
  wo.pin = o_.pin_prompt && (p + 1) * P_ <= seq.prompt_len;
  if (wo.pin) ls.pinned = static_cast<int32_t>(p + 1);
  committer_.Enqueue(id, key, std::move(page), wo);
  return key;
}

int64_t DecodeWorker::Impl::RowBound(const Sequence& seq) const {
  const retriever::SelectorOptions& s = o_.selector;
  const int64_t pages = (static_cast<int64_t>(seq.tokens.size()) + P_) / P_;  // after this token
  int32_t pinned = 0;
  for (const LayerState& ls : seq.layers) pinned = std::max(pinned, ls.pinned);
  // louiskv scores its kept pages and candidates in the pool; what it then attends is among them.
  const int64_t budget_pages =
      std::max(s.budget_tokens / P_, retriever::MaxScoredPages(o_.policy, s, s.budget_tokens / P_));
  const int64_t selected = budget_pages + s.window_pages + 1;
  const int64_t streaming = o_.streaming_sink_pages + o_.streaming_window_pages;
  return std::min<int64_t>(pages, std::max(selected, streaming) + pinned);
}

absl::StatusOr<StepPlan> DecodeWorker::Impl::Plan(absl::Span<const SequenceId> ids,
                                                  absl::Span<const int32_t> token_ids) {
  if (plan_id_ != 0) return absl::FailedPreconditionError("a step is already planned");
  if (ids.empty()) return absl::InvalidArgumentError("empty batch");
  if (ids.size() != token_ids.size()) {
    return absl::InvalidArgumentError("one token id per sequence");
  }
  DrainCommits();
  std::vector<SequenceId> sorted(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return absl::InvalidArgumentError("a sequence is listed twice");
  }
  // Worst case of one layer per head sub-pool: every row's pages plus the open pages.
  int64_t need = 0;
  for (SequenceId id : ids) {
    const Sequence* seq = Lookup(id);
    if (seq == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown sequence ", id));
    if (!seq->failed.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("sequence ", id, " failed earlier: ", seq->failed.message()));
    }
    for (const LayerState& ls : seq->layers) {
      if (!ls.ready) {
        return absl::FailedPreconditionError(absl::StrCat("sequence ", id, " is not prefilled"));
      }
    }
    need += RowBound(*seq);
  }
  // Owned slots per head: one per (open sequence, layer) at most, and the blocks' (AttendBlock).
  int64_t open_pages = 0;
  for (const auto& [id, seq] : seqs_) open_pages += static_cast<int64_t>(seq.layers.size());
  open_pages += block_pages_;
  if (need + open_pages > o_.pool_slots_per_head) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "one step of this batch may need ", need, " head-page slots per KV head besides ",
        open_pages, " open pages, but the pool has ", o_.pool_slots_per_head,
        " (raise pool_slots_per_head or shrink the batch)"));
  }
  // Device selection: a step may open one new page per (sequence, layer).
  if (device_select_ &&
      static_cast<int64_t>(free_sum_.size()) < static_cast<int64_t>(ids.size()) * o_.num_layers) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the selection summary table has ", free_sum_.size(), " free slots, this step may need ",
        ids.size() * o_.num_layers, " (raise DecodeWorkerOptions::summary_slots)"));
  }
  // Slots louiskv's resident sets hold stay out of this step's reach: holds beyond what the worst
  // case leaves are released (their next steps resolve those pages again).
  hold_room_ = o_.pool_slots_per_head - need - open_pages;
  ReleaseHolds(hold_room_, ids);
  // The last step's queries, for the boundary triggers (a staged step's copies carry no event a
  // graph replay would record: the stream is drained first; the engine's sampling already was).
  if (staged_last_) {
    if (absl::Status s = backend_->Sync(); !s.ok()) return s;
    staged_last_ = false;
  }
  for (int l = 0; l < o_.num_layers; ++l) ObserveQueries(l);
  for (size_t b = 0; b < ids.size(); ++b) seqs_[ids[b]].tokens.push_back(token_ids[b]);
  plan_id_ = next_plan_++;
  plan_seqs_.assign(ids.begin(), ids.end());
  layer_done_.assign(o_.num_layers, false);
  step_status_.assign(ids.size(), absl::OkStatus());
  for (size_t b = 0; b < ids.size(); ++b) step_status_[b] = seqs_[ids[b]].failed;
  step_stats_ = WorkerStepStats{};
  StepPlan plan{plan_id_, plan_seqs_};
  staged_ = CanStage(ids, need, open_pages);
  if (staged_) {
    auto generation = StageStep();
    if (!generation.ok()) {  // the pool or the backend failed under a checked plan
      for (SequenceId id : plan_seqs_) {
        if (seqs_[id].failed.ok()) seqs_[id].failed = generation.status();
      }
      plan_id_ = 0;
      plan_seqs_.clear();
      staged_ = false;
      return generation.status();
    }
    plan.capturable = true;
    plan.graph_key = *generation;
  }
  return plan;
}

int32_t DecodeWorker::Impl::NewSummarySlot(LayerState& ls) {
  const int32_t slot = free_sum_.back();
  free_sum_.pop_back();
  slot_page_[slot] = static_cast<int32_t>(ls.sum_slots.size());
  ls.sum_slots.push_back(slot);
  return slot;
}

void DecodeWorker::Impl::PageMinMax(const uint8_t* page, std::vector<uint16_t>& mins,
                                    std::vector<uint16_t>& maxs) const {
  // The kernels' summary reference over this one page (store layout), so host-made summaries are
  // the ones the device computes.
  const size_t row = static_cast<size_t>(kv_) * d_;
  const size_t at = mins.size();
  mins.resize(at + row);
  maxs.resize(at + row);
  int32_t count = 0;
  const int32_t zero = 0, full = P_;
  kernels::SummaryUpdateParams p;
  p.kv = kernels::PackedPagedKV(KernelDType(o_.layout.dtype), 1, P_, kv_, d_,
                                reinterpret_cast<const uint16_t*>(page));
  p.summaries = {
      KernelDType(o_.layout.dtype), 1, 1, kv_, d_, &mins[at], &maxs[at], nullptr, &count};
  p.num_updates = 1;
  p.pages = &zero;
  p.new_count = &full;
  (void)kernels::UpdateSummariesReference(p);  // valid by construction
}

absl::Status DecodeWorker::Impl::AddSummaries(LayerState& ls, const std::vector<uint16_t>& mins,
                                              const std::vector<uint16_t>& maxs) {
  const size_t row = static_cast<size_t>(kv_) * d_;
  const size_t n = mins.size() / row;
  if (n == 0) return absl::OkStatus();
  if (n > free_sum_.size()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the selection summary table is full (", o_.summary_slots,
                     " slots; raise DecodeWorkerOptions::summary_slots or close sequences)"));
  }
  std::vector<int32_t> slots(n), counts(n, P_);
  for (size_t i = 0; i < n; ++i) slots[i] = NewSummarySlot(ls);
  return backend_->WriteSummaries(slots, mins, maxs, counts);
}

absl::Status DecodeWorker::Impl::FoldOpenPages(absl::Span<LayerState* const> states,
                                               absl::Span<const int32_t> from,
                                               absl::Span<const int32_t> to) {
  int64_t fresh = 0;
  for (size_t i = 0; i < states.size(); ++i) fresh += from[i] == 0 ? 1 : 0;
  if (fresh > static_cast<int64_t>(free_sum_.size())) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the selection summary table is full (", o_.summary_slots,
                     " slots; raise DecodeWorkerOptions::summary_slots or close sequences)"));
  }
  std::vector<int32_t> sum_slots, pool_slots;
  FoldSlots(states, from, sum_slots);
  for (LayerState* ls : states)
    pool_slots.insert(pool_slots.end(), ls->tail.begin(), ls->tail.end());
  return backend_->UpdateSummaries(sum_slots, pool_slots, from, to);
}

void DecodeWorker::Impl::FoldSlots(absl::Span<LayerState* const> states,
                                   absl::Span<const int32_t> from,
                                   std::vector<int32_t>& sum_slots) {
  sum_slots.clear();
  for (size_t i = 0; i < states.size(); ++i) {
    LayerState& ls = *states[i];
    sum_slots.push_back(from[i] == 0 ? NewSummarySlot(ls) : ls.sum_slots.back());
  }
}

void DecodeWorker::Impl::ObserveQueries(int layer) {
  std::vector<std::pair<SequenceId, bool>>& pending = q_pending_[layer];
  if (pending.empty()) return;
  auto copied = backend_->FinishCopyToHost(layer);
  const size_t row = static_cast<size_t>(o_.q_heads) * d_;
  std::vector<float> qf(row);
  for (size_t r = 0; r < pending.size(); ++r) {
    auto it = seqs_.find(pending[r].first);
    if (it == seqs_.end() || !it->second.failed.ok()) continue;  // closed or failed since
    LayerState& ls = it->second.layers[layer];
    if (!ls.trigger.has_value()) continue;
    absl::Status s = copied.status();
    if (s.ok()) {
      for (size_t i = 0; i < row; ++i) {
        const uint16_t x = (*copied)[r * row + i];
        qf[i] = o_.layout.dtype == DType::kBf16 ? kernels::Bf16ToFloat(x) : kernels::HalfToFloat(x);
      }
      // The query a retrieval used becomes the anchor; any other one is a drift observation.
      if (pending[r].second) ls.trigger->Reset();
      auto fired = ls.trigger->Observe(qf);
      s = fired.status();
      if (fired.ok() && *fired && !pending[r].second) ls.boundary_seen = true;
    }
    if (!s.ok()) it->second.failed = s;
  }
  pending.clear();
}

void DecodeWorker::Impl::SettleLateReads(int layer) {
  std::vector<LateRead>& pending = late_pending_[layer];
  if (pending.empty()) return;
  auto qs = backend_->FinishCopyToHost(QueryTag(layer));
  auto ks = backend_->FinishCopyToHost(KeyTag(layer));
  const size_t q_row = static_cast<size_t>(o_.q_heads) * d_;
  const size_t k_row = static_cast<size_t>(kv_) * d_;
  for (const LateRead& r : pending) {
    auto it = seqs_.find(r.id);
    if (it == seqs_.end() || !it->second.failed.ok()) continue;  // closed or failed since
    retriever::Selector& sel = *it->second.layers[layer].selector;
    absl::Status s = !qs.ok() ? qs.status() : ks.status();
    if (s.ok()) s = sel.SupplyKeys(ks->subspan(r.row * k_row, k_row), 1);
    if (s.ok() && r.query) s = sel.LateQuery(qs->subspan(r.row * q_row, q_row));
    if (!s.ok()) {
      it->second.failed =
          absl::Status(s.code(), absl::StrCat("reading the last step's q / k back: ", s.message()));
    }
  }
  pending.clear();
}

bool DecodeWorker::Impl::ReadsLate(const LayerState& ls) const {
  if (ls.selector == nullptr || !ls.selector->TakesLateReads()) return false;
  // This step's token is not appended yet: DenseRows will see ls.tokens + 1.
  return worker_internal::BudgetCovers(o_, ls.tokens + 1) || ls.selector->CanStepLate();
}

void DecodeWorker::Impl::SelectOnBackend(int layer, const TensorView& q,
                                         std::vector<absl::Status>& status, WorkerStepStats& stats,
                                         std::vector<bool>& fresh) {
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  fresh.assign(B, false);
  // Rows that retrieve afresh, by top_k (one backend call per distinct value; normally one).
  std::vector<int32_t> top_k(B, -1);
  std::vector<worker_internal::QuestBudget> budget(B);
  std::vector<bool> dense(B, false);
  for (int64_t b = 0; b < B; ++b) {
    if (!status[b].ok()) continue;
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    if (worker_internal::DenseRows(o_, layer, ls)) {
      dense[b] = true;
      ++stats.retrievals;
      continue;
    }
    // Without the trigger every step retrieves; with it, the first one and those after it fired.
    const bool due = ls.retrieved.empty() || !ls.trigger.has_value() || ls.boundary_seen;
    auto plan = worker_internal::PlanQuestBudget(o_, ls);
    if (!plan.ok()) {
      status[b] = plan.status();
      continue;
    }
    ls.prefetch.clear();
    if (due) {
      budget[b] = *plan;
      top_k[b] = plan->top_k;
    }
  }
  std::vector<int32_t> pending = top_k;
  for (;;) {
    int32_t k = -1;
    for (int32_t t : pending) k = std::max(k, t);
    if (k < 0) break;
    QuestRequest req;
    req.top_k = k;
    req.reduce = o_.selector.group_reduce;
    req.cand_indptr.assign(1, 0);
    req.keep_indptr.assign(1, 0);
    for (int64_t b = 0; b < B; ++b) {
      if (pending[b] == k) {
        const LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
        const worker_internal::QuestBudget& pb = budget[b];
        req.cand.insert(req.cand.end(), ls.sum_slots.begin() + pb.sink_end,
                        ls.sum_slots.begin() + pb.window_begin);
        req.keep.insert(req.keep.end(), ls.sum_slots.begin(), ls.sum_slots.begin() + pb.sink_end);
        req.keep.insert(req.keep.end(), ls.sum_slots.begin() + pb.window_begin,
                        ls.sum_slots.begin() + pb.pages);
        req.last_len.push_back(pb.last_len);
      } else {
        req.last_len.push_back(P_);
      }
      req.cand_indptr.push_back(static_cast<int32_t>(req.cand.size()));
      req.keep_indptr.push_back(static_cast<int32_t>(req.keep.size()));
    }
    std::vector<int32_t> out_indptr, out_indices;
    absl::Status s = backend_->SelectQuest(q, req, out_indptr, out_indices);
    for (int64_t b = 0; b < B; ++b) {
      if (pending[b] != k) continue;
      pending[b] = -1;
      if (!s.ok()) {
        status[b] = s;
        continue;
      }
      LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
      ls.retrieved.assign(kv_, {});
      ls.boundary_seen = false;
      fresh[b] = true;
      // Out come the chosen candidates in page order, then the sinks and the window (ascending
      // each): the sinks go first and the row is ascending without a sort.
      const int32_t sinks = budget[b].sink_end;
      for (int h = 0; h < kv_; ++h) {
        std::vector<int32_t>& r = ls.retrieved[h];
        for (int32_t i = out_indptr[b * kv_ + h]; i < out_indptr[b * kv_ + h + 1]; ++i) {
          r.push_back(slot_page_[out_indices[i]]);
        }
        const int64_t kept = budget[b].sink_end + (budget[b].pages - budget[b].window_begin);
        const int64_t chosen = static_cast<int64_t>(r.size()) - kept;
        if (chosen >= 0) std::rotate(r.begin(), r.begin() + chosen, r.begin() + chosen + sinks);
        if (!std::is_sorted(r.begin(), r.end())) std::sort(r.begin(), r.end());
      }
      ++stats.retrievals;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    if (!status[b].ok() || dense[b]) continue;
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    if (absl::Status s = worker_internal::PageRows(o_, layer, ls); !s.ok()) status[b] = s;
  }
}

absl::Status DecodeWorker::Impl::Attend(const StepPlan& plan, int layer, const TensorView& q,
                                        const TensorView& k, const TensorView& v,
                                        const TensorView& o) {
  if (plan_id_ == 0 || plan.id != plan_id_ || plan.sequences != plan_seqs_) {
    return absl::InvalidArgumentError("not the planned step");
  }
  if (layer < 0 || layer >= o_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range"));
  }
  if (layer_done_[layer]) {
    return absl::FailedPreconditionError(absl::StrCat("layer ", layer, " was attended this step"));
  }
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  const Device dev = backend_->device();
  const DType dt = o_.layout.dtype;
  if (absl::Status s = CheckTensor(q, "q", {B, o_.q_heads, d_}, dt, dev); !s.ok()) return s;
  if (absl::Status s = CheckTensor(o, "o", {B, o_.q_heads, d_}, dt, dev); !s.ok()) return s;
  if (absl::Status s = CheckTensor(k, "k", {B, kv_, d_}, dt, dev); !s.ok()) return s;
  if (absl::Status s = CheckTensor(v, "v", {B, kv_, d_}, dt, dev); !s.ok()) return s;
  if (staged_) return AttendStagedLayer(layer, q, k, v, o);  // Plan did the host's part
  // What the host reads: q for host selection and the boundary trigger, k for the host
  // selector's key pool, and on the CPU backend all three for the inf / NaN checks. Device
  // selection on a device backend reads none of them now: its trigger reads q a step later
  // (ObserveQueries), from a copy started without a sync; nor do the host selectors' rows that
  // read late (louiskv with trigger_late between retrievals, ReadsLate): their selectors get q
  // and k at the layer's next step, copied back without a sync.
  const bool on_host = dev == Device::kCpu;
  SettleLateReads(layer);
  late_.assign(B, 0);
  bool all_late = !device_select_;
  for (int64_t b = 0; b < B; ++b) {
    const Sequence& seq = seqs_[plan_seqs_[b]];
    late_[b] = seq.failed.ok() && ReadsLate(seq.layers[layer]) ? 1 : 0;
    all_late = all_late && late_[b];
  }
  const bool need_q = on_host || (!device_select_ && !all_late);
  const bool need_k = need_q;
  TensorView hq, hk;
  for (auto [t, buf, need, rows, what] :
       {std::tuple{&q, &qh_, need_q, o_.q_heads, "q"}, std::tuple{&k, &kh_, need_k, kv_, "k"},
        std::tuple{&v, &vh_, on_host, kv_, "v"}}) {
    if (!need) continue;
    buf->resize(static_cast<size_t>(B) * rows * d_);
    if (absl::Status s = backend_->CopyToHost(*t, absl::MakeSpan(*buf)); !s.ok()) return s;
    const TensorView h = TensorView::Contiguous(buf->data(), dt, {B, rows, d_});
    if (absl::Status s = worker_internal::CheckFinite(h, dt, what); !s.ok()) return s;
    if (t == &q) hq = h;
    if (t == &k) hk = h;
  }
  layer_done_[layer] = true;
  ++epoch_;
  WorkerStepStats& stats = step_stats_;
  std::vector<absl::Status>& status = step_status_;
  auto fail_all = [&](const absl::Status& s) {
    late_pending_[layer].clear();  // no copy to read back
    for (SequenceId id : plan_seqs_) {
      if (seqs_[id].failed.ok()) seqs_[id].failed = s;
    }
    return s;
  };

  // 1. Append: the new tokens join their open pages (in the pool) and the selectors.
  Clock::time_point t0 = Clock::now();
  StagedLayer app;
  if (absl::Status s = AppendArgs(layer, app); !s.ok()) return fail_all(s);
  if (absl::Status s = backend_->WriteTokens(k, v, app.token_slots, app.token_pos); !s.ok()) {
    return fail_all(s);
  }
  if (device_select_) {  // the open pages' summaries fold the new keys on the backend
    if (absl::Status s =
            backend_->UpdateSummaries(app.sum_slots, app.token_slots, app.fold_from, app.fold_to);
        !s.ok()) {
      return fail_all(s);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    if (device_select_) continue;
    absl::Status s;
    if (late_[b]) {
      s = ls.selector->AppendDeferred(1);  // its key comes back with the next step
    } else {
      s = ls.selector->Append(absl::MakeConstSpan(hk.At(b, 0, 0), static_cast<size_t>(kv_) * d_),
                              1);
    }
    if (!s.ok() && status[b].ok()) status[b] = s;
  }
  stats.append_s += Since(t0);

  // 2. Select: natural pages per (sequence, KV head), the open page last.
  Clock::time_point t1 = Clock::now();
  const int64_t shared_before = pool_.shared();  // rescoring may use the shared slots first
  // louiskv: the rows whose step comes in closed form (the backend chooses; see ListSteady).
  std::vector<retriever::ScoreRequest> requests(B);
  steady_.assign(B, 0);
  if (device_select_) {
    std::vector<bool> fresh;
    SelectOnBackend(layer, q, status, stats, fresh);
    if (o_.boundary_trigger) {  // this step's queries, for the trigger at the next step
      if (absl::Status s = backend_->StartCopyToHost(q, layer); !s.ok()) return fail_all(s);
      for (int64_t b = 0; b < B; ++b) q_pending_[layer].push_back({plan_seqs_[b], fresh[b]});
    }
  }
  if (!device_select_) {
    // Host selection: each sequence's selector on its own, spread over the select threads, in
    // two halves around louiskv's exact rescoring, which runs on the backend for the batch (the
    // requested pages are gathered into the pool like attended ones, then scored in one call).
    std::vector<LayerState*> states(B);
    for (int64_t b = 0; b < B; ++b) states[b] = &seqs_[plan_seqs_[b]].layers[layer];
    std::vector<char> retrieved(B, 0), begun(B, 0);
    select_pool_.Run(B, [&](int64_t b) {
      states[b]->choice_pending = false;  // this step's rows replace any choice not read back
      if (!status[b].ok()) return;
      const absl::Span<const uint16_t> qb =
          late_[b] ? absl::Span<const uint16_t>()
                   : absl::MakeConstSpan(hq.At(b, 0, 0), static_cast<size_t>(o_.q_heads) * d_);
      auto rows = worker_internal::BeginRows(o_, layer, *states[b], qb, requests[b]);
      if (!rows.ok()) {
        status[b] = rows.status();
      } else if (rows->has_value()) {
        retrieved[b] = **rows ? 1 : 0;
      } else {
        begun[b] = 1;
        steady_[b] = requests[b].steady.empty() ? 0 : 1;
        retrieved[b] = requests[b].retrieved ? 1 : 0;  // a closed-form retrieval
      }
    });
    for (int64_t b = 0; b < B; ++b) {  // a retrieval replaces the resident set
      if ((!steady_[b] || states[b]->rehold) && states[b]->held) Unhold(*states[b]);
    }
    std::vector<std::vector<std::vector<float>>> masses(B);
    if (std::find(begun.begin(), begun.end(), 1) != begun.end()) {
      stats.select_s += Since(t1);
      ScoreRequests(layer, q, requests, status, masses, stats);
      t1 = Clock::now();
    }
    select_pool_.Run(B, [&](int64_t b) {
      if (!status[b].ok() || !begun[b] || steady_[b]) return;
      auto fresh = worker_internal::FinishRows(o_, layer, *states[b], masses[b]);
      if (!fresh.ok()) {
        status[b] = fresh.status();
        return;
      }
      retrieved[b] = *fresh ? 1 : 0;
    });
    for (int64_t b = 0; b < B; ++b) {
      // Late rows owe their key, and their query when their selector stepped without it.
      if (late_[b] && status[b].ok()) {
        late_pending_[layer].push_back({plan_seqs_[b], b, begun[b] != 0});
        ++stats.late_reads;
      }
      if (!status[b].ok()) continue;
      stats.retrievals += retrieved[b];
      const LayerState& ls = *states[b];
      if (o_.prefetch && !ls.prefetch.empty()) {  // SSD -> host ahead of the next retrievals
        std::vector<PageKey> keys;
        for (const auto& hints : ls.prefetch) {
          for (int32_t p : hints) {
            if (p >= 0 && p < static_cast<int32_t>(ls.keys.size())) keys.push_back(ls.KeyOf(p));
          }
        }
        if (!keys.empty()) committer_.Prefetch(std::move(keys));
      }
    }
  }
  stats.select_s += Since(t1);

  // 3. Resolve slots; what is not resident is fetched (one verified gather for the batch). A page
  // the row has seen in the pool before is checked against that residency (LayerState::seen);
  // others are looked up by key.
  Clock::time_point t2 = Clock::now();
  std::vector<HeadFetch> fetches;
  std::vector<FetchOrigin> origins;
  if (absl::Status s = ResolveLayer(layer, status, stats, fetches, origins); !s.ok()) {
    return fail_all(s);
  }
  stats.shared_head_pages += pool_.shared() - shared_before;
  const double resolved_in = Since(t2);
  stats.fetch_s += resolved_in;  // resolving slots counts as fetch work
  stats.resolve_s += resolved_in;
  if (!fetches.empty()) {
    Fetch(layer, origins, fetches, status, stats);
  }

  // 4. Attend: one sparse decode over the batch; failed sequences get empty rows (zero output).
  Clock::time_point t3 = Clock::now();
  if (std::find(steady_.begin(), steady_.end(), 1) != steady_.end()) {
    // (its request carries the late reads' copies of q and k)
    if (absl::Status s = AttendChosen(layer, q, k, requests, o); !s.ok()) return fail_all(s);
    stats.attend_s += Since(t3);
    return CommitFilled(layer, stats);
  }
  BuildTable(layer, stats, indptr_, indices_, last_len_);
  kernels::PageTable table;
  table.num_rows = static_cast<int32_t>(B * kv_);
  table.indptr = indptr_.data();
  table.indices = indices_.data();
  table.last_page_len = last_len_.data();
  if (absl::Status s = backend_->Attend(q, table, o); !s.ok()) return fail_all(s);
  stats.attend_s += Since(t3);
  if (absl::Status s = StartLateReads(layer, q, k); !s.ok()) return fail_all(s);
  return CommitFilled(layer, stats);
}

absl::Status DecodeWorker::Impl::AppendArgs(int layer, StagedLayer& out) {
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  out.token_slots.clear();
  out.token_pos.clear();
  std::vector<LayerState*> states(B);
  for (int64_t b = 0; b < B; ++b) {
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    if (absl::Status s = EnsureTail(ls); !s.ok()) return s;  // Plan reserved them
    states[b] = &ls;
    out.token_slots.insert(out.token_slots.end(), ls.tail.begin(), ls.tail.end());
    out.token_pos.push_back(static_cast<int32_t>(ls.tokens % P_));
  }
  if (device_select_) {  // the open pages' summaries fold the new keys (Plan checked the room)
    out.fold_from = out.token_pos;
    out.fold_to = out.token_pos;
    for (int32_t& t : out.fold_to) ++t;
    FoldSlots(states, out.fold_from, out.sum_slots);  // over the token slots (the tails)
  }
  for (LayerState* ls : states) ++ls->tokens;
  return absl::OkStatus();
}

void DecodeWorker::Impl::BuildTable(int layer, WorkerStepStats& stats, std::vector<int32_t>& indptr,
                                    std::vector<int32_t>& indices,
                                    std::vector<int32_t>& last_len) const {
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  indptr.assign(1, 0);
  indices.clear();
  size_t total = 0;
  for (const HeadResolve& w : head_res_) {
    for (const std::vector<int32_t>& res : w.slots) total += res.size();
  }
  indices.reserve(std::max<size_t>(1, total));  // an all-empty table still has an array
  last_len.clear();
  for (int64_t b = 0; b < B; ++b) {
    const LayerState& ls = seqs_.at(plan_seqs_[b]).layers[layer];
    const int32_t tail_tokens = static_cast<int32_t>((ls.tokens - 1) % P_ + 1);
    for (int h = 0; h < kv_; ++h) {
      if (step_status_[b].ok()) {
        const std::vector<int32_t>& res = head_res_[h].slots[b];
        indices.insert(indices.end(), res.begin(), res.end());
        stats.attended_head_pages += static_cast<int64_t>(res.size());
      }
      indptr.push_back(static_cast<int32_t>(indices.size()));
      last_len.push_back(tail_tokens);
    }
  }
}

absl::Status DecodeWorker::Impl::StartLateReads(int layer, const TensorView& q,
                                                const TensorView& k) {
  // After the layer's attention on the stream: the copies never delay it.
  if (late_pending_[layer].empty()) return absl::OkStatus();
  if (absl::Status s = backend_->StartCopyToHost(q, QueryTag(layer)); !s.ok()) return s;
  return backend_->StartCopyToHost(k, KeyTag(layer));
}

absl::Status DecodeWorker::Impl::CommitFilled(int layer, WorkerStepStats& stats) {
  // 5. Commit the open pages this token filled (the committer puts them off this thread).
  Clock::time_point t4 = Clock::now();
  for (size_t b = 0; b < plan_seqs_.size(); ++b) {
    Sequence& seq = seqs_[plan_seqs_[b]];
    if (seq.layers[layer].tokens % P_ != 0) continue;
    if (absl::Status s = CommitTailLater(plan_seqs_[b], seq, layer, stats);
        !s.ok() && step_status_[b].ok()) {
      step_status_[b] = s;
    }
  }
  stats.commit_s += Since(t4);
  return absl::OkStatus();
}

absl::Status DecodeWorker::Impl::AttendChosen(int layer, const TensorView& q, const TensorView& k,
                                              std::vector<retriever::ScoreRequest>& requests,
                                              const TensorView& o) {
  // One call scores, chooses and attends: closed-form rows list their kept pages then their
  // candidates (slots resolved with the scored pages), the others their rows as kept entries.
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  std::vector<absl::Status>& status = step_status_;
  SettleChoices(layer);
  MassAttendRequest& m = mass_req_;
  m.reduce = o_.selector.group_reduce;
  m.indptr.assign(1, 0);
  m.out_indptr.assign(1, 0);
  for (std::vector<int32_t>* v : {&m.slots, &m.page_len, &m.keep, &m.split, &m.need,
                                  &m.last_page_len, &m.list_off, &m.list_count}) {
    v->clear();
  }
  m.save.clear();
  m.list.clear();
  // The late reads ride along (on CUDA inside the mass kernel: no copies of their own).
  m.host_copies.clear();
  if (!late_pending_[layer].empty()) m.host_copies = {{q, QueryTag(layer)}, {k, KeyTag(layer)}};
  for (int64_t b = 0; b < B; ++b) {
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    const int32_t cur = static_cast<int32_t>((ls.tokens - 1) / P_);
    const int32_t tail_tokens = static_cast<int32_t>((ls.tokens - 1) % P_ + 1);
    if (steady_[b] && status[b].ok()) {
      ls.choice_off.resize(kv_);
      ls.choice_len.resize(kv_);
    }
    for (int h = 0; h < kv_; ++h) {
      int32_t keep = 0, split = 0, need = 0, size = 0, list_off = 0, list_count = 0;
      int64_t save = -1, list = -1;
      if (status[b].ok()) {
        const bool chosen = steady_[b] != 0;
        const std::vector<int32_t>& pages = chosen ? requests[b].pages[h] : ls.rows[h];
        const std::vector<int32_t>& slots =
            chosen ? steady_slots_[b * kv_ + h] : head_res_[h].slots[b];
        m.slots.insert(m.slots.end(), slots.begin(), slots.end());
        for (int32_t p : pages) m.page_len.push_back(p == cur ? tail_tokens : P_);
        keep = static_cast<int32_t>(pages.size());
        split = keep;
        int32_t entries = static_cast<int32_t>(pages.size());
        if (chosen) {
          const retriever::SteadyRow& row = requests[b].steady[h];
          keep = requests[b].first_candidate[h];
          split = row.sink_end;
          need = row.need;
          ls.choice_off[h] = m.out_indptr.back();
          if (ls.from_list[h]) {            // the held candidates, stored on the backend
            list = ls.held_list * kv_ + h;  // one stored list per KV head
            list_off = row.cand_begin - ls.held_lo[h];
            list_count = row.cand_end - row.cand_begin;
            entries += list_count;
          } else if (ls.held && !ls.list_saved) {  // held this step: store them
            save = ls.held_list * kv_ + h;
          }
        }
        size = keep + std::min(need, entries - keep);
        if (chosen) ls.choice_len[h] = size;
        step_stats_.attended_head_pages += size;
      }
      m.keep.push_back(keep);
      m.split.push_back(split);
      m.need.push_back(need);
      m.save.push_back(save);
      m.list.push_back(list);
      m.list_off.push_back(list_off);
      m.list_count.push_back(list_count);
      m.indptr.push_back(static_cast<int32_t>(m.slots.size()));
      m.out_indptr.push_back(m.out_indptr.back() + size);
      m.last_page_len.push_back(tail_tokens);
    }
    if (steady_[b] && status[b].ok()) {
      ls.steady_pages = std::move(requests[b].pages);
      ls.choice_pending = true;
      ++step_stats_.chosen_on_backend;
    }
  }
  steady_batch_[layer].clear();
  for (int64_t b = 0; b < B; ++b) {
    if (steady_[b] && status[b].ok()) steady_batch_[layer].push_back(plan_seqs_[b]);
  }
  if (absl::Status s = backend_->AttendBestByMass(q, m, layer, o); !s.ok()) return s;
  for (int64_t b = 0; b < B; ++b) {
    LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
    if (steady_[b] && status[b].ok() && ls.held) ls.list_saved = true;
  }
  return absl::OkStatus();
}

void DecodeWorker::Impl::HoldCandidates(int64_t b, int layer, const retriever::ScoreRequest& req) {
  LayerState& ls = seqs_[plan_seqs_[b]].layers[layer];
  if (ls.held) return;
  for (int h = 0; h < kv_; ++h) {
    const int64_t n = req.steady[h].cand_end - req.steady[h].cand_begin;
    if (pool_.held(h) + n > hold_room_) return;  // no room: resolved again next step
  }
  ls.held_slots.assign(kv_, {});
  ls.held_lo.assign(kv_, 0);
  ls.held = true;
  ls.held_list = next_list_++;  // stored by this step's AttendChosen
  ls.list_saved = false;
  for (int h = 0; h < kv_; ++h) {
    const std::vector<int32_t>& slots = steady_slots_[b * kv_ + h];
    ls.held_lo[h] = req.steady[h].cand_begin;
    for (auto it = slots.begin() + req.first_candidate[h]; it != slots.end(); ++it) {
      ls.held_slots[h].push_back(*it);
      if (!pool_.Hold(h, *it)) {  // cannot happen for resolved candidates; stay correct anyway
        Unhold(ls);
        return;
      }
    }
  }
  held_states_.push_back({plan_seqs_[b], layer});
}

void DecodeWorker::Impl::Unhold(LayerState& ls) {
  for (size_t h = 0; h < ls.held_slots.size(); ++h) {
    for (int32_t slot : ls.held_slots[h]) pool_.Unhold(static_cast<int>(h), slot);
  }
  for (int h = 0; h < kv_ && ls.list_saved; ++h) backend_->DropSlotList(ls.held_list * kv_ + h);
  ls.held_slots.clear();
  ls.held_lo.clear();
  ls.held = false;
  ls.held_list = -1;
  ls.list_saved = false;
}

void DecodeWorker::Impl::ReleaseHolds(int64_t room, absl::Span<const SequenceId> keep) {
  auto over = [&] {
    for (int h = 0; h < kv_; ++h) {
      if (pool_.held(h) > room) return true;
    }
    return false;
  };
  for (int pass = 0; pass < 2 && over(); ++pass) {
    for (const auto& [id, layer] : held_states_) {
      if (!over()) break;
      if (pass == 0 && std::find(keep.begin(), keep.end(), id) != keep.end()) continue;
      auto it = seqs_.find(id);
      if (it != seqs_.end()) Unhold(it->second.layers[layer]);
    }
  }
  // Forget the entries whose state no longer holds, and the repeats a state released and held
  // again within one step leaves (one entry per state: the list stays as long as the holds).
  std::sort(held_states_.begin(), held_states_.end());
  held_states_.erase(std::unique(held_states_.begin(), held_states_.end()), held_states_.end());
  held_states_.erase(std::remove_if(held_states_.begin(), held_states_.end(),
                                    [&](const std::pair<SequenceId, int>& e) {
                                      auto it = seqs_.find(e.first);
                                      return it == seqs_.end() || !it->second.layers[e.second].held;
                                    }),
                     held_states_.end());
}

void DecodeWorker::Impl::SettleChoices(int layer) {
  // The layer's last choice is about to be replaced: rows of sequences that chose there and are
  // not in this batch (whose rows this step replaces) are read back now.
  for (SequenceId id : steady_batch_[layer]) {
    if (std::find(plan_seqs_.begin(), plan_seqs_.end(), id) != plan_seqs_.end()) continue;
    auto it = seqs_.find(id);
    if (it == seqs_.end()) continue;
    LayerState& ls = it->second.layers[layer];
    if (!ls.choice_pending) continue;
    auto rows = ChosenRows(ls, layer);
    if (rows.ok()) ls.rows = *std::move(rows);
    ls.choice_pending = false;
  }
}

absl::StatusOr<std::vector<std::vector<int32_t>>> DecodeWorker::Impl::ChosenRows(
    const LayerState& ls, int layer) const {
  if (!ls.choice_pending) return ls.rows;
  auto chosen = backend_->FinishChoices(layer);
  if (!chosen.ok()) return chosen.status();
  std::vector<std::vector<int32_t>> rows(kv_);
  for (int h = 0; h < kv_; ++h) {
    // Kept pages before the candidates, the chosen ones (ascending), the rest kept: ascending.
    const std::vector<int32_t>& listed = ls.steady_pages[h];
    const absl::Span<const int32_t> res = ls.selector->ResidentPages(h);
    for (int32_t i = ls.choice_off[h]; i < ls.choice_off[h] + ls.choice_len[h]; ++i) {
      const int32_t e = (*chosen)[i];
      rows[h].push_back(e < static_cast<int32_t>(listed.size())
                            ? listed[e]
                            : res[ls.steady_cb[h] + e - static_cast<int32_t>(listed.size())]);
    }
  }
  return rows;
}

absl::StatusOr<WorkerStepStats> DecodeWorker::Impl::Finish(const StepPlan& plan) {
  if (plan_id_ == 0 || plan.id != plan_id_)
    return absl::InvalidArgumentError("not the planned step");
  for (int l = 0; l < o_.num_layers; ++l) {
    if (!layer_done_[l]) {
      return absl::FailedPreconditionError(absl::StrCat("layer ", l, " was not attended"));
    }
  }
  Clock::time_point t0 = Clock::now();
  if (staged_) {  // the pages this step filled, after every layer's work on the stream
    for (int l = 0; l < o_.num_layers; ++l) {
      if (absl::Status s = CommitFilled(l, step_stats_); !s.ok()) return s;
    }
    staged_ = false;
    staged_last_ = true;
  }
  CompleteCommits();
  DrainCommits();
  step_stats_.commit_s += Since(t0);
  for (size_t b = 0; b < plan_seqs_.size(); ++b) {
    Sequence& seq = seqs_[plan_seqs_[b]];
    if (!step_status_[b].ok() && seq.failed.ok()) seq.failed = step_status_[b];
    if (step_status_[b].ok() && !seq.failed.ok()) step_status_[b] = seq.failed;
  }
  step_stats_.sequence_status = step_status_;
  plan_id_ = 0;
  plan_seqs_.clear();
  return std::move(step_stats_);
}

absl::Status DecodeWorker::Impl::Flush() {
  auto failures = committer_.Drain();
  absl::Status first = failures.empty() ? absl::OkStatus() : failures.front().second;
  for (auto& [id, s] : failures) {
    auto it = seqs_.find(id);
    if (it != seqs_.end() && it->second.failed.ok()) it->second.failed = s;
  }
  return first;
}

absl::StatusOr<int64_t> DecodeWorker::Impl::Length(SequenceId id, int layer) const {
  const Sequence* seq = Lookup(id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", id));
  if (layer < 0 || layer >= o_.num_layers) return absl::InvalidArgumentError("layer out of range");
  // A staged step counted its tokens at Plan; a layer takes its token when attended.
  const bool pending = staged_ && !layer_done_[layer] &&
                       std::find(plan_seqs_.begin(), plan_seqs_.end(), id) != plan_seqs_.end();
  return seq->layers[layer].tokens - (pending ? 1 : 0);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> DecodeWorker::Impl::LastRows(SequenceId id,
                                                                               int layer) const {
  const Sequence* seq = Lookup(id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", id));
  if (layer < 0 || layer >= o_.num_layers) return absl::InvalidArgumentError("layer out of range");
  return ChosenRows(seq->layers[layer], layer);
}

absl::StatusOr<std::vector<PageKey>> DecodeWorker::Impl::LayoutPageKeys(SequenceId id,
                                                                        int layer) const {
  const Sequence* seq = Lookup(id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", id));
  if (layer < 0 || layer >= o_.num_layers) return absl::InvalidArgumentError("layer out of range");
  return seq->layers[layer].layout_keys;
}

absl::StatusOr<std::vector<std::vector<int64_t>>> DecodeWorker::Impl::AttendedPositions(
    SequenceId id, int layer) const {
  const Sequence* seq = Lookup(id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", id));
  if (layer < 0 || layer >= o_.num_layers) return absl::InvalidArgumentError("layer out of range");
  const LayerState& ls = seq->layers[layer];
  auto rows = ChosenRows(ls, layer);
  if (!rows.ok()) return rows.status();
  std::vector<std::vector<int64_t>> out(rows->size());
  for (size_t h = 0; h < rows->size(); ++h) {
    for (int32_t p : (*rows)[h]) {
      // (A block's pages follow the layer's tokens: AttendBlock.)
      const int64_t end = std::min<int64_t>(ls.tokens + ls.block_tokens, int64_t{p + 1} * P_);
      for (int64_t i = int64_t{p} * P_; i < end; ++i) {
        out[h].push_back(
            ls.InLayout(p) ? retriever::LayoutPosition(*ls.clusters, static_cast<int>(h), i) : i);
      }
    }
    std::sort(out[h].begin(), out[h].end());
  }
  return out;
}

absl::StatusOr<std::vector<PageKey>> DecodeWorker::Impl::PageKeys(SequenceId id, int layer) const {
  const Sequence* seq = Lookup(id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("unknown sequence ", id));
  if (layer < 0 || layer >= o_.num_layers) return absl::InvalidArgumentError("layer out of range");
  return seq->layers[layer].keys;
}

WorkerStats DecodeWorker::Impl::Stats() const {
  WorkerStats s;
  s.sequences = static_cast<int64_t>(seqs_.size());
  s.pool_slots_per_head = o_.pool_slots_per_head;
  s.pool_used = pool_.used();
  s.pool_evictions = pool_.evictions();
  s.pages_committed = committer_.committed();
  s.pages_reused = committer_.reused();
  s.layout_pages = layout_pages_written_;
  s.pool_bytes = pool_.used() * 2 * half_;
  for (int h = 0; h < kv_; ++h) s.held_head_pages += pool_.held(h);
  if (device_select_) {
    const int64_t row = int64_t{kv_} * d_ * 2 * 2 + 4;  // min and max rows, count
    s.summary_table_bytes = (o_.summary_slots - static_cast<int64_t>(free_sum_.size())) * row;
  }
  for (const auto& [id, seq] : seqs_) {
    for (const LayerState& ls : seq.layers) {
      if (ls.selector != nullptr) s.selector_host_bytes += ls.selector->HostBytes();
    }
  }
  return s;
}

std::vector<std::vector<int>> StreamingHeadsFromProfile(const retriever::StreamingProfile& profile,
                                                        uint32_t first_layer, int num_layers) {
  std::vector<std::vector<int>> heads(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    for (int h = 0; h < profile.num_kv_heads; ++h) {
      if (profile.is_streaming(static_cast<int32_t>(first_layer) + l, h)) heads[l].push_back(h);
    }
  }
  return heads;
}

// ---- DecodeWorker: the public face -----------------------------------------------------------

absl::StatusOr<std::unique_ptr<DecodeWorker>> DecodeWorker::Create(
    Store* store, std::unique_ptr<WorkerBackend> backend, const DecodeWorkerOptions& options) {
  if (store == nullptr) return absl::InvalidArgumentError("store is null");
  if (backend == nullptr) return absl::InvalidArgumentError("backend is null");
  if (absl::Status s = worker_internal::ValidateWorkerOptions(options); !s.ok()) return s;
  auto impl = std::make_unique<Impl>(store, std::move(backend), options);
  if (absl::Status s = impl->Init(); !s.ok()) return s;
  return std::unique_ptr<DecodeWorker>(new DecodeWorker(std::move(impl)));
}

DecodeWorker::DecodeWorker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DecodeWorker::~DecodeWorker() = default;

absl::StatusOr<OpenedSequence> DecodeWorker::Open(absl::Span<const int32_t> token_ids) {
  return impl_->Open(token_ids);
}
absl::Status DecodeWorker::Prefill(SequenceId id, int layer, const TensorView& k,
                                   const TensorView& v) {
  return impl_->Prefill(id, layer, k, v);
}
absl::Status DecodeWorker::PrefillAttend(SequenceId id, int layer, const TensorView& q,
                                         const TensorView& k, const TensorView& v,
                                         const TensorView& o) {
  return impl_->PrefillAttend(id, layer, q, k, v, o);
}
absl::StatusOr<SequenceId> DecodeWorker::Fork(SequenceId parent) { return impl_->Fork(parent); }
absl::Status DecodeWorker::Close(SequenceId id) { return impl_->Close(id); }
absl::StatusOr<StepPlan> DecodeWorker::Plan(absl::Span<const SequenceId> sequences,
                                            absl::Span<const int32_t> token_ids) {
  return impl_->Plan(sequences, token_ids);
}
absl::Status DecodeWorker::Attend(const StepPlan& plan, int layer, const TensorView& q,
                                  const TensorView& k, const TensorView& v, const TensorView& o) {
  return impl_->Attend(plan, layer, q, k, v, o);
}
absl::Status DecodeWorker::Replayed(const StepPlan& plan) { return impl_->Replayed(plan); }
absl::StatusOr<WorkerStepStats> DecodeWorker::Finish(const StepPlan& plan) {
  return impl_->Finish(plan);
}
absl::Status DecodeWorker::Flush() { return impl_->Flush(); }
absl::Status DecodeWorker::Extend(SequenceId id, absl::Span<const int32_t> token_ids) {
  return impl_->Extend(id, token_ids);
}
absl::Status DecodeWorker::Truncate(SequenceId id, int64_t tokens) {
  return impl_->Truncate(id, tokens);
}
absl::StatusOr<WorkerStepStats> DecodeWorker::AttendBlock(SequenceId id, int layer,
                                                          const TensorView& q, const TensorView& k,
                                                          const TensorView& v, const TensorView& o,
                                                          absl::Span<const uint8_t> keep_pages) {
  return impl_->AttendBlock(id, layer, q, k, v, o, keep_pages);
}
absl::Status DecodeWorker::CommitBlock(SequenceId id, int layer) {
  return impl_->CommitBlock(id, layer);
}
absl::StatusOr<int64_t> DecodeWorker::Length(SequenceId id, int layer) const {
  return impl_->Length(id, layer);
}
absl::StatusOr<std::vector<std::vector<int32_t>>> DecodeWorker::LastRows(SequenceId id,
                                                                         int layer) const {
  return impl_->LastRows(id, layer);
}
absl::StatusOr<std::vector<PageKey>> DecodeWorker::PageKeys(SequenceId id, int layer) const {
  return impl_->PageKeys(id, layer);
}
absl::StatusOr<std::vector<PageKey>> DecodeWorker::LayoutPageKeys(SequenceId id, int layer) const {
  return impl_->LayoutPageKeys(id, layer);
}
absl::StatusOr<std::vector<std::vector<int64_t>>> DecodeWorker::AttendedPositions(SequenceId id,
                                                                                  int layer) const {
  return impl_->AttendedPositions(id, layer);
}
WorkerStats DecodeWorker::Stats() const { return impl_->Stats(); }
const DecodeWorkerOptions& DecodeWorker::options() const { return impl_->options(); }

}  // namespace pagoda
