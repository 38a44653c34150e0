"""Shared inputs and comparisons of the DensePose op tests (test_densepose*.py, test_bad_inputs_densepose.py)."""
import torch
import torch.nn.functional as F


def _maps(R, S=28, K=25, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(R, 2, S, S, generator=g).to(dtype)
    fine = torch.randn(R, K, S, S, generator=g).to(dtype)
    u = torch.rand(R, K, S, S, generator=g).to(dtype)
    v = torch.rand(R, K, S, S, generator=g).to(dtype)
    return coarse, fine, u, v


def _boxes(R, seed=0, lo=1.0, hi=120.0, img=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(R, 2, generator=g) * img * 1.2 - img * 0.2  # some partly outside the image
    wh = torch.rand(R, 2, generator=g) * (hi - lo) + lo
    return torch.cat([xy, xy + wh], 1)


def _assert_packed_equal(got, want, uv_atol=2.5e-7):
    lab, uv, off, ib = got
    rl, ruv, roff, rib = want
    assert torch.equal(ib, rib) and torch.equal(off, roff)
    assert lab.dtype == torch.uint8 and uv.dtype == torch.float32
    assert torch.equal(lab, rl), f"{(lab != rl).sum().item()} labels differ"
    torch.testing.assert_close(uv, ruv, rtol=0, atol=uv_atol, equal_nan=True)


def _assert_packed_equal_up_to_ties(got, want, coarse, fine):
    """Labels equal except where the transcription's own interpolated scores tie to the last bits: ATen's CPU
    kernel does not round every pixel the same way (its vectorised and scalar loops differ), so an exact tie of
    two channels (common with integer-valued maps) can break either way. U/V compared where the labels agree."""
    lab, uv, off, ib = got
    rl, ruv, roff, rib = want
    assert torch.equal(ib, rib) and torch.equal(off, roff)
    for i in (lab != rl).nonzero().flatten().tolist():
        r = int((off <= i).nonzero().max())
        q = i - int(off[r])
        w, h = ib[r, 2:].tolist()
        py, px = q // w, q % w
        cz = F.interpolate(coarse[r:r + 1], (h, w), mode="bilinear", align_corners=False)[0, :, py, px]
        cfg = int(cz.argmax())
        fz = F.interpolate(fine[r:r + 1], (h, w), mode="bilinear", align_corners=False)[0, :, py, px]
        top = float(fz.max())
        # either the coarse decision or the fine argmax is a near-tie
        near_c = any(abs(float(cz[c]) - float(cz[cfg])) <= 2.4e-7 * max(1.0, abs(float(cz[cfg])))
                     for c in range(cz.numel()) if (c > 0) != (cfg > 0))
        near_f = any(abs(float(fz[c]) - top) <= 2.4e-7 * max(1.0, abs(top)) and c != int(fz.argmax())
                     for c in range(fz.numel()))
        assert near_c or near_f, f"pixel {i} (box {r}, {py}, {px}): {lab[i]} vs {rl[i]} is not a near-tie"
    for r in range(ib.shape[0]):
        a, b = int(off[r]), int(off[r + 1])
        keep = (lab[a:b] == rl[a:b]).repeat(2)
        torch.testing.assert_close(uv[2 * a:2 * b][keep], ruv[2 * a:2 * b][keep], rtol=0, atol=2.5e-7,
                                   equal_nan=True)


def _points(R=6, C=5, S=9, P=200, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(R, C, S, S, generator=g, dtype=dtype)
    ri = torch.randint(0, R, (P,), generator=g)
    pts = (torch.rand(P, 2, generator=g, dtype=dtype) * S)
    pts[:5] = torch.tensor([[0.0, 0.0], [S, S], [S - 1, 0.5], [S - 0.25, S - 0.75], [3.0, 4.0]], dtype=dtype)
    return maps, ri, pts
