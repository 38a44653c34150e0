"""One checkpoint-unwrapping helper for every bundled model loader (models/_checkpoint.py): bare state dicts,
``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"model_state_dict": ...}`` wrappers (nested too) and
``module.`` / ``model.module.`` prefixes, through each model's own loader and a file on disk."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from fastops.models._checkpoint import load_checkpoint, unwrap_state_dict
from fastops.models.centernet import CenterNet
from fastops.models.hourglass import StackedHourglass
from fastops.models.panoptic import UPSNet, load_panoptic_checkpoint
from fastops.models.yolact import Yolact, load_yolact_checkpoint


def _layouts(sd):
    """name -> checkpoint object, every layout a user may hand a loader."""
    pre = lambda p: OrderedDict((p + k, v) for k, v in sd.items())  # noqa: E731
    return {
        "bare": sd,
        "state_dict": {"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}},
        "model": {"model": sd, "iteration": 10},
        "model_state_dict": {"model_state_dict": sd},
        "module.": pre("module."),
        "state_dict+module.": {"state_dict": pre("module."), "epoch": 1},
        "model+model.module.": {"model": pre("model.module.")},
        "nested": {"checkpoint": 1, "model": {"state_dict": pre("module.")}},
    }


def test_unwrap_keeps_keys_and_tensors_for_every_layout():
    m = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    sd = m.state_dict()
    for name, obj in _layouts(sd).items():
        got = unwrap_state_dict(obj, m.state_dict().keys())
        assert list(sorted(got)) == list(sorted(sd)), name
        assert all(got[k] is sd[k] for k in sd), name
        m.load_state_dict(got)  # the metadata (BatchNorm version) survives the prefix stripping


def test_unwrap_does_not_strip_a_prefix_the_module_owns():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Linear(2, 2)  # every key starts with "model." legitimately

    w = Wrapper()
    assert set(unwrap_state_dict(w.state_dict(), w.state_dict().keys())) == {"model.weight", "model.bias"}
    assert set(unwrap_state_dict({"model": w.state_dict()}, w.state_dict().keys())) == {"model.weight",
                                                                                          "model.bias"}
    # without the module's keys, a prefix every key shares is taken for a wrapper's
    assert set(unwrap_state_dict(w.state_dict())) == {"weight", "bias"}


def test_unwrap_leaves_its_input_alone():
    sd = OrderedDict([("module.a", torch.zeros(1))])
    unwrap_state_dict(sd)
    assert list(sd) == ["module.a"]


@pytest.mark.parametrize("obj", [[torch.zeros(1)], {"epoch": 3, "optimizer": {"lr": 0.1}}, torch.zeros(2)])
def test_unwrap_rejects_what_holds_no_state_dict(obj):
    with pytest.raises(ValueError, match="checkpoint"):
        unwrap_state_dict(obj)


def test_load_checkpoint_rejects_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="path"):
        load_checkpoint(nn.Linear(1, 1), tmp_path / "nope.pth")


def _hourglass():
    return StackedHourglass(nstack=1, inp_dim=16, oup_dim=4, depth=2)


def _centernet():
    return CenterNet(3)


def _yolact():
    return Yolact(5, 96)


def _upsnet():
    return UPSNet(3, 2, min_size=64, max_size=64)


LOADERS = {
    "hourglass": (_hourglass, lambda m, p: m.load_checkpoint(p)),
    "centernet": (_centernet, lambda m, p: m.load_checkpoint(p)),
    "yolact": (_yolact, lambda m, p: load_yolact_checkpoint(m, str(p))),
    "panoptic": (_upsnet, lambda m, p: load_panoptic_checkpoint(m, str(p))),
}


@pytest.mark.parametrize("model", sorted(LOADERS))
def test_every_model_loader_accepts_wrapped_and_prefixed_files(model, tmp_path):
    """Each loader goes through unwrap_state_dict (every layout is checked on it above; three cover each wrapper
    and prefix kind here, the models' own tests load bare files)."""
    build, load = LOADERS[model]
    torch.manual_seed(0)
    src = build()
    sd = src.state_dict()
    torch.manual_seed(1)
    dst = build()
    for name, obj in _layouts(sd).items():
        if name not in ("state_dict+module.", "model+model.module.", "nested"):
            continue
        with torch.no_grad():
            for p in dst.parameters():
                p.zero_()
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        load(dst, path)
        got = dst.state_dict()
        for k, v in sd.items():
            assert torch.equal(got[k], v), (model, name, k)
