"""Keypoint R-CNN: fastops.roi_heatmaps_to_keypoints against torchvision's roi_heads.heatmaps_to_keypoints itself
(bit for bit) and its transcription fastops/reference/keypoint_rcnn.py."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps_to_keypoints

import fastops
from fastops.reference import keypoint_rcnn as REF
from helpers import needs_inductor_vec, per_thread_count
from keypoints_helpers import assert_same_as_torchvision


def random_boxes(R, lo=32.0, hi=400.0, gen=None, dtype=torch.float32):
    """Boxes with fractional corners and sides in [lo, hi] px."""
    xy = torch.rand(R, 2, generator=gen) * 600
    wh = lo + torch.rand(R, 2, generator=gen) * (hi - lo)
    return torch.cat([xy, xy + wh], 1).to(dtype)


def special_boxes():
    """1 px, sub-pixel, empty, inverted, integer-sided, > 512 px (several column blocks) and 1100 px boxes."""
    return torch.tensor([[10.0, 20.0, 11.0, 21.0], [5.2, 5.3, 5.4, 5.9], [7.0, 7.0, 7.0, 7.0], [50.0, 60.0, 40.0, 30.0],
                         [0.0, 0.0, 56.0, 56.0], [0.0, 0.0, 112.0, 28.0], [3.5, 1.25, 700.75, 33.0],
                         [0.0, 0.0, 1100.3, 530.9], [100.1, 200.2, 100.9, 650.0], [0.0, 0.0, 2.0, 300.0]])


def test_matches_torchvision_random_boxes():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(60, 17, 56, 56, generator=g)
    rois = random_boxes(60, 0.3, 450.0, g)
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))


def test_matches_torchvision_special_boxes_and_ties():
    g = torch.Generator().manual_seed(1)
    rois = special_boxes()
    R = rois.size(0)
    maps = torch.randn(R, 5, 56, 56, generator=g)
    maps[:, 1] = torch.randint(0, 3, (R, 56, 56), generator=g).float() / 2  # plateaus: ties after upsampling
    maps[:, 2] = 0.25  # constant: every pixel ties
    maps[:, 3] = -torch.rand(R, 56, 56, generator=g)
    maps[:, 4, 10:14, 20:30] = 3.0  # a flat-topped peak
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (5, 3), (17, 40), (64, 48)])
def test_matches_torchvision_other_map_sizes(hw):
    g = torch.Generator().manual_seed(2)
    rois = torch.cat([random_boxes(12, 0.5, 300.0, g), special_boxes()])
    maps = torch.randn(rois.size(0), 3, *hw, generator=g)
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))


@pytest.mark.parametrize("mdt,rdt", [(torch.float64, torch.float64), (torch.float32, torch.float64),
                                     (torch.float64, torch.float32)])
def test_matches_torchvision_float64(mdt, rdt):
    g = torch.Generator().manual_seed(3)
    rois = torch.cat([random_boxes(20, 0.5, 450.0, g), special_boxes()]).to(rdt)
    maps = torch.randn(rois.size(0), 4, 56, 56, generator=g).to(mdt)
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))


def test_realistic_peaky_maps():
    # Keypoint R-CNN's maps after training are peaked: most rows are skipped by the row bound
    g = torch.Generator().manual_seed(4)
    R, K = 30, 17
    yy, xx = torch.meshgrid(torch.arange(56.0), torch.arange(56.0), indexing="ij")
    c = torch.rand(R, K, 2, 1, 1, generator=g) * 55
    maps = 8 * torch.exp(-((xx - c[:, :, 0]) ** 2 + (yy - c[:, :, 1]) ** 2) / 8) + torch.randn(R, K, 56, 56) * 0.3
    rois = random_boxes(R, 32, 400, g)
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))


def test_nan_and_inf_maps():
    g = torch.Generator().manual_seed(5)
    rois = torch.cat([random_boxes(6, 1, 200.0, g), special_boxes()[:4]])
    R = rois.size(0)
    maps = torch.randn(R, 4, 56, 56, generator=g)
    maps[:, 0, 30, 40] = float("nan")  # NaN spreads over 4x4 taps: the first NaN wins
    maps[:, 1, 5, 5] = float("inf")
    maps[:, 2] = float("-inf")
    maps[2:4, 3, 0, 0] = float("nan")
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))


def test_empty_and_degenerate():
    for R, K in ((0, 17), (3, 0), (0, 0)):
        kp, s = fastops.roi_heatmaps_to_keypoints(torch.randn(R, K, 56, 56), random_boxes(R))
        assert kp.shape == (R, K, 3) and s.shape == (R, K) and kp.dtype == s.dtype == torch.float32
    kp, s = fastops.roi_heatmaps_to_keypoints(torch.randn(0, 17, 0, 0), torch.zeros(0, 4))
    assert kp.shape == (0, 17, 3)


def test_reference_is_torchvision():
    g = torch.Generator().manual_seed(6)
    rois = torch.cat([random_boxes(10, 0.5, 300.0, g), special_boxes()])
    maps = torch.randn(rois.size(0), 3, 56, 56, generator=g)
    assert_same_as_torchvision(REF.heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois, impl="reference"),
                               tv_heatmaps_to_keypoints(maps, rois))


@settings(deadline=None, max_examples=150)
@given(R=st.integers(0, 4), K=st.integers(1, 3), H=st.integers(1, 12), W=st.integers(1, 12),
       side=st.floats(0.0, 90.0), seed=st.integers(0, 10000), levels=st.sampled_from([0, 2, 5]))
def test_property_against_torchvision(R, K, H, W, side, seed, levels):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(R, K, H, W, generator=g)
    if levels:
        maps = torch.randint(0, levels, (R, K, H, W), generator=g).float() / levels  # ties
    xy = torch.rand(R, 2, generator=g) * 50 - 10
    wh = torch.rand(R, 2, generator=g) * side
    rois = torch.cat([xy, xy + wh], 1)
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois), tv_heatmaps_to_keypoints(maps, rois))


def test_baseline_isa_matches_torchvision_default_capability():
    # With ATEN_CPU_CAPABILITY=default torch runs its baseline (unfused) kernels and fastops its baseline copy.
    code = textwrap.dedent("""
        import torch, fastops
        from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        assert torch.ops.fastops._cpu_isa() in ("default", "native")
        g = torch.Generator().manual_seed(7)
        xy = torch.rand(40, 2, generator=g) * 600
        rois = torch.cat([xy, xy + 0.5 + torch.rand(40, 2, generator=g) * 450], 1)
        maps = torch.randn(40, 5, 56, 56, generator=g)
        for a, b in zip(fastops.roi_heatmaps_to_keypoints(maps, rois), tv(maps, rois)):
            assert torch.equal(a, b), (a - b).abs().max()
        print("OK")
    """)
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if "native" in proc.stdout + proc.stderr:
        pytest.skip("FASTOPS_MARCH build: no per-ISA copies")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


# ---- Triton (TRITON_INTERPRET=1 on CPU tensors; small cases: the interpreter is slow) ---------------------------

def test_triton_matches_torchvision():
    g = torch.Generator().manual_seed(8)
    rois = torch.tensor([[10.0, 20.0, 11.0, 21.0], [5.2, 5.3, 5.4, 5.9], [50.0, 60.0, 40.0, 30.0],
                         [1.5, 2.25, 40.75, 19.0], [0.0, 0.0, 33.0, 70.0]])
    maps = torch.randn(5, 3, 12, 14, generator=g)
    maps[:, 1] = torch.randint(0, 3, (5, 12, 14), generator=g).float() / 2
    maps[0, 2, 3, 3] = float("nan")
    assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps, rois, impl="triton"),
                               tv_heatmaps_to_keypoints(maps, rois), "triton")
    m64 = maps.double()
    kp, s = fastops.roi_heatmaps_to_keypoints(m64, rois, impl="triton")
    want = tv_heatmaps_to_keypoints(m64, rois)
    torch.testing.assert_close(s, want[1], rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.library.opcheck(torch.ops.fastops.roi_heatmaps_to_keypoints_triton.default, (maps, rois),
                          test_utils=("test_schema", "test_faketensor"))


# ---- threads, opcheck, compile, TorchScript, fx, autocast -------------------------------------------------------

def test_same_results_one_and_two_threads():
    maps, rois = torch.randn(7, 17, 56, 56), random_boxes(7)
    assert_same_as_torchvision(*per_thread_count(lambda: fastops.roi_heatmaps_to_keypoints(maps, rois)))


def test_opcheck():
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    for maps, rois in ((torch.randn(3, 4, 10, 12), random_boxes(3, 1, 40)),
                       (torch.randn(0, 4, 10, 12), torch.zeros(0, 4)),
                       (torch.randn(2, 3, 8, 8).double(), random_boxes(2, 1, 30).double())):
        torch.library.opcheck(torch.ops.fastops.roi_heatmaps_to_keypoints.default, (maps, rois), test_utils=utils)


@needs_inductor_vec
def test_compile_fullgraph_and_export():
    def f(maps, rois):
        kp, s = fastops.roi_heatmaps_to_keypoints(maps, rois)
        return kp * 2, s + 1

    args = (torch.randn(4, 17, 56, 56), random_boxes(4))
    eager = f(*args)
    assert_same_as_torchvision(torch.compile(f, fullgraph=True, backend="aot_eager")(*args), eager)
    assert_same_as_torchvision(torch.compile(f, fullgraph=True, dynamic=True)(*args), eager)

    class M(torch.nn.Module):
        def forward(self, maps, rois):
            return f(maps, rois)

    ep = torch.export.export(M(), args)
    assert_same_as_torchvision(ep.module()(*args), eager)


def test_torchscript_and_fx(tmp_path):
    args = (torch.randn(4, 5, 56, 56), random_boxes(4))
    want = fastops.roi_heatmaps_to_keypoints(*args)
    scripted = torch.jit.script(fastops.roi_heatmaps_to_keypoints)
    assert_same_as_torchvision(scripted(*args), want)

    class M(torch.nn.Module):
        def forward(self, maps, rois):
            return fastops.roi_heatmaps_to_keypoints(maps, rois)

    sm = torch.jit.script(M())
    sm.save(str(tmp_path / "m.pt"))
    assert_same_as_torchvision(torch.jit.load(str(tmp_path / "m.pt"))(*args), want)
    gm = torch.fx.symbolic_trace(M())
    called = [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function" and callable(n.target)]
    assert "roi_heatmaps_to_keypoints" in called, called
    assert_same_as_torchvision(gm(*args), want)


def test_autocast_and_half_inputs():
    g = torch.Generator().manual_seed(9)
    maps, rois = torch.randn(5, 17, 56, 56, generator=g), random_boxes(5, gen=g)
    mb = maps.bfloat16()
    want = tv_heatmaps_to_keypoints(mb.float(), rois)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for impl in ("auto", "reference"):
            assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(mb, rois, impl), want)
        assert_same_as_torchvision(torch.ops.fastops.roi_heatmaps_to_keypoints(mb, rois.bfloat16()),
                                   tv_heatmaps_to_keypoints(mb.float(), rois.bfloat16().float()))
    for dt in (torch.float16, torch.bfloat16):
        assert_same_as_torchvision(fastops.roi_heatmaps_to_keypoints(maps.to(dt), rois),
                                   tv_heatmaps_to_keypoints(maps.to(dt).float(), rois))
