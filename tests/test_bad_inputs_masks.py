"""Bad and extreme inputs of the masks family (yolact_masks, yolact_mask_loss, paste_masks), on every impl.

Cases that could crash the process (huge sizes, direct calls of the compiled ops, non-finite boxes) run in a fresh
interpreter (tests/isolated.py); plain argument errors use pytest.raises.
"""
import pytest
import torch

import fastops
from fastops._library import TRITON_INTERPRET
from isolated import expect_error, expect_ok

IMPLS = ["cpp", "reference"] + (["triton"] if TRITON_INTERPRET else [])

_YOLACT = """
g = torch.Generator().manual_seed(0)
protos = torch.randn(9, 11, 4, generator=g)
coeffs = torch.randn(3, 4, generator=g)
boxes = torch.tensor([[0.1, 0.2, 0.6, 0.7], [0.9, 0.0, 0.3, 0.5], [0.0, 0.0, 1.0, 1.0]])
gt = (torch.rand(3, 9, 11, generator=g) > 0.5).float()
"""
_PASTE = """
g = torch.Generator().manual_seed(0)
masks = torch.rand(3, 1, 6, 6, generator=g)
boxes = torch.tensor([[2.0, 3.0, 17.5, 12.2], [-5.5, 4.0, 9.0, 30.0], [10.0, -2.0, 40.0, 8.0]])
"""


# ---- huge sizes: a clear error naming the argument, before anything is allocated ------------------------------

def _yolact_args():
    g = torch.Generator().manual_seed(0)
    return torch.randn(9, 11, 4, generator=g), torch.randn(3, 4, generator=g), torch.rand(3, 4, generator=g)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", [(2**40, 2**40), (2**31, 5), (5, 2**62), (2**64, 1)])
def test_yolact_masks_huge_output_size(impl, size):
    """Checked in Python before any impl allocates: a ValueError naming output_size."""
    with pytest.raises(ValueError, match="output_size"):
        fastops.yolact_masks(*_yolact_args(), size, impl=impl)
    with pytest.raises(ValueError, match="output_size"):
        fastops.yolact_masks(*_yolact_args(), size, threshold=None, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(2**40, 2**40), (2**31, 3), (2**30, 2**30)])
