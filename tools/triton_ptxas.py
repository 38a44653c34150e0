"""Triton GPU readiness without a GPU: compile every Triton kernel variant the test suite launches, run ptxas.

Under TRITON_INTERPRET=1 the test suite runs every Triton kernel on CPU tensors, but the interpreter never runs
Triton's compiler, so an error that only the GPU compiler sees (an unsupported op, a type mismatch in lowering, a
register spill) goes unnoticed. This tool closes the gap in two steps:

1. record (a pytest plugin): `FASTOPS_TRITON_RECORD=build/triton_launches.json PYTHONPATH=tools \
   python -m pytest tests -p triton_ptxas` wraps the interpreter's launcher and records each distinct launch
   variant: kernel, argument types (pointer dtypes, int widths), the JIT's specialisations (divisibility by 16,
   ints equal to 1), constexpr values and launch options (num_warps, ...). It costs one dict insert per launch.
   The specialisation is computed by Triton's own binder (`create_function_from_signature`), as the GPU JIT does.
2. compile: `python tools/triton_ptxas.py [build/triton_launches.json] [--arch 80 90]` compiles each variant
   with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` (TTIR -> TTGIR -> LLVM -> PTX ->
   cubin; ptxas runs here) and prints registers / spills per kernel and architecture. Each variant is also run
   through the front end (Python -> TTIR) with every integer argument equal to 1: on a GPU the JIT passes such an
   argument as a constexpr, so a size or stride of 1 compiles a different kernel (`n.to(...)` on it fails there;
   `tl.cast(n, ...)` does not). Exit status 1 on any compile error, any spill, or any recorded kernel that
   cannot be located. Results are cached by Triton's
   source hash (build/triton_ptxas_cache.json), so a re-run compiles only what changed.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time

DEFAULT_RECORD = "build/triton_launches.json"
ENV = "FASTOPS_TRITON_RECORD"

# ----------------------------------------------------------------------------------------------------------------
# 1. Recording (pytest plugin, loaded with `-p triton_ptxas`; inert unless FASTOPS_TRITON_RECORD is set)
# ----------------------------------------------------------------------------------------------------------------
_variants: dict = {}
_problems: list = []


def _encode(value):
    """A constexpr value as JSON (decoded by _decode in the compiling process)."""
    import triton.language as tl

    if isinstance(value, tl.constexpr):
        value = value.value
    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    fn = getattr(value, "fn", value)
    if callable(fn) and hasattr(fn, "__qualname__"):
        return {"callable": f"{fn.__module__}:{fn.__qualname__}"}
    raise TypeError(f"cannot record constexpr value {value!r} ({type(value).__name__})")


def _binder(interp_fn):
    """Triton's own binder for this kernel: (bound params, specialisation, options), as the GPU JIT computes them."""
    b = getattr(interp_fn, "_fastops_binder", None)
    if b is None:
        from triton.backends.compiler import BaseBackend
        from triton.runtime.jit import KernelParam, create_function_from_signature

        sig = inspect.signature(interp_fn.fn)
        dns = interp_fn.kwargs.get("do_not_specialize") or []
        dnsa = interp_fn.kwargs.get("do_not_specialize_on_alignment") or []
        params = [KernelParam(i, p, i in dns or p.name in dns, i in dnsa or p.name in dnsa)
                  for i, p in enumerate(sig.parameters.values())]
        b = create_function_from_signature(sig, params, BaseBackend)
        interp_fn._fastops_binder = b
    return b


