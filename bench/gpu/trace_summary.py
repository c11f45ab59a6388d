#!/usr/bin/env python3
"""Where a step's time goes, from a kernel_trace.cc recording (see that file for how to take one).

  trace_summary.py TRACE --from PageMass --steps 24

The window starts at the first device operation whose (demangled) name contains --from and ends
at the recording's last record; --steps is how many steps it holds (warm-up included), so each
figure is also given per step. Printed: the window's wall time, the time the device was busy (the
union of kernels, copies and memsets) and idle, each device operation's count / total / mean, and
the host's CUDA runtime calls (where the host spends its time issuing and waiting).
"""
import argparse
import collections
import shutil
import subprocess
import sys


def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return dict(zip(names, out.stdout.splitlines()))


def short(name):
    # "void pagoda::kernels::gpu::(anonymous namespace)::Foo<64, false>(Params)" -> "Foo<64, false>"
    base = name.replace("(anonymous namespace)::", "").replace("void ", "")
    base = base.split("(")[0]
    lt = base.find("<")
    head, tmpl = (base, "") if lt < 0 else (base[:lt], base[lt:])
    return (head.split("::")[-1] + tmpl)[:70]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--from", dest="start", default="PageMass")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--timeline", type=int, default=0,
                    help="also list the window's last N device operations with the idle gap "
                    "before each")
    a = ap.parse_args()
    recs = []
    with open(a.trace) as f:
        for line in f:
            kind, s, e, where, name = line.rstrip("\n").split(" ", 4)
            recs.append((kind, int(s), int(e), where, name))
    names = demangle(sorted({r[4] for r in recs if r[0] == "K"}))
    recs = [(k, s, e, w, short(names[n]) if k == "K" else n) for k, s, e, w, n in recs]
    first = next((r[1] for r in recs if r[0] != "R" and a.start in r[4]), None)
    if first is None:
        sys.exit(f"no device operation named like {a.start!r}")
    win = [r for r in recs if r[1] >= first]
    end = max(r[2] for r in win)
    dev = sorted((r[1], r[2]) for r in win if r[0] != "R")
    busy, cur_s, cur_e = 0, None, None
    for s, e in dev:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    span = end - first
    n = a.steps
    print(f"window {span / 1e6:.3f} ms over {n} step(s): {span / n / 1e3:.1f} us/step; device "
          f"busy {busy / n / 1e3:.1f} us/step ({100 * busy / span:.0f}%), idle "
          f"{(span - busy) / n / 1e3:.1f} us/step")
    for title, kinds in (("device", "KCS"), ("host runtime calls", "R")):
        agg = collections.defaultdict(lambda: [0, 0])
        for k, s, e, _, name in win:
            if k in kinds:
                key = name if k != "C" else name.split(":")[0] + " copy"
                agg[key][0] += 1
                agg[key][1] += e - s
        total = sum(v[1] for v in agg.values())
        print(f"\n{title}: {total / n / 1e3:.1f} us/step in all")
        print("| operation | per step | us/step | mean us | share |")
        print("|---|---|---|---|---|")
        for key, (cnt, t) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
            print(f"| {key} | {cnt / n:.1f} | {t / n / 1e3:.1f} | {t / cnt / 1e3:.2f} | "
                  f"{100 * t / max(total, 1):.0f}% |")
    if a.timeline:
        ops = [r for r in win if r[0] != "R"][-a.timeline:]
        print(f"\nlast {len(ops)} device operations (us): gap before | duration | name")
        prev = None
        for _, s, e, _, name in ops:
            gap = 0 if prev is None else max(0, s - prev)
            print(f"{gap / 1e3:8.1f} | {(e - s) / 1e3:8.1f} | {name}")
            prev = e if prev is None else max(prev, e)


if __name__ == "__main__":
    main()
