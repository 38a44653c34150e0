"""What every backend of an op family shares, one module per family: fake kernels, autograd (setup_context and
one backward factory that takes the backward op), autocast and ONNX registrations, and the enum values mirrored
from the C++ headers. `fastops/ops/<family>.py` and `fastops/triton/<family>.py` both import it; it imports
neither (and never `fastops.reference`)."""
