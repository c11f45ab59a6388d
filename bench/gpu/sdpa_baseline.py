"""Dense decode baseline: torch scaled_dot_product_attention with Llama-3-8B-like shapes.

Prints one line per case, "sdpa BATCH CONTEXT MS", MS the median per call of CUDA-graph replays
(event-timed). Inputs rotate over several K/V sets when one set would fit in L2. Part of
bench/gpu/run.sh (kernels_bench reads these lines to print its ratios).
"""
import math
import sys

import torch
import torch.nn.functional as F


def median_ms(fn, per_graph, reps=15):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2] / per_graph


def main():
    torch.manual_seed(0)
    dev = "cuda"
    for batch in (16, 1):
        for ctx in (4096, 32768, 131072):
            kv_bytes = 2 * batch * 8 * ctx * 128 * 2
            nsets = max(1, math.ceil(240e6 / kv_bytes))  # > 4x the 60 MB L2 in total
            q = torch.randn(batch, 32, 1, 128, device=dev, dtype=torch.bfloat16)
            sets = [(torch.randn(batch, 8, ctx, 128, device=dev, dtype=torch.bfloat16),
                     torch.randn(batch, 8, ctx, 128, device=dev, dtype=torch.bfloat16))
                    for _ in range(nsets)]
            outs = []

            def run():
                for k, v in sets:
                    outs.append(F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
                    outs.pop()

            ms = median_ms(run, nsets)
            print(f"sdpa {batch} {ctx} {ms:.6f}", flush=True)
            del sets
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
