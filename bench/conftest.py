"""Shared benchmark fixtures: thread pinning and the side-by-side convention.

Each comparison is a test parametrised by `threads` (1, 2) and by `side` ("anchor", "fastops"), `side`
innermost so the two run back to back; `benchutil.record(...)` tags the result for
tools/speedup_table.py.
"""
import pytest
import torch

THREADS = (1, 2)
SIDES = ("anchor", "fastops")


@pytest.fixture(params=THREADS, ids=lambda n: f"t{n}")
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)

