"""Issue 11's counts, compiled from the test modules: bad-input cases per op and what became of them, and the
hypothesis examples run per op. Nothing here is typed by hand: re-run it and docs/reliability.md follows.

1. record (a pytest plugin, `-p reliability_counts` with tools/ on PYTHONPATH; inert unless
   FASTOPS_RELIABILITY_JSON names the output file). While the tests run it counts
   - every isolated case (tests/isolated.py `expect_error` / `expect_ok`, a fresh interpreter each): a clear error
     (raised the expected type with a message naming the argument), a correct result (the snippet's own checks
     passed), a crash (killed by a signal, e.g. SIGSEGV or a sanitizer abort), a hang (timeout), or wrong (anything
     else: no error, another type or message, a failed check). The ops are those the snippet calls
     (`fastops.<op>(` / `torch.ops.fastops.<op>(`); a snippet calling several ops counts for each.
   - every in-process `pytest.raises` case: a clear error, or wrong (nothing raised / another type or message).
     The op is the first fastops frame of the exception's traceback (a public function, or the compiled op).
   - every hypothesis example (calls of the test's inner function) and the ops each test calls (`fastops.<op>(`
     in its source or in the module's helpers it calls).
   - every test's outcome and duration.
   Results are merged into the JSON by module (a run of one module replaces only that module's records), so
   modules can be run one at a time. `tools/sanitize.py` loads the plugin too; its runs are marked sanitized.
2. render: `python tools/reliability_counts.py [--json build/reliability.json] [--out docs/reliability.md]`.
   `--run MODULE...` first runs pytest on each module (one at a time) with the plugin.
"""
from __future__ import annotations

import argparse
import glob
import inspect
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = "FASTOPS_RELIABILITY_JSON"
DEFAULT_JSON = os.path.join("build", "reliability.json")
OUTCOMES = ("clear_error", "correct", "crash", "hang", "wrong")
_OP_CALL = re.compile(r"(?:torch\.ops\.fastops\.|fastops\.)(\w+)\s*\(")

# ----------------------------------------------------------------------------------------------------------------
# 1. Recording
# ----------------------------------------------------------------------------------------------------------------
_state = {"test": None, "ops": set()}
_cases: list = []       # {"test", "kind": isolated|raises, "ops": [...], "outcome", "detail"}
_tests: dict = {}       # nodeid -> {"outcome", "seconds", "ops": [...], "examples": int or None}


def _module_of(nodeid):
    return nodeid.split("::")[0]


def _record(kind, ops, outcome, detail=""):
    _cases.append({"test": _state["test"], "kind": kind, "ops": sorted(set(ops)), "outcome": outcome,
                   "detail": detail[:300]})


def _traceback_op(tb):
    """The op a raised exception came from: the first fastops frame (public function, or the compiled op)."""
    while tb is not None:
        frame, code = tb.tb_frame, tb.tb_frame.f_code
        path = code.co_filename.replace(os.sep, "/")
        if "/fastops/" in path and "/tests/" not in path:
            return code.co_qualname.split(".")[0]
        if path.endswith("torch/_ops.py"):
            op = frame.f_locals.get("self")
            name = getattr(op, "_qualified_op_name", None) or getattr(op, "_name", None)
            if name and str(name).startswith("fastops::"):
                return str(name).split("::")[1].split(".")[0]
        tb = tb.tb_next
    return "?"


class _RaisesRecorder:
    def __init__(self, cm):
        self.cm = cm

    def __enter__(self):
        return self.cm.__enter__()

    def __exit__(self, et, ev, tb):
        try:
            suppressed = self.cm.__exit__(et, ev, tb)
        except BaseException as exc:
            _record("raises", [_traceback_op(tb) if tb else "?"], "wrong", f"{type(exc).__name__}: {exc}")
            raise
        _record("raises", [_traceback_op(tb)], "clear_error" if suppressed else "wrong", repr(ev))
        return suppressed


