#!/usr/bin/env python3
"""Decode throughput of a Llama-style model at long context: dense against Pagoda's DecodeWorker.

The model is llama_runner's (Llama-3-8B shapes by default, random weights). Each sequence's
context is `--context` tokens of synthetic K/V (normal random values, the same for both runs: the
model's own prefill of 128K-token prompts would take minutes per sequence and is not what this
measures). Both runs then decode greedy steps of the whole batch through every layer; only the
decode steps are timed (after --warmup untimed steps).

- dense: every sequence's K/V resident in HBM, attention by torch SDPA over all of it (one call
  per sequence and layer; each is HBM-bound at long context, so batching them would not read
  fewer bytes). Its batch is the largest whose K/V fits in the free HBM after the weights, less
  --headroom-gib for activations (or --dense-batch).
- pagoda: the K/V written into an embedded pagoda.Store (host tier, page-locked) through
  DecodeWorker.prefill; decode attention is DecodeWorker.attend (policy --policy at --budget
  tokens per KV head), pages gathered into the worker's GPU pool and verified. Its batches are
  --runs (the host tier must hold every sequence: 128 KiB per token at these shapes,
  twice that for louiskv, which also keeps a cluster-ordered copy).

Prints tokens/s of each run, pagoda / dense (the dense batch's rate), the worker's phases and the
bytes it fetched, and the agreement of the first sequences' tokens where both ran them.

  python3 bench/e2e/llama_throughput.py --context 131072 --runs quest:3,quest+trigger:3
"""

import argparse
import gc
import os
import sys
import tempfile
import time
from typing import List

# Set before torch allocates: K/V of many sizes would otherwise strand reserved blocks.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
import torch  # noqa: E402

import pagoda  # noqa: E402
from llama_runner import CONFIGS, DTYPES, DenseRun, Llama, PagodaRun, sync  # noqa: E402


def synthetic_kv(seq: int, layer: int, tokens: int, heads: int, dim: int, dtype, device):
    """The K/V of (sequence, layer): deterministic per pair, identical in both runs."""
    g = torch.Generator(device=device).manual_seed(1_000_003 * seq + layer)
    k = torch.randn(tokens, heads, dim, generator=g, device=device, dtype=dtype)
    v = torch.randn(tokens, heads, dim, generator=g, device=device, dtype=dtype)
    return k, v


def prompt_ids(seq: int, tokens: int, vocab: int) -> List[int]:
    g = torch.Generator().manual_seed(7 + seq)
    return torch.randint(0, vocab, (tokens,), generator=g).tolist()


def decode(run, tokens: List[int], steps: int, device) -> dict:
    """`steps` greedy steps of the batch from `tokens`: their tokens and the time they took."""
    out = []
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens = run.step(tokens).argmax(-1).tolist()
        out.append(tokens)
    sync(device)
    s = time.perf_counter() - t0
    return {"seconds": s, "tokens_per_s": len(tokens) * steps / s, "tokens": out}


def warm_then_time(run, first: List[int], warmup: int, steps: int, device, on_warm=None) -> dict:
    tokens = decode(run, first, warmup, device)["tokens"][-1] if warmup else first
    if on_warm:
        on_warm()
    return decode(run, tokens, steps, device)


class NoAttention:
    """The model's step with attention left out (its output := q): the floor both runs share."""

    def __init__(self, model: Llama, kvd, batch: int, context: int):
        self.model, self.kvd, self.length = model, kvd, [context] * batch

    def step(self, tokens: List[int]) -> torch.Tensor:
        m = self.model
        pos = torch.tensor(self.length, device=m.device)
        x = m.embed[torch.tensor(tokens, device=m.device)]
        for layer in range(m.cfg.layers):
            q, k, v = m.qkv(layer, x, pos)
            x = m.finish_layer(layer, x, q.to(self.kvd))
        self.length = [n + 1 for n in self.length]
        return m.logits(x)


