"""The build: portable CPU code with per-ISA kernels chosen at load time, packaging metadata, unbuilt-tree errors.

A portable build (the default; FASTOPS_MARCH unset) compiles everything for baseline x86-64 and each
csrc/<family>/<family>_cpu.cpp once more per wider ISA (csrc/cpu_isa.h); `torch.ops.fastops._cpu_isa()` names the
variant registered at load time ("native" for a FASTOPS_MARCH build, which has no dispatch).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import fastops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SO = (glob.glob(os.path.join(os.path.dirname(fastops.__file__), "_C*.so")) or [None])[0]
ISA = torch.ops.fastops._cpu_isa() if hasattr(torch.ops.fastops, "_cpu_isa") else "native"  # stale build
portable = pytest.mark.skipif(ISA == "native", reason="this build was made with FASTOPS_MARCH (no ISA dispatch)")


@portable
def test_cpu_isa_follows_torch():
    cap = torch.backends.cpu.get_cpu_capability()
    allowed = {"DEFAULT": {"default"}, "AVX2": {"default", "avx2"}, "AVX512": {"default", "avx2", "avx512"}}
    assert ISA in allowed.get(cap, {"default"}), f"fastops chose {ISA} while torch runs {cap}"
    if cap in ("AVX2", "AVX512"):
        assert ISA != "default", "an AVX2 machine runs the baseline kernels: the avx2 variant is missing"


def _run(code, cwd=ROOT, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=600)


_CASES = r"""
import sys, torch, fastops
t = torch.load(sys.argv[2])
x, rois, boxes = t["x"], t["rois"], t["boxes"]
out = {}
out["roi_align"] = fastops.roi_align(x, rois, 7, spatial_scale=1.0, sampling_ratio=2, aligned=True)
# (30 RoIs of 1-21 feature pixels: the AVX-512 step on AVX-512 CPUs, the AVX2 steps under ATEN_CPU_CAPABILITY=avx2)
small = torch.cat([t["idxs"].clamp(max=1).float()[:, None], boxes], 1)
out["roi_align_small"] = fastops.roi_align(x, small, 7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
out["roi_align_small_adaptive"] = fastops.roi_align(x, small, (3, 5), spatial_scale=0.25, sampling_ratio=0)
out["roi_align_cl"] = fastops.roi_align(x.contiguous(memory_format=torch.channels_last), rois, 7, sampling_ratio=2)
out["flow_warp"] = fastops.flow_warp(x, t["flow"])
for mode in ("top", "bottom", "left", "right"):
    out["corner_pool_" + mode] = fastops.corner_pool(x, mode)
out["heatmaps"] = fastops.render_gaussian_heatmaps(t["kp"], heatmap_size=(64, 48), sigma=2.0)[0]
out["argmax"] = fastops.heatmap_argmax(t["maps"], refine="dark")[0]
out["paste"] = fastops.paste_masks(t["masks"], boxes, (300, 320)).float()
out["nms"] = fastops.nms(boxes, t["scores"], 0.5).float()
out["batched_nms"] = fastops.batched_nms(boxes, t["scores"], t["idxs"], 0.5).float()
maps = t["maps"].requires_grad_()
out["soft_argmax"] = fastops.soft_argmax(maps, 1.0)
out["soft_argmax_grad"] = torch.autograd.grad(out["soft_argmax"], maps, torch.ones_like(out["soft_argmax"]))[0]
out["isa"] = torch.ops.fastops._cpu_isa()
torch.save(out, sys.argv[1] if len(sys.argv) > 1 else "/dev/null")
"""


@portable
def test_isa_variants_agree(tmp_path):
    """The baseline kernels (ATEN_CPU_CAPABILITY=default, as on a CPU without AVX2) give the same results; on an
    AVX-512 CPU, so do the AVX2 copies of the files that also have an AVX-512 one (setup.py's AVX512_KERNELS)."""
    cap_now = torch.backends.cpu.get_cpu_capability()
    if cap_now == "DEFAULT":
        pytest.skip("this CPU runs the baseline variant only")
    # Inputs made here: torch.randn itself draws different numbers under ATEN_CPU_CAPABILITY=default.
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 200
    inputs = {"x": torch.randn(2, 16, 40, 56, generator=g), "flow": torch.randn(2, 2, 40, 56, generator=g) * 3,
              "rois": torch.tensor([[0, 3.0, 4, 50, 30], [1, 10, 2, 30, 38], [0, 0, 0, 55, 39]]),
              "kp": torch.rand(4, 17, 2, generator=g) * 40, "maps": torch.randn(4, 17, 64, 48, generator=g),
              "boxes": torch.cat([xy, xy + torch.rand(30, 2, generator=g) * 80 + 4], 1),
              "masks": torch.rand(30, 1, 28, 28, generator=g), "scores": torch.rand(30, generator=g),
              "idxs": torch.randint(0, 3, (30,), generator=g)}
    torch.save(inputs, str(tmp_path / "inputs.pt"))
    results = {}
    for cap in ("default", None) + (("avx2",) if cap_now == "AVX512" else ()):
        path = str(tmp_path / f"{cap}.pt")
        env = {"ATEN_CPU_CAPABILITY": cap} if cap else {}
        r = subprocess.run([sys.executable, "-c", _CASES, path, str(tmp_path / "inputs.pt")], capture_output=True,
                           text=True, cwd=ROOT,
                           env=dict({k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}, **env),
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        results[cap] = torch.load(path)
    assert results["default"]["isa"] == "default"
    assert results[None]["isa"] == ISA
    if "avx2" in results:
        assert results["avx2"]["isa"] == "avx2"
    for name, want in results[None].items():
        if name == "isa":
            continue
        for cap in set(results) - {None}:
            got = results[cap][name]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{cap} {name}: {m}")


def _functions_using_avx(path, bindings):
    """Names of functions (with an nm type in `bindings`) whose code uses AVX (VEX/EVEX: v* on xmm, ymm, zmm)."""
    nm = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    wanted = {line.split()[-1] for line in nm.splitlines() if len(line.split()) == 3 and line.split()[1] in bindings}
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    head = re.compile(r"^[0-9a-f]+ <(.+)>:$")
    avx = re.compile(r"\s(v[a-z0-9]+)\s.*%[xyz]mm|%[yz]mm")
    bad, current = set(), None
    for line in dis.splitlines():
        m = head.match(line)
        if m:
            current = m.group(1) if m.group(1) in wanted else None
        elif current and avx.search(line):
            bad.add(current)
    return sorted(bad)


def _baseline_objects():
    """Objects of the last in-place build that hold baseline code: the neutral files, the CUDA hosts and the
    default kernel copies (a kernel file's own object outside build/isa/ is left over from a FASTOPS_MARCH build
    and not linked into a portable one)."""
    return [o for o in glob.glob(os.path.join(ROOT, "build", "temp.*", "**", "*.o"), recursive=True)
            if "/isa/default/" in o or ("/isa/" not in o and not o.endswith("_cpu.o"))]


def _symbols(path):
    """Every symbol an object defines or references."""
    nm = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in nm.splitlines() if line.split()}


@portable
@pytest.mark.skipif(shutil.which("objdump") is None or SO is None, reason="needs objdump and the in-place build")
def test_shared_code_is_baseline():
    """No function that baseline code can call is an AVX copy. The linker keeps one copy of each global or weak
    function (inline functions emitted out of line, templates); setup.py links the baseline objects first so that
    copy is the baseline one. The AVX functions left are those only AVX2 objects emit (e.g. a std::vector
    constructor the baseline copies inline): no baseline object defines or references them."""
    objs = _baseline_objects()
    if not objs:
        pytest.skip("no objects of an in-place build under build/temp.*")
    baseline_symbols = set().union(*(_symbols(o) for o in objs))
    avx = _functions_using_avx(SO, {"T", "W"})
    bad = [f for f in avx if f in baseline_symbols]
    demangled = subprocess.run(["c++filt"], input="\n".join(bad[:20]), capture_output=True, text=True).stdout
    assert not bad, f"{len(bad)} global/weak functions in {SO} use AVX and baseline code calls them:\n{demangled}"


@portable
def test_baseline_objects_have_no_avx():
    """The baseline objects of the last in-place build (neutral files, CUDA hosts, default kernel variants)."""
    objs = _baseline_objects()
    if not objs:
        pytest.skip("no objects of an in-place build under build/temp.*")
    bad = {os.path.relpath(o, ROOT): f for o in objs if (f := _functions_using_avx(o, {"T", "W", "t"}))}
    assert not bad, "baseline objects with AVX code: " + ", ".join(f"{o} ({fs[:3]})" for o, fs in bad.items())


def test_avx512_kernel_list_names_kernel_files():
    """setup.py's AVX512_KERNELS (the files with an AVX-512 copy) names existing kernel files, and an in-place
    portable build compiled their copies: a renamed file would silently lose its copy."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        m = re.search(r"AVX512_KERNELS = \{([^}]*)\}", f.read())
    assert m, "setup.py has no AVX512_KERNELS"
    listed = set(re.findall(r'"([^"]+)"', m.group(1)))
    assert listed and all(p.endswith("_cpu.cpp") and os.path.exists(os.path.join(ROOT, "csrc", p)) for p in listed), \
        listed
    objs = glob.glob(os.path.join(ROOT, "build", "temp.*", "build", "isa", "avx512", "**", "*_cpu.o"), recursive=True)
    if not objs:
        pytest.skip("no avx512 objects of an in-place portable build under build/temp.*")
    built = {o.split("/isa/avx512/")[1][:-2] + ".cpp" for o in objs}
    # a stale object of a file removed from the list may remain: only the listed ones must be there
    assert listed <= built, sorted(listed - built)


def test_pyproject_pins_the_torch_it_builds_against():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    m = re.search(r"requires\s*=\s*\[([^\]]*)\]", text)
    assert m, "pyproject.toml has no [build-system] requires"
    pins = re.findall(r'"torch==([^"]+)"', m.group(1))
    assert pins == [torch.__version__.split("+")[0]], f"build requires torch {pins}, runtime is {torch.__version__}"


def test_unbuilt_tree_names_its_path(tmp_path):
    """Importing fastops from a source tree without a build says which tree and what to run."""
    pkg = tmp_path / "fastops"
    shutil.copytree(os.path.dirname(fastops.__file__), pkg,
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__", "models"))
    # Drop an editable install's finder (it would serve fastops._C from the tree it maps): a fresh clone.
    r = _run("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
             "import fastops", cwd=str(tmp_path), PYTHONPATH=str(tmp_path))
    assert r.returncode != 0
    assert str(pkg) in r.stderr and "make build" in r.stderr, r.stderr[-2000:]


@portable
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
@pytest.mark.parametrize("family,pattern", [("roi_align", r"vfmadd\w*ps\s.*%ymm"), ("nms", r"vmovmskps\s.*%ymm"),
                                            ("corner_pool", r"vunpcklps\s.*%ymm")])
def test_avx2_copies_compile_their_vector_paths(family, pattern):
    """The AVX2 copy of a kernel file compiles its `#if defined(__AVX2__)` paths (g++'s target pragma alone does
    not define the feature macros in C++: the copies then held scalar code and ran 2-4x slower than native)."""
    objs = glob.glob(os.path.join(ROOT, "build", "temp.*", "build", "isa", "avx2", family, f"{family}_cpu.o"))
    if not objs:
        pytest.skip("no objects of an in-place portable build under build/temp.*")
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", objs[0]], capture_output=True, text=True,
                         check=True).stdout
    assert len(re.findall(pattern, dis)) > 0, f"{family}: no {pattern} in the AVX2 copy"


def test_wheel_carries_the_models_and_the_docs(tmp_path):
    """Issue 12 (packaging): the wheel holds fastops.models and docs/*.md as fastops/docs/ (the docstrings point to
    docs/<family>.md). Built without the extension (FASTOPS_NO_EXT=1): only the file list is checked here."""
    import zipfile

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path)], env={**os.environ, "FASTOPS_NO_EXT": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = glob.glob(str(tmp_path / "fastops-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    docs = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))}
    assert docs and {f"fastops/docs/{d}" for d in docs} <= names, sorted(names)
    assert "fastops/models/__init__.py" in names and "fastops/patch.py" in names
