"""Every implementation of every op against impl="reference", on every device this machine has.

Parametrised over (sample, impl, device): cpp/CPU always runs; cpp/CUDA when a GPU is present and the build has
the CUDA kernels; triton/CPU under TRITON_INTERPRET=1 (tests/conftest.py sets it); triton/CUDA when a GPU is
present and TRITON_INTERPRET is unset (`make test` runs that second pass on a GPU machine). A missing device is
a skip that names it.
"""
from __future__ import annotations

import os

import pytest
import torch

import fastops
from impl_samples import all_samples

SAMPLES = all_samples()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAVE_GPU = torch.cuda.is_available()
BACKENDS = [("cpp", "cpu"), ("cpp", "cuda"), ("triton", "cpu"), ("triton", "cuda")]


def _skip_reason(sample, impl, device):
    if impl not in sample.impls:
        return f"{sample.name}: no {impl} implementation"
    if device == "cuda" and not HAVE_GPU:
        return "no CUDA device on this machine"
    if impl == "cpp" and device == "cuda" and not fastops.cuda_compiled():
        return "this build has no CUDA kernels"
    if impl == "triton" and device == "cpu" and not INTERPRET:
        return "triton on CPU needs TRITON_INTERPRET=1"
    if impl == "triton" and device == "cuda" and INTERPRET:
        return "triton on CUDA needs TRITON_INTERPRET unset (make test's GPU pass)"
    if impl == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
    return None


def _flatten(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _flatten(item)]
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in _flatten(x[k])]
    return [torch.as_tensor(x)]


def _clone_args(args, grad):
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            a = a.detach().clone()
            if i in grad:
                a.requires_grad_(True)
        elif isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            a = [t.detach().clone().requires_grad_(i in grad) for t in a]
        out.append(a)
    return out


def _grads(args, grad):
    gs = []
    for i in grad:
        a = args[i]
        gs.extend([t.grad for t in a] if isinstance(a, list) else [a.grad])
    return gs


def _run(sample, impl, device):
    args, kwargs = sample.make(torch.device(device))
    args = _clone_args(args, sample.grad)
    out = sample.fn(*args, **kwargs, impl=impl)
    if sample.grad:
        floats = [t for t in _flatten(out) if t.is_floating_point() and t.requires_grad]
        g = torch.Generator().manual_seed(1)
        loss = sum((t.float() * torch.rand(t.shape, generator=g).to(t.device)).sum() for t in floats)
        loss.backward()
    return _flatten(out), (_grads(args, sample.grad) if sample.grad else [])


def _compare(what, got, want, sample):
    assert len(got) == len(want), f"{what}: {len(got)} tensors, reference gave {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert g is not None and w is not None, f"{what}[{k}]: missing gradient"
        g, w = g.detach().cpu(), w.detach().cpu()
        assert g.shape == w.shape, f"{what}[{k}]: shape {tuple(g.shape)} vs reference {tuple(w.shape)}"
        assert g.dtype == w.dtype, f"{what}[{k}]: dtype {g.dtype} vs reference {w.dtype}"
        if g.is_floating_point():
            torch.testing.assert_close(g, w, atol=sample.atol, rtol=sample.rtol, equal_nan=True,
                                       msg=lambda m: f"{what}[{k}]: {m}")
        else:
            assert torch.equal(g, w), f"{what}[{k}]: differs from the reference"


@pytest.mark.parametrize("impl,device", BACKENDS, ids=[f"{i}-{d}" for i, d in BACKENDS])
@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_impl_matches_reference(sample, impl, device):
    reason = _skip_reason(sample, impl, device)
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    want_out, want_grad = _run(sample, "reference", device)
    torch.manual_seed(0)
    got_out, got_grad = _run(sample, impl, device)
    _compare("output", got_out, want_out, sample)
    _compare("grad", got_grad, want_grad, sample)


def test_every_family_declares_samples():
    import fastops.ops as ops_pkg
    import pkgutil

    families = {m.name for m in pkgutil.iter_modules(ops_pkg.__path__) if not m.name.startswith("_")}
    declared = {s.fn.__module__.rsplit(".", 1)[-1] for s in SAMPLES}
    missing = families - declared
    assert not missing, f"op families without samples in tests/impl_samples: {sorted(missing)}"
