"""Compile fastops/triton/masks.py's kernels for sm_90 without a GPU (TTIR -> TTGIR -> LLVM -> PTX -> cubin) and
print ptxas registers/spills of the float32 variants: catches GPU-only compile errors the interpreter never sees.

Run: PYTHONPATH=. .venv/bin/python tools/triton_ptxas_masks.py
"""
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import torch, triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
sys.path.insert(0, ".")
import fastops.triton.masks as M

target = GPUTarget("cuda", 90, 32)
def comp(fn, sig, consts, stage="ptx"):
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
    try:
        k = triton.compile(src, target=target)
        print("OK  ", fn.__name__, {k_: str(v) for k_, v in consts.items()})
    except Exception as e:
        msg = str(e).splitlines()
        print("FAIL", fn.__name__, consts, type(e).__name__, "\n   ", "\n    ".join(msg[:12]))

I = "i64"
for dt, acc in (("fp32", tl.float32), ("fp64", tl.float64), ("fp16", tl.float32)):
    for thresh in (True, False):
        out = "*i1" if thresh else "*" + dt
        sig = {"pr": "*"+dt, "sY": I, "sX": I, "sP": I, "cf": "*"+dt, "cs0": I, "cs1": I, "crops": "*i32", "Hp": "i32", "Wp": "i32",
               "P": "i32", "out_h": "i32", "out_w": "i32", "thr": "fp32", "out": out, "THRESH": "constexpr", "ACC": "constexpr", "BLOCK": "constexpr", "PB": "constexpr"}
        comp(M._yolact_masks_kernel, sig, {"THRESH": thresh, "ACC": acc, "BLOCK": 64, "PB": 32})
        sig = {"masks": "*"+dt, "m0": I, "m1": I, "m2": I, "Mh": "i32", "Mw": "i32", "padding": "i32", "geo": "*i64", "H": "i32", "W": "i32",
               "thr": "fp32", "out": out, "THRESH": "constexpr", "ACC": "constexpr", "BLOCK": "constexpr"}
        comp(M._paste_kernel, sig, {"THRESH": thresh, "ACC": acc, "BLOCK": 256})
    common = {"pr": "*"+dt, "sY": I, "sX": I, "sP": I, "cf": "*"+dt, "cs0": I, "cs1": I, "gt": "*"+dt, "g0": I, "g1": I, "g2": I, "crops": "*i32", "dims": "*fp64"}
    sig = dict(common, Hp="i32", Wp="i32", P="i32", loss="*"+dt, ACC="constexpr", BLOCK="constexpr", PB="constexpr")
    comp(M._mask_loss_fwd_kernel, sig, {"ACC": acc, "BLOCK": 64, "PB": 32})
    sig = dict({"grad": "*"+dt, "gs": I}, **common, Hp="i32", Wp="i32", P="i32", gcoeffs="*"+dt, ACC="constexpr", BLOCK="constexpr", PB="constexpr")
    comp(M._mask_loss_bwd_coeffs_kernel, sig, {"ACC": acc, "BLOCK": 64, "PB": 32})
    sig = dict({"grad": "*"+dt, "gs": I}, **common, N="i32", Hp="i32", Wp="i32", P="i32", gprotos="*"+dt, ACC="constexpr", BLOCK="constexpr", PB="constexpr")
    comp(M._mask_loss_bwd_protos_kernel, sig, {"ACC": acc, "BLOCK": 64, "PB": 32})

# ptxas figures for the fp32 variants
import subprocess, tempfile, glob
from triton.backends.nvidia.compiler import get_ptxas
_p = get_ptxas(90); ptxas = getattr(_p, "path", _p)
def regs(fn, sig, consts):
    k = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts), target=target)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    r = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    lines = [l for l in r.stderr.splitlines() if "registers" in l or "spill" in l]
    print("PTXAS", fn.__name__, consts.get("THRESH", ""), " | ".join(l.split("info    :")[-1].strip() for l in lines))
dt, acc = "fp32", tl.float32
sig = {"pr": "*"+dt, "sY": I, "sX": I, "sP": I, "cf": "*"+dt, "cs0": I, "cs1": I, "crops": "*i32", "Hp": "i32", "Wp": "i32",
       "P": "i32", "out_h": "i32", "out_w": "i32", "thr": "fp32", "out": "*i1", "THRESH": "constexpr", "ACC": "constexpr", "BLOCK": "constexpr", "PB": "constexpr"}
regs(M._yolact_masks_kernel, sig, {"THRESH": True, "ACC": acc, "BLOCK": 32, "PB": 32})
sig = {"masks": "*"+dt, "m0": I, "m1": I, "m2": I, "Mh": "i32", "Mw": "i32", "padding": "i32", "geo": "*i64", "H": "i32", "W": "i32",
       "thr": "fp32", "out": "*fp32", "THRESH": "constexpr", "ACC": "constexpr", "BLOCK": "constexpr"}
regs(M._paste_kernel, sig, {"THRESH": False, "ACC": acc, "BLOCK": 256})
common = {"pr": "*"+dt, "sY": I, "sX": I, "sP": I, "cf": "*"+dt, "cs0": I, "cs1": I, "gt": "*"+dt, "g0": I, "g1": I, "g2": I, "crops": "*i32", "dims": "*fp64"}
regs(M._mask_loss_fwd_kernel, dict(common, Hp="i32", Wp="i32", P="i32", loss="*"+dt, ACC="constexpr", BLOCK="constexpr", PB="constexpr"), {"ACC": acc, "BLOCK": 64, "PB": 32})
regs(M._mask_loss_bwd_coeffs_kernel, dict({"grad": "*"+dt, "gs": I}, **common, Hp="i32", Wp="i32", P="i32", gcoeffs="*"+dt, ACC="constexpr", BLOCK="constexpr", PB="constexpr"), {"ACC": acc, "BLOCK": 64, "PB": 32})
regs(M._mask_loss_bwd_protos_kernel, dict({"grad": "*"+dt, "gs": I}, **common, N="i32", Hp="i32", Wp="i32", P="i32", gprotos="*"+dt, ACC="constexpr", BLOCK="constexpr", PB="constexpr"), {"ACC": acc, "BLOCK": 32, "PB": 32})