def _install():
    import fastops

    raises = pytest.raises

    def recording_raises(*args, **kwargs):
        if len(args) > 1 or "func" in kwargs:  # the function form runs at once
            try:
                info = raises(*args, **kwargs)
            except BaseException as exc:
                _record("raises", ["?"], "wrong", f"{type(exc).__name__}: {exc}")
                raise
            _record("raises", [_traceback_op(info.tb)], "clear_error", repr(info.value))
            return info
        return _RaisesRecorder(raises(*args, **kwargs))

    pytest.raises = recording_raises

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import isolated

    run = isolated.run_isolated
    last = {}

    def recording_run(code, timeout=120.0):
        last.clear()
        try:
            proc = run(code, timeout)
        except subprocess.TimeoutExpired:
            last["hang"] = True
            raise
        last["proc"] = proc
        return proc

    isolated.run_isolated = recording_run

    def recording(expect, good):
        def call(code, *args, **kwargs):
            ops = _OP_CALL.findall(code)
            try:
                out = expect(code, *args, **kwargs)
            except BaseException as exc:
                proc = last.get("proc")
                if last.get("hang"):
                    outcome = "hang"
                elif proc is not None and proc.returncode < 0:
                    outcome = "crash"
                else:
                    outcome = "wrong"
                _record("isolated", ops, outcome, f"{type(exc).__name__}: {exc}")
                raise
            _record("isolated", ops, good)
            return out
        return call

    isolated.expect_error = recording(isolated.expect_error, "clear_error")
    isolated.expect_ok = recording(isolated.expect_ok, "correct")


def pytest_configure(config):
    if os.environ.get(ENV):
        _install()
        config.pluginmanager.register(_Hooks(), "reliability_counts_hooks")


def _test_ops(item):
    """The ops a test calls, read from its source and the module-level helpers it calls (static: nothing is
    wrapped, so TorchScript and torch.compile see the real functions)."""
    fn = getattr(item, "function", None)
    if fn is None:
        return set()
    fn = inspect.unwrap(getattr(fn, "hypothesis", None) and fn.hypothesis.inner_test or fn)
    sources = [fn]
    for name in fn.__code__.co_names:
        helper = getattr(item.module, name, None)
        if inspect.isfunction(helper) and helper.__module__ == item.module.__name__:
            sources.append(helper)
    ops = set()
    for f in sources:
        try:
            ops.update(_OP_CALL.findall(inspect.getsource(f)))
        except (OSError, TypeError):
            pass
    return ops


class _Hooks:
    def pytest_runtest_setup(self, item):
        _state["test"], _state["ops"] = item.nodeid, _test_ops(item)
        _tests[item.nodeid] = {"outcome": "?", "seconds": 0.0, "ops": [], "examples": None}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        handle = getattr(getattr(item, "obj", None), "hypothesis", None)
        inner = getattr(handle, "inner_test", None)
        count = [0]
        if inner is not None:
            def counted(*a, **k):
                count[0] += 1
                return inner(*a, **k)
            handle.inner_test = counted
        try:
            yield
        finally:
            if inner is not None:
                handle.inner_test = inner
                _tests[item.nodeid]["examples"] = count[0]

    def pytest_runtest_logreport(self, report):
        entry = _tests.setdefault(report.nodeid, {"outcome": "?", "seconds": 0.0, "ops": [], "examples": None})
        entry["seconds"] += report.duration
        if report.when == "call" or report.outcome != "passed":
            if entry["outcome"] in ("?", "passed"):
                entry["outcome"] = report.outcome
        if report.when == "teardown":
            entry["ops"] = sorted(_state["ops"] or ())
            if entry["examples"] is None and entry["outcome"] != "skipped" and \
                    not any(c["test"] == report.nodeid for c in _cases):
                # a test of its own checks (no raises, no isolated snippet): one in-process case
                _record("checks", entry["ops"], "correct" if entry["outcome"] == "passed" else "wrong",
                        "" if entry["outcome"] == "passed" else (report.longreprtext or "")[-300:])

    def pytest_sessionfinish(self, session):
        path = os.environ[ENV]
        data = {"modules": {}}
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        ran = {_module_of(n) for n in _tests}
        for mod in ran:
            data["modules"][mod] = {
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "sanitized": os.environ.get("FASTOPS_SANITIZED") == "1",
                "hypothesis_profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
                "tests": {n: t for n, t in _tests.items() if _module_of(n) == mod},
                "cases": [c for c in _cases if c["test"] and _module_of(c["test"]) == mod],
            }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)


# ----------------------------------------------------------------------------------------------------------------
# 2. Rendering
# ----------------------------------------------------------------------------------------------------------------
_OUTCOMES_TEXT = """\
Outcomes: **clear error** = the expected exception type with a message naming the argument; **correct** = an
isolated snippet ran to the end and its own checks passed, or an in-process test's checks against the reference,
torchvision or hand-computed values passed; **crash** = the fresh interpreter died from a signal (segfault,
sanitizer abort); **hang** = timeout; **wrong** = anything else. In-process cases are `pytest.raises` checks, and
tests with their own checks (one case per test). A case that calls several ops counts once per op, so the per-op
rows add up to more than the totals; a row counts the public function and the compiled op
(`torch.ops.fastops.<op>`, called directly) together."""


