"""The heatmap families (render, decode, peaks, corner_pool) as drop-ins (issue 12): TorchScript (script, save,
load, same result), torch.fx leaves, and autocast (the rule each op's docstring states)."""

import pytest
import torch

import fastops
from keypoints_helpers import realistic_maps
from helpers import script_roundtrip

LOW = (torch.bfloat16, torch.float16)


def _equal(a, b):
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b)
        for x, y in zip(a, b):
            _equal(x, y)
    else:
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(2, 5, 2, generator=g) * torch.tensor([30.0, 20.0])
    kp4 = torch.rand(2, 3, 5, 2, generator=g) * torch.tensor([30.0, 20.0])
    vis = (torch.rand(2, 5, generator=g) > 0.3).float()
    centers = torch.rand(2, 6, 2, generator=g) * 30
    radii = torch.randint(0, 5, (2, 6), generator=g)
    labels = torch.randint(-1, 3, (2, 6), generator=g)
    maps = realistic_maps(2, 5, 24, 32)
    heat = torch.rand(2, 3, 24, 32, generator=g)
    wh = torch.rand(2, 2, 24, 32, generator=g) * 10
    reg = torch.rand(2, 2, 24, 32, generator=g)
    return dict(kp=kp, kp4=kp4, vis=vis, centers=centers, radii=radii, labels=labels, maps=maps, heat=heat, wh=wh,
                reg=reg, x=torch.randn(2, 3, 9, 11, generator=g))


def _script_cases(t):
    """(function, full positional arguments with impl) for every public function of the four families."""
    hs, ws = torch.rand(7) * 50 + 1, torch.rand(7) * 50 + 1
    return [
        (fastops.render_gaussian_heatmaps, (t["kp"], (24, 32), 2.0, None, "msra", "gaussian", "auto")),
        (fastops.render_gaussian_heatmaps, (t["kp"], (24, 32), 1.5, t["vis"], "udp", "cauchy", "auto")),
        (fastops.render_gaussian_heatmaps, (t["kp4"], (20, 20), 2.0, None, "dark", "gaussian", "auto")),
        (fastops.render_center_heatmap, (t["centers"], t["radii"], t["labels"], 3, (24, 32), "auto")),
        (fastops.render_center_heatmap, (t["centers"], t["radii"].float() + 0.7, t["labels"], 3, (28, 28), "auto")),
        (fastops.gaussian_radius, (hs, ws, 0.7, "centernet", "auto")),
        (fastops.gaussian_radius, (hs.double(), ws[:1], 0.5, "cornernet", "auto")),
        (fastops.heatmap_argmax, (t["maps"], "none", 11, "auto")),
        (fastops.heatmap_argmax, (t["maps"][0], "dark", 5, "auto")),
        (fastops.heatmap_argmax, (t["maps"], "hourglass", 11, "auto")),
        (fastops.soft_argmax, (t["maps"], 2.0, False, "auto")),
        (fastops.soft_argmax, (t["maps"], 1.0, True, "auto")),
        (fastops.heatmap_peaks, (t["heat"], 20, 3, "auto")),
        (fastops.heatmap_peaks, (t["heat"], 5000, 5, "auto")),
        (fastops.centernet_decode, (t["heat"], t["wh"], t["reg"], 15, "auto")),
        (fastops.centernet_decode, (t["heat"], t["wh"], None, 15, "auto")),
    ] + [(fastops.corner_pool, (t["x"], mode, "auto")) for mode in ("top", "bottom", "left", "right")]


# ---- TorchScript ---------------------------------------------------------------------------------------------------

def test_every_function_scripts_saves_loads_and_matches_eager():
    cases = _script_cases(_inputs())
    scripted = {}
    for fn, args in cases:
        if fn not in scripted:
            scripted[fn] = script_roundtrip(fn)
            assert "fastops::" in str(scripted[fn][0].graph), fn.__name__
        want = fn(*args)
        for s in scripted[fn]:
            _equal(s(*args), want)
    assert len(scripted) == 8


