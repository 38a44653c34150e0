"""tools/model_op_share.py (each model's share of time in fastops' ops, before and after): its region timers see
the op call sites on both paths, its profiler view sees fastops:: kernels only on the fastops path, and it leaves
every wrapped name as it found it."""
import importlib.util
import pathlib

import torch

import fastops
from fastops.models.centernet import CenterNet


def _tool():
    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "model_op_share.py"
    spec = importlib.util.spec_from_file_location("model_op_share", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_op_share_of_centernet_before_and_after():
    tool = _tool()
    names_before = [getattr(o, a) for o, a, _ in tool._sites()]
    torch.manual_seed(0)
    m = CenterNet(3).eval()
    x = torch.randn(1, 3, 64, 64)
    for impl in ("reference", "auto"):
        m.impl = impl
        with torch.no_grad():
            r = tool.measure(lambda: m.detect(x), rounds=1)
        assert 0 < r["region_ms"] < r["total_ms"]
        assert set(r["per_label"]) == {"centernet_decode"}
        _, fastops_ms, names = r["profile"]
        if impl == "reference":
            assert not names and fastops_ms == 0
        else:
            assert "fastops::centernet_decode" in names and fastops_ms > 0
    assert [getattr(o, a) for o, a, _ in tool._sites()] == names_before
    assert fastops.centernet_decode.__module__ == "fastops.ops.heatmaps"
