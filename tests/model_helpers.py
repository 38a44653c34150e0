"""Shared helpers of the bundled models' tests (test_model_*.py): the same model run with the fastops ops and with
the reference ops, and the comparisons of their results."""
import torch


def run_both(model, fn):
    """fn(model) with model.impl = "auto" (fastops' kernels), then with "reference"; model.impl is restored."""
    old = model.impl
    try:
        model.impl = "auto"
        a = fn(model)
        model.impl = "reference"
        r = fn(model)
    finally:
        model.impl = old
    return a, r


def random_images(b, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


def assert_grads_close(got, want, rtol):
    """Deep float32 backward: compare per tensor relative to its scale (summation order differs in the ops)."""
    assert set(got) == set(want)
    for k in want:
        scale = want[k].abs().max().item()
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=rtol * scale + 1e-12, msg=k)
        assert (got[k] - want[k]).norm() <= rtol * want[k].norm() + 1e-12, k
