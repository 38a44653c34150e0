"""Small helpers shared by the op families' tests."""
import io

import torch


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