def _record(interp_fn, args, kwargs):
    fn = interp_fn.fn
    name = f"{fn.__module__}:{fn.__qualname__}"
    bound, spec, options = _binder(interp_fn)(*args, **kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for (pname, value), (ty, attr) in zip(bound.items(), spec):
        if not isinstance(ty, str):
            raise TypeError(f"tuple arguments are not supported by this recorder ({pname})")
        signature[pname] = ty
        if ty == "constexpr":
            constexprs[pname] = _encode(value)
        elif isinstance(attr, str) and attr:
            attrs[pname] = attr
    variant = {"kernel": name, "signature": signature, "constexprs": constexprs, "attrs": attrs,
               "options": {k: _encode(v) for k, v in sorted(options.items())}}
    key = json.dumps(variant, sort_keys=True)
    entry = _variants.setdefault(key, dict(variant, launches=0))
    entry["launches"] += 1


def _install_recorder():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from triton.runtime.interpreter import InterpretedFunction

    if getattr(InterpretedFunction.run, "_fastops_recording", False):
        return
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        try:
            # the project's kernels only: a test's own probe of the interpreter (test_corner_pool's bfloat16
            # compare reproducer) is not shipped and cannot be imported by the compile step
            if getattr(self.fn, "__module__", "").startswith("fastops."):
                _record(self, args, kwargs)
        except Exception as exc:  # never let the recorder change a test's outcome; report it at the end
            _problems.append(f"{getattr(self.fn, '__qualname__', self)}: {type(exc).__name__}: {exc}")
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    run._fastops_recording = True
    InterpretedFunction.run = run


def pytest_configure(config):
    if os.environ.get(ENV):
        _install_recorder()


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(ENV)
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"variants": sorted(_variants.values(), key=lambda v: (v["kernel"], json.dumps(v, sort_keys=True))),
                   "problems": _problems}, f, indent=1)


def pytest_terminal_summary(terminalreporter):
    if os.environ.get(ENV):
        n = sum(v["launches"] for v in _variants.values())
        terminalreporter.write_line(f"triton_ptxas: recorded {len(_variants)} Triton kernel variants "
                                    f"({n} launches) in {os.environ[ENV]}")
        for p in _problems[:10]:
            terminalreporter.write_line(f"triton_ptxas: could not record {p}")


# ----------------------------------------------------------------------------------------------------------------
# 2. Compiling (a separate process without TRITON_INTERPRET, so the kernels are real JITFunctions)
# ----------------------------------------------------------------------------------------------------------------
_FUNC_RE = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
_SPILL_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS_RE = re.compile(r"Used (\d+) registers")


def _decode(value):
    import triton.language as tl

    if isinstance(value, dict):
        if "tl_dtype" in value:
            return tl.dtype(value["tl_dtype"])
        if "tuple" in value:
            return tuple(_decode(v) for v in value["tuple"])
        if "callable" in value:
            return _resolve(value["callable"])
    return value


def _resolve(name):
    module, qualname = name.split(":")
    if "<locals>" in qualname:
        raise LookupError(f"{name} is defined inside a function; move it to module level so it can be compiled")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _jit_function(name):
    from triton.runtime.jit import JITFunction

    obj = _resolve(name)
    while not isinstance(obj, JITFunction) and hasattr(obj, "fn"):  # Autotuner / Heuristics wrappers
        obj = obj.fn
    if not isinstance(obj, JITFunction):
        raise LookupError(f"{name} is not a triton.jit function here ({type(obj).__name__})")
    return obj


def _parse_ptxas(log):
    out = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0}
    for line in log.splitlines():
        m = _SPILL_RE.search(line)
        if m:
            out["stack"] = max(out["stack"], int(m.group(1)))
            out["spill_stores"] += int(m.group(2))
            out["spill_loads"] += int(m.group(3))
        m = _REGS_RE.search(line)
        if m:
            out["registers"] = max(out["registers"], int(m.group(1)))
    return out


def _ptxas_on(ptx, arch):
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src,
                            "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True)
    return r.stderr


