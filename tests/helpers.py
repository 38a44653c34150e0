"""Small helpers shared by the op families' tests."""
import io
import os

import pytest
import torch

# Under ATEN_CPU_CAPABILITY=default (`make sanitize` sets it) torch 2.14.1's inductor picks no vector ISA, yet for
# some kernels (indexed loads) it still emits at::vec code without its header: "'at::vec' has not been declared".
# The tests that compile such graphs with inductor skip there; everywhere else they run.
needs_inductor_vec = pytest.mark.skipif(
    os.environ.get("ATEN_CPU_CAPABILITY") == "default",
    reason="torch 2.14.1 inductor emits at::vec code that does not compile under ATEN_CPU_CAPABILITY=default")


def per_thread_count(fn, counts=(1, 2)):
    """[fn() run with torch.set_num_threads(n) for n in counts]; the thread count is restored afterwards."""
    old = torch.get_num_threads()
    try:
        out = []
        for n in counts:
            torch.set_num_threads(n)
            out.append(fn())
        return out
    finally:
        torch.set_num_threads(old)


def assert_all_equal(a, b):
    """Two equally long sequences of tensors are equal to the bit, pair by pair."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def script_roundtrip(fn):
    """(torch.jit.script(fn), the same saved to a buffer and loaded back)."""
    scripted = torch.jit.script(fn)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    return scripted, torch.jit.load(buf)
