"""Instance mask assembly: yolact_masks, yolact_mask_loss, paste_masks.

Expected results come from the plain-PyTorch transcriptions of YOLACT's postprocess / crop /
sanitize_coordinates / lincomb_mask_loss (fastops.reference.masks) and from torchvision's paste_masks_in_image.
"""
import math

import pytest
import torch
import torchvision.models.detection.roi_heads as tv_roi_heads
from hypothesis import given
from hypothesis import strategies as st

import fastops
from fastops._library import TRITON_INTERPRET
from fastops.reference import masks as ref
from helpers import assert_all_equal, per_thread_count

HP, WP, P = 24, 30, 8


def _boxes(kind, n, gen=None):
    """Relative boxes of one family (YOLACT's convention: (x1, y1, x2, y2) in [0, 1], may be inverted)."""
    g = gen or torch.Generator().manual_seed(1)
    xy = torch.rand(n, 2, generator=g) * 0.8
    wh = torch.rand(n, 2, generator=g) * 0.4 + 0.02
    if kind == "random":
        return torch.cat([xy, xy + wh], 1)
    if kind == "border":  # touching or crossing the image border
        b = torch.cat([xy - 0.5, xy + wh + 0.5], 1)
        b[::3, 0] = 0.0
        b[1::3, 2] = 1.0
        return b
    if kind == "inverted":
        return torch.cat([xy + wh, xy], 1)
    if kind == "tiny":
        return torch.cat([xy, xy + 1e-3], 1)
    if kind == "full":
        return torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1)
    if kind == "outside":
        return torch.cat([xy + 1.5, xy + 1.7], 1)
    if kind == "grid":  # crop edges exactly on proto pixel centres/corners
        x = torch.randint(0, WP, (n, 2), generator=g).float() / WP
        y = torch.randint(0, HP, (n, 2), generator=g).float() / HP
        return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)
    raise ValueError(kind)


def _yolact_inputs(n, dtype=torch.float32, hp=HP, wp=WP, p=P, kind="random"):
    g = torch.Generator().manual_seed(2)
    protos = torch.randn(hp, wp, p, generator=g)
    coeffs = torch.randn(n, p, generator=g) * 0.7
    return protos.to(dtype), coeffs.to(dtype), _boxes(kind, n)


def _ref_masks(protos, coeffs, boxes, output_size, crop=True, threshold=0.5):
    # reference in float32 (float64 stays float64) from the same rounded inputs
    acc = torch.float64 if protos.dtype == torch.float64 else torch.float32
    return ref.yolact_postprocess_masks(protos.to(acc), coeffs.to(acc), boxes.to(acc), output_size, crop, threshold)


def _tol(dtype):
    return {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def _assert_thresholded(out, prob, thr, tol=1e-5):
    """`out` is `prob > thr` except at pixels within `tol` of the threshold (summation-order ties)."""
    assert out.dtype == torch.bool and out.shape == prob.shape
    bad = (out != (prob > thr)) & ((prob.double() - thr).abs() > tol)
    assert not bad.any(), f"{int(bad.sum())} pixels differ from prob > {thr}"


def _assert_bool_close(a, b, max_frac=1e-3):
    assert a.dtype == torch.bool and a.shape == b.shape
    if a.numel():
        frac = (a != b).float().mean().item()
        assert frac <= max_frac, f"{frac:.2e} of thresholded pixels differ"


# ---- yolact_masks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["random", "border", "inverted", "tiny", "full", "outside", "grid"])
@pytest.mark.parametrize("output_size", [None, (61, 47), (13, 9), (HP, WP), (96, 120)])
def test_yolact_masks_float_matches_reference(kind, output_size):
    protos, coeffs, boxes = _yolact_inputs(7, kind=kind)
    out = fastops.yolact_masks(protos, coeffs, boxes, output_size, threshold=None)
    exp = _ref_masks(protos, coeffs, boxes, output_size, threshold=None)
    assert out.dtype == torch.float32 and out.shape == exp.shape
    torch.testing.assert_close(out, exp, atol=2e-6, rtol=0)


@pytest.mark.parametrize("kind", ["random", "border", "inverted", "grid"])
@pytest.mark.parametrize("output_size", [None, (61, 47), (13, 9)])
def test_yolact_masks_threshold_matches_reference(kind, output_size):
    protos, coeffs, boxes = _yolact_inputs(9, kind=kind)
    out = fastops.yolact_masks(protos, coeffs, boxes, output_size)
    _assert_bool_close(out, _ref_masks(protos, coeffs, boxes, output_size))
    out = fastops.yolact_masks(protos, coeffs, boxes, output_size, threshold=0.3)
    _assert_bool_close(out, _ref_masks(protos, coeffs, boxes, output_size, threshold=0.3))


@pytest.mark.parametrize("output_size", [None, (50, 41)])
def test_yolact_masks_no_crop(output_size):
    protos, coeffs, boxes = _yolact_inputs(4, kind="tiny")
    out = fastops.yolact_masks(protos, coeffs, boxes, output_size, crop=False, threshold=None)
    torch.testing.assert_close(out, _ref_masks(protos, coeffs, boxes, output_size, crop=False, threshold=None),
                               atol=2e-6, rtol=0)


def test_yolact_masks_zero_outside_taps():
    """Pixels whose bilinear taps all lie outside the padded crop are exactly 0 (and the crop is YOLACT's)."""
    protos, coeffs, _ = _yolact_inputs(1)
    boxes = torch.tensor([[0.3, 0.4, 0.5, 0.6]])
    out = fastops.yolact_masks(protos, coeffs, boxes, None, threshold=None)[0]
    x1, x2 = max(0.3 * WP - 1, 0), min(0.5 * WP + 1, WP)
    y1, y2 = max(0.4 * HP - 1, 0), min(0.6 * HP + 1, HP)
    cols = torch.arange(WP).float()
    rows = torch.arange(HP).float()
    keep = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
    assert (out[~keep] == 0).all() and (out[keep] > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("output_size", [None, (37, 53)])
def test_yolact_masks_dtypes(dtype, output_size):
    protos, coeffs, boxes = _yolact_inputs(6, dtype=dtype, kind="border")
    out = fastops.yolact_masks(protos, coeffs, boxes, output_size, threshold=None)
    exp = _ref_masks(protos, coeffs, boxes, output_size, threshold=None)
    assert out.dtype == dtype
    torch.testing.assert_close(out.to(exp.dtype), exp, atol=_tol(dtype), rtol=0)
    b = fastops.yolact_masks(protos, coeffs, boxes.to(dtype), output_size)
    _assert_bool_close(b, _ref_masks(protos, coeffs, boxes.to(dtype), output_size), 2e-3)


def test_yolact_masks_boxes_dtype_convention():
    """The crop rectangle is evaluated in the boxes' dtype, as YOLACT's tensor arithmetic does."""
    protos, coeffs, _ = _yolact_inputs(5)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.33, 0.66, 0.34, 0.67], [0.5, 0.5, 0.51, 0.52],
                          [0.05, 0.95, 0.95, 0.05], [1 / 3, 1 / 7, 2 / 3, 6 / 7]])
    for bdt in (torch.float16, torch.bfloat16, torch.float64):
        b = boxes.to(bdt)
        out = fastops.yolact_masks(protos, coeffs, b, None, threshold=None)
        exp = ref.yolact_postprocess_masks(protos, coeffs, b, None, True, None)
        torch.testing.assert_close(out, exp, atol=2e-6, rtol=0)


