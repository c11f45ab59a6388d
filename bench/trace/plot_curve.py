#!/usr/bin/python3
"""Plots the hit-rate-vs-capacity curve written by pagoda_trace_replay --curve-csv.

    /usr/bin/python3 bench/trace/plot_curve.py curve.csv curve.png

Needs matplotlib (Debian: python3-matplotlib); not part of CI.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    cap = [int(r["capacity_blocks"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for col, label, style in (("ideal_lru", "one ideal LRU (simulated)", "k--"),
                              ("pooled", "pooled: 3-node cluster (ClusterClient)", "o-"),
                              ("per_node", "per-node: 3 nodes, longest-prefix routing", "s-")):
        ax.plot(cap, [float(r[col]) for r in rows], style, label=label)
    ax.axhline(float(rows[0]["unbounded"]), color="gray", lw=0.8, label="unbounded cache")
    ax.set_xscale("log")
    ax.set_xlabel("total cache capacity (512-token blocks, all nodes)")
    ax.set_ylabel("token hit rate")
    ax.set_title("Mooncake conversation trace: hit rate vs capacity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_curve.py curve.csv curve.png")
    main(sys.argv[1], sys.argv[2])
