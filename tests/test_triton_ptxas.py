"""tools/triton_ptxas.py itself: the recorder sees Triton's specialisation of integer arguments equal to 1, and the
compile step fails on a kernel that breaks when an integer argument is 1, even if the tests never passed 1."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def to_kernel(out, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out + offs, offs.to(tl.float32) / n.to(tl.float32), mask=offs < n)


@triton.jit
def cast_kernel(out, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out + offs, offs.to(tl.float32) / tl.cast(n, tl.float32), mask=offs < n)
'''


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tool_and_kernels(tmp_path):
    # A private copy of the tool module: the `-p triton_ptxas` plugin's own record must not see these kernels.
    tool = _load(os.path.join(ROOT, "tools", "triton_ptxas.py"), "_triton_ptxas_under_test")
    (tmp_path / "tiny_kernels.py").write_text(textwrap.dedent(KERNELS))
    kernels = _load(str(tmp_path / "tiny_kernels.py"), "tiny_kernels")
    yield tool, kernels
    for name in ("_triton_ptxas_under_test", "tiny_kernels"):
        sys.modules.pop(name, None)


def test_recorder_specialises_ints_equal_to_one(tool_and_kernels):
    tool, k = tool_and_kernels
    out = torch.zeros(16)
    for n in (1, 5):
        tool._record(k.to_kernel, (out, n), {"BLOCK": 16})
    variants = {json.dumps(v["constexprs"].get("n")): v for v in tool._variants.values()}
    assert variants["1"]["signature"]["n"] == "constexpr"  # what the GPU JIT compiles for n == 1
    assert variants["null"]["signature"]["n"] == "i32"
    assert variants["null"]["constexprs"] == {"BLOCK": 16}
    assert tool.ones_variant(variants["null"])["constexprs"] == {"BLOCK": 16, "n": 1}


def test_compile_step_fails_on_a_kernel_that_breaks_for_one(tool_and_kernels, tmp_path):
    pytest.importorskip("triton.backends.nvidia.compiler")
    tool, k = tool_and_kernels
    out = torch.zeros(16)
    # n = 5 only: the broken kernel compiles as recorded; only the "integer arguments = 1" check can catch it.
    tool._record(k.to_kernel, (out, 5), {"BLOCK": 16})
    tool._record(k.cast_kernel, (out, 5), {"BLOCK": 16})
    record = tmp_path / "launches.json"
    record.write_text(json.dumps({"variants": list(tool._variants.values()), "problems": []}))
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "triton_ptxas.py"), str(record), "--arch", "90",
                        "-j", "1", "--cache", str(tmp_path / "cache.json")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    fails = [ln for ln in r.stderr.splitlines() if "FAIL" in ln]
    assert len(fails) == 1, r.stderr
    assert "tiny_kernels:to_kernel with its integer arguments equal to 1" in fails[0]
    assert "n.to(tl.float32)" in fails[0] and "has no attribute 'to'" in fails[0]
    assert "2 compiled, 2 checked with integer arguments = 1, 1 problem(s)" in r.stdout, r.stdout
