"""ONNX decompositions of the masks family into standard ONNX operators (no custom domain), written once and
emitted through either exporter: `_TS` wraps the TorchScript exporter's graph context (`g.op` with typed
attribute suffixes), `_OS` the dynamo exporter's onnxscript opset (traced by the exporter).

- yolact_masks: MatMul + Sigmoid (the lincomb), the crop as comparisons of Range grids with YOLACT's
  sanitize_coordinates bounds (Where), the bilinear resize (PyTorch's align_corners=False taps) as two MatMuls
  with interpolation matrices built from the taps (Equal one-hots), Greater for the threshold.
- paste_masks: torchvision's expand_boxes + int64 truncation, Pad, per-box interpolation matrices (the same
  taps, relative to each box's origin), two batched MatMuls, the visible window as comparisons, Greater.
- yolact_mask_loss (forward): the lincomb, crop, PyTorch's BCE (Log, Max at -100), ReduceSum and YOLACT's
  normaliser.
Opset 13 or newer (Unsqueeze/ReduceSum with axes inputs, GreaterOrEqual). Registered by
fastops/registrations/masks.py.
"""
from __future__ import annotations

import torch

OPSET = 13
_BOX_LIMIT = 2.0 ** 40  # boxes beyond this paste nothing (csrc/masks/masks.h)


def _suffix(v) -> str:
    if isinstance(v, torch.Tensor):
        return "_t"
    if isinstance(v, str):
        return "_s"
    if isinstance(v, float):
        return "_f"
    if isinstance(v, (list, tuple)):
        return "_f" if any(isinstance(x, float) for x in v) else "_i"
    return "_i"


class _TS:
    """op.Name(*inputs, **attrs) -> g.op("Name", *inputs, **typed attrs) for the TorchScript exporter."""

    def __init__(self, g):
        self.g = g

    def __getattr__(self, name):
        def emit(*inputs, **attrs):
            if name == "Constant":  # the TorchScript graph wants a tensor `value`
                (key, v), = attrs.items()
                dtype = {"value_ints": torch.int64, "value_int": torch.int64, "value_float": torch.float32}[key]
                return self.g.op("Constant", value_t=torch.tensor(v, dtype=dtype))
            return self.g.op(name, *inputs, **{k + _suffix(v): v for k, v in attrs.items()})

        return emit


class _OS:
    """op.Name(...) -> onnxscript opset18.Name(...), recorded by the dynamo exporter's tracer."""

    def __getattr__(self, name):
        import onnxscript

        return getattr(onnxscript.opset18, name)


_INT64, _BOOL = 7, 9  # onnx.TensorProto.INT64 / BOOL


def _ints(op, values):
    return op.Constant(value_ints=list(values))


def _scalar(op, value: float, like):
    return op.CastLike(op.Constant(value_float=float(value)), like)


def _dim(op, x, axis: int):
    """x.shape[axis] as an int64 [1] tensor."""
    return op.Slice(op.Shape(x), _ints(op, [axis]), _ints(op, [axis + 1]))


def _arange(op, n, like):
    """[0, 1, ..., n - 1] for an int64 [1] count, cast like `like`."""
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    return op.CastLike(op.Range(zero, op.Squeeze(n, _ints(op, [0])), one), like)


def _interp(op, dst, in_len, scale, like):
    """Bilinear (align_corners=False) interpolation matrix [..., in_len] for destination coordinates `dst`
    (float, any shape): PyTorch's taps real = max(scale * (dst + 0.5) - 0.5, 0), i0 = min(floor(real), in - 1),
    i1 = i0 + (i0 < in - 1), lambda = clamp(real - i0, 0, 1); row = (1 - lambda) * onehot(i0) + lambda * onehot(i1).
    """
    half, zero, one = _scalar(op, 0.5, like), _scalar(op, 0.0, like), _scalar(op, 1.0, like)
    last = op.Sub(op.CastLike(in_len, like), one)
    real = op.Max(op.Sub(op.Mul(scale, op.Add(dst, half)), half), zero)
    i0 = op.Min(op.Floor(real), last)
    lam = op.Min(op.Max(op.Sub(real, i0), zero), one)
    i1 = op.Add(i0, op.CastLike(op.Less(i0, last), like))
    cols = _arange(op, in_len, like)  # [in]
    ax = _ints(op, [-1])
    oh0 = op.CastLike(op.Equal(op.Unsqueeze(i0, ax), cols), like)
    oh1 = op.CastLike(op.Equal(op.Unsqueeze(i1, ax), cols), like)
    return op.Add(op.Mul(oh0, op.Unsqueeze(op.Sub(one, lam), ax)), op.Mul(oh1, op.Unsqueeze(lam, ax)))