def test_yolact_masks_noncontiguous_layouts():
    protos, coeffs, boxes = _yolact_inputs(5, kind="border")
    exp = _ref_masks(protos, coeffs, boxes, (40, 33), threshold=None)
    planar = protos.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # YOLACT's [P, h, w] net output, permuted
    sliced = torch.randn(HP, 2 * WP, 2 * P)[:, ::2, ::2].copy_(protos)
    c_nc = coeffs.t().contiguous().t()
    b_nc = torch.stack([boxes, boxes], 2)[:, :, 0]
    assert not (planar.is_contiguous() or sliced.is_contiguous() or c_nc.is_contiguous() or b_nc.is_contiguous())
    for pr in (planar, sliced):
        out = fastops.yolact_masks(pr, c_nc, b_nc, (40, 33), threshold=None)
        torch.testing.assert_close(out, exp, atol=3e-6, rtol=0)


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_yolact_masks_zero_and_one_detection(n, threshold):
    protos, coeffs, boxes = _yolact_inputs(n)
    out = fastops.yolact_masks(protos, coeffs, boxes, (17, 19), threshold=threshold)
    assert out.shape == (n, 17, 19)
    assert out.dtype == (torch.bool if threshold is not None else torch.float32)
    exp = _ref_masks(protos, coeffs, boxes, (17, 19), threshold=threshold)
    if threshold is None:
        torch.testing.assert_close(out, exp, atol=2e-6, rtol=0)
    else:
        _assert_bool_close(out, exp)


def test_yolact_masks_nan_and_inf_boxes():
    protos, coeffs, _ = _yolact_inputs(4)
    boxes = torch.tensor([[float("nan"), 0.1, 0.5, 0.5], [0.1, 0.1, float("inf"), 0.5],
                          [-float("inf"), -1e30, 1e30, 0.4], [0.2, 0.2, 0.3, float("nan")]])
    out = fastops.yolact_masks(protos, coeffs, boxes, (31, 29), threshold=None)
    exp = _ref_masks(protos, coeffs, boxes, (31, 29), threshold=None)
    torch.testing.assert_close(out, exp, atol=2e-6, rtol=0)


def test_yolact_masks_large_output_mmap_path():
    """Outputs over 1 MB are fresh zero pages; only box pixels are written (checked against the reference)."""
    protos, coeffs, boxes = _yolact_inputs(12, kind="border")
    out = fastops.yolact_masks(protos, coeffs, boxes, (300, 400))
    _assert_bool_close(out, _ref_masks(protos, coeffs, boxes, (300, 400)))
    out.resize_(20, 300, 400)  # the storage stays resizable


def test_yolact_masks_threads_identical():
    protos, coeffs, boxes = _yolact_inputs(23, kind="border")
    assert_all_equal(*per_thread_count(lambda: [fastops.yolact_masks(protos, coeffs, boxes, (70, 90), threshold=None)]))


