import os

# The Triton kernels run on CPU tensors through the interpreter; it is read when kernels are decorated,
# so it must be set before fastops (or anything importing triton kernels) is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastops  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