def _crop_keep(op, boxes, Hp, Wp):
    """YOLACT's crop as a bool [N, Hp, Wp] (sanitize_coordinates with padding 1, in the boxes' dtype)."""

    def axis(a, b, size):
        s = op.CastLike(size, boxes)
        sa, sb = op.Mul(a, s), op.Mul(b, s)
        one, zero = _scalar(op, 1.0, boxes), _scalar(op, 0.0, boxes)
        lo = op.Max(op.Sub(op.Min(sa, sb), one), zero)
        hi = op.Min(op.Add(op.Max(sa, sb), one), s)
        c = op.Unsqueeze(_arange(op, size, boxes), _ints(op, [0]))  # [1, size]
        ax = _ints(op, [1])
        return op.And(op.GreaterOrEqual(c, op.Unsqueeze(lo, ax)), op.Less(c, op.Unsqueeze(hi, ax)))  # [N, size]

    def col(k):
        return op.Squeeze(op.Slice(boxes, _ints(op, [k]), _ints(op, [k + 1]), _ints(op, [1])), _ints(op, [1]))

    kx = axis(col(0), col(2), Wp)
    ky = axis(col(1), col(3), Hp)
    return op.And(op.Unsqueeze(ky, _ints(op, [2])), op.Unsqueeze(kx, _ints(op, [1])))


def _lincomb(op, protos, coeffs, boxes, crop: bool):
    """sigmoid(protos @ coeffs.T), cropped, as [N, Hp, Wp]."""
    m = op.Transpose(op.Sigmoid(op.MatMul(protos, op.Transpose(coeffs, perm=[1, 0]))), perm=[2, 0, 1])
    if crop:
        Hp, Wp = _dim(op, protos, 0), _dim(op, protos, 1)
        m = op.Where(_crop_keep(op, boxes, Hp, Wp), m, _scalar(op, 0.0, m))
    return m


def yolact_masks(op, protos, coeffs, boxes, out_h: int, out_w: int, crop: bool, threshold):
    m = _lincomb(op, protos, coeffs, boxes, crop)
    Hp, Wp = _dim(op, protos, 0), _dim(op, protos, 1)
    # resize to (out_h, out_w): Ry [h, Hp] @ m [N, Hp, Wp] @ Rx^T [Wp, w] (identity when the size is unchanged)
    calc = protos
    h, w = _ints(op, [out_h]), _ints(op, [out_w])
    ry = _interp(op, _arange(op, h, calc), Hp, op.Div(op.CastLike(Hp, calc), op.CastLike(h, calc)), calc)
    rx = _interp(op, _arange(op, w, calc), Wp, op.Div(op.CastLike(Wp, calc), op.CastLike(w, calc)), calc)
    m = op.MatMul(op.MatMul(ry, m), op.Transpose(rx, perm=[1, 0]))
    if threshold is not None:
        m = op.Greater(m, _scalar(op, threshold, m))
    return m


def yolact_mask_loss(op, protos, coeffs, boxes, gt_masks):
    p = _lincomb(op, protos, coeffs, boxes, True)
    zero, one = _scalar(op, 0.0, p), _scalar(op, 1.0, p)
    p = op.Min(op.Max(p, zero), one)
    floor = _scalar(op, -100.0, p)
    lp = op.Max(op.Log(p), floor)
    lq = op.Max(op.Log(op.Sub(one, p)), floor)
    bce = op.Neg(op.Add(op.Mul(gt_masks, lp), op.Mul(op.Sub(one, gt_masks), lq)))
    total = op.ReduceSum(bce, _ints(op, [1, 2]), keepdims=0)  # [N]
    Hp, Wp = _dim(op, protos, 0), _dim(op, protos, 1)

    def col(k):
        return op.Squeeze(op.Slice(boxes, _ints(op, [k]), _ints(op, [k + 1]), _ints(op, [1])), _ints(op, [1]))

    bw = op.Mul(op.Sub(col(2), col(0)), op.CastLike(Wp, boxes))
    bh = op.Mul(op.Sub(col(3), col(1)), op.CastLike(Hp, boxes))
    area = op.CastLike(op.Mul(Hp, Wp), boxes)
    loss = op.Mul(op.Div(op.Div(op.CastLike(total, boxes), bw), bh), area)
    return op.CastLike(loss, protos)


