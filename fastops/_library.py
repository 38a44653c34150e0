"""Loading the compiled library, and what every op's public module shares: argument checks and `impl=` dispatch."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Optional, TypeVar

import torch

try:
    from fastops import _C  # noqa: F401  (runs the TORCH_LIBRARY initialisers)
except ImportError as exc:  # pragma: no cover - only when the package was not built
    _here = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"fastops._C is not built in {_here}: run `make build` there (or `pip install --no-build-isolation .`), "
        f"or import fastops from an installed copy"
    ) from exc

IMPLS = ("auto", "cpp", "triton", "reference")

# Triton under the CPU interpreter cannot go through triton_op/FakeTensor (BUILD_FACTS): register the same
# function as a plain custom_op with an explicit fake kernel instead.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


_has_torch_function = torch.overrides.has_torch_function
_is_autocast_enabled = torch.is_autocast_enabled
_is_compiling = torch.compiler.is_compiling


def plain_eager(tensors: tuple) -> bool:
    """Whether a call on `tensors` may go straight to a compiled op (the eager fast paths of batched_nms and the
    heatmap decoders): no ``__torch_function__`` override among them, CPU autocast off, not under torch.compile."""
    return not _has_torch_function(tensors) and not _is_autocast_enabled("cpu") and not _is_compiling()


def is_channels_last(t: torch.Tensor) -> bool:
    """Same rule as fastops::is_channels_last (csrc/common.h): NHWC storage that is not also plain contiguous."""
    return t.dim() == 4 and t.size(1) > 1 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()

T = TypeVar("T")


def cuda_compiled() -> bool:
    """True when this build of fastops contains the CUDA kernels."""
    return bool(torch.ops.fastops._cuda_compiled())


def empty_cpu_cache() -> int:
    """Unmaps the large CPU blocks fastops keeps for reuse and returns how many bytes that released.

    Kernels that write a large output or gradient on every call (the DensePose point-sampling backward, ...) take
    their memory from a process-wide cache of 2 MB-aligned blocks, so a training loop does not page-fault the same
    tens of MB in again at every step (csrc/cpu_memory.h). The cache holds at most ``FASTOPS_CPU_CACHE_MB`` MB of
    released blocks (environment, read once at the first large allocation; default 1024, 0 disables it), like
    ``torch.cuda.empty_cache`` for PyTorch's CUDA allocator."""
    return int(torch.ops.fastops._cpu_cache_release())


def cpu_cache_bytes() -> int:
    """Bytes of released large CPU blocks that fastops holds for reuse (see :func:`empty_cpu_cache`)."""
    return int(torch.ops.fastops._cpu_cache_bytes())


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def check_tensor(name: str, t, *, dim=None, dtypes=None, device=None) -> None:
    """ValueError naming the argument when `t` is not a tensor of the expected rank, dtype or device."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a Tensor, got {type(t).__name__}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if t.dim() not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} like the input, got {t.device}")


def check_int(name: str, value, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """`value` as an int within [low, high] (C++ takes int64; ranges are checked here, before any truncation)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np  # numpy integers are ints to a user

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


@torch._dynamo.assume_constant_result
def _import(name: str) -> bool:
    # torch.compile (dynamo) traces neither importlib nor __import__: it runs this at trace time instead (a
    # constant result), then reads sys.modules, so the first call of an impl may be inside a compiled function.
    importlib.import_module(name)
    return True


def _module(name: str):
    if not torch.compiler.is_compiling():  # the eager fast path (under dynamo, sys.modules is read after _import)
        mod = sys.modules.get(name)
        if mod is not None:
            return mod
    _import(name)
    return sys.modules[name]


def reference_module(family: str):
    """`fastops.reference.<family>`: imported only when a caller asks for impl="reference"."""
    return _module(f"fastops.reference.{family}")


def triton_module(family: str):
    """`fastops.triton.<family>`, importing it registers its `fastops::<op>_triton` ops."""
    name = f"fastops.triton.{family}"
    if not torch.compiler.is_compiling() and name in sys.modules:
        return sys.modules[name]
    from fastops.triton._registry import HAVE_TRITON

    if not HAVE_TRITON:
        raise RuntimeError("impl='triton' needs the triton package")
    return _module(name)


def dispatch(op: str, impl: str, device: torch.device, *, cpp: Callable[[], T], reference: Callable[[], T],
             triton: Optional[Callable[[], T]] = None) -> T:
    """Run one implementation of public op `op` for tensors on `device`.

    "reference" runs `reference()`; "triton" runs `triton()` (CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1); "cpp" runs the compiled kernel `cpp()`; "auto" is "cpp" unless the tensors are on CUDA
    and this build has no CUDA kernels, then "triton". Each callable does its own lazy import, so a backend is
    loaded only when it runs. A clear ValueError says when the asked implementation does not exist here.
    """
    check_impl(impl)
    if impl == "reference":
        return reference()
    is_cuda = device.type == "cuda"
    if impl == "auto":
        impl = "triton" if (is_cuda and not cuda_compiled() and triton is not None) else "cpp"
    if impl == "triton":
        if triton is None:
            raise ValueError(f"{op}: impl='triton' does not exist for this op; use 'cpp' or 'reference'")
        if device.type == "cpu" and not TRITON_INTERPRET:
            raise ValueError(
                f"{op}: impl='triton' runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 set before "
                f"importing fastops; the input is on the CPU")
        return triton()
    if is_cuda and not cuda_compiled():
        raise ValueError(f"{op}: this build of fastops has no CUDA kernels (built without nvcc); "
                         f"use impl='triton' or 'reference', or rebuild with FASTOPS_CUDA=1")
    if device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{op}: impl='cpp' runs on CPU or CUDA tensors, got device {device}")
    return cpp()