@given(hp=st.integers(1, 19), wp=st.integers(1, 19), p=st.integers(1, 20), n=st.integers(0, 5),
       oh=st.integers(1, 41), ow=st.integers(1, 41), seed=st.integers(0, 2**16))
def test_yolact_masks_property_odd_shapes(hp, wp, p, n, oh, ow, seed):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(hp, wp, p, generator=g)
    coeffs = torch.randn(n, p, generator=g)
    boxes = torch.rand(n, 4, generator=g) * 1.4 - 0.2
    out = fastops.yolact_masks(protos, coeffs, boxes, (oh, ow), threshold=None)
    exp = _ref_masks(protos, coeffs, boxes, (oh, ow), threshold=None)
    torch.testing.assert_close(out, exp, atol=3e-6, rtol=0)
    thr = [-0.1, 0.0, 0.3, 0.5][seed % 4]
    _assert_thresholded(fastops.yolact_masks(protos, coeffs, boxes, (oh, ow), threshold=thr), exp, thr)


def test_yolact_masks_reference_impl():
    protos, coeffs, boxes = _yolact_inputs(3)
    out = fastops.yolact_masks(protos, coeffs, boxes, (20, 20), impl="reference")
    assert torch.equal(out, _ref_masks(protos, coeffs, boxes, (20, 20)))


# ---- yolact_mask_loss -----------------------------------------------------------------------------------------

def _loss_inputs(n, dtype=torch.float32, kind="random", gt_outside=False):
    protos, coeffs, boxes = _yolact_inputs(n, dtype=dtype, kind=kind)
    g = torch.Generator().manual_seed(3)
    gt = (torch.rand(n, HP, WP, generator=g) > 0.5).to(dtype)
    if not gt_outside:  # YOLACT's gt masks live inside their (padded) boxes
        keep = ref.crop(torch.ones(HP, WP, n), boxes).permute(2, 0, 1)
        gt = gt * keep.to(dtype)
    return protos, coeffs, boxes, gt


@pytest.mark.parametrize("kind", ["random", "border", "inverted", "grid", "full"])
@pytest.mark.parametrize("gt_outside", [False, True])
def test_mask_loss_matches_reference(kind, gt_outside):
    protos, coeffs, boxes, gt = _loss_inputs(8, kind=kind, gt_outside=gt_outside)
    out = fastops.yolact_mask_loss(protos, coeffs, boxes, gt)
    exp = ref.lincomb_mask_loss(protos, coeffs, boxes, gt)
    torch.testing.assert_close(out, exp, rtol=2e-5, atol=1e-4)


def test_mask_loss_gradients_match_reference():
    protos, coeffs, boxes, gt = _loss_inputs(9, kind="border")
    p1, c1 = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
    p2, c2 = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
    w = torch.rand(9)
    (fastops.yolact_mask_loss(p1, c1, boxes, gt) * w).sum().backward()
    (ref.lincomb_mask_loss(p2, c2, boxes, gt) * w).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-4, atol=1e-3)


def test_mask_loss_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    protos = torch.randn(7, 9, 3, generator=g, dtype=torch.float64).requires_grad_()
    coeffs = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.7], [0.9, 0.0, 0.3, 0.5], [-0.2, 0.4, 0.5, 1.3], [0.0, 0.0, 1.0, 1.0]],
                         dtype=torch.float64)
    gt = torch.rand(4, 7, 9, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p, c: fastops.yolact_mask_loss(p, c, boxes, gt), (protos, coeffs))
    # and the same gradients as the reference's autograd graph
    gp, gc = torch.autograd.grad(fastops.yolact_mask_loss(protos, coeffs, boxes, gt).sum(), (protos, coeffs))
    rp, rc = torch.autograd.grad(ref.lincomb_mask_loss(protos, coeffs, boxes, gt).sum(), (protos, coeffs))
    torch.testing.assert_close(gp, rp)
    torch.testing.assert_close(gc, rc)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_mask_loss_dtypes(dtype):
    protos, coeffs, boxes, gt = _loss_inputs(5, dtype=dtype)
    out = fastops.yolact_mask_loss(protos, coeffs, boxes, gt)
    assert out.dtype == dtype
    exp = ref.lincomb_mask_loss(protos.float(), coeffs.float(), boxes, gt.float())
    tol = {torch.float64: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.float(), exp, rtol=tol, atol=tol)
    p, c = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
    fastops.yolact_mask_loss(p, c, boxes, gt).sum().backward()
    assert p.grad.dtype == dtype and c.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()


