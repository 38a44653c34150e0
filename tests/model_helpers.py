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


def detection_images(h, w, seed=1, n=2):
    """n images [3, h, w] in [0, 1), as the detection models take them (a list)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for _ in range(n)]


def detection_targets(make_target, seed=2, n=2):
    """[make_target(g) for each of n images], all drawing from one generator g seeded with seed."""
    g = torch.Generator().manual_seed(seed)
    return [make_target(g) for _ in range(n)]


def random_boxes(g, k, h, w, lo, span, side, min_side):
    """k xyxy boxes in an h x w image: centres uniform in [lo, lo + span] of each side (fractions), sides uniform in
    [min_side, min_side + side] px. Draws the centres, then the sides, from g."""
    ctr = torch.rand(k, 2, generator=g) * torch.tensor([w * span, h * span]) + torch.tensor([w * lo, h * lo])
    wh = torch.rand(k, 2, generator=g) * side + min_side
    return torch.cat([ctr - wh / 2, ctr + wh / 2], 1)


def assert_state_dicts_equal(got, want):
    """Same keys in the same order and the same tensors to the bit (dtype and shape included)."""
    got, want = got.state_dict(), want.state_dict()
    assert list(got) == list(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


def reload_from_file(model, other, load, path):
    """Save model's state_dict to path, load it into other with load(other, str(path)), check every tensor."""
    torch.save(model.state_dict(), path)
    load(other, str(path))
    assert_state_dicts_equal(other, model)
    return other
