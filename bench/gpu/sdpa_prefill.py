"""Causal prefill baseline: torch scaled_dot_product_attention over a whole prompt.

Llama-3-8B layer shapes, batch 1, bf16: q [1, 32, T, 128], k/v [1, 8, T, 128], is_causal=True,
T in 32768 and 131072. Two ways to give SDPA the 8 KV heads:
  gqa       enable_gqa=True (K/V stay 8 heads);
  expanded  K/V repeated to 32 heads beforehand (outside the timing), for backends whose GQA
            path is slower or missing.
Each is timed with the default backend choice and, where it runs, forced to the flash backend
(PyTorch's FlashAttention-2); the fastest of them is the baseline, printed last as
"sdpa_causal T MS" (prefill_bench reads these lines). Every time is the median of
CUDA-event-timed calls after warm-up. Part of bench/gpu/run.sh (step sdpa_prefill).
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    torch.manual_seed(0)
    dev = "cuda"
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for t in (32768, 131072):
        warmup, reps = (2, 9) if t <= 32768 else (1, 5)
        q = torch.randn(1, 32, t, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(1, 8, t, 128, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, 8, t, 128, device=dev, dtype=torch.bfloat16)
        ke = k.repeat_interleave(4, dim=1)  # query head h uses KV head h // 4, as enable_gqa
        ve = v.repeat_interleave(4, dim=1)
        variants = {
            "gqa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            "expanded": lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True),
        }
        best = None
        ref = None
        for name, fn in variants.items():
            for backend in ("default", "flash"):
                try:
                    if backend == "flash":
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            out = fn()
                            ms = median_ms(fn, warmup, reps)
                    else:
                        out = fn()
                        ms = median_ms(fn, warmup, reps)
                except (RuntimeError, TypeError) as e:  # backend refuses these inputs
                    print(f"# {name} {backend} T={t}: not available ({str(e).splitlines()[0]})",
                          flush=True)
                    torch.cuda.empty_cache()
                    continue
                if ref is None:
                    ref = out
                else:  # every variant computes the same attention
                    err = (out.float() - ref.float()).abs().max().item()
                    if not err < 5e-2:
                        print(f"# {name} {backend} T={t}: differs from the first by {err}, "
                              "not used", flush=True)
                        continue
                del out
                print(f"sdpa_causal_{name}_{backend} {t} {ms:.6f}", flush=True)
                if best is None or ms < best[0]:
                    best = (ms, f"{name}/{backend}")
        if best is None:
            print(f"# T={t}: no SDPA variant ran")
            return 1
        print(f"# T={t}: fastest {best[1]}", flush=True)
        print(f"sdpa_causal {t} {best[0]:.6f}", flush=True)
        del q, k, v, ke, ve, ref
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