def test_mask_loss_noncontiguous_and_gt_dtype():
    protos, coeffs, boxes, gt = _loss_inputs(6, kind="border")
    exp = ref.lincomb_mask_loss(protos, coeffs, boxes, gt)
    planar = protos.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    gt_nc = gt.transpose(1, 2).contiguous().transpose(1, 2)
    out = fastops.yolact_mask_loss(planar, coeffs.t().contiguous().t(), boxes, gt_nc)
    torch.testing.assert_close(out, exp, rtol=2e-5, atol=1e-4)
    torch.testing.assert_close(fastops.yolact_mask_loss(protos, coeffs, boxes, gt.bool()), exp, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("n", [0, 1])
def test_mask_loss_zero_and_one(n):
    protos, coeffs, boxes, gt = _loss_inputs(n)
    p, c = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
    out = fastops.yolact_mask_loss(p, c, boxes, gt)
    assert out.shape == (n,)
    torch.testing.assert_close(out, ref.lincomb_mask_loss(protos, coeffs, boxes, gt), rtol=2e-5, atol=1e-4)
    out.sum().backward()
    assert p.grad.shape == protos.shape and c.grad.shape == coeffs.shape


def test_mask_loss_threads_identical():
    protos, coeffs, boxes, gt = _loss_inputs(13, kind="border")

    def run():
        p, c = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
        loss = fastops.yolact_mask_loss(p, c, boxes, gt)
        loss.sum().backward()
        return loss, p.grad, c.grad

    assert_all_equal(*per_thread_count(run))


# ---- paste_masks ----------------------------------------------------------------------------------------------

def _paste_inputs(n, kind="inside", m=14, H=60, W=80, dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(n, 1, m, m, generator=g).to(dtype)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W * 0.8, H * 0.8])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([W * 0.5, H * 0.5]) + 0.3
    if kind == "inside":
        boxes = torch.cat([xy, xy + wh], 1)
    elif kind == "crossing":  # crossing the right/bottom border and the left/top one
        boxes = torch.cat([xy - wh, xy + 2 * wh], 1)
        boxes[::2, 0] = -5.5
        boxes[1::2, 3] = H + 7.2
    elif kind == "tiny":
        boxes = torch.cat([xy, xy + 0.2], 1)
    elif kind == "full":
        boxes = torch.tensor([[0.0, 0.0, W - 1.0, H - 1.0]]).repeat(n, 1)
    elif kind == "huge":
        boxes = torch.tensor([[-3 * W, -2 * H, 4 * W, 3 * H]], dtype=torch.float32).repeat(n, 1)
    elif kind == "inverted":
        boxes = torch.cat([xy + wh, xy], 1)
    else:
        raise ValueError(kind)
    return masks, boxes, (H, W)


@pytest.mark.parametrize("kind", ["inside", "crossing", "tiny", "full", "huge", "inverted"])
@pytest.mark.parametrize("padding", [1, 0, 2])
def test_paste_masks_matches_torchvision(kind, padding):
    masks, boxes, shape = _paste_inputs(7, kind)
    out = fastops.paste_masks(masks, boxes, shape, padding)
    exp = tv_roi_heads.paste_masks_in_image(masks, boxes, shape, padding)
    assert out.shape == exp.shape and out.dtype == exp.dtype
    torch.testing.assert_close(out, exp, atol=2e-6, rtol=0)


