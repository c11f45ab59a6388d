// The decode worker's prefill attention (DecodeWorker::PrefillAttend, decode_worker.h): a chunk's
// causal attention over the sequence's pages, read from the attention pool.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "decode_worker_impl.h"
#include "worker_select.h"

namespace pagoda {
namespace {

// Which pages of a (sequence, layer) one KV head reads for a chunk of queries at positions
// [context, len): a dense head every page; a streaming head its sink pages and the pages from the
// first query's window on (the keys the block-sparse prefill kernel reads for that head).
struct HeadPages {
  bool streaming = false;
  int64_t sink_pages = 0, window_first = 0;
  bool Reads(int64_t p) const { return !streaming || p < sink_pages || p >= window_first; }
};

}  // namespace

absl::Status DecodeWorker::Impl::PrefillAttend(SequenceId id, int layer, const TensorView& q,
                                               const TensorView& k, const TensorView& v,
                                               const TensorView& o) {
  // Everything that can be refused is checked before Prefill writes anything.
  auto found = Usable(id, layer, "PrefillAttend");
  if (!found.ok()) return found.status();
  worker_internal::Sequence& seq = **found;
  const DType dt = o_.layout.dtype;
  const absl::StatusOr<int64_t> chunk = ChunkRows(q, k, v, o);
  if (!chunk.ok()) return chunk.status();
  const int64_t n = *chunk;
  if (q.device == Device::kCpu) {
    if (absl::Status s = worker_internal::CheckFinite(q, dt, "q"); !s.ok()) return s;
  }
  worker_internal::LayerState& ls = seq.layers[layer];
  const int64_t context = ls.tokens, len = context + n;
  if (n < 1 || len > seq.prompt_len) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has ",
                                                   seq.prompt_len - ls.tokens,
                                                   " prompt tokens left to prefill, got ", n));
  }
  const int64_t pages = (len + P_ - 1) / P_;
  const bool open_last = len % P_ != 0;                 // the last page stays open (owned slot)
  const int64_t first_whole = (context + P_ - 1) / P_;  // chunk pages: [first_whole, whole_end)
  const int64_t whole_end = len / P_;
  const int64_t sink_tokens = int64_t{o_.streaming_sink_pages} * P_;
  const int64_t window_tokens = int64_t{o_.streaming_window_pages} * P_;
  std::vector<uint8_t> streaming(kv_, 0);
  if (layer < static_cast<int>(o_.layer_streaming_heads.size())) {
    for (int h : o_.layer_streaming_heads[layer]) streaming[h] = 1;
  }
  std::vector<HeadPages> reads(kv_);
  for (int h = 0; h < kv_; ++h) {
    reads[h].streaming = streaming[h] != 0;
    reads[h].sink_pages = (sink_tokens + P_ - 1) / P_;
    reads[h].window_first = std::max<int64_t>(0, context - window_tokens + 1) / P_;
    // Slots the call holds at once: every page the head reads and every whole chunk page (they
    // enter the pool for every head), the open last page excepted (its slot is owned).
    int64_t need = 0;
    for (int64_t p = 0; p < pages; ++p) {
      const bool chunk = p >= first_whole && p < whole_end;
      if ((reads[h].Reads(p) || chunk) && !(open_last && p == pages - 1)) ++need;
    }
    const int32_t room = pool_.Available(h) - (ls.tail[h] < 0 && open_last ? 1 : 0);
    if (need > room) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "prefill attention of layer ", layer, " KV head ", h, " reads ", need,
          " head-pages at once, the pool has room for ", room,
          " (raise pool_slots_per_head, prefill in smaller chunks or make it a streaming head)"));
    }
  }

  // 1. The write, as Prefill (pages to the store, the open page into the pool).
  if (absl::Status s = Prefill(id, layer, k, v); !s.ok()) return s;

  // 2. A slot for every head-page the kernel reads: in place if resident; chunk pages written from
  // k / v; earlier pages gathered from the store and verified.
  ++epoch_;  // everything resolved below is used in this epoch: none of it is evicted for the rest
  std::vector<int32_t> slot(static_cast<size_t>(pages) * kv_, -1);  // [page][head]
  std::vector<int32_t> write_slots, write_positions;
  std::vector<HeadFetch> fetches;
  std::vector<FetchOrigin> origins;
  for (int64_t p = 0; p < pages; ++p) {
    const bool chunk = p >= first_whole && p < whole_end;
    for (int h = 0; h < kv_; ++h) {
      int32_t& s = slot[p * kv_ + h];
      if (open_last && p == pages - 1) {
        s = ls.tail[h];
        continue;
      }
      if (!reads[h].Reads(p) && !chunk) continue;
      const PageKey& key = ls.keys[p];
      s = pool_.Find(key, h, epoch_);
      if (s >= 0) continue;
      s = pool_.Insert(key, h, epoch_);
      if (s < 0) {  // the room was checked above
        seq.failed = absl::InternalError("the pool overcommitted despite the prefill check");
        return seq.failed;
      }
      if (!chunk) {
        fetches.push_back({{h, s}, 0, 0, ls.SumOf(static_cast<int32_t>(p), h, kv_)});
        const int32_t page = static_cast<int32_t>(p);
        origins.push_back({0, key, ls.InLayout(page) ? nullptr : &ls, page});
      }
    }
  }
  // Chunk pages new to the pool: their rows, one WriteTokens for the chunk (pages already
  // resident under the same key hold the same bytes and are rewritten with them).
  for (int64_t p = first_whole; p < whole_end; ++p) {
    for (int t = 0; t < P_; ++t) {
      write_slots.insert(write_slots.end(), slot.begin() + p * kv_, slot.begin() + (p + 1) * kv_);
      write_positions.push_back(t);
    }
  }
  if (!write_positions.empty()) {
    const int64_t first_row = first_whole * P_ - context;
    const int64_t rows = static_cast<int64_t>(write_positions.size());
    absl::Status s = backend_->WriteTokens(worker_internal::Rows(k, first_row, rows),
                                           worker_internal::Rows(v, first_row, rows), write_slots,
                                           write_positions);
    if (!s.ok()) {
      seq.failed = s;
      return s;
    }
  }
  if (!fetches.empty()) {
    DrainCommits();  // earlier chunks' pages may still be on their way to the store
    if (!seq.failed.ok()) return seq.failed;
    std::vector<absl::Status> status(1);
    WorkerStepStats stats;
    Fetch(layer, origins, fetches, status, stats);
    if (!status[0].ok()) {
      seq.failed = status[0];
      return seq.failed;
    }
  }

  // 3. One kernel call over one row per KV head; pages a head never reads point at any slot of it.
  std::vector<int32_t> indptr(1, 0), indices, last(kv_, static_cast<int32_t>((len - 1) % P_ + 1));
  indices.reserve(static_cast<size_t>(pages) * kv_);
  for (int h = 0; h < kv_; ++h) {
    int32_t any = 0;
    for (int64_t p = 0; p < pages; ++p) any = std::max(any, slot[p * kv_ + h]);
    for (int64_t p = 0; p < pages; ++p) {
      const int32_t s = slot[p * kv_ + h];
      indices.push_back(s >= 0 ? s : any);
    }
    indptr.push_back(static_cast<int32_t>(indices.size()));
  }
  kernels::PageTable table;
  table.num_rows = kv_;
  table.indptr = indptr.data();
  table.indices = indices.data();
  table.last_page_len = last.data();
  PrefillMask mask;
  mask.streaming = streaming;
  mask.sink_tokens = static_cast<int32_t>(sink_tokens);
  mask.window_tokens = static_cast<int32_t>(window_tokens);
  if (absl::Status s = backend_->AttendPrefill(q, table, mask, o); !s.ok()) {
    seq.failed = s;
    return s;
  }
  return absl::OkStatus();
}

}  // namespace pagoda
