"""Dense decode baseline: torch scaled_dot_product_attention with Llama-3-8B-like shapes.

Prints one line per case, "sdpa BATCH CONTEXT MS", MS the median per call of CUDA-graph replays
(event-timed), and "gather_sdpa BATCH CONTEXT MS" for gather-then-SDPA over a 4096-token budget. Inputs rotate over several K/V sets when one set would fit in L2. Part of
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
    budget = 4096  # tokens per KV head: the sparse decode's and the worker's budget
    for batch in (16, 1, 8, 32):
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
            if ctx > budget:
                # Gather-then-SDPA: the budget's tokens of each (sequence, KV head) picked with
                # index tensors from the resident context, then dense SDPA over them.
                idx = torch.stack([torch.randperm(ctx, device=dev)[:budget].sort().values
                                   for _ in range(batch * 8)]).view(batch, 8, budget, 1)
                idx = idx.expand(batch, 8, budget, 128)

                def run_gather():
                    for k, v in sets:
                        kg = torch.gather(k, 2, idx)
                        vg = torch.gather(v, 2, idx)
                        outs.append(F.scaled_dot_product_attention(q, kg, vg, enable_gqa=True))
                        outs.pop()

                ms = median_ms(run_gather, nsets)
                print(f"gather_sdpa {batch} {ctx} {ms:.6f}", flush=True)
            del sets
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