def _source(variant, arch):
    """(ASTSource, target, backend, parsed options) of one recorded variant for sm_<arch>."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    jit = _jit_function(variant["kernel"])
    names = [p.name for p in jit.params]
    missing = set(names) ^ set(variant["signature"])
    if missing:
        raise LookupError(f"recorded parameters differ from the kernel's now ({sorted(missing)}): re-record")
    signature = {n: variant["signature"][n] for n in names}
    constexprs = {(names.index(n),): _decode(v) for n, v in variant["constexprs"].items()}
    attrs = {(names.index(n),): backend.parse_attr(a) for n, a in variant["attrs"].items()}
    options = backend.parse_options({k: _decode(v) for k, v in variant["options"].items()})
    return ASTSource(jit, signature, constexprs, attrs), target, backend, options


def compile_variant(variant, arch):
    """Compile one recorded variant for sm_<arch>; returns {registers, spill_stores, spill_loads, ...}."""
    import triton
    from triton import knobs

    src, target, _, options = _source(variant, arch)
    knobs.nvidia.dump_ptxas_log = True
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        kernel = triton.compile(src, target=target, options=options.__dict__)
    log = buf.getvalue()
    if "registers" not in log:  # Triton's cache had the cubin: ptxas did not run, run it on the cached PTX
        log = _ptxas_on(kernel.asm["ptx"], arch)
    return dict(_parse_ptxas(log), key=_cache_key(src, target, options))


_INT_RE = re.compile(r"[iu](8|16|32|64)")


def ones_variant(variant, fixed=()):
    """The variant with every integer argument (but those named in `fixed`, the kernel's do_not_specialize) equal
    to 1, or None if it has no such argument.

    On a GPU, Triton's JIT turns an integer argument equal to 1 into a constexpr (`native_specialize_impl`), so
    a size or stride of 1 compiles a different kernel, in which e.g. `n.to(tl.float32)` on that argument fails
    (a Python int has no `.to`; `tl.cast(n, ...)` works for both). The tests rarely pass 1 for every argument
    that can be 1, so each recorded variant is also checked with all of them at 1."""
    ints = [n for n, t in variant["signature"].items() if _INT_RE.fullmatch(t) and n not in fixed]
    if not ints:
        return None
    out = json.loads(json.dumps(variant))
    for n in ints:
        out["signature"][n] = "constexpr"
        out["constexprs"][n] = 1
        out["attrs"].pop(n, None)
    return out


def frontend_check(variant, arch=90):
    """Run only Triton's front end (Python AST -> TTIR) on a variant: where a constexpr specialisation breaks the
    kernel's code. Much cheaper than a full compile."""
    from triton._C.libtriton import ir

    src, target, backend, options = _source(variant, arch)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context)