def test_paste_masks_huge_image_shape(impl, shape):
    with pytest.raises(ValueError, match="image_shape"):
        fastops.paste_masks(torch.rand(3, 1, 6, 6), torch.rand(3, 4) * 9, shape, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("padding", [2**62, 2**40, 2**20 + 1, -1, 2**64])
def test_paste_masks_huge_padding(impl, padding):
    with pytest.raises(ValueError, match="padding"):
        fastops.paste_masks(torch.rand(3, 1, 6, 6), torch.rand(3, 4) * 9, (20, 30), padding, impl=impl)


@pytest.mark.parametrize("call", [
    "torch.ops.fastops.yolact_masks(protos, coeffs, boxes, 2**40, 2**40, True, 0.5)",
    "torch.ops.fastops.yolact_masks(protos, coeffs, boxes, 2**62, 2**62, True, None)",
])
def test_compiled_yolact_masks_checks_sizes(call):
    """The compiled op, called directly, checks sizes before allocating (no overflow, no crash)."""
    expect_error(_YOLACT + call, RuntimeError, "output_size", timeout=900)


@pytest.mark.parametrize("call,match", [
    ("torch.ops.fastops.paste_masks(masks[:, 0], boxes, 2**40, 2**40, 1, None)", "image_shape"),
    ("torch.ops.fastops.paste_masks(masks[:, 0], boxes, 20, 30, 2**62, None)", "padding"),
])
def test_compiled_paste_masks_checks_sizes(call, match):
    expect_error(_PASTE + call, RuntimeError, match, timeout=900)


@pytest.mark.parametrize("call,match", [
    ("torch.ops.fastops.yolact_masks(protos, coeffs, boxes, -3, 5, True, None)", "output_size"),
    ("torch.ops.fastops.paste_masks(masks[:, 0], boxes, -1, 30, 1, None)", "image_shape"),
    ("torch.ops.fastops.paste_masks(masks[:, 0], boxes, 20, 30, 2**40, None)", "padding"),
    ("torch.ops.fastops.yolact_masks(protos, coeffs[:, :2], boxes, 5, 5, True, 0.5)", "coeffs"),
    ("torch.ops.fastops.yolact_masks(protos, coeffs.double(), boxes, 5, 5, True, 0.5)", "coeffs"),
    ("torch.ops.fastops.yolact_masks(protos, coeffs, boxes.long(), 5, 5, True, 0.5)", "boxes"),
    ("torch.ops.fastops.yolact_masks(protos[:0], coeffs, boxes, 5, 5, True, 0.5)", "protos"),
    ("torch.ops.fastops.yolact_masks(protos.long(), coeffs.long(), boxes, 5, 5, True, 0.5)", "protos"),
    ("torch.ops.fastops.yolact_mask_loss(protos, coeffs, boxes, gt[:, :3])", "gt_masks"),
    ("torch.ops.fastops.yolact_mask_loss(protos, coeffs, boxes, gt.double())", "gt_masks"),
    ("torch.ops.fastops._yolact_mask_loss_backward(torch.ones(2), protos, coeffs, boxes, gt)", "grad"),
    ("torch.ops.fastops._yolact_mask_loss_backward(torch.ones(3, dtype=torch.long), protos, coeffs, boxes, gt)",
     "grad"),
])
def test_compiled_ops_check_arguments(call, match):
    """Direct calls of the compiled ops are checked too (in-process: TORCH_CHECK before any allocation)."""
    ns = {"torch": torch}
    exec(_YOLACT + _PASTE.replace("boxes =", "pboxes ="), ns)
    ns["boxes"] = ns["pboxes"] if "paste_masks" in call else ns["boxes"]
    with pytest.raises(RuntimeError, match=match):
        eval(call, ns)


# ---- non-finite and degenerate inputs: correct results, no crash ------------------------------------------------

def test_non_finite_boxes_every_impl():
    impls = IMPLS
    expect_ok(_YOLACT + _PASTE.replace("boxes", "pboxes") + f"""
nan, inf = float("nan"), float("inf")
b = torch.tensor([[nan, 0.1, 0.5, 0.5], [0.1, 0.1, inf, 0.5], [-inf, -1e30, 1e30, nan]])
pb = torch.tensor([[nan, 0.0, 5.0, 5.0], [1e30, -1e30, 1e31, 5.0], [-inf, 2.0, inf, 9.0]])
want_m = fastops.yolact_masks(protos, coeffs, b, (13, 17), threshold=None, impl="reference")
want_p = fastops.paste_masks(masks, pb, (20, 30), impl="reference")
for impl in {impls!r}:
    got = fastops.yolact_masks(protos, coeffs, b, (13, 17), threshold=None, impl=impl)
    torch.testing.assert_close(got, want_m, atol=2e-6, rtol=0)
    got = fastops.paste_masks(masks, pb, (20, 30), impl=impl)
    assert (got == 0).all(), impl  # non-finite / absurd boxes paste nothing
    assert (want_p == 0).all()
""", timeout=900)


def test_zero_sized_inputs_every_impl():
    for impl in IMPLS:
        p = torch.randn(5, 6, 0)
        out = fastops.yolact_masks(p, torch.zeros(2, 0), torch.rand(2, 4), (7, 8), threshold=None, impl=impl)
        want = fastops.yolact_masks(p, torch.zeros(2, 0), torch.rand(2, 4), (7, 8), threshold=None,
                                    impl="reference")
        assert out.shape == want.shape == (2, 7, 8)
        out = fastops.paste_masks(torch.rand(0, 1, 5, 5), torch.zeros(0, 4), (9, 10), impl=impl)
        assert out.shape == (0, 1, 9, 10)
        out = fastops.paste_masks(torch.rand(2, 1, 5, 5), torch.rand(2, 4) * 5, (0, 10), impl=impl)
        assert out.shape == (2, 1, 0, 10)
        loss = fastops.yolact_mask_loss(torch.randn(4, 5, 3), torch.zeros(0, 3), torch.zeros(0, 4),
                                        torch.zeros(0, 4, 5), impl=impl)
        assert loss.shape == (0,)


@pytest.mark.parametrize("impl", IMPLS)
def test_argument_errors_every_impl(impl):
    p, c, b = torch.randn(9, 11, 4), torch.randn(3, 4), torch.rand(3, 4)
    m, pb = torch.rand(3, 1, 6, 6), torch.rand(3, 4) * 10
    cases = [
        (lambda: fastops.yolact_masks(p, c, b, (5, True), impl=impl), "output_size"),
        (lambda: fastops.yolact_masks(p, c, b, (5.0, 4), impl=impl), "output_size"),
        (lambda: fastops.yolact_masks(p, c, b, (0, 4), impl=impl), "output_size"),
        (lambda: fastops.yolact_masks(p, c, b, (5, 4), crop=1, impl=impl), "crop"),
        (lambda: fastops.yolact_masks(p, c, b, threshold=True, impl=impl), "threshold"),
        (lambda: fastops.yolact_masks(p.long(), c, b, impl=impl), "protos"),
        (lambda: fastops.yolact_mask_loss(p, c, b, torch.zeros(3, 9, 11, dtype=torch.int32), impl=impl), "gt_masks"),
        (lambda: fastops.paste_masks(m, pb, (20, 30.5), impl=impl), "image_shape"),
        (lambda: fastops.paste_masks(m, pb, (20, 30), padding=1.0, impl=impl), "padding"),
        (lambda: fastops.paste_masks(m, pb, (20, 30), padding=True, impl=impl), "padding"),
        # (integer boxes are accepted, as in torchvision; bool boxes are not)
        (lambda: fastops.paste_masks(m, pb > 3, (20, 30), impl=impl), "boxes"),
        (lambda: fastops.paste_masks(m[..., :0], pb, (20, 30), impl=impl), "masks"),
        (lambda: fastops.paste_masks(m[:, :, :0], pb, (20, 30), 0, impl=impl), "masks"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_inputs_not_mutated():
    p, c, b = torch.randn(9, 11, 4), torch.randn(3, 4), torch.rand(3, 4)
    gt = torch.rand(3, 9, 11)
    m, pb = torch.rand(3, 1, 6, 6), torch.rand(3, 4) * 10
    before = [t.clone() for t in (p, c, b, gt, m, pb)]
    for impl in IMPLS:
        fastops.yolact_masks(p, c, b, (13, 7), impl=impl)
        pr, cr = p.clone().requires_grad_(), c.clone().requires_grad_()
        fastops.yolact_mask_loss(pr, cr, b, gt, impl=impl).sum().backward()
        fastops.paste_masks(m, pb, (20, 30), threshold=-0.5, impl=impl)
    for a, w in zip((p, c, b, gt, m, pb), before):
        assert torch.equal(a, w)


# ---- offsets past 2^31 (issue 11: held when probed; this keeps it so) ------------------------------------------

def _mem_available_gb():
    try:
        with open("/proc/meminfo") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable")) / 2**20
    except (OSError, StopIteration):
        return 0.0


@pytest.mark.skipif(_mem_available_gb() < 8, reason="needs ~2.2 GB for a bool output past 2^31 elements")
def test_paste_masks_offsets_past_2_31():
    """Image 1 of 2 starts at element ~2^30 and its box sits at its far corner, past element 2^31: with a
    32-bit offset anywhere in the kernel its pixels would land elsewhere (or crash). The same mask and box in
    image 0 (offsets < 2^30) must give the same pixels, and nothing outside the box is set."""
    H, W = 2 ** 15 + 64, 2 ** 15 + 8
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 1, 7, 7, generator=g).clamp_min(0.6)  # > 0.5 everywhere inside the box
    masks[1] = masks[0]
    box = torch.tensor([[W - 40.0, H - 30.0, W - 5.0, H - 3.0]])
    out = fastops.paste_masks(masks, box.repeat(2, 1), (H, W), threshold=0.5)
    assert out.shape == (2, 1, H, W) and out.dtype == torch.bool
    assert out[1].flatten().nonzero().min() + H * W > 2 ** 31  # really past 2^31
    win = (slice(H - 40, H), slice(W - 50, W))
    assert torch.equal(out[1, 0][win], out[0, 0][win]) and bool(out[1, 0, H - 16, W - 22])
    assert int(out.sum()) == 2 * int(out[0, 0][win].sum())  # nothing written outside the boxes
    # the same corner pasted into a small image at the same sub-pixel position: the same pixels
    small = fastops.paste_masks(masks[:1], box - torch.tensor([W - 64.0, H - 64.0] * 2), (64, 64), threshold=0.5)
    assert torch.equal(small[0, 0, 64 - 40:, 64 - 50:], out[1, 0][win])
