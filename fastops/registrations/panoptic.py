"""panoptic_fuse: what every backend shares. The fake kernel (the compiled op and its `_triton` twin use the
same), autocast, ONNX, and the constants mirrored from csrc/panoptic/panoptic.h.

Imports neither `fastops.ops`, `fastops.triton` nor `fastops.reference`.
"""
import torch

import fastops._library  # noqa: F401  (loads fastops._C: the schema must exist before registering)

# Mirrored from csrc/panoptic/panoptic.h (kVoidId, kInstFields); tests compare them with
# torch.ops.fastops._panoptic_constants().
VOID_ID = 255
INST_FIELDS = 13  # sy0, sy1, sx0, sx1, my0, my1, mx0, mx1, by0, bx0, mh, mw, ch (panoptic.h Inst)


def fake_panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size=None, void=True):
    torch._check(semantic_logits.dim() == 3, lambda: "panoptic_fuse: semantic_logits must be 3-D")
    torch._check(boxes.size(0) == mask_logits.size(0), lambda: "panoptic_fuse: N mismatch")
    if output_size is None:
        h, w = semantic_logits.shape[1], semantic_logits.shape[2]
    else:
        h, w = output_size
    return semantic_logits.new_empty((h, w), dtype=torch.int32)


torch.library.register_fake("fastops::panoptic_fuse")(fake_panoptic_fuse)


# ---- autocast (CPU and CUDA): the logits in float32 (the kernels compute in float32 anyway; mixed semantic/mask
# dtypes accepted), boxes as given; the result is int32 ids.

def autocast_panoptic_fuse(semantic_logits, mask_logits, boxes, labels, num_stuff, output_size=None, void=True):
    with torch.autocast(semantic_logits.device.type, enabled=False):
        return torch.ops.fastops.panoptic_fuse(semantic_logits.float(), mask_logits.float(), boxes, labels,
                                               num_stuff, output_size, void)


_lib = torch.library.Library("fastops", "IMPL")
for _key in ("AutocastCPU", "AutocastCUDA"):
    _lib.impl("panoptic_fuse", autocast_panoptic_fuse, _key)


# ---- ONNX: the [S + N (+1), H, W] logits of UPSNet's head, then ArgMax (standard ops, opset 18) --------------------
# The export builds what the kernels never build (the panoptic logit tensor, UPSNet's own formulation): the semantic
# logits upsampled with the kernels' taps (panoptic.h resize_lerp, Gather + the same lerp arithmetic), per instance
# its semantic channel inside the seg region plus its mask logits resized to the truncated box (GatherElements with
# per-instance taps), the void channel, ArgMax (first index on ties).

def _taps(o, dst, in_size, out_size, calc):
    """panoptic.h resize_lerp for int64 destination indices `dst` (any shape) from `in_size` to `out_size` (int64,
    broadcasting with dst): (i0, i1, l0, l1), identity taps where the sizes are equal."""
    def f(v):
        return o.CastLike(o.const([v], torch.float64), calc)

    scale = o.Div(o.CastLike(in_size, calc), o.CastLike(out_size, calc))
    src = o.Sub(o.Mul(scale, o.Add(o.CastLike(dst, calc), f(0.5))), f(0.5))
    src = o.Max(src, f(0.0))
    last = o.Sub(in_size, o.const([1]))
    i0 = o.Min(o.Cast(o.Floor(src), to=7), last)
    l1 = o.Min(o.Max(o.Sub(src, o.CastLike(i0, calc)), f(0.0)), f(1.0))
    i1 = o.Add(i0, o.Cast(o.Less(i0, last), to=7))
    same = o.Equal(in_size, out_size)
    ident = o.Min(o.Max(dst, o.const([0])), last)  # outside the box the taps are never read: any index in range
    i0, i1 = o.Where(same, ident, i0), o.Where(same, ident, i1)
    l1 = o.Where(same, f(0.0), l1)
    return i0, i1, o.Sub(f(1.0), l1), l1


