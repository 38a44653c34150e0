"""Print the anchor-vs-fastops speedup table from a pytest-benchmark JSON file.

Every benchmark records extra_info {op, workload, threads, side} with side "anchor" or "fastops" (other sides,
e.g. "floor", are listed for information); rows pair the anchor and fastops medians of the same
(op, workload, threads) and report anchor/fastops. Peak memory, when a benchmark records extra_info
"peak_mb", is printed beside the times.
"""
import json
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "build/bench.json"
data = json.load(open(path))
rows = defaultdict(dict)
for b in data["benchmarks"]:
    info = b.get("extra_info", {})
    if "side" not in info:
        continue
    key = (info.get("op", b["group"] or b["name"]), info.get("workload", ""), int(info.get("threads", 0)))
    rows[key][info["side"]] = (b["stats"]["median"], info.get("peak_mb"))


def ms(x):
    return f"{x * 1e3:10.3f}" if x is not None else f"{'-':>10s}"


def mb(x):
    return f"{x:8.1f}" if x is not None else f"{'':8s}"


print(f"| {'op':22s} | {'workload':44s} | thr | anchor ms  | fastops ms | speedup | anchor MB | fastops MB | other |")
print(f"|{'-' * 24}|{'-' * 46}|-----|------------|------------|---------|-----------|------------|-------|")
for (op, workload, threads), sides in sorted(rows.items()):
    a = sides.get("anchor", (None, None))
    f = sides.get("fastops", (None, None))
    speed = f"{a[0] / f[0]:7.2f}x" if a[0] and f[0] else f"{'-':>8s}"
    other = ", ".join(f"{s} {v[0] * 1e3:.3f} ms" for s, v in sides.items() if s not in ("anchor", "fastops"))
    print(f"| {op:22s} | {workload:44s} | {threads:3d} | {ms(a[0])} | {ms(f[0])} | {speed} | {mb(a[1]):9s} | "
          f"{mb(f[1]):10s} | {other} |")
