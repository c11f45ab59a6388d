#!/usr/bin/env python3
"""A reference model runner: a Llama-style decoder whose decode attention is Pagoda's DecodeWorker.

The model (RMSNorm, RoPE, GQA attention, SwiGLU; random weights from a seed) runs twice in one
process on the same prompts:

- dense: the KV of every token stays resident in torch tensors, attention is torch SDPA (plain
  softmax attention where torch has no SDPA) over all of it: the baseline;
- pagoda: prompts are opened in a pagoda.DecodeWorker (longest-prefix lookup in the store),
  prefilled layer by layer, and decoded in batched greedy steps whose attention is the worker's
  (plan -> attend per layer -> finish) over pages held in an embedded pagoda.Store.

It prints tokens/s of both, time per phase, bytes per tier and agreement with the dense model
(greedy token match rate, first divergence, max logit difference while the contexts agree).

Prefill: the dense run computes every prompt in full (causal SDPA); the pagoda run computes only
what the store does not hold: after the prefix lookup, each layer's uncached tokens go through
worker.prefill_attend (their K/V written, their causal attention over the cached prefix, read from
the store, and themselves), so a prefix hit saves the cached tokens' prefill compute.

  python3 bench/e2e/llama_runner.py --config tiny                     # CPU, seconds
  python3 bench/e2e/llama_runner.py --config llama3-8b --device cuda \
      --min-prompt 8192 --max-prompt 32768 --shared-prefix 4096 --budget 2048 --host-mib 16384
      # H200, random weights; the host tier must hold every sequence's KV (128 KiB per token),
      # the pool (--pool-slots per KV head) one layer's budget pages of the whole batch
"""

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

import pagoda


@dataclasses.dataclass
class ModelConfig:
    vocab: int
    dim: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5


