"""Corner pooling: what every backend shares. Fake kernels for the compiled op and its `_triton` twin, autograd
(one setup_context, one backward factory taking the backward op), and the mode enum mirrored from
csrc/corner_pool/corner_pool.h (tests/test_corner_pool.py compares them)."""
import torch

import fastops._library  # noqa: F401  (loads the compiled ops registered below)
from fastops.registrations import register_fakes

# Mirror of csrc/corner_pool/corner_pool.h
POOL_MODES = {"top": 0, "bottom": 1, "left": 2, "right": 3}  # enum PoolMode


def corner_pool_fake(input, mode):
    return input.new_empty(input.shape)


def corner_pool_backward_fake(grad, input, output, mode):
    return input.new_empty(input.shape)


def corner_pool_setup_context(ctx, inputs, output):
    x, mode = inputs
    ctx.save_for_backward(x, output)
    ctx.mode = mode


def corner_pool_backward(backward_op):
    """The autograd backward of corner_pool for a given backward op (the compiled one or its Triton twin)."""

    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        return backward_op(grad, x, out, ctx.mode), None

    return backward


def pool_mask_shape(shape, mode):
    """Shape of `_corner_pool_masked`'s record mask (csrc/corner_pool/corner_pool.h pool_mask_shape): one bit per
    element, packed by 8 along the axis across the scan (numpy packbits, little bit order)."""
    b, c, h, w = shape
    if mode in ("top", "bottom"):
        return (b, c, h, (w + 7) // 8)
    return (b, c, (h + 7) // 8, w)


def corner_pool_masked_fake(input, mode):
    return input.new_empty(input.shape), input.new_empty(pool_mask_shape(input.shape, mode), dtype=torch.uint8)


def corner_pool_masked_backward_fake(grad, mask, mode):
    return grad.new_empty(grad.shape)


def corner_pool_masked_setup_context(ctx, inputs, output):
    """The autograd path of fastops.corner_pool (`_corner_pool_masked`): only the record mask is saved, and the
    backward reads it and the gradient (not the input and the output). The mask is internal: not differentiable."""
    _x, mode = inputs
    _out, mask = output
    ctx.mark_non_differentiable(mask)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(mask)
    ctx.mode = mode


def corner_pool_masked_backward(ctx, grad, _grad_mask):
    (mask,) = ctx.saved_tensors
    if grad is None:
        return None, None
    return torch.ops.fastops._corner_pool_masked_backward(grad, mask, ctx.mode), None


FAKES = {"corner_pool": corner_pool_fake, "_corner_pool_backward": corner_pool_backward_fake,
         "_corner_pool_masked": corner_pool_masked_fake,
         "_corner_pool_masked_backward": corner_pool_masked_backward_fake}

register_fakes(FAKES)
torch.library.register_autograd("fastops::corner_pool", corner_pool_backward(torch.ops.fastops._corner_pool_backward),
                                setup_context=corner_pool_setup_context)
torch.library.register_autograd("fastops::_corner_pool_masked", corner_pool_masked_backward,
                                setup_context=corner_pool_masked_setup_context)
# Autocast: none on purpose. A running max is exact in float16/bfloat16 (every output is one of the inputs), so
# corner_pool keeps its input's dtype under autocast, as max_pool2d does.


# ---- ONNX: a log-step max scan (standard ops, opset 18) -------------------------------------------------------------

def corner_pool_graph(o, x, mode: str, length: int):
    """corner_pool as ONNX ops: ceil(log2(L)) steps of out[i] = Max(out[i], out[i +- 2^s]) on slices (CornerNet's own
    forward), for a static scan length L. ONNX Max's NaN handling is the runtime's."""
    axis = 2 if mode in ("top", "bottom") else 3
    rev = mode in ("top", "left")  # out[i] = max over i' >= i
    ax = o.const([axis])
    out, ind = x, 1
    while ind < length:
        lo, hi = o.const([ind]), o.const([length - ind])
        zero, end = o.const([0]), o.const([length])
        if rev:
            head = o.Max(o.Slice(out, zero, hi, ax), o.Slice(out, lo, end, ax))
            out = o.Concat(head, o.Slice(out, hi, end, ax), axis=axis)
        else:
            tail = o.Max(o.Slice(out, lo, end, ax), o.Slice(out, zero, hi, ax))
            out = o.Concat(o.Slice(out, zero, lo, ax), tail, axis=axis)
        ind *= 2
    return out


def _static_length(size, mode):
    if not isinstance(size, int):
        raise RuntimeError(f"fastops.corner_pool exports to ONNX for a static {'H' if mode in ('top', 'bottom') else 'W'}"
                           f" only (its log-step scan unrolls over it), got {size!r}")
    return size


def _corner_pool_symbolic(g, x, mode):
    from torch.onnx import symbolic_helper as sh

    from fastops.registrations._onnx_ops import TorchScriptOps

    mode = sh._maybe_get_const(mode, "s")
    sizes = sh._get_tensor_sizes(x)
    axis = 2 if mode in ("top", "bottom") else 3
    return corner_pool_graph(TorchScriptOps(g), x, mode, _static_length(sizes[axis] if sizes else None, mode))


torch.onnx.register_custom_op_symbolic("fastops::corner_pool", _corner_pool_symbolic, 15)


def onnx_translations():
    """{op: translation} for the dynamo exporter (collected by fastops.onnx.translations())."""
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

    from fastops.registrations._onnx_ops import OnnxscriptOps

    def corner_pool(input: TFloat, mode: str) -> TFloat:
        axis = 2 if mode in ("top", "bottom") else 3
        return corner_pool_graph(OnnxscriptOps(), input, mode, _static_length(input.shape[axis], mode))

    return {torch.ops.fastops.corner_pool.default: corner_pool}