# Issue 11, offsets past 2^31: what tests them, and for the rest what a read of the index arithmetic found (a test
# would need the whole output, > 8 GB, in memory). Kept here so the page stays generated.
_OFFSETS_TEXT = """## Offsets past 2^31

Tested (the map or output has more than 2^31 elements):
- `roi_align` / `multi_scale_roi_align` forward, CPU: `tests/test_large_offsets.py` (NCHW with a channel, an image,
  or one whole plane past 2^31, and channels_last; the maps are reserved, not filled, so a few MB are used).
  A 32-bit flat plane offset injected in the packed forward (`int32_t(batch * sN + c * sC)`) crashed 3 of its 5
  tests (channel, image, FPN); the other two take paths that injection does not touch.
- `paste_masks`: `tests/test_bad_inputs_masks.py::test_paste_masks_offsets_past_2_31` (2.2 GB bool output).
- `yolact_masks`, `heatmap_argmax`: correct past 2^31 when probed (issue 11); no test kept (> 8 GB).
- `flow_warp` forward, CPU: `tests/test_large_offsets.py::test_flow_warp_forward_offsets_past_2_31` (4096 x 725 x 725:
  the last 10 channel planes start past 2^31; 8.6 GB output written, 9.9 GB peak RSS, 83 s on a quiet
  machine; opt-in with FASTOPS_LARGE_TESTS=1 to keep CI within its budget). A 32-bit plane
  offset injected in the NCHW channel-block loop (`int32_t((c + k) * sC)`) failed it.

Read, not tested (CPU `*_cpu.cpp` and CUDA `*.cu`): flat element indices are `int64_t` (CUDA:
`FASTOPS_KERNEL_LOOP` in `csrc/cuda_utils.cuh`); a coordinate along one axis may be `int` (every size is checked
to be < 2^31, most < 2^30), and every offset multiplies it by an `int64_t` stride or row length before adding:
- `roi_align` backward: plane pointers `batch * sN + c * sC`, rows `yi * sH` (`int` times `int64_t`); the packed
  float32 forward stores row offsets as int32 and is used only when `H * sH < 2^31` (else the sparse walk).
- `flow_warp` backward and CUDA: every index and stride `int64_t` (`flow_warp_backward_cpu.cpp`,
  `flow_warp_cuda.cu`; the deterministic CUDA backward's sort keys are checked to fit 62 bits).
- `render_gaussian_heatmaps` / `render_center_heatmap`: plane `m * (int64_t)H * W`, rows `(int64_t)y * W`.
- `corner_pool`: rows `y * ld` with `int64_t ld`. One 32-bit offset was found and fixed: the AVX2 left/right
  backward read the 8 rows of a tile at `k * W` with `int W` (past 2^31 for W >= 306,783,379).
- `panoptic_fuse`: output rows `y * W`, `int64_t` H, W; candidate lists hold channel numbers (< C) as int32.
- `heatmap_peaks`, `heatmap_argmax`, `soft_argmax`, `centernet_decode`: plane `m * plane` (`int64_t`), rows
  `(int64_t)y * W`; peak indices are returned as int64.
- NMS family: box counts are checked `< 2^31`; box and score offsets are `int64_t` index times stride."""