def dense_batch(model: Llama, context: int, steps: int, kvd, headroom_gib: float) -> int:
    c = model.cfg
    per_seq = c.layers * 2 * (context + steps + 1) * c.kv_heads * c.head_dim * torch.finfo(kvd).bits // 8
    free, _ = torch.cuda.mem_get_info(model.device)
    return max(0, int((free - headroom_gib * (1 << 30)) // per_seq))


def run_dense(model: Llama, a, kvd, batch: int) -> dict:
    c, dev = model.cfg, model.device
    dense = DenseRun(model, kvd, a.context + a.warmup + a.steps + 1)
    for s in range(batch):
        for layer, (K, V) in enumerate(dense.new_sequence(a.context)):
            k, v = synthetic_kv(s, layer, a.context, c.kv_heads, c.head_dim, kvd, dev)
            K[:, : a.context], V[:, : a.context] = k.transpose(0, 1), v.transpose(0, 1)
    first = [prompt_ids(s, 1, c.vocab)[0] for s in range(batch)]
    r = warm_then_time(dense, first, a.warmup, a.steps, dev)
    r["resident_bytes"] = dense.resident_bytes()
    r["peak_hbm_bytes"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    return r


def run_pagoda(model: Llama, a, kvd, kv_name: str, policy: str, trigger: bool, batch: int) -> dict:
    c, dev = model.cfg, model.device
    P = a.page_tokens
    layout = pagoda.layout_id(kv_name, c.kv_heads, c.head_dim, P)
    page_bytes = pagoda.page_bytes(layout)
    copies = 2 if policy == "louiskv" else 1
    pages = batch * c.layers * ((a.context + a.warmup + a.steps) // P + 2) * copies
    # Below the host tier's low watermark (0.85): no page is demoted or dropped mid-run.
    host = int(pages * page_bytes / 0.8) + (256 << 20)
    budget_pages = min(a.budget, a.context + a.warmup + a.steps) // P + 1  # a covering budget: all
    summaries = batch * c.layers * (a.context // P + 64)
    pool = a.pool_factor * c.layers * batch * (4 * budget_pages + 8) + 64
    if a.pool_gib >= 0:  # a size in HBM instead: the store's GPU tier as a deployment sizes it
        slot_bytes = c.kv_heads * 2 * P * c.head_dim * torch.finfo(kvd).bits // 8  # K+V, all heads
        room = a.pool_gib * (1 << 30)
        if a.pool_gib == 0:  # every byte of HBM the weights leave, less headroom and summaries
            free, _ = torch.cuda.mem_get_info(dev)
            room = free - a.headroom_gib * (1 << 30) - summaries * c.kv_heads * c.head_dim * 2 * 2
        pool = max(pool // a.pool_factor, int(room // slot_bytes))
    with tempfile.TemporaryDirectory(prefix="pagoda_tp_") as tmp:
        store = pagoda.Store(host_capacity_bytes=host, data_dir=tmp, layouts=[layout],
                             segment_bytes=64 << 20)  # fmt: skip
        t0 = time.perf_counter()
        worker = pagoda.DecodeWorker(
            store, num_layers=c.layers, q_heads=c.q_heads, kv_heads=c.kv_heads, head_dim=c.head_dim,
            dtype=kv_name, page_tokens=P, policy=policy, budget_tokens=a.budget, boundary_trigger=trigger,
            pool_slots_per_head=pool, summary_slots=summaries, prepare_host_bytes=-1, select_threads=a.select_threads,
            prefill_to_pool=a.prefill_to_pool,
            model_id=f"llama-throughput-{a.config}", device=str(dev),
        )  # fmt: skip
        create_s = time.perf_counter() - t0
        pg = PagodaRun(model, worker, kvd)
        t0 = time.perf_counter()
        for s in range(batch):
            ids = prompt_ids(s, a.context + 1, c.vocab)
            opened = worker.open(ids[: a.context])
            for layer in range(c.layers):
                k, v = synthetic_kv(s, layer, a.context, c.kv_heads, c.head_dim, kvd, dev)
                worker.prefill(opened.id, layer, k, v)
            pg.ids.append(opened.id)
            pg.length.append(a.context)
        worker.flush()
        sync(dev)
        write_s = time.perf_counter() - t0
        first = [prompt_ids(s, 1, c.vocab)[0] for s in range(batch)]
        before = {}
        # Phases and counts of the timed steps only: the warm-up steps fill the pool.
        r = warm_then_time(pg, first, a.warmup, a.steps, dev, lambda: before.update(pg.stats))
        r["create_s"], r["write_s"] = create_s, write_s
        r["phases"] = {k: pg.stats[k] - before[k] for k in pg.stats}
        r["pool"] = worker.stats()
        r["host_bytes"] = host
        r["pool_bytes"] = pool * c.kv_heads * 2 * P * c.head_dim * torch.finfo(kvd).bits // 8
        del pg, worker, store
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return r


def measure(argv=None) -> dict:
    """Parses argv as the command line does and runs it: {"dense": ..., "pagoda": [...]} (also
    printed). Raises ValueError on a bad command line or where the device is missing."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="llama3-8b")
    p.add_argument("--context", type=int, default=131072)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dense-batch", type=int, default=0, help="0: the largest that fits")
    p.add_argument("--headroom-gib", type=float, default=6.0)
    p.add_argument("--runs", default="quest:3",
                   help="comma-separated POLICY[+trigger]:BATCH (+trigger: the boundary trigger)")
    p.add_argument("--budget", type=int, default=8192, help="tokens per KV head (1/16 of 128K)")
    p.add_argument("--page-tokens", type=int, default=16)
    p.add_argument("--pool-factor", type=int, default=2, help="GPU pool: this many steps' worst case")
    p.add_argument("--pool-gib", type=float, default=-1,
                   help="GPU pool of this size instead (0: all HBM free after the weights, less --headroom-gib "
                        "and the summaries; never below one step's worst case)")
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--prefill-to-pool", action="store_true",
                   help="the worker's prefill also fills the GPU pool's free slots (DecodeWorker prefill_to_pool)")
    p.add_argument("--select-threads", type=int, default=0, help="the worker's (0: cores, at most 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a check of the script)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device")
    if dev.type == "cpu" and not a.dense_batch and not a.skip_dense:
        raise ValueError("on the CPU, give --dense-batch")
    runs = []
    for spec in [x for x in a.runs.split(",") if x]:
        name, _, batch = spec.rpartition(":")
        policy = name.split("+")[0]
        if not name or not batch.isdigit() or int(batch) < 1 or name not in (policy, policy + "+trigger"):
            raise ValueError(f"--runs: '{spec}' is not POLICY[+trigger]:BATCH")
        runs.append((name, policy, name.endswith("+trigger"), int(batch)))
    kvd = DTYPES[a.dtype]
    out = {"dense": None, "pagoda": []}
    with torch.no_grad():
        model = Llama(CONFIGS[a.config], dev, kvd if dev.type == "cuda" else torch.float32, a.seed)
        sync(dev)
        c = model.cfg
        print(f"{a.config}: {c.layers} layers, {c.q_heads}/{c.kv_heads} heads x {c.head_dim}; context "
              f"{a.context} tokens of synthetic K/V per sequence; {a.steps} timed steps after "
              f"{a.warmup}; {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}", flush=True)  # fmt: skip
        dense = None
        if not a.skip_dense:
            B = a.dense_batch or dense_batch(model, a.context, a.warmup + a.steps, kvd, a.headroom_gib)
            dense = run_dense(model, a, kvd, B)
            dense["batch"] = B
            print(f"dense B={B}: {dense['tokens_per_s']:.1f} tok/s ({dense['seconds'] / a.steps * 1e3:.2f} ms/step), "
                  f"resident KV {dense['resident_bytes'] / 2**30:.1f} GiB, peak HBM "
                  f"{dense['peak_hbm_bytes'] / 2**30:.1f} GiB", flush=True)  # fmt: skip
            dense_tokens = dense["tokens"]
            out["dense"] = dense
            floor = warm_then_time(NoAttention(model, kvd, B, a.context), [0] * B, a.warmup, a.steps, dev)
            print(f"  the same model without attention, B={B}: {floor['seconds'] / a.steps * 1e3:.2f} ms/step "
                  "(weights, norms, MLP, logits, Python: what neither run can save)", flush=True)  # fmt: skip
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        for name, policy, trigger, B in runs:
            r = run_pagoda(model, a, kvd, a.dtype, policy, trigger, B)
            r.update(name=name, batch=B)
            out["pagoda"].append(r)
            ratio = f", {r['tokens_per_s'] / dense['tokens_per_s']:.2f}x dense B={dense['batch']}" if dense else ""
            ph = r["phases"]
            print(f"pagoda {name} budget {a.budget} B={B}: {r['tokens_per_s']:.1f} tok/s "
                  f"({r['seconds'] / a.steps * 1e3:.2f} ms/step){ratio}; create {r['create_s']:.1f} s, "
                  f"write {r['write_s']:.1f} s, host tier {r['host_bytes'] / 2**30:.1f} GiB, GPU pool "
                  f"{r['pool_bytes'] / 2**30:.1f} GiB", flush=True)  # fmt: skip
            steps = a.steps
            print("  per step: " + ", ".join(f"{k[:-2]} {ph[k] / steps * 1e3:.2f} ms" for k in ph if k.endswith("_s"))
                  + f"; fetched {ph['bytes_fetched'] / steps / 2**20:.1f} MiB, head-pages fetched "
                  f"{ph['fetched_head_pages'] / steps:.0f} ({ph['unleased_head_pages'] / steps:.0f} unleased) / attended "
                  f"{ph['attended_head_pages'] / steps:.0f}, "
                  f"retrievals {ph['retrievals'] / steps:.1f}, verify failures {ph['verify_failures']}, stale hints {ph['stale_hints']}", flush=True)  # fmt: skip
            if dense:
                n = min(B, dense["batch"])
                same = sum(x[:n] == y[:n] for x, y in zip(r["tokens"], dense_tokens))
                r["steps_agreeing"] = same
                print(f"  token agreement with dense on the first {n} sequences: {same}/{len(r['tokens'])} steps "
                      "(equal batches of tokens; sparse attention over random K/V need not agree)", flush=True)  # fmt: skip
    return out


def main(argv=None) -> int:
    try:
        measure(argv)
    except ValueError as e:
        print(f"llama_throughput: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
