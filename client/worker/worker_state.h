// Internal: what the decode worker keeps per sequence and per (sequence, layer).
#ifndef PAGODA_CLIENT_WORKER_WORKER_STATE_H_
#define PAGODA_CLIENT_WORKER_WORKER_STATE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "pagoda/kvstore/page.h"
#include "pagoda/retriever/boundary_trigger.h"
#include "pagoda/retriever/prompt_clusters.h"
#include "pagoda/retriever/selector.h"

namespace pagoda::worker_internal {

struct LayerState {
  int64_t tokens = 0;          // tokens written in this layer (prompt + generated)
  std::vector<PageKey> keys;   // keys of the full pages, committed in order
  std::vector<uint64_t> sums;  // head checksums, [pages * kv_heads]
  std::vector<int32_t> tail;   // owned slot of the open page per KV head (-1: none yet)
  bool ready = false;  // the layer's prompt is complete: it can be selected from and stepped
  // The host selector (policies selected on the host), created once the prompt is complete.
  std::unique_ptr<retriever::Selector> selector;
  std::vector<std::vector<uint16_t>>
      prompt_keys;  // per KV head [n, d], until the selector has them (host selection only)
  std::vector<std::vector<uint16_t>>
      prompt_values;  // per KV head [n, d], until the layout pages are written (louiskv only)
  // louiskv: the prompt's clusters and the cluster-ordered layout pages [layout_first,
  // layout_end) that replace natural pages [layout_first, layout_end) in rows (page id p there
  // is layout page p: per KV head, the tokens clusters.members[h][p * P - sink_tokens ...]).
  // They are store pages of their own (layout_keys, head checksums layout_sums).
  std::shared_ptr<const retriever::PromptClusters> clusters;
  int32_t layout_first = 0, layout_end = 0;
  std::vector<PageKey> layout_keys;
  std::vector<uint64_t> layout_sums;  // [(p - layout_first) * kv_heads + h]
  std::optional<retriever::BoundaryTrigger> trigger;
  // Device selection: the trigger fired on a query it observed (a step late: the worker reads a
  // layer's queries back without waiting, at the layer's next step), so this step retrieves.
  bool boundary_seen = false;
  std::vector<std::vector<int32_t>> retrieved;  // per KV head: natural pages of the last retrieval
  std::vector<std::vector<int32_t>> rows;       // per KV head: page ids attended last
  std::vector<std::vector<int32_t>> prefetch;   // per KV head: hints of the last retrieval
  // Per KV head, by page id (natural pages, and louiskv's layout pages in their range): where the
  // worker last saw head h of page p in the pool, as the slot and that residency's generation
  // (slot -1: not seen). A hint checked by HeadPool::Touch, so a stale one costs a lookup by key,
  // never wrong bytes, and a page seen before (attended, scored, committed from this row's open
  // page, or written to the pool by prefill) is resolved by one compact check instead of a probe
  // of the pool's key index (about 20 vs 130 ns each, 870,000 slots per head, on the dev VM).
  // Cleared with the row's pages (Truncate) and when louiskv's layout is (re)written. Head h's list
  // is written by one thread at a time (its select thread in a step).
  struct Residency {
    int32_t slot = -1;
    uint32_t gen = 0;
  };
  std::vector<std::vector<Residency>> seen;
  const Residency* SeenAt(int h, int32_t p) const {
    if (static_cast<size_t>(h) >= seen.size()) return nullptr;
    const std::vector<Residency>& v = seen[h];
    return static_cast<size_t>(p) < v.size() && v[p].slot >= 0 ? &v[p] : nullptr;
  }
  // Needs seen.size() > h (sized before the heads' threads start).
  void Remember(int h, int32_t p, int32_t slot, uint32_t gen) {
    std::vector<Residency>& v = seen[h];
    if (static_cast<size_t>(p) >= v.size()) v.resize(static_cast<size_t>(p) + 1);
    v[p] = {slot, gen};
  }
  // Per KV head, the last page list resolved for this row and its slots, with the open page's
  // slot then and the head sub-pool's HeadPool::lost() after it. While no cached head-page of
  // that sub-pool has lost its slot since (and the open page's slot is the same), the same list
  // resolves to the same slots without a lookup per page. Cleared with `seen`.
  struct RowMemo {
    std::vector<int32_t> pages, slots;
    int32_t tail = -1;
    int64_t lost = -1;
  };
  std::vector<RowMemo> memo;
  // Sizes seen and memo for kv_heads heads (before the heads' threads start).
  void SizeResidency(int kv_heads) {
    seen.resize(kv_heads);
    memo.resize(kv_heads);
  }
  // Page ids name other pages from now on (louiskv's layout written).
  void ForgetResidency() {
    seen.clear();
    memo.clear();
  }
  // louiskv's closed-form steps choose on the backend (AttendBestByMass under the layer's choice
  // tag): until read back, head h attended the entries [choice_off[h], choice_off[h] +
  // choice_len[h]) of that choice, entry i naming page steady_pages[h][i] (kept pages, then the
  // candidates; past those listed, ResidentPages(h)[steady_cb[h] + ...]), and `rows` is stale.
  bool choice_pending = false;
  // louiskv: the resident candidates' pool slots, held (HeadPool::Hold) from the first
  // closed-form step after a retrieval to the next retrieval, so a closed-form step resolves only
  // its kept pages: held_slots[h][i] holds page ResidentPages(h)[held_lo[h] + i].
  // The backend stores head h's as slot list held_list * kv_heads + h (saved by the first
  // closed-form step that attends with them), so later steps name them instead of sending them:
  // from_list[h] says head h's candidates of this step come from there (ListSteady then lists its
  // kept pages only), and steady_cb[h] is the index in ResidentPages(h) of the step's first
  // candidate.
  bool held = false;
  std::vector<std::vector<int32_t>> held_slots;
  std::vector<int32_t> held_lo;
  int64_t held_list = -1;
  bool list_saved = false;
  std::vector<char> from_list;
  std::vector<int32_t> steady_cb;
  // A step's candidates left the held range (the window moved up past resident pages, which
  // then compete again): the holds are released and this step's candidates held instead.
  bool rehold = false;
  std::vector<int32_t> choice_off, choice_len;
  std::vector<std::vector<int32_t>> steady_pages;
  // Device selection (quest): the summary slot of each natural page, open page included; the
  // summaries live on the backend only and are folded there as tokens are written.
  std::vector<int32_t> sum_slots;
  // Where this worker last saw each page in the store's host arena (its own reservation, or a
  // lease): the offset and the segment's generation then (Store::HostSegmentGeneration; 0: not
  // known), [natural page] and [layout page - layout_first]. A known hint lets the verified
  // gather read the page without a lease (Store::HoldHostArena); a stale one costs a fallback
  // read, never wrong bytes. Written by one thread at a time (prefill, Fetch), read by many.
  struct ArenaHint {
    uint64_t offset = 0;
    uint32_t gen = 0;
  };
  std::vector<ArenaHint> hints, layout_hints;
  ArenaHint HintOf(int32_t p) const {
    const std::vector<ArenaHint>& v = InLayout(p) ? layout_hints : hints;
    const size_t i = static_cast<size_t>(InLayout(p) ? p - layout_first : p);
    return i < v.size() ? v[i] : ArenaHint{};
  }
  void SetHint(int32_t p, ArenaHint h) {
    std::vector<ArenaHint>& v = InLayout(p) ? layout_hints : hints;
    const size_t i = static_cast<size_t>(InLayout(p) ? p - layout_first : p);
    if (i >= v.size()) v.resize(i + 1);
    v[i] = h;
  }
  bool InLayout(int32_t p) const { return p >= layout_first && p < layout_end; }
  // The store key and the head checksum of page id p of a row.
  const PageKey& KeyOf(int32_t p) const {
    return InLayout(p) ? layout_keys[p - layout_first] : keys[p];
  }
  uint64_t SumOf(int32_t p, int h, int kv_heads) const {
    return InLayout(p) ? layout_sums[int64_t{p - layout_first} * kv_heads + h]
                       : sums[int64_t{p} * kv_heads + h];
  }

  // A bidirectional block after the layer's end (DecodeWorker::AttendBlock): the owned pool
  // slots holding its K/V, [page * kv_heads + h], and its tokens (0: no block).
  std::vector<int32_t> block;
  int64_t block_tokens = 0;
  int32_t pinned = 0;      // leading pages pinned in the store (pin_prompt), attended every step
  uint64_t stream_id = 0;  // store stream of this (sequence, layer), 0: none
};

struct Sequence {
  std::vector<int32_t> tokens;  // token ids: prompt, then every planned token
  int64_t prompt_len = 0;
  std::vector<LayerState> layers;
  absl::Status failed;  // not OK once a step of this sequence failed
};

}  // namespace pagoda::worker_internal

#endif  // PAGODA_CLIENT_WORKER_WORKER_STATE_H_