def test_scripted_defaults_match_eager():
    t = _inputs(1)
    _equal(torch.jit.script(fastops.render_gaussian_heatmaps)(t["kp"]), fastops.render_gaussian_heatmaps(t["kp"]))
    _equal(torch.jit.script(fastops.heatmap_argmax)(t["maps"]), fastops.heatmap_argmax(t["maps"]))
    _equal(torch.jit.script(fastops.heatmap_peaks)(t["heat"]), fastops.heatmap_peaks(t["heat"]))
    _equal(torch.jit.script(fastops.centernet_decode)(t["heat"], t["wh"]), fastops.centernet_decode(t["heat"], t["wh"]))
    _equal(torch.jit.script(fastops.corner_pool)(t["x"]), fastops.corner_pool(t["x"]))


class _CenterNetHead(torch.nn.Module):
    """What a keypoint/CenterNet model's scripted forward calls: every op of the four families."""

    def forward(self, x, heat, wh, reg, maps, kp):
        pooled = fastops.corner_pool(x, "top") + fastops.corner_pool(x, "left")
        dets = fastops.centernet_decode(heat, wh, reg, 10)
        scores, labels, ys, xs = fastops.heatmap_peaks(heat, 10, 3)
        coords, conf = fastops.heatmap_argmax(maps, "quarter", 11)
        soft = fastops.soft_argmax(maps, 1.0, False)
        targets, weights = fastops.render_gaussian_heatmaps(kp, (24, 32), 2.0, None, "udp")
        radius = fastops.gaussian_radius(dets[..., 3] - dets[..., 1], dets[..., 2] - dets[..., 0])
        centre = fastops.render_center_heatmap(dets[..., :2], radius, labels, 3, (24, 32))
        return pooled, dets, scores, coords, conf, soft, targets, weights, radius, centre


def _head_args(t):
    return t["x"], t["heat"], t["wh"], t["reg"], t["maps"], t["kp"]


def test_scripted_module_saves_loads_and_matches_eager():
    t = _inputs(2)
    head = _CenterNetHead()
    scripted, loaded = script_roundtrip(head)
    want = head(*_head_args(t))
    _equal(scripted(*_head_args(t)), want)
    _equal(loaded(*_head_args(t)), want)
    graph = str(loaded.inlined_graph)
    for op in ("corner_pool", "centernet_decode", "heatmap_peaks", "heatmap_argmax", "soft_argmax",
               "render_gaussian_heatmaps", "gaussian_radius", "render_center_heatmap"):
        assert f"fastops::{op}" in graph, op


# ---- torch.fx ------------------------------------------------------------------------------------------------------

def test_fx_keeps_every_op_as_a_leaf():
    t = _inputs(3)
    head = _CenterNetHead()
    gm = torch.fx.symbolic_trace(head)
    called = [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function" and callable(n.target)]
    for op in ("corner_pool", "centernet_decode", "heatmap_peaks", "heatmap_argmax", "soft_argmax",
               "render_gaussian_heatmaps", "gaussian_radius", "render_center_heatmap"):
        assert op in called, (op, called)
    _equal(gm(*_head_args(t)), head(*_head_args(t)))


# ---- autocast ------------------------------------------------------------------------------------------------------

def _f32(a):
    return a.float() if isinstance(a, torch.Tensor) and a.dtype in LOW else a


@pytest.mark.parametrize("impl", ["cpp", "reference", "triton"])
@pytest.mark.parametrize("dtype", LOW)
def test_autocast_float32_ops(impl, dtype):
    """render / radius / argmax / soft_argmax / centernet_decode: float16/bfloat16 (and mixed) inputs are computed
    in float32 and give float32, exactly what the same call gives on the float32-cast inputs without autocast."""
    t = _inputs(4)
    low = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in t.items()}
    cases = [
        (fastops.render_gaussian_heatmaps, (low["kp"], (24, 32), 2.0, t["vis"], "udp")),  # mixed kp/visible
        (fastops.render_center_heatmap, (low["centers"], t["radii"], t["labels"], 3, (24, 32))),
        (fastops.gaussian_radius, (low["wh"][:, 0], t["wh"][:, 1])),                         # mixed h/w
        (fastops.heatmap_argmax, (low["maps"], "quarter")),
        (fastops.heatmap_argmax, (low["maps"], "dark", 5)),
        (fastops.soft_argmax, (low["maps"], 3.0)),
        (fastops.centernet_decode, (low["heat"], t["wh"], low["reg"], 12)),                  # mixed heat/wh/reg
    ]
    for fn, args in cases:
        with torch.autocast("cpu", dtype=dtype):
            got = fn(*args, impl=impl)
        want = fn(*[_f32(a) for a in args], impl=impl)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, w in zip(got, want):
            if w.is_floating_point():
                assert g.dtype == torch.float32, (fn.__name__, g.dtype)
            torch.testing.assert_close(g, w, rtol=0, atol=0, msg=lambda m: f"{fn.__name__}: {m}")