CONFIGS: Dict[str, ModelConfig] = {
    # CPU-sized: what CI runs.
    "tiny": ModelConfig(vocab=512, dim=64, layers=2, q_heads=4, kv_heads=2, head_dim=16, ffn=128),
    # The smallest shapes the CUDA decode kernel takes (head_dim 64): the GPU tests.
    "small": ModelConfig(vocab=512, dim=256, layers=2, q_heads=4, kv_heads=2, head_dim=64, ffn=512),
    # Llama-3-8B shapes (random weights): for a GPU.
    "llama3-8b": ModelConfig(
        vocab=128256,
        dim=4096,
        layers=32,
        q_heads=32,
        kv_heads=8,
        head_dim=128,
        ffn=14336,
        rope_theta=500000.0,
    ),
}

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Llama:
    """Weights and the per-token math of a Llama-style decoder; attention is the caller's."""

    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int):
        self.cfg = cfg
        self.device = device
        self.dtype = dtype  # compute dtype of matmuls (float32 on the CPU)
        g = torch.Generator(device=device).manual_seed(seed)  # on the device: 8B weights

        def w(*shape, std):
            return (torch.randn(*shape, generator=g, device=device, dtype=dtype) * std).to(dtype)

        d, qd, kd = cfg.dim, cfg.q_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.embed = w(cfg.vocab, d, std=1.0)
        self.layers = []
        for _ in range(cfg.layers):
            self.layers.append(
                {
                    "attn_norm": torch.ones(d, device=device, dtype=dtype),
                    "wq": w(qd, d, std=d**-0.5),
                    "wk": w(kd, d, std=d**-0.5),
                    "wv": w(kd, d, std=d**-0.5),
                    "wo": w(d, qd, std=qd**-0.5),
                    "ffn_norm": torch.ones(d, device=device, dtype=dtype),
                    "w1": w(cfg.ffn, d, std=d**-0.5),
                    "w3": w(cfg.ffn, d, std=d**-0.5),
                    "w2": w(d, cfg.ffn, std=cfg.ffn**-0.5),
                }
            )
        self.norm = torch.ones(d, device=device, dtype=dtype)
        # Spread-out logits (random weights): greedy choices are not near-ties.
        self.lm_head = w(cfg.vocab, d, std=4.0 * d**-0.5)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
        self.inv_freq = inv.to(device)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)
        return xf.to(x.dtype) * weight

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [n, heads, head_dim] at positions [n] (rotate-half RoPE)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        cos = torch.cat([freqs.cos(), freqs.cos()], -1)[:, None, :]
        sin = torch.cat([freqs.sin(), freqs.sin()], -1)[:, None, :]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return (x.float() * cos + rot.float() * sin).to(x.dtype)

    def qkv(self, layer: int, x: torch.Tensor, positions: torch.Tensor):
        """x [n, dim] -> q [n, q_heads, d], k, v [n, kv_heads, d] (RoPE applied)."""
        c, L = self.cfg, self.layers[layer]
        h = self.rms_norm(x, L["attn_norm"])
        q = (h @ L["wq"].T).view(-1, c.q_heads, c.head_dim)
        k = (h @ L["wk"].T).view(-1, c.kv_heads, c.head_dim)
        v = (h @ L["wv"].T).view(-1, c.kv_heads, c.head_dim)
        return self.rope(q, positions), self.rope(k, positions), v

    def finish_layer(self, layer: int, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """x [n, dim], attn [n, q_heads, d] -> the layer's output [n, dim]."""
        L = self.layers[layer]
        x = x + attn.reshape(x.shape[0], -1).to(self.dtype) @ L["wo"].T
        h = self.rms_norm(x, L["ffn_norm"])
        return x + (F.silu(h @ L["w1"].T) * (h @ L["w3"].T)) @ L["w2"].T

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return (self.rms_norm(x, self.norm) @ self.lm_head.T).float()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """q [n, q_heads, d], k/v [t, kv_heads, d] -> [n, q_heads, d] (GQA: head h reads h // g)."""
    g = q.shape[1] // k.shape[1]
    qt = q.transpose(0, 1)  # [heads, n, d]
    kt = k.repeat_interleave(g, dim=1).transpose(0, 1)
    vt = v.repeat_interleave(g, dim=1).transpose(0, 1)
    if q.device.type == "cpu":  # CPU half matmuls are slow or missing: float32 math
        qt, kt, vt = qt.float(), kt.float(), vt.float()
    sdpa = getattr(F, "scaled_dot_product_attention", None)
    if sdpa is not None:
        o = sdpa(qt, kt, vt, is_causal=causal and q.shape[0] > 1)
    else:
        s = (qt @ kt.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if causal and q.shape[0] > 1:
            n, t = q.shape[0], k.shape[0]
            mask = torch.ones(n, t, dtype=torch.bool, device=q.device).tril(t - n)
            s = s.masked_fill(~mask, float("-inf"))
        o = torch.softmax(s, -1) @ vt
    return o.transpose(0, 1)


def prefill(model: Llama, tokens: List[int], kv_dtype: torch.dtype):
    """Dense causal prefill: (logits of the last token, [(k, v) per layer] in kv_dtype)."""
    dev = model.device
    ids = torch.tensor(tokens, device=dev)
    pos = torch.arange(len(tokens), device=dev)
    x = model.embed[ids]
    kvs = []
    for layer in range(model.cfg.layers):
        q, k, v = model.qkv(layer, x, pos)
        q, k, v = q.to(kv_dtype), k.to(kv_dtype), v.to(kv_dtype)
        kvs.append((k.contiguous(), v.contiguous()))
        x = model.finish_layer(layer, x, attention(q, k, v, causal=True).to(kv_dtype))
    return model.logits(x[-1:])[0], kvs


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fast_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def decode_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """One token's attention: q [q_heads, d] over K, V [kv_heads, t, d] (any stride but the last
    axis) -> [q_heads, d]. GQA as q_heads / kv_heads query rows per KV head: no K/V copies."""
    kv, g = K.shape[0], q.shape[0] // K.shape[0]
    qg = q.reshape(kv, g, q.shape[-1])
    if q.device.type == "cpu":
        qg, K, V = qg.float(), K.float(), V.float()
    sdpa = getattr(F, "scaled_dot_product_attention", None)
    if sdpa is not None and q.device.type == "cuda":
        # One query row per head with enable_gqa (torch >= 2.5) on flash attention's kernel (0.19
        # ms at 128K on an H100: HBM-bound). Left to choose, torch sent grouped rows (4 per KV
        # head) to cuDNN at 1.4 ms, and cuDNN, fast at one fixed length, plans again for every
        # new length: a decode step's attention took 0.75 ms a call that way.
        with _fast_sdpa():
            o = sdpa(q.view(1, -1, 1, q.shape[-1]), K.unsqueeze(0), V.unsqueeze(0), enable_gqa=True)
        return o.view(q.shape)
    if sdpa is not None:
        o = sdpa(qg.unsqueeze(0), K.unsqueeze(0), V.unsqueeze(0))[0]
    else:
        o = torch.softmax((qg @ K.transpose(-1, -2)) / math.sqrt(q.shape[-1]), -1) @ V
    return o.reshape(q.shape).to(q.dtype)


class DenseRun:
    """The baseline: resident KV per (sequence, layer), SDPA over all of it. K and V are kept
    head-major ([kv_heads, capacity, d], as an engine's cache is), so a step reads each byte once."""

    def __init__(self, model: Llama, kv_dtype: torch.dtype, capacity: int):
        self.model, self.kv_dtype, self.capacity = model, kv_dtype, capacity
        self.kv = []  # per sequence: per layer [K [kv, cap, d], V]
        self.length = []

    def new_sequence(self, length: int):
        """Room for a sequence of `length` tokens (and the steps after): per layer (K, V), whose
        [:, :length] the caller fills."""
        c = self.model.cfg
        layers = []
        for _ in range(c.layers):
            K = torch.empty(c.kv_heads, self.capacity, c.head_dim, dtype=self.kv_dtype, device=self.model.device)
            layers.append((K, torch.empty_like(K)))
        self.kv.append(layers)
        self.length.append(length)
        return layers

    def add(self, kvs) -> None:
        """kvs: per layer (k, v) [t, kv_heads, d] of a prompt."""
        for (K, V), (k, v) in zip(self.new_sequence(kvs[0][0].shape[0]), kvs):
            K[:, : k.shape[0]], V[:, : v.shape[0]] = k.transpose(0, 1), v.transpose(0, 1)

    def step(self, tokens: List[int]) -> torch.Tensor:
        m, B = self.model, len(tokens)
        pos = torch.tensor(self.length, device=m.device)
        x = m.embed[torch.tensor(tokens, device=m.device)]
        for layer in range(m.cfg.layers):
            q, k, v = m.qkv(layer, x, pos)
            q, k, v = q.to(self.kv_dtype), k.to(self.kv_dtype), v.to(self.kv_dtype)
            out = torch.empty_like(q)
            for b in range(B):
                K, V = self.kv[b][layer]
                n = self.length[b]
                K[:, n], V[:, n] = k[b], v[b]
                out[b] = decode_attention(q[b], K[:, : n + 1], V[:, : n + 1])
            x = m.finish_layer(layer, x, out)
        self.length = [n + 1 for n in self.length]
        return m.logits(x)

    def resident_bytes(self) -> int:
        c = self.model.cfg
        per_token = c.layers * 2 * c.kv_heads * c.head_dim * torch.finfo(self.kv_dtype).bits // 8
        return sum(self.length) * per_token


class PagodaRun:
    """The same model with its decode attention in a pagoda.DecodeWorker."""

    def __init__(self, model: Llama, worker: pagoda.DecodeWorker, kv_dtype: torch.dtype):
        self.model, self.worker, self.kv_dtype = model, worker, kv_dtype
        self.ids: List[int] = []
        self.length: List[int] = []
        self.cached_tokens: List[int] = []
        self.stats = {
            "append_s": 0.0, "select_s": 0.0, "fetch_s": 0.0, "verify_s": 0.0,
            "attend_s": 0.0, "commit_s": 0.0, "bytes_fetched": 0, "bytes_committed": 0,
            "resolve_s": 0.0, "lease_s": 0.0, "gather_s": 0.0,  # fetch_s in parts
            "fetched_head_pages": 0, "unleased_head_pages": 0, "attended_head_pages": 0, "pool_hits": 0,
            "shared_head_pages": 0,
            "verify_failures": 0, "stale_hints": 0, "retrievals": 0,
        }  # fmt: skip
        self.fetched_from: Dict[str, int] = {}  # fetched bytes by the store tier they came from

    def add(self, tokens: List[int]) -> torch.Tensor:
        """Opens a prompt (prefix lookup) and prefills its uncached tokens through the worker, layer
        by layer (prefill_attend: K/V written, attention over the cached prefix and the chunk).
        Returns the logits of the prompt's last token."""
        m, w = self.model, self.worker
        opened = w.open(tokens)
        start = opened.cached_tokens  # always < len(tokens): the last token is the caller's
        ids = torch.tensor(tokens[start:], device=m.device)
        pos = torch.arange(start, len(tokens), device=m.device)
        x = m.embed[ids]
        for layer in range(m.cfg.layers):
            q, k, v = m.qkv(layer, x, pos)
            q, k, v = q.to(self.kv_dtype), k.to(self.kv_dtype), v.to(self.kv_dtype)
            out = torch.empty_like(q)
            w.prefill_attend(opened.id, layer, q.contiguous(), k.contiguous(), v.contiguous(), out)
            x = m.finish_layer(layer, x, out)
        w.flush()  # its pages are in the store for the next prompt's lookup
        self.ids.append(opened.id)
        self.length.append(len(tokens))
        self.cached_tokens.append(start)
        return m.logits(x[-1:])[0]

    def step(self, tokens: List[int]) -> torch.Tensor:
        m, w = self.model, self.worker
        plan = w.plan(self.ids, tokens)
        pos = torch.tensor(self.length, device=m.device)
        x = m.embed[torch.tensor(tokens, device=m.device)]
        for layer in range(m.cfg.layers):
            q, k, v = m.qkv(layer, x, pos)
            q, k, v = q.to(self.kv_dtype), k.to(self.kv_dtype), v.to(self.kv_dtype)
            out = torch.empty_like(q)
            w.attend(plan, layer, q, k, v, out)
            x = m.finish_layer(layer, x, out)
        stats = w.finish(plan)
        if not stats.ok:
            raise next(e for e in stats.sequence_status if e is not None)
        for key in self.stats:
            self.stats[key] += getattr(stats, key)
        for tier, n in stats.bytes_from_tier.items():
            self.fetched_from[tier] = self.fetched_from.get(tier, 0) + n
        self.length = [n + 1 for n in self.length]
        return m.logits(x)


def make_prompts(n: int, shared: int, min_len: int, max_len: int, vocab: int, seed: int):
    """n prompts: one shared prefix of `shared` tokens, then suffixes of different lengths."""
    g = torch.Generator().manual_seed(seed + 1)
    prefix = torch.randint(0, vocab, (shared,), generator=g).tolist()
    prompts = []
    for i in range(n):
        extra = min_len + (i * (max_len - min_len)) // max(1, n - 1) - shared
        prompts.append(prefix + torch.randint(0, vocab, (max(1, extra),), generator=g).tolist())
    return prompts


def greedy(run, first_tokens: List[int], steps: int, device: torch.device):
    """Batched greedy decoding: (tokens [B, steps], logits per step [steps x [B, vocab]], s)."""
    tokens, logits = [list(first_tokens)], []
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        lg = run.step(tokens[-1])
        logits.append(lg)
        tokens.append(lg.argmax(-1).tolist())
    sync(device)
    return tokens[1:], logits, time.perf_counter() - t0


def agreement(dense_tokens, dense_logits, tokens, logits):
    """Token match rate, first divergence per sequence, max |logit diff| while contexts agree."""
    steps, B = len(tokens), len(tokens[0])
    match = sum(tokens[s][b] == dense_tokens[s][b] for s in range(steps) for b in range(B))
    first = []
    max_diff = 0.0
    for b in range(B):
        div = next((s for s in range(steps) if tokens[s][b] != dense_tokens[s][b]), steps)
        first.append(div)
        # logits of step s come from the context up to token s-1: equal contexts through s == div
        for s in range(min(div + 1, steps)):
            d = (logits[s][b] - dense_logits[s][b]).abs().max().item()
            max_diff = max(max_diff, d)
    return {"token_match_rate": match / (steps * B), "first_divergence": first, "max_logit_diff": max_diff}


def run(
    config: str = "tiny",
    device: str = "cpu",
    kv_dtype: str = "fp16",
    sequences: int = 4,
    shared_prefix: int = 32,
    min_prompt: int = 40,
    max_prompt: int = 80,
    steps: int = 64,
    policy: str = "quest",
    budget_tokens: int = 1 << 20,
    page_tokens: int = 16,
    pool_slots_per_head: int = 4096,
    host_bytes: int = 256 << 20,
    data_dir: Optional[str] = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    cfg = CONFIGS[config]
    dev = torch.device(device)
    kvd = DTYPES[kv_dtype]
    compute = torch.float32 if dev.type == "cpu" else kvd
    model = Llama(cfg, dev, compute, seed)
    prompts = make_prompts(sequences, shared_prefix, min_prompt, max_prompt, cfg.vocab, seed)
    layout = pagoda.layout_id(kv_dtype, cfg.kv_heads, cfg.head_dim, page_tokens)
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pagoda_runner_")
        data_dir = tmp.name
    store = pagoda.Store(host_capacity_bytes=host_bytes, data_dir=data_dir, layouts=[layout])
    worker = pagoda.DecodeWorker(
        store,
        num_layers=cfg.layers,
        q_heads=cfg.q_heads,
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        dtype=kv_dtype,
        page_tokens=page_tokens,
        policy=policy,
        budget_tokens=budget_tokens,
        pool_slots_per_head=pool_slots_per_head,
        model_id=f"llama-runner-{config}-{seed}",
        device=device,
    )

    with torch.no_grad():
        # Prefill: dense computes every prompt in full; pagoda only the tokens the store lacks.
        sync(dev)
        t0 = time.perf_counter()
        prefilled = [prefill(model, p, kvd) for p in prompts]
        sync(dev)
        t_model_prefill = time.perf_counter() - t0
        dense = DenseRun(model, kvd, max(len(p) for p in prompts) + steps + 1)
        for _, kvs in prefilled:
            dense.add(kvs)
        pg = PagodaRun(model, worker, kvd)
        t0 = time.perf_counter()
        pg_first_logits = [pg.add(p) for p in prompts]
        sync(dev)
        t_worker_prefill = time.perf_counter() - t0
        first = [int(lg.argmax()) for lg, _ in prefilled]
        pg_first = [int(lg.argmax()) for lg in pg_first_logits]
        prefill_logit_diff = max(float((a - lg).abs().max()) for a, (lg, _) in zip(pg_first_logits, prefilled))

        dense_tokens, dense_logits, t_dense = greedy(dense, first, steps, dev)
        tokens, logits, t_pagoda = greedy(pg, pg_first, steps, dev)

    agree = agreement(dense_tokens, dense_logits, tokens, logits)
    st = store.stats()
    result = {
        "config": config,
        "device": device,
        "sequences": sequences,
        "prompt_lengths": [len(p) for p in prompts],
        "cached_tokens": pg.cached_tokens,
        "steps": steps,
        "policy": policy,
        "budget_tokens": budget_tokens,
        "prefill_model_s": t_model_prefill,
        "prefill_worker_s": t_worker_prefill,
        "prefill_tokens_computed": sum(len(p) - c for p, c in zip(prompts, pg.cached_tokens)),
        "prefill_tokens": sum(len(p) for p in prompts),
        "first_token_match": sum(a == b for a, b in zip(first, pg_first)) / len(first),
        "prefill_max_logit_diff": prefill_logit_diff,
        "decode_dense_s": t_dense,
        "decode_pagoda_s": t_pagoda,
        "tokens_per_s_dense": sequences * steps / t_dense,
        "tokens_per_s_pagoda": sequences * steps / t_pagoda,
        "worker_phases_s": {k: v for k, v in pg.stats.items() if k.endswith("_s")},
        "worker_counts": {k: v for k, v in pg.stats.items() if not k.endswith("_s")},
        "dense_resident_bytes": dense.resident_bytes(),
        "fetched_from_tier": pg.fetched_from,
        "tiers": {t["name"]: {"used_bytes": t["used_bytes"], "pages": t["pages"]} for t in st["tiers"] if t["present"]},
        "pool": worker.stats(),
        "tokens": tokens,
        "dense_tokens": dense_tokens,
        "logits": logits,
        "dense_logits": dense_logits,
        **agree,
    }  # fmt: skip
    if verbose:
        print_report(result)
    if tmp is not None:
        del worker, store
        tmp.cleanup()
    return result


def print_report(r: dict) -> None:
    print(f"config {r['config']} on {r['device']}: {r['sequences']} sequences, prompts {r['prompt_lengths']}"
          f" (cached by prefix lookup: {r['cached_tokens']}), {r['steps']} greedy steps,"
          f" policy {r['policy']}, budget {r['budget_tokens']} tokens")  # fmt: skip
    print(f"prefill: dense {r['prefill_model_s'] * 1e3:.1f} ms ({r['prefill_tokens']} tokens), pagoda "
          f"{r['prefill_worker_s'] * 1e3:.1f} ms ({r['prefill_tokens_computed']} tokens computed, the rest "
          f"from the store); first tokens match {r['first_token_match']:.2f}, last-token logit diff "
          f"{r['prefill_max_logit_diff']:.3g}")  # fmt: skip
    ratio = r["tokens_per_s_pagoda"] / r["tokens_per_s_dense"]
    print(f"decode: dense {r['tokens_per_s_dense']:.1f} tok/s ({r['decode_dense_s']:.3f} s), "
          f"pagoda {r['tokens_per_s_pagoda']:.1f} tok/s ({r['decode_pagoda_s']:.3f} s), ratio {ratio:.3f}")  # fmt: skip
    phases = ", ".join(f"{k[:-2]} {v * 1e3:.1f} ms" for k, v in r["worker_phases_s"].items())
    print(f"worker phases (all steps): {phases}")
    print(f"worker counts: {r['worker_counts']}")
    tiers = ", ".join(f"{n} {t['used_bytes']} B ({t['pages']} pages)" for n, t in r["tiers"].items())
    print(f"worker fetched bytes by tier: {r['fetched_from_tier']}")
    print(f"store tiers: {tiers}; attention pool {r['pool']}; dense resident KV {r['dense_resident_bytes']} B")
    print(f"agreement with dense: token match {r['token_match_rate']:.4f}, first divergence "
          f"{r['first_divergence']}, max logit diff {r['max_logit_diff']:.3g}")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="KV dtype (fp16 on CPU, bf16 on GPU)")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--shared-prefix", type=int, default=32)
    p.add_argument("--min-prompt", type=int, default=40)
    p.add_argument("--max-prompt", type=int, default=80)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--policy", default="quest", help="oracle, quest, lserve, louiskv, ann, streaming")
    p.add_argument("--budget", type=int, default=1 << 20, help="tokens per KV head (>= context: dense)")
    p.add_argument("--page-tokens", type=int, default=16)
    p.add_argument("--pool-slots", type=int, default=4096)
    p.add_argument("--host-mib", type=int, default=256)
    p.add_argument("--data-dir", default=None, help="SSD tier directory (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    dtype = a.dtype or ("fp16" if a.device == "cpu" else "bf16")
    run(a.config, a.device, dtype, a.sequences, a.shared_prefix, a.min_prompt, a.max_prompt, a.steps,
        a.policy, a.budget, a.page_tokens, a.pool_slots, a.host_mib << 20, a.data_dir, a.seed)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