def describe_error(exc):
    """One line for a compile error: the innermost Triton source line that failed and the root cause (Triton's
    CompilationError chains one error per inlined function; the outermost names only the kernel's call site)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__)
    where = ""
    for e in chain:
        node, src = getattr(e, "node", None), getattr(e, "src", None)
        if src and hasattr(node, "lineno"):
            lines = src.split("\n")
            fn = next((ln.split("(")[0][4:] for ln in lines if ln.startswith("def ")), "?")
            where = f"{fn}:{node.lineno}: `{lines[node.lineno - 1].strip()}`: "
    root = chain[-1]
    msg = " | ".join(str(getattr(root, "error_message", None) or root).strip().splitlines()[-3:])
    return f"{where}{type(root).__name__}: {msg}"


def _compile_job(job):
    v, arch, kind, key = job
    try:
        if kind == "ones":
            frontend_check(v, arch)
            return {"key": key, "frontend": "ok"}, None
        return compile_variant(v, arch), None
    except Exception as exc:
        return None, describe_error(exc)


def _cache_key(src, target, options):
    opts = json.dumps({k: str(v) for k, v in sorted(options.__dict__.items())}, sort_keys=True)
    return hashlib.sha256(f"{src.hash()}|{target}|{opts}".encode()).hexdigest()


def _label(v):
    consts = ",".join(f"{k}={v['constexprs'][k] if not isinstance(v['constexprs'][k], dict) else list(v['constexprs'][k].values())[0]}"
                      for k in sorted(v["constexprs"]))
    ptrs = sorted({t[1:] for t in v["signature"].values() if t.startswith("*")})
    return f"ptr {'/'.join(ptrs) or '-'} {consts}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("record", nargs="*", default=[DEFAULT_RECORD], help="launches recorded by the pytest plugin "
                    "(several files: their union)")
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    ap.add_argument("--cache", default=None, help="results cache (default: beside the record)")
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")), help="parallel compiles")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every variant, not only the worst per kernel")
    args = ap.parse_args(argv)

    os.environ.pop("TRITON_INTERPRET", None)
    sys.path.insert(0, os.getcwd())
    data, seen = {"variants": [], "problems": []}, set()
    for path in args.record:
        if not os.path.exists(path):
            print(f"triton_ptxas: no record at {path}; run the tests with {ENV}={path} "
                  f"PYTHONPATH=tools python -m pytest tests -p triton_ptxas", file=sys.stderr)
            return 2
        with open(path) as f:
            part = json.load(f)
        for v in part["variants"]:
            key = json.dumps({k: x for k, x in v.items() if k != "launches"}, sort_keys=True)
            if key not in seen:
                seen.add(key)
                data["variants"].append(v)
        data["problems"] += part.get("problems", [])
    variants = data["variants"]
    cache_path = args.cache or os.path.join(os.path.dirname(args.record[0]) or ".", "triton_ptxas_cache.json")
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)

    import torch  # noqa: F401  (fastops' kernel modules import it; load it before triton's backends)

    # Every recorded variant compiled for every arch, and each variant's "all integer arguments = 1" twin through
    # the front end only (what a size or stride of 1 changes is constexpr folding in the Python-to-TTIR step).
    jobs = [(v, arch, "compile") for v in variants for arch in args.arch]
    ones = {}
    for v in variants:
        try:
            o = ones_variant(v, {p.name for p in _jit_function(v["kernel"]).params if p.do_not_specialize})
        except Exception:
            o = None  # the kernel cannot be located: reported below by its compile job
        if o is not None:
            o.pop("launches", None)
            ones.setdefault(json.dumps(o, sort_keys=True), o)
    jobs += [(o, max(args.arch), "ones") for o in ones.values()]

    results, failures, todo, t0 = [], [], [], time.time()
    for v, arch, kind in jobs:
        what = f"{v['kernel']} sm_{arch} [{_label(v)}]" if kind == "compile" else \
            f"{v['kernel']} with its integer arguments equal to 1 [{_label(v)}]"
        try:
            # Cheap cache probe: Triton's source hash covers the kernel's code and its callees.
            src, target, _, options = _source(v, arch)
            key = _cache_key(src, target, options) + ("|ones" if kind == "ones" else "")
        except Exception as exc:
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        if key in cache:
            if kind == "compile":
                results.append((v, arch, cache[key]))
        else:
            todo.append(((v, arch, kind, key), what))
    if todo:
        print(f"triton_ptxas: {len(todo)} kernel variants to compile or check ({len(jobs) - len(todo)} cached), "
              f"{args.jobs} jobs")
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            for (job, what), (r, err) in zip(todo, pool.imap(_compile_job, [j for j, _ in todo])):
                if err is not None:  # a compile error on the GPU path: the point of this check
                    failures.append(f"{what}: {err}")
                    continue
                cache[r["key"]] = r
                if job[2] == "compile":
                    results.append((job[0], job[1], r))
    with open(cache_path, "w") as f:
        json.dump(cache, f, indent=1, sort_keys=True)

    # One line per (kernel, arch): the worst variant (most spills, then most registers); -v prints all.
    worst = {}
    for v, arch, r in results:
        k = (v["kernel"], arch)
        score = (r["spill_stores"] + r["spill_loads"], r["registers"])
        if args.verbose or k not in worst or score > worst[k][0]:
            worst[k if not args.verbose else (k, _label(v))] = (score, v, r)
    print(f"{'kernel':52s} {'arch':5s} {'regs':>4s} {'spill st':>8s} {'spill ld':>8s}  variant")
    for k in sorted(worst):
        _, v, r = worst[k]
        arch = k[1] if not args.verbose else k[0][1]
        print(f"{v['kernel'].replace('fastops.triton.', ''):52s} sm_{arch:<2d} {r['registers']:4d} "
              f"{r['spill_stores']:8d} {r['spill_loads']:8d}  {_label(v)}")
    spills = [(v, arch, r) for v, arch, r in results if r["spill_stores"] or r["spill_loads"]]
    for v, arch, r in spills:
        failures.append(f"{v['kernel']} sm_{arch} [{_label(v)}] spills: {r['spill_stores']} bytes stores, "
                        f"{r['spill_loads']} bytes loads, {r['registers']} registers")
    for p in data.get("problems", []):
        failures.append(f"not recorded: {p}")
    kernels = len({v["kernel"] for v in variants})
    print(f"triton_ptxas: {len(variants)} variants of {kernels} kernels x sm_{'/sm_'.join(map(str, args.arch))}: "
          f"{len(results)} compiled, {len(ones)} checked with integer arguments = 1, {len(failures)} problem(s), "
          f"{time.time() - t0:.0f} s")
    for f_ in failures:
        print(f"triton_ptxas: FAIL {f_}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
