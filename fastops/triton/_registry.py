"""Registering Triton kernels as torch ops that work both on a GPU and under TRITON_INTERPRET=1 on the CPU.

On a GPU: `torch.library.triton_op` + `wrap_triton`, so torch.compile sees through the kernel.
Under the interpreter (CPU tensors): FakeTensor/opcheck/compile/export would touch data pointers through
triton_op, so the same Python function is registered as a plain `custom_op` with an explicit fake kernel
(the only combination that passes opcheck, compile and export there: triton_op under the interpreter fails them).

Use:
    @triton_custom_op("fastops::roi_align_triton", mutates_args=())
    def roi_align_triton(input: Tensor, ...) -> Tensor:
        ...
        launch(my_kernel)[grid](...)
        return out

    @roi_align_triton.register_fake
    def _(input, ...): ...
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


def triton_custom_op(name: str, *, mutates_args=()):
    def decorator(fn):
        if INTERPRET:
            return torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        return torch.library.triton_op(name, mutates_args=mutates_args)(fn)

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