def _upsample(o, x, H: int, W: int):
    """x [C, h, w] -> [C, H, W]: l0y (l0x a + l1x b) + l1y (l0x c + l1x d), the kernels' order."""
    h, w = o.Shape(x, start=1, end=2), o.Shape(x, start=2, end=3)
    ys = o.Range(o.const(0), o.const(H), o.const(1))
    xs = o.Range(o.const(0), o.const(W), o.const(1))
    y0, y1, ly0, ly1 = _taps(o, ys, h, o.const([H]), x)
    x0, x1, lx0, lx1 = _taps(o, xs, w, o.const([W]), x)
    r0, r1 = o.Gather(x, y0, axis=1), o.Gather(x, y1, axis=1)  # [C, H, w]
    col = o.const([1])
    ly0, ly1 = o.Unsqueeze(ly0, col), o.Unsqueeze(ly1, col)  # [H, 1]

    def lerp_x(r):
        return o.Add(o.Mul(lx0, o.Gather(r, x0, axis=2)), o.Mul(lx1, o.Gather(r, x1, axis=2)))

    return o.Add(o.Mul(ly0, lerp_x(r0)), o.Mul(ly1, lerp_x(r1)))


def panoptic_graph(o, semantic_logits, mask_logits, boxes, labels, num_stuff: int, output_size, void: bool):
    from fastops.registrations._onnx_ops import DOUBLE, INT64, compute, trunc

    x = compute(o, semantic_logits)  # [C, h, w]
    masks = o.CastLike(mask_logits, x)  # [N, M, M]
    if output_size is not None:
        H, W = int(output_size[0]), int(output_size[1])
        x = _upsample(o, x, H, W)
        Hd, Wd = o.const([H]), o.const([W])
    else:
        Hd, Wd = o.Shape(x, start=1, end=2), o.Shape(x, start=2, end=3)
    S = num_stuff
    zero = o.CastLike(o.const([0.0], torch.float32), x)
    # instance regions (panoptic.h make_inst), in float64 then int64
    lim = 1099511627776.0
    b = o.Cast(boxes, to=DOUBLE)
    nan = o.Cast(o.ReduceMax(o.Cast(o.IsNaN(b), to=INT64), o.const([1]), keepdims=0), to=9)  # [N]
    b = o.Where(o.IsNaN(b), o.const([-lim], torch.float64),
                o.Min(o.Max(b, o.const([-lim], torch.float64)), o.const([lim], torch.float64)))

    def col(k):
        return o.Gather(b, o.const(k), axis=1)

    def i64(v):
        return o.Cast(v, to=INT64)

    x1, y1, x2, y2 = col(0), col(1), col(2), col(3)
    bx0, by0, bx2, by2 = i64(trunc(o, x1)), i64(trunc(o, y1)), i64(trunc(o, x2)), i64(trunc(o, y2))
    rx2, ry2 = i64(o.Round(x2)), i64(o.Round(y2))
    one, zero_i = o.const([1]), o.const([0])

    def clamp(v, hi):
        return o.Min(o.Max(v, zero_i), hi)

    sx0, sx1 = clamp(bx0, Wd), clamp(o.Add(rx2, one), Wd)
    sy0, sy1 = clamp(by0, Hd), clamp(o.Add(ry2, one), Hd)
    mx1, my1 = clamp(o.Add(bx2, one), Wd), clamp(o.Add(by2, one), Hd)
    mw = o.Max(o.Add(o.Sub(bx2, bx0), one), one)
    mh = o.Max(o.Add(o.Sub(by2, by0), one), one)
    ys = o.Range(o.const(0), o.Squeeze(Hd, zero_i), o.const(1))  # [H]
    xs = o.Range(o.const(0), o.Squeeze(Wd, zero_i), o.const(1))  # [W]
    c1 = o.const([1])

    def span(g, lo, hi):  # [N, H] or [N, W]: lo <= i < hi
        return o.And(o.GreaterOrEqual(g, o.Unsqueeze(lo, c1)), o.Less(g, o.Unsqueeze(hi, c1)))

    keep = o.Unsqueeze(o.Not(nan), o.const([1, 2]))

    def region(ylo, yhi, xlo, xhi):
        return o.And(o.And(o.Unsqueeze(span(ys, ylo, yhi), o.const([2])), o.Unsqueeze(span(xs, xlo, xhi), c1)), keep)

    seg_in = region(sy0, sy1, sx0, sx1)  # [N, H, W]
    mask_in = region(sy0, my1, sx0, mx1)  # mask region starts at the same clamped corner
    ch = o.Add(o.Cast(labels, to=INT64), o.const([S - 1]))
    seg = o.Where(seg_in, o.Gather(x, ch, axis=0), zero)  # [N, H, W]
    # the mask logits resized to (mh, mw) and read at (y - by0, x - bx0): per-instance taps
    M_h, M_w = o.Shape(masks, start=1, end=2), o.Shape(masks, start=2, end=3)
    ty0, ty1, ly0, ly1 = _taps(o, o.Sub(o.Unsqueeze(ys, zero_i), o.Unsqueeze(by0, c1)), M_h,
                               o.Unsqueeze(mh, c1), x)  # [N, H]
    tx0, tx1, lx0, lx1 = _taps(o, o.Sub(o.Unsqueeze(xs, zero_i), o.Unsqueeze(bx0, c1)), M_w,
                               o.Unsqueeze(mw, c1), x)  # [N, W]
    n_h_m = o.Concat(o.Shape(ty0), M_w, axis=0)
    c2 = o.const([2])

    def mrow(t):
        return o.GatherElements(masks, o.Expand(o.Unsqueeze(t, c2), n_h_m), axis=1)  # [N, H, M]

    mr = o.Add(o.Mul(o.Unsqueeze(ly0, c2), mrow(ty0)), o.Mul(o.Unsqueeze(ly1, c2), mrow(ty1)))
    n_h_w = o.Concat(o.Shape(ty0), Wd, axis=0)

    def mcol(t):
        return o.GatherElements(mr, o.Expand(o.Unsqueeze(t, c1), n_h_w), axis=2)  # [N, H, W]

    mval = o.Add(o.Mul(o.Unsqueeze(lx0, c1), mcol(tx0)), o.Mul(o.Unsqueeze(lx1, c1), mcol(tx1)))
    inst = o.Add(seg, o.Where(mask_in, mval, zero))
    parts = [o.Slice(x, zero_i, o.const([S]), zero_i), inst] if S > 0 else [inst]
    if void:
        neg_inf = o.CastLike(o.const([float("-inf")], torch.float32), x)
        hw = o.Concat(Hd, Wd, axis=0)
        plane = o.Expand(neg_inf, o.Concat(one, hw, axis=0))
        things = o.Concat(o.Slice(x, o.const([S]), o.const([2 ** 62]), zero_i), plane, axis=0)  # -inf when there is none
        thing_max = o.ReduceMax(things, zero_i, keepdims=1)
        seg_max = o.ReduceMax(o.Concat(seg, plane, axis=0), zero_i, keepdims=1)
        no_inst = o.Equal(o.Shape(seg, start=0, end=1), zero_i)
        seg_max = o.Where(no_inst, o.CastLike(o.const([-10.0], torch.float32), x), seg_max)
        parts.append(o.Sub(thing_max, seg_max))
    logits = o.Concat(*parts, axis=0) if len(parts) > 1 else parts[0]
    ids = o.ArgMax(logits, axis=0, keepdims=0, select_last_index=0)  # [H, W] int64, first maximum
    if void:
        n_ch = o.Shape(logits, start=0, end=1)
        ids = o.Where(o.Equal(ids, o.Sub(n_ch, one)), o.const([255]), ids)
    return o.Cast(ids, to=6)


def _panoptic_symbolic(g, semantic_logits, mask_logits, boxes, labels, num_stuff, output_size, void):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    size = None if sh._is_none(output_size) else [int(v) for v in sh._maybe_get_const(output_size, "is")]
    return panoptic_graph(TorchScriptOps(g), semantic_logits, mask_logits, boxes, labels,
                          int(sh._maybe_get_const(num_stuff, "i")), size, bool(sh._maybe_get_const(void, "b")))


ONNX_OPSET = 18
torch.onnx.register_custom_op_symbolic("fastops::panoptic_fuse", _panoptic_symbolic, ONNX_OPSET)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from typing import Optional, Sequence

    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat, TInt

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def panoptic_fuse(semantic_logits: TFloat, mask_logits: TFloat, boxes: TFloat, labels: TInt, num_stuff: int,
                      output_size: Optional[Sequence[int]] = None, void: bool = True):
        return panoptic_graph(OnnxscriptOps(), semantic_logits, mask_logits, boxes, labels, num_stuff, output_size,
                              void)

    return {torch.ops.fastops.panoptic_fuse.default: panoptic_fuse}
