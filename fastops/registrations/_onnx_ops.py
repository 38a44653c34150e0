"""One decomposition, two ONNX exporters: a tiny adapter so that a family writes its decomposition once against
`o.<OpType>(inputs..., attr=value)` and `o.const(values)`, and gets both the dynamo translation (onnxscript ops,
traced) and the TorchScript-exporter symbolic (`g.op`). Standard ONNX ops only (opset 18)."""
from __future__ import annotations

import torch


FLOAT, DOUBLE, INT64, BOOL = 1, 11, 7, 9  # onnx.TensorProto data types


def onnx_dtype(v) -> int:
    """ONNX element type of a value of either exporter (onnxscript value or TorchScript graph value)."""
    dtype = getattr(v, "dtype", None)  # onnxscript (dynamo exporter)
    if dtype is not None:
        return int(dtype)
    return {"Float": FLOAT, "Double": DOUBLE, "Half": 10, "BFloat16": 16, "Long": INT64}.get(v.type().scalarType(),
                                                                                            FLOAT)


def compute(o, x):
    """`x` in the kernels' accumulation type (acc_t): float64 stays, float16/bfloat16 become float32."""
    return x if onnx_dtype(x) in (FLOAT, DOUBLE) else o.Cast(x, to=FLOAT)


def trunc(o, v):
    """Rounding toward zero (C's trunc / int()) for a float tensor."""
    return o.Where(o.Less(v, o.CastLike(o.const(0.0, torch.float32), v)), o.Ceil(v), o.Floor(v))


def is_finite(o, v):
    return o.Not(o.Or(o.IsNaN(v), o.IsInf(v)))


class OnnxscriptOps:
    """For the dynamo exporter's translation functions (onnxscript's traced evaluator)."""

    def __init__(self):
        from onnxscript import opset18

        self._op = opset18

    def const(self, values, dtype=torch.int64):
        import numpy as np

        arr = np.asarray(values, dtype={torch.int64: np.int64, torch.float32: np.float32,
                                        torch.float64: np.float64}[dtype])
        from onnxscript import ir

        return self._op.Constant(value=ir.tensor(arr))

    def __getattr__(self, name):
        fn = getattr(self._op, name)

        def op(*args, _outputs=1, **attrs):  # onnxscript returns every output of a multi-output op by itself
            return fn(*args, **attrs)

        return op


class TorchScriptOps:
    """For the TorchScript exporter's symbolic functions: attributes get g.op's type suffixes."""

    def __init__(self, g):
        self.g = g

    def const(self, values, dtype=torch.int64):
        return self.g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

    def __getattr__(self, name):
        def op(*args, _outputs=1, **attrs):
            kw = {"outputs": _outputs} if _outputs > 1 else {}
            for k, v in attrs.items():
                if isinstance(v, bool) or isinstance(v, int):
                    kw[k + "_i"] = int(v)
                elif isinstance(v, float):
                    kw[k + "_f"] = v
                elif isinstance(v, (list, tuple)):
                    kw[k + ("_f" if v and isinstance(v[0], float) else "_i")] = list(v)
                elif isinstance(v, str):
                    kw[k + "_s"] = v
                else:
                    kw[k] = v
            return self.g.op(name, *args, **kw)

        return op
