"""What every backend of an op family shares, one module per family: fake kernels, autograd (setup_context and
one backward factory that takes the backward op), autocast and ONNX registrations, and the enum values mirrored
from the C++ headers. `fastops/ops/<family>.py` and `fastops/triton/<family>.py` both import it; it imports
neither (and never `fastops.reference`)."""
import torch


def register_fakes(fakes) -> None:
    """The fake kernel of each compiled op, {name: fake} (names without the fastops:: namespace)."""
    for name, fake in fakes.items():
        torch.library.register_fake(f"fastops::{name}")(fake)


def register_float32_autocast(names) -> None:
    """Autocast on CPU and CUDA for each op name: float16/bfloat16 inputs computed in float32."""
    for name in names:
        for device in ("cpu", "cuda"):
            torch.library.register_autocast(f"fastops::{name}", device, torch.float32)