def paste_masks(op, masks, boxes, image_h: int, image_w: int, padding: int, threshold):
    # masks [N, Mh, Mw]; torchvision: scale = (Mw + 2p) / Mw, expand about the centre, truncate to int64
    Mw = _dim(op, masks, 2)
    padded = op.Pad(masks, _ints(op, [0, padding, padding, 0, padding, padding]))
    Ph, Pw = _dim(op, padded, 1), _dim(op, padded, 2)
    scale = op.CastLike(op.Div(op.Cast(Pw, to=11), op.Cast(Mw, to=11)), boxes)  # float64 ratio, boxes' dtype

    def col(k):
        return op.Squeeze(op.Slice(boxes, _ints(op, [k]), _ints(op, [k + 1]), _ints(op, [1])), _ints(op, [1]))

    half = _scalar(op, 0.5, boxes)
    x1, y1, x2, y2 = col(0), col(1), col(2), col(3)
    w_half = op.Mul(op.Mul(op.Sub(x2, x1), half), scale)
    h_half = op.Mul(op.Mul(op.Sub(y2, y1), half), scale)
    xc, yc = op.Mul(op.Add(x2, x1), half), op.Mul(op.Add(y2, y1), half)
    e = [op.Sub(xc, w_half), op.Sub(yc, h_half), op.Add(xc, w_half), op.Add(yc, h_half)]
    limit = _scalar(op, _BOX_LIMIT, boxes)
    valid = None
    for v in e:
        ok = op.Less(op.Abs(v), limit)  # False for NaN/inf
        valid = ok if valid is None else op.And(valid, ok)
    zero_b = _scalar(op, 0.0, boxes)
    ex0, ey0, ex1, ey1 = (op.Cast(op.Where(valid, v, zero_b), to=_INT64) for v in e)
    one_i = op.Constant(value_int=1)
    bw = op.Max(op.Add(op.Sub(ex1, ex0), one_i), one_i)
    bh = op.Max(op.Add(op.Sub(ey1, ey0), one_i), one_i)
    calc = masks
    H, W = _ints(op, [image_h]), _ints(op, [image_w])
    ys = op.Unsqueeze(op.Cast(_arange(op, H, H), to=_INT64), _ints(op, [0]))  # [1, H] int64
    xs = op.Unsqueeze(op.Cast(_arange(op, W, W), to=_INT64), _ints(op, [0]))
    ax = _ints(op, [1])
    # visible window: x0 <= x <= x1 inside the image, valid box
    in_y = op.And(op.GreaterOrEqual(ys, op.Unsqueeze(ey0, ax)), op.LessOrEqual(ys, op.Unsqueeze(ey1, ax)))
    in_x = op.And(op.GreaterOrEqual(xs, op.Unsqueeze(ex0, ax)), op.LessOrEqual(xs, op.Unsqueeze(ex1, ax)))
    in_y = op.And(in_y, op.Unsqueeze(valid, ax))
    window = op.And(op.Unsqueeze(in_y, _ints(op, [2])), op.Unsqueeze(in_x, ax))  # [N, H, W]
    # per-box taps relative to the box origin
    dy = op.CastLike(op.Sub(ys, op.Unsqueeze(ey0, ax)), calc)  # [N, H]
    dx = op.CastLike(op.Sub(xs, op.Unsqueeze(ex0, ax)), calc)
    sy = op.Unsqueeze(op.Div(op.CastLike(Ph, calc), op.CastLike(bh, calc)), ax)  # [N, 1]
    sx = op.Unsqueeze(op.Div(op.CastLike(Pw, calc), op.CastLike(bw, calc)), ax)
    ry = _interp(op, dy, Ph, sy, calc)  # [N, H, Ph]
    rx = _interp(op, dx, Pw, sx, calc)  # [N, W, Pw]
    out = op.MatMul(op.MatMul(ry, padded), op.Transpose(rx, perm=[0, 2, 1]))  # [N, H, W]
    out = op.Unsqueeze(op.Where(window, out, _scalar(op, 0.0, out)), ax)
    if threshold is not None:
        out = op.Greater(out, _scalar(op, threshold, out))
    return out
