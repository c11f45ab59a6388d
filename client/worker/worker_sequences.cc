// The decode worker's sequences (DecodeWorker::Impl): Open (the longest cached prefix, loaded
// layer by layer), Prefill (a prompt's K/V as store pages with their summaries and checksums,
// committed asynchronously; louiskv's selector and cluster-ordered layout pages once a prompt's
// pages are all written), Fork (a shared prefix is shared pages) and Close.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "decode_worker_impl.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/reference.h"
#include "pagoda/kvstore/prefix.h"
#include "worker_select.h"
#include "worker_state.h"

namespace pagoda {

using worker_internal::kLayoutFormat;
using worker_internal::kLayoutPageKeySeed;
using worker_internal::LayerState;
using worker_internal::Rows;
using worker_internal::Sequence;

absl::Status DecodeWorker::Impl::StagePages(SequenceId id, Sequence& seq, int layer,
                                            const TensorView& k, const TensorView& v) {
  LayerState& ls = seq.layers[layer];
  const int32_t pages = static_cast<int32_t>(k.shape[0] / P_);
  // Device selection: the pages' summaries from the rows where they are (the caller checked the
  // table has room); a strided k is summarized here from the written pages instead.
  std::vector<int32_t> sum_slots;
  std::vector<uint16_t> mins, maxs;
  const bool contiguous = k.strides[2] == 1 && k.strides[1] == d_ && k.strides[0] == kv_ * d_;
  if (device_select_) {
    for (int32_t i = 0; i < pages; ++i) sum_slots.push_back(NewSummarySlot(ls));
    if (contiguous) {
      if (absl::Status s = backend_->SummarizeTokens(k, sum_slots); !s.ok()) return s;
    }
  }
  // Pages go in groups: phase one of each page's two-phase write (a host-tier slot reserved under
  // its chained key) until the tier has no slot left or the chunk is done, then the backend writes
  // the group's pages into their slots (on CUDA straight from device memory into the mapped
  // arena) with their head checksums, then the committer commits them (phase two, off this
  // thread), after which the tier may move them to SSD. A tier full of uncommitted pages waits
  // for the committer once before giving up. A page the store holds already (a shared prefix)
  // holds these bytes: it is checksummed only.
  std::vector<PageKey> keys(pages);
  std::vector<WriteOptions> wos(pages);
  std::vector<int64_t> offsets(pages, -1);
  std::vector<uint64_t> reserved(pages, 0);
  auto abort_rest = [&](absl::Status s) {
    for (uint64_t r : reserved) {
      if (r != 0) (void)store_->Abort(r);
    }
    return s;
  };
  const int64_t first = static_cast<int64_t>(ls.keys.size());
  const bool keep_keys = !ls.ready && !device_select_;
  const bool host_pages = keep_keys || (device_select_ && !contiguous);
  uint8_t* const arena = store_->HostArenaInfo().base;
  std::vector<uint64_t> sums(static_cast<size_t>(pages) * kv_);
  int32_t i0 = 0;
  bool drained = false;
  while (i0 < pages) {
    int32_t i1 = i0;
    for (; i1 < pages; ++i1) {
      const int64_t p = first + i1;
      keys[i1] = ChainPageKey(p == 0 ? PageKey{} : (i1 == 0 ? ls.keys[p - 1] : keys[i1 - 1]),
                              absl::MakeConstSpan(seq.tokens).subspan(p * P_, P_), Extra(layer));
      wos[i1].stream_id = ls.stream_id;
      wos[i1].pin = o_.pin_prompt && (p + 1) * P_ <= seq.prompt_len;
      absl::StatusOr<Reservation> r = store_->Reserve(o_.tenant, keys[i1], o_.layout, wos[i1]);
      if (r.ok()) {
        offsets[i1] = static_cast<int64_t>(r->arena_offset);
        reserved[i1] = r->id;
      } else if (absl::IsAlreadyExists(r.status())) {
        if (wos[i1].pin) {
          if (absl::Status s = store_->Pin(o_.tenant, keys[i1]); !s.ok()) return abort_rest(s);
        }
      } else if (absl::IsResourceExhausted(r.status()) && i1 > i0) {
        break;  // write and commit what is reserved, then go on
      } else if (absl::IsResourceExhausted(r.status()) && !drained) {
        DrainCommits();  // earlier pages committed can leave the tier
        drained = true;
        --i1;
      } else {
        return abort_rest(r.status());
      }
    }
    drained = false;
    const int32_t m = i1 - i0;
    if (absl::Status s = backend_->AssemblePages(
            Rows(k, int64_t{i0} * P_, int64_t{m} * P_), Rows(v, int64_t{i0} * P_, int64_t{m} * P_),
            absl::MakeConstSpan(offsets).subspan(i0, m),
            absl::MakeSpan(sums).subspan(static_cast<size_t>(i0) * kv_,
                                         static_cast<size_t>(m) * kv_));
        !s.ok()) {
      return abort_rest(s);
    }
    if (o_.prefill_to_pool) {
      if (absl::Status s = PagesToPool(k, v, i0, i1, keys, ls, first); !s.ok())
        return abort_rest(s);
    }
    // What the host reads of the pages (host selection keeps the prompt's keys; a strided k's
    // summaries), then phase two by the committer.
    for (int32_t i = i0; i < i1; ++i) {
      if (host_pages) {
        const uint8_t* page = arena + offsets[i];
        if (offsets[i] < 0) {  // a stored page: read back (verified) from the store
          page_scratch_.resize(o_.layout.PageBytes());
          auto info = store_->Get(o_.tenant, keys[i], absl::MakeSpan(page_scratch_));
          if (!info.ok()) return abort_rest(info.status());
          page = page_scratch_.data();
        }
        if (device_select_ && !contiguous) PageMinMax(page, mins, maxs);
        for (int h = 0; h < kv_ && keep_keys; ++h) {
          KeepPromptRows(ls, h, page + h * half_, page + (kv_ + h) * half_, P_);
        }
      }
      ls.sums.insert(ls.sums.end(), sums.begin() + int64_t{i} * kv_,
                     sums.begin() + int64_t{i + 1} * kv_);
      ls.keys.push_back(keys[i]);
      if (wos[i].pin) ls.pinned = static_cast<int32_t>(first + i + 1);
      if (reserved[i] != 0) {
        // Reserved, its segment cannot change owner: the generation read now is the page's.
        const uint64_t at = static_cast<uint64_t>(offsets[i]);
        ls.SetHint(static_cast<int32_t>(first + i), {at, store_->HostSegmentGeneration(at)});
        committer_.EnqueueCommit(id, reserved[i], o_.layout.PageBytes());
        reserved[i] = 0;
      }
      ls.tokens += P_;
    }
    i0 = i1;
  }
  if (device_select_ && !contiguous) {
    return backend_->WriteSummaries(sum_slots, mins, maxs, std::vector<int32_t>(pages, P_));
  }
  return absl::OkStatus();
}

absl::Status DecodeWorker::Impl::StartSelector(SequenceId id, LayerState& ls, int layer) {
  float trigger_threshold = o_.boundary_threshold;
  if (!o_.layer_thresholds.empty()) trigger_threshold = o_.layer_thresholds[layer];
  if (!device_select_) {
    // The open page's keys (and values for louiskv's layout) are in the pool only: read them.
    const int64_t tail_tokens = ls.tokens - static_cast<int64_t>(ls.keys.size()) * P_;
    if (tail_tokens > 0) {
      std::vector<HeadSlot> heads;
      for (int h = 0; h < kv_; ++h) heads.push_back({h, ls.tail[h]});
      std::vector<uint8_t> bytes(kv_ * 2 * half_);
      if (absl::Status s = backend_->ReadHeads(heads, absl::MakeSpan(bytes)); !s.ok()) return s;
      for (int h = 0; h < kv_; ++h) {  // slot bytes: K then V per head
        const uint8_t* slot = bytes.data() + h * 2 * half_;
        KeepPromptRows(ls, h, slot, slot + half_, tail_tokens);
      }
    }
    std::vector<uint16_t> keys;
    keys.reserve(static_cast<size_t>(kv_) * ls.prompt_keys[0].size());
    for (int h = 0; h < kv_; ++h)
      keys.insert(keys.end(), ls.prompt_keys[h].begin(), ls.prompt_keys[h].end());
    if (ls.selector != nullptr) {  // an extended sequence (Extend): the new rows join its selector
      const int64_t rows = static_cast<int64_t>(ls.prompt_keys[0].size()) / d_;
      if (rows > 0) {
        if (absl::Status s = ls.selector->Append(keys, rows); !s.ok()) return s;
      }
      ls.prompt_keys.assign(kv_, {});
      ls.ready = true;
      return absl::OkStatus();
    }
    retriever::SelectorOptions sel = worker_internal::SelectorShape(o_);
    if (!o_.layer_streaming_heads.empty()) sel.streaming_kv_heads = o_.layer_streaming_heads[layer];
    if (!o_.layer_thresholds.empty()) sel.boundary_threshold = trigger_threshold;
    absl::StatusOr<std::unique_ptr<retriever::Selector>> selector;
    if (layout_pages_) {
      // k-means on the backend (the device's kernels on CUDA; the reference on the CPU).
      auto clusters = retriever::ClusterPrompt(
          sel, keys, ls.tokens,
          [this](const kernels::KMeansParams& p, int iters) { return backend_->KMeans(p, iters); });
      if (!clusters.ok()) return clusters.status();
      ls.clusters = *std::move(clusters);
      if (absl::Status s = WriteLayoutPages(id, ls, layer); !s.ok()) return s;
      selector = retriever::MakeBoundarySelector(sel, ls.clusters);
    } else {
      selector = retriever::MakeSelector(o_.policy, sel);
    }
    if (!selector.ok()) return selector.status();
    if (absl::Status s = (*selector)->Prefill(keys, ls.tokens); !s.ok()) return s;
    ls.selector = std::move(*selector);
  }
  ls.prompt_keys.assign(kv_, {});
  ls.prompt_values.assign(kv_, {});
  if (o_.boundary_trigger && o_.policy != retriever::Policy::kBoundary && !ls.trigger) {
    auto trigger = retriever::BoundaryTrigger::Create(o_.q_heads, d_, trigger_threshold);
    if (!trigger.ok()) return trigger.status();
    ls.trigger.emplace(std::move(*trigger));
  }
  ls.ready = true;
  return absl::OkStatus();
}

absl::Status DecodeWorker::Impl::PagesToPool(const TensorView& k, const TensorView& v, int32_t i0,
                                             int32_t i1, const std::vector<PageKey>& keys,
                                             LayerState& ls, int64_t first) {
  std::vector<int32_t> slots, positions;
  ls.SizeResidency(kv_);
  int32_t i = i0;
  for (; i < i1; ++i) {
    bool room = true;
    for (int h = 0; h < kv_ && room; ++h) room = pool_.Free(h) > 0;
    if (!room) break;
    std::vector<int32_t> page(kv_);
    for (int h = 0; h < kv_; ++h) {
      page[h] = pool_.Find(keys[i], h, epoch_);
      if (page[h] < 0) page[h] = pool_.Insert(keys[i], h, epoch_);  // free: nothing is evicted
      if (page[h] >= 0) {
        ls.Remember(h, static_cast<int32_t>(first + i), page[h], pool_.Generation(h, page[h]));
      }
    }
    for (int t = 0; t < P_; ++t) {  // every row of the page names the page's slots
      slots.insert(slots.end(), page.begin(), page.end());
      positions.push_back(t);
    }
  }
  if (positions.empty()) return absl::OkStatus();
  const int64_t rows = int64_t{i - i0} * P_;
  return backend_->WriteTokens(Rows(k, int64_t{i0} * P_, rows), Rows(v, int64_t{i0} * P_, rows),
                               slots, positions);
}

absl::Status DecodeWorker::Impl::WriteLayoutPages(SequenceId id, LayerState& ls, int layer) {
  const retriever::PromptClusters& c = *ls.clusters;
  ls.layout_first = c.sink_tokens / P_;
  ls.layout_end = static_cast<int32_t>(c.natural_begin / P_);
  ls.layout_keys.clear();
  ls.layout_sums.clear();
  ls.layout_hints.clear();
  ls.ForgetResidency();  // page ids in the layout's range name its pages from now on
  if (ls.layout_end <= ls.layout_first) {
    ls.layout_first = ls.layout_end = 0;
    return absl::OkStatus();
  }
  if (c.sink_tokens % P_ != 0) return absl::InternalError("clusters start inside a page");
  // The key commits to exactly what the page's bytes are: which positions each KV head holds
  // (its own "tokens") of which natural pages (the chain key of the last clustered one covers
  // their tokens, model, layer and salt), in this format; its own seed keeps it apart from natural
  // keys. Equal prompts clustered alike share layout pages, and two workers that cluster a prompt
  // differently (another backend's rounding, other options) write different keys, never one key
  // with two contents.
  const PageKey parent = ls.keys[ls.layout_end - 1];
  std::vector<int32_t> meta;
  const size_t row = static_cast<size_t>(d_) * 2;
  for (int32_t p = ls.layout_first; p < ls.layout_end; ++p) {
    meta.assign(1, kLayoutFormat);
    std::vector<uint8_t> page = committer_.TakeBuffer();  // every byte written below
    for (int h = 0; h < kv_; ++h) {
      const int32_t* pos = &c.members[h][static_cast<size_t>(p) * P_ - c.sink_tokens];
      meta.insert(meta.end(), pos, pos + P_);
      for (int t = 0; t < P_; ++t) {
        const size_t at = static_cast<size_t>(pos[t]) * d_;
        std::memcpy(page.data() + h * half_ + t * row, &ls.prompt_keys[h][at], row);
        std::memcpy(page.data() + (kv_ + h) * half_ + t * row, &ls.prompt_values[h][at], row);
      }
    }
    const PageKey key = ChainPageKey(parent, meta, Extra(layer), kLayoutPageKeySeed);
    const size_t at = ls.layout_sums.size();
    ls.layout_sums.resize(at + kv_);
    HeadSums(page.data(), &ls.layout_sums[at]);
    ls.layout_keys.push_back(key);
    committer_.Enqueue(id, key, std::move(page));
    ++layout_pages_written_;
  }
  return absl::OkStatus();
}

absl::Status DecodeWorker::Impl::LoadCachedPages(Sequence& seq, int layer, int64_t pages) {
  LayerState& ls = seq.layers[layer];
  const std::vector<PageKey> keys = ChainPageKeys(
      absl::MakeConstSpan(seq.tokens).subspan(0, pages * P_), o_.layout.page_tokens, Extra(layer));
  std::vector<uint8_t> page(o_.layout.PageBytes());
  std::vector<uint16_t> mins, maxs;
  for (int64_t p = 0; p < pages; ++p) {
    auto info = store_->Get(o_.tenant, keys[p], absl::MakeSpan(page));  // verified by the store
    if (!info.ok()) return info.status();
    if (info->layout != o_.layout) {
      return absl::FailedPreconditionError("a cached page has another layout");
    }
    TakePage(ls, page.data(), /*keep_keys=*/!device_select_);
    if (device_select_) PageMinMax(page.data(), mins, maxs);
    ls.keys.push_back(keys[p]);
  }
  ls.tokens = pages * P_;
  return device_select_ ? AddSummaries(ls, mins, maxs) : absl::OkStatus();
}

absl::StatusOr<OpenedSequence> DecodeWorker::Impl::Open(absl::Span<const int32_t> token_ids) {
  if (plan_id_ != 0) return absl::FailedPreconditionError("Open inside a step");
  if (token_ids.empty()) return absl::InvalidArgumentError("the prompt is empty");
  DrainCommits();
  const int64_t n = static_cast<int64_t>(token_ids.size());
  int64_t pages = (n - 1) / P_;  // the last token is always the caller's to prefill
  for (int l = 0; l < o_.num_layers && pages > 0; ++l) {
    const std::vector<PageKey> keys =
        ChainPageKeys(token_ids.subspan(0, pages * P_), o_.layout.page_tokens, Extra(l));
    pages = std::min<int64_t>(pages, store_->LongestCachedPrefix(o_.tenant, keys));
  }
  Sequence seq;
  seq.tokens.assign(token_ids.begin(), token_ids.end());
  seq.prompt_len = n;
  // A page may leave the store between the lookup and the read: retry with what could be read.
  for (int attempt = 0;; ++attempt) {
    Release(seq);  // summary slots of an earlier attempt
    seq.layers.clear();
    seq.layers.resize(o_.num_layers);
    for (LayerState& ls : seq.layers) {
      ls.tail.assign(kv_, -1);
      ls.prompt_keys.assign(kv_, {});
      ls.prompt_values.assign(kv_, {});
    }
    absl::Status failed;
    int l = 0;
    for (; l < o_.num_layers && failed.ok(); ++l) failed = LoadCachedPages(seq, l, pages);
    if (failed.ok()) break;
    if (!absl::IsNotFound(failed) && !absl::IsDataLoss(failed)) {
      Release(seq);
      return failed;
    }
    if (attempt == 2)
      pages = 0;
    else
      pages = std::min<int64_t>(pages, static_cast<int64_t>(seq.layers[l - 1].keys.size()));
  }
  const SequenceId id = next_id_++;
  if (o_.pin_prompt) {  // the cached prompt pages stay while the sequence is open
    for (int l = 0; l < o_.num_layers; ++l) {
      LayerState& ls = seq.layers[l];
      for (; ls.pinned < static_cast<int32_t>(ls.keys.size()); ++ls.pinned) {
        if (absl::Status s = store_->Pin(o_.tenant, ls.keys[ls.pinned]); !s.ok()) {
          Release(seq);
          return s;
        }
      }
    }
  }
  if (o_.stream.has_value()) {
    for (int l = 0; l < o_.num_layers; ++l) {
      const uint64_t stream = o_.stream_base + id * o_.num_layers + l;
      if (absl::Status s = store_->OpenStream(o_.tenant, stream, *o_.stream); !s.ok()) {
        Release(seq);
        return s;
      }
      seq.layers[l].stream_id = stream;
    }
  }
  seqs_.emplace(id, std::move(seq));
  return OpenedSequence{id, pages * P_};
}

absl::Status DecodeWorker::Impl::Prefill(SequenceId id, int layer, const TensorView& k,
                                         const TensorView& v) {
  auto found = Usable(id, layer, "Prefill");
  if (!found.ok()) return found.status();
  Sequence& seq = **found;
  LayerState& ls = seq.layers[layer];
  const int64_t rows = k.ndim == 3 ? k.shape[0] : -1;
  for (const auto& [t, what] : {std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    if (absl::Status s =
            CheckTensor(*t, what, {rows, kv_, d_}, o_.layout.dtype, backend_->device());
        !s.ok()) {
      return s;
    }
  }
  if (k.device == Device::kCpu) {  // device tensors are checked where the host reads them
    if (absl::Status s = worker_internal::CheckFinite(k, o_.layout.dtype, "k"); !s.ok()) return s;
    if (absl::Status s = worker_internal::CheckFinite(v, o_.layout.dtype, "v"); !s.ok()) return s;
  }
  if (rows < 1 || ls.tokens + rows > seq.prompt_len) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has ",
                                                   seq.prompt_len - ls.tokens,
                                                   " prompt tokens left to prefill, got ", rows));
  }
  // At most one open page per head at a time: one owned slot per head, checked before writing
  // (needed only when the rows leave a page open; whole pages enter the pool only with
  // prefill_to_pool, and only its free slots).
  const bool leaves_open_page = (ls.tokens + rows) % P_ != 0;
  for (int h = 0; h < kv_; ++h) {
    if (ls.tail[h] < 0 && leaves_open_page && pool_.Available(h) < 1) {
      return absl::ResourceExhaustedError("the attention pool has no slot for an open page");
    }
  }
  if (device_select_) {  // every page the rows open needs a summary slot
    const int64_t opened =
        (ls.tokens + rows + P_ - 1) / P_ - static_cast<int64_t>(ls.sum_slots.size());
    if (opened > static_cast<int64_t>(free_sum_.size())) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the selection summary table has ", free_sum_.size(), " free slots, this prefill needs ",
          opened, " (raise DecodeWorkerOptions::summary_slots or close sequences)"));
    }
  }
  // Rows of the open page go through the pool (which holds its first tokens, and where decode
  // appends); whole pages in between are staged to the host once per call, assembled there and
  // queued for the store (and with prefill_to_pool, copied into free pool slots).
  auto pool_rows = [&](int64_t r, int64_t m) -> absl::Status {
    ++epoch_;  // pages this prefill committed earlier may be evicted for the next one
    if (absl::Status s = EnsureTail(ls); !s.ok()) return s;
    const int64_t at = ls.tokens % P_;
    std::vector<int32_t> slots, positions;
    for (int64_t i = 0; i < m; ++i) {
      slots.insert(slots.end(), ls.tail.begin(), ls.tail.end());
      positions.push_back(static_cast<int32_t>(at + i));
    }
    if (absl::Status s = backend_->WriteTokens(Rows(k, r, m), Rows(v, r, m), slots, positions);
        !s.ok()) {
      return s;
    }
    if (device_select_) {  // the page's summary, from the rows just written, on the backend
      LayerState* one[1] = {&ls};
      const int32_t from[1] = {static_cast<int32_t>(at)}, to[1] = {static_cast<int32_t>(at + m)};
      if (absl::Status s = FoldOpenPages(one, from, to); !s.ok()) return s;
    }
    ls.tokens += m;
    return ls.tokens % P_ == 0 ? CommitTail(id, seq, layer) : absl::OkStatus();
  };
  int64_t r = 0;
  absl::Status written;
  if (ls.tokens % P_ != 0) {  // complete the open page
    const int64_t m = std::min<int64_t>(rows, P_ - ls.tokens % P_);
    written = pool_rows(0, m);
    r = m;
  }
  const int64_t whole = (rows - r) / P_ * P_;
  if (written.ok() && whole > 0) {
    written = StagePages(id, seq, layer, Rows(k, r, whole), Rows(v, r, whole));
    r += whole;
  }
  if (written.ok() && r < rows) written = pool_rows(r, rows - r);
  if (!written.ok()) {
    seq.failed = written;
    return written;
  }
  if (ls.tokens == seq.prompt_len) {
    if (absl::Status s = StartSelector(id, ls, layer); !s.ok()) {
      seq.failed = s;
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SequenceId> DecodeWorker::Impl::Fork(SequenceId parent_id) {
  if (plan_id_ != 0) return absl::FailedPreconditionError("Fork inside a step");
  auto found = Find(parent_id);
  if (!found.ok()) return absl::InvalidArgumentError(found.status().message());
  const Sequence& parent = **found;
  if (!parent.failed.ok()) return absl::FailedPreconditionError("the parent failed earlier");
  if (o_.stream.has_value()) {
    return absl::FailedPreconditionError("a sequence on a rolling-window stream cannot fork");
  }
  for (const LayerState& ls : parent.layers) {
    if (!ls.ready) return absl::FailedPreconditionError("the parent is not prefilled");
  }
  DrainCommits();
  // The id now, so pages the child queues (louiskv's layout) fail this id, never a later one's.
  const SequenceId id = next_id_++;
  Sequence child;
  child.tokens = parent.tokens;
  child.prompt_len = parent.prompt_len;
  child.layers.resize(o_.num_layers);
  ++epoch_;
  auto undo = [&](absl::Status s) {
    for (LayerState& ls : child.layers) {
      for (int h = 0; h < kv_ && !ls.tail.empty(); ++h) pool_.ReleaseOwned(h, ls.tail[h]);
    }
    Release(child);
    return s;
  };
  for (int l = 0; l < o_.num_layers; ++l) {
    const LayerState& from = parent.layers[l];
    LayerState& to = child.layers[l];
    to.tokens = from.tokens;
    to.keys = from.keys;
    to.sums = from.sums;
    to.tail.assign(kv_, -1);
    to.prompt_keys.assign(kv_, {});
    to.prompt_values.assign(kv_, {});
    const bool open_page = from.tokens % P_ != 0;
    if (open_page) {
      if (absl::Status s = EnsureTail(to); !s.ok()) return undo(s);
      std::vector<HeadSlot> src, dst;
      for (int h = 0; h < kv_; ++h) {
        src.push_back({h, from.tail[h]});
        dst.push_back({h, to.tail[h]});
      }
      if (absl::Status s = backend_->CopyHeads(src, dst); !s.ok()) return undo(s);
    }
    if (device_select_) {
      // The full pages' summaries are the parent's (copied on the backend); the open page's is
      // folded from its copied slots.
      const size_t full = to.keys.size();
      if (full + (open_page ? 1 : 0) > free_sum_.size()) {
        return undo(absl::ResourceExhaustedError(
            absl::StrCat("the selection summary table is full (", o_.summary_slots,
                         " slots; raise DecodeWorkerOptions::summary_slots or close sequences)")));
      }
      std::vector<int32_t> src(from.sum_slots.begin(), from.sum_slots.begin() + full), dst;
      for (size_t i = 0; i < full; ++i) dst.push_back(NewSummarySlot(to));
      if (absl::Status s = backend_->CopySummaries(src, dst); !s.ok()) return undo(s);
      if (open_page) {
        LayerState* one[1] = {&to};
        const int32_t first[1] = {0}, upto[1] = {static_cast<int32_t>(to.tokens % P_)};
        if (absl::Status s = FoldOpenPages(one, first, upto); !s.ok()) return undo(s);
      }
    } else {
      // The host selector has no copy: rebuild it from the pages (verified store reads).
      std::vector<uint8_t> page(o_.layout.PageBytes());
      for (const PageKey& key : to.keys) {
        auto info = store_->Get(o_.tenant, key, absl::MakeSpan(page));
        if (!info.ok()) return undo(info.status());
        for (int h = 0; h < kv_; ++h) {
          KeepPromptRows(to, h, page.data() + h * half_, page.data() + (kv_ + h) * half_, P_);
        }
      }
    }
    // louiskv: the child clusters its whole context as its prompt (its own layout pages).
    if (absl::Status s = StartSelector(id, to, l); !s.ok()) return undo(s);
    if (!layout_pages_) to.rows = from.rows;        // the parent's rows address the parent's layout
    for (; to.pinned < from.pinned; ++to.pinned) {  // the child holds its own pins
      if (absl::Status s = store_->Pin(o_.tenant, to.keys[to.pinned]); !s.ok()) return undo(s);
    }
  }
  seqs_.emplace(id, std::move(child));
  return id;
}

void DecodeWorker::Impl::Release(Sequence& seq) {
  for (LayerState& ls : seq.layers) {
    Unhold(ls);
    for (int32_t slot : ls.sum_slots) {
      slot_page_[slot] = -1;
      free_sum_.push_back(slot);
    }
    ls.sum_slots.clear();
    for (int32_t p = 0; p < ls.pinned; ++p) (void)store_->Unpin(o_.tenant, ls.keys[p]);
    ls.pinned = 0;
    if (ls.stream_id != 0) (void)store_->CloseStream(o_.tenant, ls.stream_id);
    ls.stream_id = 0;
  }
}

absl::Status DecodeWorker::Impl::Close(SequenceId id) {
  if (plan_id_ != 0) return absl::FailedPreconditionError("Close inside a step");
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrCat("unknown sequence ", id));
  DrainCommits();  // the pins of queued prompt pages must exist before they are undone
  for (LayerState& ls : it->second.layers) {
    for (int h = 0; h < kv_; ++h) pool_.ReleaseOwned(h, ls.tail[h]);
    ReleaseBlock(ls);
  }
  Release(it->second);
  seqs_.erase(it);
  return absl::OkStatus();
}

}  // namespace pagoda
