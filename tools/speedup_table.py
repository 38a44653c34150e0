"""The anchor-vs-fastops speedup table (and chart) from pytest-benchmark JSON files.

Every benchmark records extra_info {op, workload, threads, side}, side "anchor" or "fastops" (other sides, e.g.
"floor", are listed for information). One row per (op, workload): anchor and fastops medians and their ratio
(anchor / fastops, > 1 means fastops is faster) at each thread count, and fastops' own scaling from 1 to 2
threads. Peak memory, when recorded (extra_info "peak_mb"), is printed beside the times.

  python tools/speedup_table.py build/bench.json [--thp build/bench_thp.json] [--chart build/speedup.png]
  python tools/speedup_table.py --compare OLD.json NEW.json     # two runs, e.g. saved under .benchmarks/
  python tools/speedup_table.py --compare-last [.benchmarks]     # the two newest saved runs
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict


def load(path):
    """{(op, workload): {threads: {side: (median_s, peak_mb)}}} from one pytest-benchmark JSON file."""
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(lambda: defaultdict(dict))
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "side" not in info:
            continue
        key = (info.get("op", b.get("group") or b["name"]), info.get("workload", ""))
        rows[key][int(info.get("threads", 0))][info["side"]] = (b["stats"]["median"], info.get("peak_mb"))
    return rows


def _ms(x):
    return f"{x * 1e3:.3f}" if x is not None else "-"


def _ratio(a, f):
    return a / f if a and f else None


def _x(r):
    return f"{r:.2f}x" if r is not None else "-"


def table(rows, thp_rows=None):
    threads = sorted({t for per in rows.values() for t in per})
    head = ["op", "workload"]
    for t in threads:
        head += [f"anchor ms {t}t", f"fastops ms {t}t", f"speedup {t}t"]
    if len(threads) > 1:
        head.append(f"fastops {threads[0]}->{threads[-1]}t")
    if thp_rows is not None:
        head += [f"speedup {t}t THP" for t in threads]
    head += ["anchor MB", "fastops MB", "other (1t)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for (op, workload) in sorted(rows):
        per = rows[(op, workload)]
        cells = [op, workload]
        for t in threads:
            a = per.get(t, {}).get("anchor", (None, None))[0]
            f = per.get(t, {}).get("fastops", (None, None))[0]
            cells += [_ms(a), _ms(f), _x(_ratio(a, f))]
        if len(threads) > 1:
            f0 = per.get(threads[0], {}).get("fastops", (None, None))[0]
            f1 = per.get(threads[-1], {}).get("fastops", (None, None))[0]
            cells.append(_x(_ratio(f0, f1)))
        if thp_rows is not None:
            tp = thp_rows.get((op, workload), {})
            for t in threads:
                cells.append(_x(_ratio(tp.get(t, {}).get("anchor", (None,))[0], tp.get(t, {}).get("fastops", (None,))[0])))
        first = per.get(threads[0], {}) if threads else {}
        pa, pf = first.get("anchor", (None, None))[1], first.get("fastops", (None, None))[1]
        cells += [f"{pa:.1f}" if pa is not None else "", f"{pf:.1f}" if pf is not None else ""]
        cells.append(", ".join(f"{s} {_ms(v[0])} ms" for s, v in sorted(first.items()) if s not in ("anchor", "fastops")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(rows, path):
    """Horizontal bars: speedup over the anchor per workload (log scale, anchor = 1), one bar per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    threads = sorted({t for per in rows.values() for t in per})
    keys = [k for k in sorted(rows) if any(_ratio(rows[k].get(t, {}).get("anchor", (None,))[0],
                                                  rows[k].get(t, {}).get("fastops", (None,))[0]) for t in threads)]
    if not keys:
        print("speedup chart: no anchor/fastops pairs", file=sys.stderr)
        return
    height = 0.8 / max(len(threads), 1)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.42 * len(keys)))
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    for i, t in enumerate(threads):
        vals = [_ratio(rows[k].get(t, {}).get("anchor", (None,))[0], rows[k].get(t, {}).get("fastops", (None,))[0])
                for k in keys]
        ys = [n + (i - (len(threads) - 1) / 2) * height for n in range(len(keys))]
        bars = ax.barh([y for y, v in zip(ys, vals) if v], [v for v in vals if v], height=height,
                       color=colors[i % len(colors)], label=f"{t} thread{'s' if t > 1 else ''}")
        for bar, v in zip(bars, [v for v in vals if v]):
            ax.text(bar.get_width() * 1.04, bar.get_y() + bar.get_height() / 2, f"{v:.1f}x", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.text(1.0, -0.6, " anchor = 1", fontsize=8, va="bottom")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([f"{op}: {w}" if w else op for op, w in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over the anchor (anchor median / fastops median; anchor = 1, log scale)")
    ax.set_title("fastops vs anchor, same run, median per side")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"speedup chart: {path}", file=sys.stderr)


def compare(old_path, new_path):
    old, new = load(old_path), load(new_path)
    print(f"old: {old_path}\nnew: {new_path}\n")
    head = ["op", "workload", "thr", "side", "old ms", "new ms", "new/old", "old speedup", "new speedup"]
    print("| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in head) + "|")
    for key in sorted(set(old) | set(new)):
        for t in sorted(set(old.get(key, {})) | set(new.get(key, {}))):
            o, n = old.get(key, {}).get(t, {}), new.get(key, {}).get(t, {})
            so = _ratio(o.get("anchor", (None,))[0], o.get("fastops", (None,))[0])
            sn = _ratio(n.get("anchor", (None,))[0], n.get("fastops", (None,))[0])
            for side in sorted(set(o) | set(n)):
                a, b = o.get(side, (None,))[0], n.get(side, (None,))[0]
                change = f"{b / a:.2f}" if a and b else "-"
                print(f"| {key[0]} | {key[1]} | {t} | {side} | {_ms(a)} | {_ms(b)} | {change} | "
                      f"{_x(so) if side == 'fastops' else ''} | {_x(sn) if side == 'fastops' else ''} |")


def last_two(storage):
    runs = sorted(glob.glob(os.path.join(storage, "*", "*.json")), key=lambda p: (os.path.basename(p), p))
    if len(runs) < 2:
        sys.exit(f"bench-compare: fewer than two saved runs under {storage}/ (each `make bench` saves one)")
    return runs[-2], runs[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", default="build/bench.json")
    ap.add_argument("--thp", help="a second run with THP_MEM_ALLOC_ENABLE=1: adds THP speedup columns")
    ap.add_argument("--chart", help="write the speedup chart (PNG) here")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    ap.add_argument("--compare-last", nargs="?", const=".benchmarks", metavar="STORAGE")
    args = ap.parse_args(argv)
    if args.compare or args.compare_last:
        compare(*(args.compare or last_two(args.compare_last)))
        return 0
    rows = load(args.json)
    with open(args.json) as f:
        info = json.load(f).get("machine_info", {})
    fo = info.get("fastops", {})
    if fo:
        print(f"fastops {fo.get('version')} ({fo.get('cpu_isa')} CPU kernels), torch {fo.get('torch')} "
              f"({fo.get('torch_cpu_capability')}), {info.get('cpu', {}).get('brand_raw', '')}, "
              f"THP_MEM_ALLOC_ENABLE={fo.get('THP_MEM_ALLOC_ENABLE') or 'unset'}\n")
    print(table(rows, load(args.thp) if args.thp else None))
    if args.chart:
        chart(rows, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
