"""Summarise ptxas -v output from a build log: registers, spills and shared memory per CUDA kernel.

Exits non-zero when any kernel spills. The figures are merged into build/ptxas.txt so that an incremental
build (which recompiles only some .cu files) still reports every kernel it has seen.
"""
import json
import os
import re
import sys

log_path = sys.argv[1] if len(sys.argv) > 1 else "build/build.log"
store = os.path.join(os.path.dirname(log_path) or ".", "ptxas.json")

func_re = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(sm_\d+)'")
spill_re = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
regs_re = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")

figures = {}
if os.path.exists(store):
    with open(store) as f:
        figures = json.load(f)

current = None
text = open(log_path, errors="ignore").read() if os.path.exists(log_path) else ""
for line in text.splitlines():
    m = func_re.search(line)
    if m:
        current = (m.group(1), m.group(2))
        figures.setdefault(f"{current[0]}|{current[1]}", {})
        continue
    if current is None:
        continue
    key = f"{current[0]}|{current[1]}"
    m = spill_re.search(line)
    if m:
        figures[key].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        continue
    m = regs_re.search(line)
    if m:
        figures[key].update(registers=int(m.group(1)), smem=int(m.group(2) or 0))

os.makedirs(os.path.dirname(store) or ".", exist_ok=True)
with open(store, "w") as f:
    json.dump(figures, f, indent=1, sort_keys=True)

if not figures:
    print("ptxas: no CUDA kernels in this build")
    sys.exit(0)


def demangle(name):
    try:
        import subprocess

        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    except Exception:
        return name


spilling = []
print(f"{'kernel':80s} {'arch':6s} {'regs':>5s} {'spill st':>8s} {'spill ld':>8s} {'smem':>6s}")
for key in sorted(figures):
    name, arch = key.split("|")
    f = figures[key]
    short = demangle(name)
    short = short if len(short) <= 80 else short[:77] + "..."
    print(f"{short:80s} {arch:6s} {f.get('registers', 0):5d} {f.get('spill_stores', 0):8d} "
          f"{f.get('spill_loads', 0):8d} {f.get('smem', 0):6d}")
    if f.get("spill_stores", 0) or f.get("spill_loads", 0):
        spilling.append(key)
if spilling:
    print(f"ptxas: {len(spilling)} kernel(s) spill registers: {spilling}", file=sys.stderr)
    sys.exit(1)
print(f"ptxas: {len(figures)} kernel/arch pairs, zero spills")