@pytest.mark.parametrize("m", [1, 5, 28])
@pytest.mark.parametrize("shape", [(33, 47), (800 // 8, 1216 // 8)])
def test_paste_masks_sizes_and_threshold(m, shape):
    masks, boxes, _ = _paste_inputs(6, "crossing", m=m, H=shape[0], W=shape[1])
    exp = tv_roi_heads.paste_masks_in_image(masks, boxes, shape)
    torch.testing.assert_close(fastops.paste_masks(masks, boxes, shape), exp, atol=2e-6, rtol=0)
    _assert_bool_close(fastops.paste_masks(masks, boxes, shape, threshold=0.5), exp > 0.5)
    # [N, M, M] input is accepted too
    torch.testing.assert_close(fastops.paste_masks(masks[:, 0], boxes, shape), exp, atol=2e-6, rtol=0)


def test_paste_masks_boxes_outside_image():
    """Boxes wholly outside the image paste nothing (torchvision itself fails or wraps indices there)."""
    masks, _, shape = _paste_inputs(4)
    H, W = shape
    boxes = torch.tensor([[-50.0, 5, -20, 30], [5, -60, 30, -30], [W + 5.0, 5, W + 40, 30], [5, H + 3.0, 30, H + 9]])
    out = fastops.paste_masks(masks, boxes, shape)
    assert out.shape == (4, 1, H, W) and (out == 0).all()
    torch.testing.assert_close(out, fastops.paste_masks(masks, boxes, shape, impl="reference"))


def test_paste_masks_nan_boxes_paste_nothing():
    masks, boxes, shape = _paste_inputs(3)
    boxes[1, 2] = float("nan")
    boxes[2, 0] = float("inf")
    out = fastops.paste_masks(masks, boxes, shape)
    assert (out[1:] == 0).all()
    torch.testing.assert_close(out[:1], tv_roi_heads.paste_masks_in_image(masks[:1], boxes[:1], shape))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_paste_masks_dtypes(dtype):
    masks, boxes, shape = _paste_inputs(5, "crossing", dtype=dtype)
    out = fastops.paste_masks(masks, boxes, shape)
    assert out.dtype == dtype
    exp = tv_roi_heads.paste_masks_in_image(masks.float(), boxes, shape)
    torch.testing.assert_close(out.float(), exp, atol=_tol(dtype) * 2 if dtype != torch.float64 else 1e-6, rtol=0)
    if dtype == torch.float64:
        torch.testing.assert_close(out, tv_roi_heads.paste_masks_in_image(masks, boxes.double(), shape))


def test_paste_masks_noncontiguous_and_large():
    masks, boxes, _ = _paste_inputs(9, "crossing", m=28, H=400, W=608)
    shape = (400, 608)
    exp = tv_roi_heads.paste_masks_in_image(masks, boxes, shape)
    m_nc = masks.transpose(2, 3).contiguous().transpose(2, 3)
    b_nc = torch.stack([boxes, boxes], 2)[:, :, 1]
    torch.testing.assert_close(fastops.paste_masks(m_nc, b_nc, shape), exp, atol=2e-6, rtol=0)


@pytest.mark.parametrize("n", [0, 1])
def test_paste_masks_zero_and_one(n):
    masks, boxes, shape = _paste_inputs(n)
    out = fastops.paste_masks(masks, boxes, shape)
    exp = tv_roi_heads.paste_masks_in_image(masks, boxes, shape)
    assert out.shape == exp.shape == (n, 1) + shape
    torch.testing.assert_close(out, exp)
    assert fastops.paste_masks(masks, boxes, shape, threshold=0.5).dtype == torch.bool


def test_paste_masks_threads_identical():
    masks, boxes, shape = _paste_inputs(17, "crossing")
    assert_all_equal(*per_thread_count(lambda: [fastops.paste_masks(masks, boxes, shape)]))


@given(n=st.integers(0, 4), mh=st.integers(1, 9), mw=st.integers(1, 9), H=st.integers(1, 37), W=st.integers(1, 37),
       padding=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_paste_masks_property_odd_shapes(n, mh, mw, H, W, padding, seed):
    """cpp against the reference on odd shapes, float and thresholded (a negative threshold included)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 1, mh, mw, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W * 1.4, H * 1.4]) - torch.tensor([W * 0.2, H * 0.2])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([W * 1.0, H * 1.0]) - 2
    boxes = torch.cat([xy, xy + wh], 1)
    out = fastops.paste_masks(masks, boxes, (H, W), padding)
    exp = ref.paste_masks_in_image(masks, boxes, (H, W), padding)
    torch.testing.assert_close(out, exp, atol=2e-6, rtol=0)
    thr = [-0.25, 0.0, 0.35][seed % 3]
    _assert_thresholded(fastops.paste_masks(masks, boxes, (H, W), padding, thr), exp, thr)


@given(hp=st.integers(1, 13), wp=st.integers(1, 13), p=st.integers(1, 17), n=st.integers(0, 4),
       seed=st.integers(0, 2**16))
def test_mask_loss_property_odd_shapes(hp, wp, p, n, seed):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(hp, wp, p, generator=g, dtype=torch.float64)
    coeffs = torch.randn(n, p, generator=g, dtype=torch.float64)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.05], 1)
    gt = torch.rand(n, hp, wp, generator=g, dtype=torch.float64)
    pr, cr = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
    out = fastops.yolact_mask_loss(pr, cr, boxes, gt)
    exp = ref.lincomb_mask_loss(protos, coeffs, boxes, gt)
    torch.testing.assert_close(out, exp)
    if n:
        out.sum().backward()
        p2, c2 = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
        ref.lincomb_mask_loss(p2, c2, boxes, gt).sum().backward()
        torch.testing.assert_close(pr.grad, p2.grad)
        torch.testing.assert_close(cr.grad, c2.grad)


# ---- issue 11: thresholds, half-precision gradients, reference dtype --------------------------------------------

IMPLS = ["cpp"] + (["triton"] if TRITON_INTERPRET else [])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("thr", [-0.1, -1e-30, 0.0, 0.7])
def test_thresholds_exactly_prob_gt_threshold(impl, thr):
    """Thresholded output == (float output > threshold), also outside the boxes for a negative threshold."""
    protos, coeffs, boxes = _yolact_inputs(6, hp=11, wp=13, p=5, kind="border")
    # (300, 420): large enough for the CPU kernel's mmap output (too slow for the Triton interpreter)
    for size in (None, (23, 9)) + (((300, 420),) if impl == "cpp" else ()):
        prob = fastops.yolact_masks(protos, coeffs, boxes, size, threshold=None, impl="reference")
        out = fastops.yolact_masks(protos, coeffs, boxes, size, threshold=thr, impl=impl)
        _assert_thresholded(out, prob, thr)
        if thr < 0:
            assert out[:, 0, 0].all() or (prob[:, 0, 0] <= thr).any()
    masks, pboxes, shape = _paste_inputs(5, "crossing", m=6, H=23, W=31)
    for shape in ((23, 31),) + (((500, 700),) if impl == "cpp" else ()):
        prob = tv_roi_heads.paste_masks_in_image(masks, pboxes, shape)
        _assert_thresholded(fastops.paste_masks(masks, pboxes, shape, threshold=thr, impl=impl), prob, thr)


def test_negative_threshold_outside_boxes_is_true():
    protos, coeffs, _ = _yolact_inputs(2)
    boxes = torch.tensor([[0.3, 0.4, 0.5, 0.6], [float("nan"), 0.1, 0.2, 0.3]])
    out = fastops.yolact_masks(protos, coeffs, boxes, (400, 700), threshold=-0.1)
    assert out[1].all() and out[0, 0, 0] and out[0, -1, -1]
    masks, _, shape = _paste_inputs(2)
    out = fastops.paste_masks(masks, torch.tensor([[5.0, 5, 20, 20], [1e30, 0, 2e30, 5]]), (300, 1000), 1, -0.1)
    assert out[1].all() and out[0, 0, -1, -1]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mask_loss_half_gradients_against_float64(impl, dtype):
    """f16/bf16 loss and gradients against the reference in float64 from the same rounded inputs (a gradient
    scaled by 1.5 fails this test: the error bound is a few percent of the gradient's scale)."""
    protos, coeffs, boxes, gt = _loss_inputs(6, dtype=dtype, kind="border")
    if impl == "triton":
        protos, coeffs, gt = protos[:9, :11].contiguous(), coeffs, gt[:, :9, :11].contiguous()
    w = torch.rand(6, generator=torch.Generator().manual_seed(9))
    p, c = protos.clone().requires_grad_(), coeffs.clone().requires_grad_()
    out = fastops.yolact_mask_loss(p, c, boxes, gt, impl=impl)
    (out.float() * w).sum().backward()
    p64, c64 = protos.double().requires_grad_(), coeffs.double().requires_grad_()
    exp = ref.lincomb_mask_loss(p64, c64, boxes.double(), gt.double())
    (exp * w.double()).sum().backward()
    assert out.dtype == dtype and p.grad.dtype == dtype and c.grad.dtype == dtype
    eps = {torch.float16: 2e-2, torch.bfloat16: 6e-2}[dtype]
    torch.testing.assert_close(out.double(), exp.detach(), rtol=eps, atol=eps)
    for got, want in ((p.grad, p64.grad), (c.grad, c64.grad)):
        err = (got.double() - want).norm() / want.norm()
        assert err < eps, f"relative gradient error {err:.3g}"
        torch.testing.assert_close(got.double(), want, rtol=0, atol=eps * want.abs().max().item())


def test_reference_mask_loss_dtype_is_protos_dtype():
    protos, coeffs, boxes, gt = _loss_inputs(3)
    assert ref.lincomb_mask_loss(protos, coeffs, boxes.double(), gt).dtype == torch.float32
    assert fastops.yolact_mask_loss(protos, coeffs, boxes.double(), gt, impl="reference").dtype == torch.float32
    torch.testing.assert_close(fastops.yolact_mask_loss(protos, coeffs, boxes.double(), gt),
                               ref.lincomb_mask_loss(protos, coeffs, boxes.double(), gt), rtol=2e-5, atol=1e-4)


# ---- layout: the geometry the Triton kernels use, re-derived in registrations, against the reference -----------

def test_registration_geometry_matches_reference():
    from fastops.registrations import masks as reg

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for kind in ("random", "border", "inverted", "grid", "tiny", "outside"):
            boxes = _boxes(kind, 11).to(dtype)
            torch.testing.assert_close(reg.expand_boxes(boxes * 50, 1.3), ref._expand_boxes(boxes * 50, 1.3),
                                       rtol=0, atol=0)
            for a, b, size in ((boxes[:, 0], boxes[:, 2], WP), (boxes[:, 1], boxes[:, 3], HP)):
                lo, hi = reg.crop_bounds(a, b, size)
                rlo, rhi = ref.sanitize_coordinates(a, b, size, padding=1, cast=False)
                assert torch.equal(lo, rlo) and torch.equal(hi, rhi)
            # the integer crop rectangles select exactly the reference's kept pixels
            crops = reg.yolact_crops(boxes, HP, WP, True)
            keep = ref.crop(torch.ones(HP, WP, 11, dtype=dtype), boxes).permute(2, 0, 1) > 0
            rows, cols = torch.arange(HP)[:, None], torch.arange(WP)[None, :]
            for n in range(11):
                cx0, cx1, cy0, cy1 = crops[n].tolist()
                mine = (cols >= cx0) & (cols < cx1) & (rows >= cy0) & (rows < cy1)
                assert torch.equal(mine, keep[n]), (dtype, kind, n)


def test_registration_paste_geometry_matches_reference():
    from fastops.registrations import masks as reg

    masks, boxes, (H, W) = _paste_inputs(40, "crossing")
    boxes = torch.cat([boxes, torch.tensor([[float("nan"), 0, 5, 5], [1e30, 0, 2e30, 5], [-50.0, 5, -20, 30]])])
    geo = reg.paste_geometry(boxes, 14, 1, H, W)
    e = ref._expand_boxes(boxes, 16 / 14)
    for n in range(boxes.size(0)):
        x0, y0, bw, bh, xa, xb, ya, yb = geo[n].tolist()
        if not torch.isfinite(e[n]).all() or e[n].abs().max() >= 2.0 ** 40:
            assert xa == xb == ya == yb == 0
            continue
        ex0, ey0, ex1, ey1 = e[n].to(torch.int64).tolist()
        assert (x0, y0, bw, bh) == (ex0, ey0, max(ex1 - ex0 + 1, 1), max(ey1 - ey0 + 1, 1))
        if xb > xa:
            assert (xa, xb, ya, yb) == (max(ex0, 0), min(ex1 + 1, W), max(ey0, 0), min(ey1 + 1, H))


# ---- opcheck, compile, export ---------------------------------------------------------------------------------

def test_opcheck_all_ops():
    protos, coeffs, boxes, gt = _loss_inputs(3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastops.yolact_masks.default, (protos, coeffs, boxes, 11, 13, True, 0.5))
    torch.library.opcheck(torch.ops.fastops.yolact_masks.default, (protos, coeffs, boxes, 11, 13, False, None))
    torch.library.opcheck(torch.ops.fastops.yolact_mask_loss.default,
                          (protos.requires_grad_(), coeffs.requires_grad_(), boxes, gt))
    torch.library.opcheck(torch.ops.fastops._yolact_mask_loss_backward.default,
                          (torch.rand(3, dtype=torch.float64), protos.detach(), coeffs.detach(), boxes, gt))
    masks, pboxes, shape = _paste_inputs(3, "crossing")
    torch.library.opcheck(torch.ops.fastops.paste_masks.default, (masks[:, 0], pboxes, shape[0], shape[1], 1, None))
    torch.library.opcheck(torch.ops.fastops.paste_masks.default, (masks[:, 0], pboxes, shape[0], shape[1], 2, 0.5))


def test_compile_fullgraph():
    protos, coeffs, boxes, gt = _loss_inputs(4)

    def f(protos, coeffs, boxes, gt, masks, pboxes):
        m = fastops.yolact_masks(protos, coeffs, boxes, (31, 37))
        loss = fastops.yolact_mask_loss(protos, coeffs, boxes, gt).sum()
        pm = fastops.paste_masks(masks, pboxes, (40, 50), threshold=0.5)
        return m, loss, pm

    masks, pboxes, _ = _paste_inputs(4, "crossing", H=40, W=50)
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    p = protos.clone().requires_grad_()
    m, loss, pm = cf(p, coeffs, boxes, gt, masks, pboxes)
    m2, loss2, pm2 = f(protos, coeffs, boxes, gt, masks, pboxes)
    assert torch.equal(m, m2) and torch.equal(pm, pm2)
    torch.testing.assert_close(loss, loss2)
    loss.backward()
    assert p.grad is not None and p.grad.shape == protos.shape


def test_export():
    protos, coeffs, boxes, gt = _loss_inputs(3)
    masks, pboxes, _ = _paste_inputs(3, "crossing", H=20, W=24)

    class M(torch.nn.Module):
        def forward(self, protos, coeffs, boxes, gt, masks, pboxes):
            return (fastops.yolact_masks(protos, coeffs, boxes, (20, 24), threshold=None),
                    fastops.yolact_mask_loss(protos, coeffs, boxes, gt),
                    fastops.paste_masks(masks, pboxes, (20, 24)))

    args = (protos, coeffs, boxes, gt, masks, pboxes)
    ep = torch.export.export(M(), args)
    for a, b in zip(ep.module()(*args), M()(*args)):
        torch.testing.assert_close(a, b)


def test_compile_dynamic_shapes():
    def f(protos, coeffs, boxes, gt):
        return fastops.yolact_masks(protos, coeffs, boxes, threshold=None), fastops.yolact_mask_loss(
            protos, coeffs, boxes, gt)

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (3, 5):
        protos, coeffs, boxes, gt = _loss_inputs(n)
        for a, b in zip(cf(protos, coeffs, boxes, gt), f(protos, coeffs, boxes, gt)):
            torch.testing.assert_close(a, b)


# ---- bad input ------------------------------------------------------------------------------------------------

def test_errors():
    protos, coeffs, boxes = _yolact_inputs(3)
    with pytest.raises(ValueError, match="protos"):
        fastops.yolact_masks(protos[0], coeffs, boxes)
    with pytest.raises(ValueError, match="coeffs"):
        fastops.yolact_masks(protos, coeffs[:, :3], boxes)
    with pytest.raises(ValueError, match="coeffs"):
        fastops.yolact_masks(protos, coeffs.double(), boxes)
    with pytest.raises(ValueError, match="boxes"):
        fastops.yolact_masks(protos, coeffs, boxes[:2])
    with pytest.raises(ValueError, match="boxes"):
        fastops.yolact_masks(protos, coeffs, boxes.long())
    with pytest.raises(ValueError, match="output_size"):
        fastops.yolact_masks(protos, coeffs, boxes, (0, 5))
    with pytest.raises(ValueError, match="output_size"):
        fastops.yolact_masks(protos, coeffs, boxes, 5)
    with pytest.raises(ValueError, match="threshold"):
        fastops.yolact_masks(protos, coeffs, boxes, threshold="0.5")
    with pytest.raises(ValueError, match="impl"):
        fastops.yolact_masks(protos, coeffs, boxes, impl="cuda")
    with pytest.raises(ValueError, match="protos"):
        fastops.yolact_masks(protos[:0], coeffs, boxes)
    with pytest.raises(ValueError, match="gt_masks"):
        fastops.yolact_mask_loss(protos, coeffs, boxes, torch.zeros(3, HP, WP + 1))
    with pytest.raises(ValueError, match="gt_masks"):
        fastops.yolact_mask_loss(protos, coeffs, boxes, torch.zeros(3, HP, WP, dtype=torch.int32))
    masks, pboxes, shape = _paste_inputs(3)
    with pytest.raises(ValueError, match="masks"):
        fastops.paste_masks(masks[:, 0, 0], pboxes, shape)
    with pytest.raises(ValueError, match="masks"):
        fastops.paste_masks(masks.repeat(1, 2, 1, 1), pboxes, shape)
    with pytest.raises(ValueError, match="boxes"):
        fastops.paste_masks(masks, pboxes[:, :3], shape)
    with pytest.raises(ValueError, match="image_shape"):
        fastops.paste_masks(masks, pboxes, (5,))
    with pytest.raises(ValueError, match="padding"):
        fastops.paste_masks(masks, pboxes, shape, padding=-1)
    # the compiled op validates too (no crash when called directly)
    with pytest.raises(RuntimeError, match="coeffs"):
        torch.ops.fastops.yolact_masks(protos, coeffs[:, :2], boxes, 5, 5, True, 0.5)
    with pytest.raises(RuntimeError, match="boxes"):
        torch.ops.fastops.paste_masks(masks[:, 0], pboxes[:2], 5, 5, 1, None)


# ---- Triton (TRITON_INTERPRET=1 on CPU tensors; small shapes: the interpreter is slow) ------------------------

triton_only = pytest.mark.skipif(not TRITON_INTERPRET, reason="Triton kernels run on the CPU only when interpreted")


@triton_only
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_triton_yolact_masks(dtype):
    protos, coeffs, boxes = _yolact_inputs(5, dtype=dtype, hp=11, wp=13, p=5, kind="border")
    boxes[1] = torch.tensor([0.8, 0.1, 0.2, 0.6])  # inverted
    for size in (None, (19, 8)):
        out = fastops.yolact_masks(protos, coeffs, boxes, size, threshold=None, impl="triton")
        exp = _ref_masks(protos, coeffs, boxes, size, threshold=None)
        assert out.dtype == dtype
        torch.testing.assert_close(out.to(exp.dtype), exp, atol=_tol(dtype) * 2, rtol=0)
    out = fastops.yolact_masks(protos, coeffs, boxes, (19, 8), impl="triton")
    _assert_bool_close(out, _ref_masks(protos, coeffs, boxes, (19, 8)), 5e-3)
    assert fastops.yolact_masks(protos, coeffs[:0], boxes[:0], (4, 4), impl="triton").shape == (0, 4, 4)


@triton_only
@pytest.mark.parametrize("padding", [1, 0])
def test_triton_paste_masks(padding):
    masks, boxes, shape = _paste_inputs(5, "crossing", m=6, H=23, W=31)
    exp = tv_roi_heads.paste_masks_in_image(masks, boxes, shape, padding)
    torch.testing.assert_close(fastops.paste_masks(masks, boxes, shape, padding, impl="triton"), exp, atol=2e-6,
                               rtol=0)
    out = fastops.paste_masks(masks, boxes, shape, padding, threshold=0.5, impl="triton")
    _assert_bool_close(out, exp > 0.5)


@triton_only
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_triton_mask_loss_and_gradcheck():
    protos, coeffs, boxes, gt = _loss_inputs(4, kind="border", gt_outside=True)
    protos, coeffs, boxes, gt = protos[:9, :11, :4], coeffs[:, :4], boxes, gt[:, :9, :11]
    out = fastops.yolact_mask_loss(protos, coeffs, boxes, gt, impl="triton")
    torch.testing.assert_close(out, ref.lincomb_mask_loss(protos, coeffs, boxes, gt), rtol=2e-5, atol=1e-4)
    g = torch.Generator().manual_seed(6)
    p = torch.randn(4, 5, 2, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.9, 0.0, 0.3, 0.5], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    t = torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p, c: fastops.yolact_mask_loss(p, c, b, t, impl="triton"), (p, c))
    gp, gc = torch.autograd.grad(fastops.yolact_mask_loss(p, c, b, t, impl="triton").sum(), (p, c))
    rp, rc = torch.autograd.grad(ref.lincomb_mask_loss(p, c, b, t).sum(), (p, c))
    torch.testing.assert_close(gp, rp)
    torch.testing.assert_close(gc, rc)


@triton_only
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_triton_opcheck():
    import fastops.triton.masks  # noqa: F401

    protos, coeffs, boxes, gt = _loss_inputs(2)
    protos, gt = protos[:5, :6, :].contiguous(), gt[:, :5, :6].contiguous()
    torch.library.opcheck(torch.ops.fastops.yolact_masks_triton.default, (protos, coeffs, boxes, 7, 3, True, 0.5))
    torch.library.opcheck(torch.ops.fastops.yolact_mask_loss_triton.default,
                          (protos.clone().requires_grad_(), coeffs.clone().requires_grad_(), boxes, gt))
    masks, pboxes, _ = _paste_inputs(2, "crossing", m=4, H=9, W=10)
    torch.library.opcheck(torch.ops.fastops.paste_masks_triton.default, (masks[:, 0], pboxes, 9, 10, 1, None))
