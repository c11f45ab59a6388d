// The decode worker's staged steps (decode_worker.h, StepPlan::capturable): a step in which no
// (sequence, layer) retrieves is planned whole at Plan — every layer's append, rows, slots,
// fetches and page table — and staged on the backend (WorkerBackend::StageLayers), so each Attend
// only enqueues its layer's kernels (WorkerBackend::AttendStaged) and the engine may capture the
// layer loop in a CUDA graph and replay it (Replayed). Filled pages are committed at Finish.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "decode_worker_impl.h"
#include "worker_select.h"

namespace pagoda {

using worker_internal::Clock;
using worker_internal::LayerState;
using worker_internal::Sequence;
using worker_internal::Since;

bool DecodeWorker::Impl::CanStage(absl::Span<const SequenceId> ids, int64_t need,
                                  int64_t open_pages) const {
  // Asked for (it gives up the overlap of each layer's host work with the device's). Quest selects
  // on the backend; a step of it between retrievals needs nothing from this step's queries. The
  // host policies' selectors read each step's query or key (late or not).
  if (!o_.capturable_steps || !device_select_) return false;
  // Every layer's pages stay put for the whole step (one epoch), not one layer's.
  if (need * o_.num_layers + open_pages > o_.pool_slots_per_head) return false;
  for (SequenceId id : ids) {
    for (const LayerState& ls : seqs_.at(id).layers) {
      if (worker_internal::BudgetCovers(o_, ls.tokens + 1)) continue;  // dense: no selection
      const bool due = ls.retrieved.empty() || !ls.trigger.has_value() || ls.boundary_seen;
      if (due) return false;
    }
  }
  return true;
}

absl::StatusOr<uint64_t> DecodeWorker::Impl::StageStep() {
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  WorkerStepStats& stats = step_stats_;
  std::vector<absl::Status>& status = step_status_;
  ++epoch_;  // one epoch for the step: nothing one layer attends is evicted for another
  const int L = o_.num_layers;
  std::vector<StagedLayer> layers(L);
  steady_.assign(B, 0);
  // Appends and rows of every layer, then every layer's slots at once (one task per KV head over
  // all layers: the heads' sub-pools are independent), then per layer fetches and its table.
  Clock::time_point t0 = Clock::now();
  for (int l = 0; l < L; ++l) {
    if (absl::Status s = AppendArgs(l, layers[l]); !s.ok()) return s;
  }
  Clock::time_point t1 = Clock::now();
  stats.append_s += std::chrono::duration<double>(t1 - t0).count();
  int64_t head_pages = 0;
  for (int l = 0; l < L; ++l) {
    for (int64_t b = 0; b < B; ++b) {
      if (!status[b].ok()) continue;
      LayerState& ls = seqs_[plan_seqs_[b]].layers[l];
      ls.prefetch.clear();
      if (worker_internal::DenseRows(o_, l, ls)) {
        ++stats.retrievals;  // as a dense row of an unstaged step counts
      } else if (absl::Status s = worker_internal::PageRows(o_, l, ls); !s.ok()) {
        status[b] = s;
      }
    }
  }
  for (int l = 0; l < L; ++l) head_pages += RowHeadPages(l, status);
  Clock::time_point t2 = Clock::now();
  stats.select_s += std::chrono::duration<double>(t2 - t1).count();
  staged_res_.resize(L);
  for (auto& res : staged_res_) res.resize(kv_);
  const int64_t shared_before = pool_.shared();
  RunHeads(head_pages, [&](int64_t h) {
    for (int l = 0; l < L; ++l) ResolveRows(l, static_cast<int>(h), status, staged_res_[l][h]);
  });
  stats.shared_head_pages += pool_.shared() - shared_before;
  for (int l = 0; l < L; ++l) {
    StagedLayer& x = layers[l];
    Clock::time_point t3 = Clock::now();
    head_res_.swap(staged_res_[l]);  // the layer's slots where JoinLayer and BuildTable read them
    std::vector<HeadFetch> fetches;
    std::vector<FetchOrigin> origins;
    if (absl::Status s = JoinLayer(stats, fetches, origins); !s.ok()) return s;
    const double resolved_in = (l == 0 ? Since(t2) : Since(t3));
    stats.fetch_s += resolved_in;
    stats.resolve_s += resolved_in;
    if (!fetches.empty()) Fetch(l, origins, fetches, status, stats);
    BuildTable(l, stats, x.indptr, x.indices, x.last_page_len);
    head_res_.swap(staged_res_[l]);
    if (o_.boundary_trigger) {  // this step's queries, for the trigger at the next Plan
      x.q_tag = l;
      for (int64_t b = 0; b < B; ++b) q_pending_[l].push_back({plan_seqs_[b], false});
    }
  }
  return backend_->StageLayers(layers);
}

absl::Status DecodeWorker::Impl::AttendStagedLayer(int layer, const TensorView& q,
                                                   const TensorView& k, const TensorView& v,
                                                   const TensorView& o) {
  const int64_t B = static_cast<int64_t>(plan_seqs_.size());
  if (backend_->device() == Device::kCpu) {  // host inputs: no inf / NaN (as an unstaged step)
    for (auto [t, rows, what] :
         {std::tuple{&q, o_.q_heads, "q"}, std::tuple{&k, kv_, "k"}, std::tuple{&v, kv_, "v"}}) {
      qh_.resize(static_cast<size_t>(B) * rows * d_);
      if (absl::Status s = backend_->CopyToHost(*t, absl::MakeSpan(qh_)); !s.ok()) return s;
      const TensorView h = TensorView::Contiguous(qh_.data(), o_.layout.dtype, {B, rows, d_});
      if (absl::Status s = worker_internal::CheckFinite(h, o_.layout.dtype, what); !s.ok()) {
        return s;
      }
    }
  }
  Clock::time_point t0 = Clock::now();
  absl::Status s = backend_->AttendStaged(layer, q, k, v, o);
  if (s.code() == absl::StatusCode::kInvalidArgument) return s;  // nothing was enqueued
  layer_done_[layer] = true;
  step_stats_.attend_s += Since(t0);
  if (!s.ok()) {
    for (SequenceId id : plan_seqs_) {
      if (seqs_[id].failed.ok()) seqs_[id].failed = s;
    }
  }
  return s;
}

absl::Status DecodeWorker::Impl::Replayed(const StepPlan& plan) {
  if (plan_id_ == 0 || plan.id != plan_id_ || plan.sequences != plan_seqs_) {
    return absl::InvalidArgumentError("not the planned step");
  }
  if (!staged_) return absl::FailedPreconditionError("the planned step is not capturable");
  if (std::find(layer_done_.begin(), layer_done_.end(), true) != layer_done_.end()) {
    return absl::FailedPreconditionError("layers of this step were attended");
  }
  layer_done_.assign(o_.num_layers, true);
  return absl::OkStatus();
}

}  // namespace pagoda