@pytest.mark.parametrize("dtype", LOW)
def test_autocast_compiled_ops_directly(dtype):
    """The autocast kernels registered for the compiled ops (what a scripted model runs under autocast)."""
    t = _inputs(5)
    heat, wh = t["heat"].to(dtype), t["wh"]
    with torch.autocast("cpu", dtype=dtype):
        dets = torch.ops.fastops.centernet_decode(heat, wh, None, 9)            # mixed dtypes accepted
        coords, scores = torch.ops.fastops.heatmap_argmax(t["maps"].to(dtype), "quarter", 11)
        soft = torch.ops.fastops.soft_argmax(t["maps"].to(dtype), 1.0, False)
        hm, w = torch.ops.fastops.render_gaussian_heatmaps(t["kp"][:, None].to(dtype), None, 24, 32, 2.0, "msra",
                                                           "gaussian")
        rad = torch.ops.fastops.gaussian_radius(wh[:, 0].to(dtype), wh[:, 1].to(dtype), 0.7, "centernet")
    assert {dets.dtype, coords.dtype, scores.dtype, soft.dtype, hm.dtype, w.dtype, rad.dtype} == {torch.float32}
    _equal(dets, fastops.centernet_decode(heat.float(), wh, None, 9))
    _equal(coords, fastops.heatmap_argmax(t["maps"].to(dtype).float(), "quarter")[0])
    head = torch.jit.script(_CenterNetHead())
    with torch.autocast("cpu", dtype=dtype):
        out = head(t["x"], heat, wh, t["reg"], t["maps"].to(dtype), t["kp"])
    assert out[1].dtype == torch.float32  # the scripted model's centernet_decode ran the autocast kernel
    _equal(out[1], fastops.centernet_decode(heat.float(), wh, t["reg"], 10))


@pytest.mark.parametrize("impl", ["cpp", "reference", "triton"])
@pytest.mark.parametrize("dtype", LOW)
def test_autocast_exact_ops_keep_dtype(impl, dtype):
    """heatmap_peaks and corner_pool compare the inputs' own values: exact in low precision, no cast, the dtype
    is kept, and the values are those of a float32 computation (rounded back, exactly)."""
    t = _inputs(6)
    heat, x = t["heat"].to(dtype), t["x"].to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        peaks = fastops.heatmap_peaks(heat, 30, 3, impl=impl)
        pooled = [fastops.corner_pool(x, m, impl=impl) for m in ("top", "left")]
    want = fastops.heatmap_peaks(heat.float(), 30, 3, impl=impl)
    assert peaks[0].dtype == dtype
    _equal(peaks[0].float(), want[0])
    for a, b in zip(peaks[1:], want[1:]):
        _equal(a, b)
    for m, p in zip(("top", "left"), pooled):
        assert p.dtype == dtype
        _equal(p.float(), fastops.corner_pool(x.float(), m, impl=impl))


@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_autocast_gradients_flow_back_in_the_input_dtype(impl):
    t = _inputs(7)
    maps = t["maps"].bfloat16().requires_grad_()
    x = t["x"].bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        soft = fastops.soft_argmax(maps, 2.0, impl=impl)
        pooled = fastops.corner_pool(x, "bottom", impl=impl)
    (soft.sum() + pooled.float().sum()).backward()
    assert soft.dtype == torch.float32 and maps.grad.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    m32 = t["maps"].bfloat16().float().requires_grad_()
    fastops.soft_argmax(m32, 2.0, impl=impl).sum().backward()
    _equal(maps.grad, m32.grad.bfloat16())
