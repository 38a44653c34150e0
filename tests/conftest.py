import os

# The Triton kernels run on CPU tensors through the interpreter; it is read when kernels are decorated,
# so it must be set before fastops (or anything importing triton kernels) is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fastops  # noqa: E402,F401
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests: "ci" (default) keeps `make test` in budget; `pytest --hypothesis-profile=long` for a deep run.
settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