def render(data, sanitize_summary=None):
    mods = data["modules"]
    per_op = defaultdict(lambda: defaultdict(int))
    totals = defaultdict(int)
    failures = []
    for mod, m in sorted(mods.items()):
        for c in m["cases"]:
            key = "isolated" if c["kind"] == "isolated" else "in-process"
            if c["test"] is None:
                continue
            totals[f"{key} cases"] += 1
            totals[c["outcome"]] += 1
            if c["outcome"] != "clear_error" and c["outcome"] != "correct":
                failures.append((c["test"], c["outcome"], c["detail"]))
            for op in c["ops"] or ["?"]:
                per_op[op][key] += 1
                per_op[op][c["outcome"]] += 1
        for nodeid, t in m["tests"].items():
            if t["examples"] is not None:
                for op in t["ops"] or ["?"]:
                    per_op[op]["examples"] += t["examples"]
                    per_op[op]["property tests"] += 1
                totals["examples"] += t["examples"]
            totals[f"tests {t['outcome']}"] += 1
    bad = [m for m in mods if "test_bad_inputs" in m]
    prop = [m for m in mods if m not in bad]
    lines = [
        "# Reliability: bad-input cases, property tests, sanitizers (issue 11)",
        "",
        "Generated by `tools/reliability_counts.py` from the test modules (do not edit by hand). To refresh:",
        "`python tools/reliability_counts.py --run tests/test_bad_inputs_*.py` (each module in its own pytest run;",
        "add the property-test modules to count their hypothesis examples), or `make sanitize`, whose run records",
        "the same counts under AddressSanitizer + UBSan, followed by `python tools/reliability_counts.py`.",
        "",
        _OUTCOMES_TEXT,
        "",
        "## Totals",
        "",
        f"- modules: {len(bad)} bad-input, {len(prop)} with property tests; runs: "
        + ", ".join(sorted({f"{m['when']}{' (sanitized)' if m['sanitized'] else ''}" for m in mods.values()}))[:400],
        f"- cases: {totals['isolated cases']} isolated (each in a fresh interpreter), "
        f"{totals['in-process cases']} in-process",
        f"- outcomes: {totals['clear_error']} clear errors, {totals['correct']} correct results, "
        f"{totals['crash']} crashes, {totals['hang']} hangs, {totals['wrong']} wrong",
        f"- tests: {totals['tests passed']} passed, {totals['tests failed']} failed, "
        f"{totals['tests skipped']} skipped",
        f"- hypothesis examples: {totals['examples']} (cpp vs reference, forward and gradients where the op has "
        "them)",
        "",
        "## Per op",
        "",
        "| op | isolated | in-process | clear error | correct | crash | hang | wrong | property tests | "
        "hypothesis examples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for op in sorted(per_op, key=lambda o: (o.startswith("_"), o)):
        r = per_op[op]
        lines.append(f"| {op} | {r['isolated']} | {r['in-process']} | {r['clear_error']} | "
                     f"{r['correct']} | {r['crash']} | {r['hang']} | {r['wrong']} | {r['property tests']} | "
                     f"{r['examples']} |")
    lines += ["", "## Per module", "", "| module | run | tests passed / failed / skipped | cases | seconds |",
              "|---|---|---|---|---|"]
    for mod, m in sorted(mods.items()):
        out = defaultdict(int)
        for t in m["tests"].values():
            out[t["outcome"]] += 1
        secs = sum(t["seconds"] for t in m["tests"].values())
        run = m["when"] + (", sanitized" if m["sanitized"] else "") + f", hypothesis {m['hypothesis_profile']}"
        lines.append(f"| {mod} | {run} | {out['passed']} / {out['failed']} / {out['skipped']} | "
                     f"{len(m['cases'])} | {secs:.0f} |")
    lines += ["", "## Cases that did not give a clear error or a correct result", ""]
    lines += [f"- `{t}`: {o}: {d}" for t, o, d in failures] or ["None."]
    lines += ["", _OFFSETS_TEXT]
    if sanitize_summary:
        lines += ["", "## Sanitizer (`make sanitize`)", ""] + sanitize_summary
    return "\n".join(lines) + "\n"


def run_modules(modules, json_path):
    env = dict(os.environ, **{ENV: os.path.abspath(json_path)})
    env["PYTHONPATH"] = os.path.join(ROOT, "tools") + os.pathsep + env.get("PYTHONPATH", "")
    rc = 0
    for mod in modules:
        print(f"reliability_counts: {mod}", flush=True)
        rc |= subprocess.run([sys.executable, "-m", "pytest", mod, "-q", "-p", "no:cacheprovider", "-p",
                              "reliability_counts"], cwd=ROOT, env=env).returncode
    return rc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=os.path.join(ROOT, DEFAULT_JSON))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "reliability.md"))
    ap.add_argument("--sanitize-summary", default=os.path.join(ROOT, "build", "sanitize", "summary-*.md"))
    ap.add_argument("--run", nargs="*", default=None, metavar="MODULE")
    args = ap.parse_args(argv)
    rc = run_modules(args.run, args.json) if args.run else 0
    with open(args.json) as f:
        data = json.load(f)
    summary = []
    for path in sorted(glob.glob(args.sanitize_summary), key=os.path.getmtime):
        with open(path) as f:
            summary += f.read().strip().splitlines()
    with open(args.out, "w") as f:
        f.write(render(data, summary))
    print(f"reliability_counts: wrote {args.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
