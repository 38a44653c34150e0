"""Registering Triton kernels as torch ops that work both on a GPU and under TRITON_INTERPRET=1 on the CPU.

On a GPU: `torch.library.triton_op` + `wrap_triton`, so torch.compile sees through the kernel.
Under the interpreter (CPU tensors): FakeTensor/opcheck/compile/export would touch data pointers through
triton_op, so the same Python function is registered as a plain `custom_op` with an explicit fake kernel
(the only combination that passes opcheck, compile and export there: triton_op under the interpreter fails them).

Use:
    @triton_custom_op("fastops::roi_align_triton", fake=_reg.roi_align_fake)
    def roi_align_triton(input: Tensor, ...) -> Tensor:
        ...
        launch(my_kernel)[grid](...)
        return out
"""
from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAVE_TRITON = True
except Exception:  # pragma: no cover - triton missing
    HAVE_TRITON = False


def triton_custom_op(name: str, *, mutates_args=(), fake=None):
    """The decorated function as op `name`; `fake`: its fake kernel (from the family's registrations module),
    registered where one is needed (see register_fake)."""
    def decorator(fn):
        if INTERPRET:
            op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        else:
            op = torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        if fake is not None:
            register_fake(op, fake)
        return op

    return decorator


def launch(kernel):
    """The kernel as callable inside a triton op: wrapped for torch.compile on a GPU, plain when interpreted."""
    if INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def check_triton_device(t: torch.Tensor, name: str = "input") -> None:
    if not HAVE_TRITON:
        raise RuntimeError("impl='triton' needs the triton package")
    if t.device.type == "cpu" and not INTERPRET:
        raise ValueError(
            f"impl='triton' runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 set before "
            f"importing fastops; {name} is on the CPU"
        )


def register_fake(op, fake) -> None:
    """Explicit fake kernel: needed for the custom_op used under the interpreter; a triton_op derives its own."""
    if INTERPRET:
        op.register_fake(fake)
