"""fastops.panoptic_fuse against a plain-PyTorch transcription of UPSNet's test-time panoptic head."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fastops
import fastops.reference.panoptic
from fastops.reference.panoptic import panoptic_fuse as upsnet_fuse
from fastops.reference.panoptic import upsnet_panoptic_logits


def _data(S=5, T=4, h=12, w=15, N=6, M=7, out=None, dtype=torch.float32, seed=0, smooth=False, spread=1.1):
    g = torch.Generator().manual_seed(seed)
    H, W = out if out is not None else (h, w)
    if smooth:
        sem = F.interpolate(torch.randn(1, S + T, max(h // 4, 1), max(w // 4, 1), generator=g) * 3, size=(h, w),
                            mode="bilinear", align_corners=False)[0] + 0.3 * torch.randn(S + T, h, w, generator=g)
    else:
        sem = torch.randn(S + T, h, w, generator=g) * 2
    masks = torch.randn(N, M, M, generator=g) * 3
    x1 = torch.rand(N, generator=g) * W * spread - 3
    y1 = torch.rand(N, generator=g) * H * spread - 3
    boxes = torch.stack([x1, y1, x1 + torch.rand(N, generator=g) * W * 0.6,
                         y1 + torch.rand(N, generator=g) * H * 0.6], 1)
    labels = torch.randint(1, T + 1, (N,), generator=g)
    return sem.to(dtype), masks.to(dtype), boxes, labels


def _assert_same_ids(out, sem, masks, boxes, labels, S, output_size, void, logits_dtype=None):
    """Ids equal UPSNet's, except where the top two UPSNet logits are within rounding of each other."""
    exp = upsnet_fuse(sem, masks, boxes, labels, S, output_size, void)
    assert out.dtype == torch.int32 and out.shape == exp.shape
    diff = out != exp
    if diff.any():
        logits = upsnet_panoptic_logits(sem.float(), masks.float(), boxes, labels, S, output_size, void)[0]
        top2 = logits.topk(2, dim=0).values if logits.shape[0] > 1 else None
        assert top2 is not None
        gap = (top2[0] - top2[1])[diff]
        tol = 1e-4 if logits_dtype in (None, torch.float32, torch.float64) else 5e-2
        assert (gap <= tol * (1 + top2[0][diff].abs())).all(), f"{int(diff.sum())} ids differ, gaps {gap[:8]}"
        assert diff.float().mean() < 0.01


@pytest.mark.parametrize("void", (True, False))
@pytest.mark.parametrize("output_size", (None, (30, 41), (12, 15), (7, 9)))
@pytest.mark.parametrize("N", (0, 1, 6, 20))
def test_matches_upsnet(void, output_size, N):
    sem, masks, boxes, labels = _data(N=N, out=output_size)
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=5, output_size=output_size, void=void)
    _assert_same_ids(out, sem, masks, boxes, labels, 5, output_size, void)


@pytest.mark.parametrize("void", (True, False))
def test_smooth_logits_upsampled(void):
    sem, masks, boxes, labels = _data(S=7, T=6, h=24, w=32, N=12, M=14, out=(96, 128), smooth=True)
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=7, output_size=(96, 128), void=void)
    _assert_same_ids(out, sem, masks, boxes, labels, 7, (96, 128), void)
    assert len(torch.unique(out)) > 5


def test_overlapping_instances_and_ties():
    # Two identical instances: the lower index wins (first-index ties); outside both boxes an instance is a 0
    # logit, which wins wherever every stuff logit is negative.
    S, T = 3, 2
    sem = torch.full((S + T, 10, 10), -1.0)
    sem[0, :, :5] = 2.0
    sem[S + 1] = 3.0  # thing class 2
    masks = torch.ones(2, 4, 4)
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [2.0, 2.0, 6.0, 6.0]])
    labels = torch.tensor([2, 2])
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, void=False)
    exp = upsnet_fuse(sem, masks, boxes, labels, S, None, False)
    assert torch.equal(out, exp)
    assert (out[2:7, 2:7] == S).all()  # instance 0, not 1
    assert (out[:, 7:] == S).all()  # 0 logit of instance 0 beats the negative stuff logits
    assert (out[0, :5] == 0).all()
    outv = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, void=True)
    assert torch.equal(outv, upsnet_fuse(sem, masks, boxes, labels, S, None, True))


def test_exact_zero_ties_inside_and_outside_boxes():
    # Instance logits of exactly 0 inside some boxes tie with the 0 logit of the instances that do not cover a
    # pixel: the lowest instance index among all those at 0 must win, whether it covers the pixel or not (the CPU
    # kernel merges the outside zeros in one pass, out of index order).
    S, T = 2, 1
    sem = torch.zeros(S + T, 12, 16)
    sem[:S] = -1.0
    masks = torch.zeros(4, 3, 3)
    masks[0] = -5.0
    masks[3] = -5.0
    boxes = torch.tensor([[1.0, 1.0, 12.0, 9.0], [2.0, 0.0, 6.0, 11.0], [5.0, 3.0, 14.0, 7.0], [0.0, 0.0, 15.0, 11.0]])
    labels = torch.ones(4, dtype=torch.long)
    for void in (False, True):
        out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, void=void)
        exp = upsnet_fuse(sem, masks, boxes, labels, S, None, void)
        assert torch.equal(out, exp), (out != exp).nonzero()[:5]
    assert (out[4, 8:12] == S + 1).all()  # inside boxes 0, 2 and 3: instance 1's outside 0 beats instance 2's 0
    assert (out[4, 3:5] == S + 1).all()  # inside boxes 0, 1 and 3: instance 1's 0 beats instance 2's outside 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("void", (False, True))
def test_exact_ties_with_integer_logits(seed, void):
    # Small-integer logits upsampled 4x (weights k/8: every interpolated value is exact) tie all over the map,
    # between stuff channels, thing channels and instances: ids must equal the reference's exactly (the CPU
    # kernel evaluates the candidate with the largest corner first and the others out of index order).
    g = torch.Generator().manual_seed(seed)
    S, T, N = 6, 5, 8
    sem = torch.randint(-2, 3, (S + T, 9, 11), generator=g).float()
    masks = torch.randint(-1, 2, (N, 4, 4), generator=g).float()
    xy = torch.randint(-4, 40, (N, 2), generator=g).float()
    boxes = torch.cat([xy, xy + torch.randint(0, 20, (N, 2), generator=g)], 1)
    labels = torch.randint(1, T + 1, (N,), generator=g)
    for size in ((36, 44), None):
        out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, output_size=size, void=void)
        exp = upsnet_fuse(sem, masks, boxes, labels, S, size, void)
        assert torch.equal(out, exp), (out != exp).nonzero()[:5]


@pytest.mark.parametrize("seed", range(2))
def test_more_than_64_stuff_and_thing_channels(seed):
    # The CPU kernel keeps a cell's candidate channels as 64-bit words per group: several words each here.
    g = torch.Generator().manual_seed(seed)
    S, T, N = 66, 130, 5
    sem = torch.randint(-3, 4, (S + T, 5, 6), generator=g).float()
    masks = torch.randint(-1, 2, (N, 4, 4), generator=g).float()
    boxes = torch.tensor([[1.0, 2.0, 9.0, 12.0], [4.0, 0.0, 20.0, 6.0], [0.0, 0.0, 23.0, 19.0], [12.0, 8.0, 14.0, 9.0],
                          [-3.0, 5.0, 6.0, 30.0]])
    labels = torch.randint(1, T + 1, (N,), generator=g)
    for void in (False, True):
        out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, output_size=(20, 24), void=void)
        exp = upsnet_fuse(sem, masks, boxes, labels, S, (20, 24), void)
        assert torch.equal(out, exp), (out != exp).nonzero()[:5]
    sem = torch.randn(S + T, 5, 6, generator=g) * 2
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, output_size=(20, 24))
    _assert_same_ids(out, sem, masks, boxes, labels, S, (20, 24), True)


def test_first_index_wins_over_the_larger_corner_channel():
    # Channel 2 has the cell's largest corner (5) but equals channel 1 (1) where the upsampling gives that corner
    # zero weight (the clamped border pixels): the lower index, channel 1, must win there.
    sem = torch.full((3, 4, 4), 1.0)
    sem[0] = -10.0
    sem[2, 0, 1] = 5.0
    sem = torch.cat([sem, torch.zeros(1, 4, 4)])
    out = fastops.panoptic_fuse(sem, torch.zeros(0, 2, 2), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                num_stuff=3, output_size=(16, 16), void=False)
    assert torch.equal(out, upsnet_fuse(sem, torch.zeros(0, 2, 2), torch.zeros(0, 4),
                                        torch.zeros(0, dtype=torch.long), 3, (16, 16), False))
    assert out[0, 0] == 1 and out[0, 3] == 2


def test_boxes_crossing_the_border_and_rounding():
    S, T = 2, 3
    sem, masks, _, _ = _data(S=S, T=T, h=16, w=20, N=6)
    boxes = torch.tensor([
        [-5.5, -3.2, 4.7, 6.5],     # crosses the top-left corner; x2 rounds up, trunc(x2) does not
        [15.2, 10.4, 25.0, 30.0],   # crosses the bottom-right corner
        [3.5, 2.5, 8.5, 7.5],       # half-way coordinates: round half to even
        [-9.0, -9.0, -0.8, -0.6],   # entirely outside (top-left); trunc(-0.6) = 0 leaves one mask row
        [30.0, 2.0, 40.0, 9.0],     # entirely right of the map
        [6.0, 6.0, 6.0, 6.0],       # a single pixel
    ])
    labels = torch.tensor([1, 2, 3, 1, 2, 3])
    for void in (True, False):
        for out_size in (None, (32, 40)):
            b = boxes if out_size is None else boxes * 2
            out = fastops.panoptic_fuse(sem, masks, b, labels, num_stuff=S, output_size=out_size, void=void)
            _assert_same_ids(out, sem, masks, b, labels, S, out_size, void)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float16, torch.bfloat16))
def test_dtypes(dtype):
    sem, masks, boxes, labels = _data(N=5, dtype=dtype, out=(24, 30))
    out = fastops.panoptic_fuse(sem, masks, boxes.to(dtype), labels, num_stuff=5, output_size=(24, 30))
    # float64 follows UPSNet in float64; half types are computed in float32 (UPSNet would round every
    # intermediate logit to the half type, creating ties): compare with the float32 transcription.
    ref_sem = sem if dtype == torch.float64 else sem.float()
    ref_masks = masks if dtype == torch.float64 else masks.float()
    _assert_same_ids(out, ref_sem, ref_masks, boxes.to(dtype).double(), labels, 5, (24, 30), True, dtype)


def test_non_contiguous_and_layouts():
    sem, masks, boxes, labels = _data(N=6, out=(24, 30))
    sem_t = sem.transpose(1, 2).contiguous().transpose(1, 2)  # [C, h, w] with w-major strides
    masks4 = masks.unsqueeze(1)
    out = fastops.panoptic_fuse(sem_t, masks4, boxes, labels.int(), num_stuff=5, output_size=(24, 30))
    _assert_same_ids(out, sem, masks, boxes, labels, 5, (24, 30), True)
    out2 = fastops.panoptic_fuse(sem[:, ::1, :], masks.transpose(1, 2).contiguous().transpose(1, 2), boxes,
                                 labels, num_stuff=5)
    _assert_same_ids(out2, sem, masks, boxes, labels, 5, None, True)


@pytest.mark.parametrize("out", ((60, 70), (80, 96)))  # the candidate path / the 4x fast path of the CPU kernel
def test_thread_independent(out):
    sem, masks, boxes, labels = _data(N=10, h=20, w=24, out=out, smooth=True)
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=5, output_size=out))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])


def test_empty():
    sem, masks, boxes, labels = _data(N=0)
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=5, output_size=(0, 7))
    assert out.shape == (0, 7) and out.dtype == torch.int32
    out = fastops.panoptic_fuse(sem[:, :0], masks, boxes, labels, num_stuff=5)
    assert out.shape == (0, 15)
    # No stuff classes at all.
    sem, masks, boxes, labels = _data(S=0, T=3, N=4)
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=0)
    _assert_same_ids(out, sem, masks, boxes, labels, 0, None, True)


def test_errors():
    sem, masks, boxes, labels = _data(N=3)
    f = fastops.panoptic_fuse
    with pytest.raises(ValueError, match="semantic_logits must be 3-D"):
        f(sem[None], masks, boxes, labels, num_stuff=5)
    with pytest.raises(ValueError, match="boxes must have shape"):
        f(sem, masks, boxes[:2], labels, num_stuff=5)
    with pytest.raises(ValueError, match="boxes must have shape"):
        f(sem, masks, boxes[:, :3], labels, num_stuff=5)
    with pytest.raises(ValueError, match="labels must have shape"):
        f(sem, masks, boxes, labels[:1], num_stuff=5)
    with pytest.raises(ValueError, match="labels must have dtype"):
        f(sem, masks, boxes, labels.float(), num_stuff=5)
    with pytest.raises(ValueError, match="mask_logits must have the same dtype"):
        f(sem, masks.double(), boxes, labels, num_stuff=5)
    with pytest.raises(ValueError, match="mask_logits must be"):
        f(sem, masks[:, None].expand(3, 2, 7, 7), boxes, labels, num_stuff=5)
    with pytest.raises(ValueError, match="num_stuff"):
        f(sem, masks, boxes, labels, num_stuff=10)
    with pytest.raises(ValueError, match="output_size"):
        f(sem, masks, boxes, labels, num_stuff=5, output_size=(3,))
    with pytest.raises(ValueError, match="impl"):
        f(sem, masks, boxes, labels, num_stuff=5, impl="fast")
    with pytest.raises(ValueError, match="nothing to fuse"):
        f(sem, masks[:0], boxes[:0], labels[:0], num_stuff=0, void=False)
    # Data-dependent checks happen in the kernel (RuntimeError naming the argument).
    with pytest.raises(RuntimeError, match="labels must be thing classes"):
        f(sem, masks, boxes, torch.tensor([1, 0, 2]), num_stuff=5)
    with pytest.raises(RuntimeError, match="labels must be thing classes"):
        f(sem, masks, boxes, torch.tensor([1, 5, 2]), num_stuff=5)
    bad = boxes.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="boxes must be finite"):
        f(sem, masks, bad, labels, num_stuff=5)
    with pytest.raises(RuntimeError, match="num_stuff"):
        torch.ops.fastops.panoptic_fuse(sem, masks, boxes, labels, 12, None, True)


@pytest.mark.parametrize("impl", ("cpp", "triton"))
def test_huge_boxes_do_not_allocate_or_overflow(impl):
    # The reference resizes only the visible crop of a huge box's mask (resized_crop, tested below against
    # F.interpolate); the kernels bound coordinates to 2^40 first, which samples the same mask taps.
    sem, masks, _, labels = _data(N=3)
    boxes = torch.tensor([[-1e30, -1e30, 1e30, 1e30], [3.0, 3.0, 1e12, 5.0], [2.0, -1e15, 9.0, 4.5]])
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=5, impl=impl)
    _assert_same_ids(out, sem, masks, boxes, labels, 5, None, True)
    assert (out == 6).any()  # instance 1 (the 1e12-wide box) wins somewhere


def test_resized_crop_is_interpolate():
    m = torch.randn(7, 5, dtype=torch.float64)
    full = F.interpolate(m[None, None], size=(23, 17), mode="bilinear", align_corners=False)[0, 0]
    ys, xs = torch.arange(4, 19), torch.arange(2, 11)
    torch.testing.assert_close(fastops.reference.panoptic.resized_crop(m, 23, 17, ys, xs), full[4:19, 2:11],
                               atol=1e-12, rtol=0)
    full32 = F.interpolate(m.float()[None, None], size=(7, 40), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(fastops.reference.panoptic.resized_crop(m.float(), 7, 40, torch.arange(7),
                                                                       torch.arange(40)), full32, atol=1e-6, rtol=0)


def test_reference_impl():
    sem, masks, boxes, labels = _data(N=4)
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=5, impl="reference")
    assert torch.equal(out, upsnet_fuse(sem, masks, boxes, labels, 5, None, True))


@pytest.mark.parametrize("output_size", (None, [20, 25]))
def test_opcheck(output_size):
    sem, masks, boxes, labels = _data(N=3)
    torch.library.opcheck(torch.ops.fastops.panoptic_fuse.default,
                          (sem, masks, boxes, labels, 5, output_size, True))


def test_compile_and_export():
    sem, masks, boxes, labels = _data(N=3)

    def fn(s, m, b, lab):
        return fastops.panoptic_fuse(s, m, b, lab, num_stuff=5, output_size=(20, 25))

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(sem, masks, boxes, labels), fn(sem, masks, boxes, labels))

    class M(torch.nn.Module):
        def forward(self, s, m, b, lab):
            return fastops.panoptic_fuse(s, m, b, lab, num_stuff=5, void=False)

    ep = torch.export.export(M(), (sem, masks, boxes, labels))
    assert torch.equal(ep.module()(sem, masks, boxes, labels), M()(sem, masks, boxes, labels))


@settings(deadline=None)  # the profile's example count (tests/conftest.py: "ci" 200, "long" 5000)
@given(S=st.integers(0, 4), T=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9), N=st.integers(0, 6),
       M=st.integers(1, 6), up=st.sampled_from([None, (1, 1), (5, 3), (17, 23)]), void=st.booleans(),
       seed=st.integers(0, 10 ** 6))
def test_property_odd_shapes(S, T, h, w, N, M, up, void, seed):
    sem, masks, boxes, labels = _data(S=S, T=T, h=h, w=w, N=N, M=M, out=up, seed=seed, spread=1.3)
    if S == 0 and N == 0 and not void:
        return  # nothing to fuse (a ValueError, see test_errors)
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, output_size=up, void=void)
    _assert_same_ids(out, sem, masks, boxes, labels, S, up, void)


# ---- Triton (interpreted on the CPU: small and few) --------------------------------------------------------------

@pytest.mark.parametrize("void", (True, False))
@pytest.mark.parametrize("output_size", (None, (30, 41)))
@pytest.mark.parametrize("N", (0, 6))
def test_triton(void, output_size, N):
    sem, masks, boxes, labels = _data(N=N, out=output_size)
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=5, output_size=output_size, void=void,
                                impl="triton")
    _assert_same_ids(out, sem, masks, boxes, labels, 5, output_size, void)


def test_triton_opcheck_and_dtypes():
    import fastops.triton.panoptic as _registers_triton_ops  # noqa: F401

    sem, masks, boxes, labels = _data(N=3)
    torch.library.opcheck(torch.ops.fastops.panoptic_fuse_triton.default,
                          (sem, masks, boxes, labels, 5, [16, 20], True))
    for dtype in (torch.float64, torch.bfloat16):
        s, m = sem.to(dtype), masks.to(dtype)
        out = fastops.panoptic_fuse(s, m, boxes, labels, num_stuff=5, output_size=(16, 20), impl="triton")
        rs, rm = (s, m) if dtype == torch.float64 else (s.float(), m.float())
        _assert_same_ids(out, rs, rm, boxes, labels, 5, (16, 20), True, dtype)


# ---- layout (issue 10) ---------------------------------------------------------------------------------------------

def test_constants_match_cpp():
    from fastops.registrations import panoptic as reg

    assert list(torch.ops.fastops._panoptic_constants()) == [reg.VOID_ID, reg.INST_FIELDS]


# ---- NaN/inf rule (issue 11) and drop-in conventions (issue 12) ------------------------------------------------------

@pytest.mark.parametrize("impl", ("cpp", "triton"))
@pytest.mark.parametrize("output_size", (None, (24, 30)))
def test_nan_inf_logits_follow_the_reference_argmax(impl, output_size):
    sem, masks, boxes, labels = _data(N=6, out=output_size, seed=4)
    sem[0, 1, 2] = float("nan")       # a stuff channel: NaN wins (the first NaN channel)
    sem[6, 5, 5] = float("nan")       # a thing channel: the void logit is NaN there
    sem[2, 7, 3:6] = float("inf")
    sem[3, 9, 9] = float("-inf")
    masks[1, 2, 2] = float("nan")     # an instance's mask logits
    masks[2, 0, :] = float("inf")
    for void in (True, False):
        out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=5, output_size=output_size, void=void,
                                    impl=impl)
        exp = upsnet_fuse(sem, masks, boxes, labels, 5, output_size, void)
        assert torch.equal(out, exp), (out != exp).nonzero()[:5]
    if output_size is None:
        assert out[1, 2] == 0  # hand check: the NaN stuff logit at (1, 2) wins


@pytest.mark.parametrize("impl", ("cpp", "triton"))
def test_void_is_the_only_channel(impl):
    # No stuff classes and no instances: UPSNet's logits are the void channel alone, so every pixel is void, also
    # where the thing logits are -inf (the void logit -inf).
    sem = torch.full((2, 3, 12), float("-inf"))
    sem[0, 0, 0] = 1.0
    none = (torch.zeros(0, 2, 2), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    for out_size in (None, (6, 48)):
        out = fastops.panoptic_fuse(sem, *none, num_stuff=0, output_size=out_size, impl=impl)
        assert torch.equal(out, upsnet_fuse(sem, *none, 0, out_size, True))
        assert (out == 255).all()


@settings(deadline=None)
@given(seed=st.integers(0, 10 ** 6), n_nan=st.integers(1, 6), up=st.sampled_from([None, (11, 13)]),
       void=st.booleans())
def test_property_non_finite_logits(seed, n_nan, up, void):
    sem, masks, boxes, labels = _data(S=3, T=3, h=6, w=7, N=3, M=4, out=up, seed=seed)
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([float("nan"), float("inf"), float("-inf")])
    for _ in range(n_nan):
        k = int(torch.randint(0, 2, (1,), generator=g))
        t = sem if k == 0 else masks
        idx = tuple(int(torch.randint(0, s, (1,), generator=g)) for s in t.shape)
        t[idx] = vals[int(torch.randint(0, 3, (1,), generator=g))]
    out = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=3, output_size=up, void=void)
    assert torch.equal(out, upsnet_fuse(sem, masks, boxes, labels, 3, up, void))


# The CPU kernel's fast path: an integer horizontal scale of 2, 4 or 8 (UPSNet's 4x fcn_output) evaluates every channel
# on vectors of 8 (float) / 4 (double) source cells; the border cells, and rows with a non-finite or huge value (NaN
# rules), take other code. Multiples of 0.5 make exact ties; the values are bitwise the reference's. (w >= 10: a run of
# at least 8 regular cells; S = N = 0 with void: the void channel is the only one, 255 even where it is -inf.)
@settings(deadline=None)
@given(scale=st.sampled_from([2, 4, 8]), vscale=st.sampled_from([1, 2, 4]), h=st.integers(1, 5),
       w=st.integers(10, 21), S=st.integers(0, 6), T=st.integers(1, 6), N=st.integers(0, 4), void=st.booleans(),
       n_bad=st.integers(0, 3), dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       transposed=st.booleans(), seed=st.integers(0, 10 ** 6))
def test_property_integer_scale_fast_path(scale, vscale, h, w, S, T, N, void, n_bad, dtype, transposed, seed):
    if S == 0 and N == 0 and not void:
        return
    out = (h * vscale, w * scale)
    sem, masks, boxes, labels = _data(S=S, T=T, h=h, w=w, N=N, M=5, out=out, seed=seed, spread=1.2)
    sem = (sem * 2).round() / 2
    g = torch.Generator().manual_seed(seed)
    # Masks resized by powers of two (truncated box sides of 5 * 2^k pixels) and multiples of 1/16: every instance
    # logit is exact too, so instance channels tie with stuff channels and one another, and no value depends on the
    # rounding of a resize weight. (At other scales PyTorch's per-ISA build rounds the weights and sums its own
    # way, so a resized mask value can sit an ulp or a few from ours, and an exact cancellation against a semantic
    # logit flips an id: bfloat16 masks at 5 -> 33 px, hypothesis seed 226190.)
    masks = (masks * 16).round().clamp(-64, 63) / 16
    start = boxes[:, :2].trunc()  # >= -3: x2 below stays positive, so trunc(x2) = start + side - 1
    side = 5 * 2 ** torch.randint(0, 4, (N, 2), generator=g)
    frac = torch.rand(N, 2, generator=g) * 0.9
    boxes = torch.cat([start + torch.where(start < 0, -frac, frac), start + side - 1 + frac * 0.5], 1)
    # At most one huge finite value per example. Two of them round differently in PyTorch's vectorised resize and
    # in the kernels: +3e38 beside -3e38 in one cell cancel to a residue whose sign depends on the order of
    # operations (PyTorch 2.5e30, the kernels 0, exact 0.625), and +3e38 at one corner of two channels plus their
    # different small taps tie in one and not in the other (hypothesis found both).
    huge = 3e38 if seed % 2 else -3e38
    bad = [float("nan"), float("inf"), float("-inf"), huge]
    for _ in range(n_bad):
        idx = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in sem.shape)
        k = int(torch.randint(0, len(bad), (1,), generator=g))
        sem[idx] = bad[k]
        if k == 3:
            bad.pop()  # the huge value, used once
    sem, masks = sem.to(dtype), masks.to(dtype)
    if transposed:
        sem = sem.transpose(1, 2).contiguous().transpose(1, 2)
    res = fastops.panoptic_fuse(sem, masks, boxes, labels, num_stuff=S, output_size=out, void=void)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    exp = upsnet_fuse(sem.to(acc), masks.to(acc), boxes, labels, S, out, void)
    assert torch.equal(res, exp), (res != exp).nonzero()[:5]


def test_torchscript_and_fx(tmp_path):
    sem, masks, boxes, labels = _data(N=3)
    scripted = torch.jit.script(fastops.panoptic_fuse)
    assert torch.equal(scripted(sem, masks, boxes, labels, 5, [20, 25]),
                       fastops.panoptic_fuse(sem, masks, boxes, labels, 5, [20, 25]))

    class M(torch.nn.Module):
        def forward(self, s, m, b, lab):
            return fastops.panoptic_fuse(s, m, b, lab, 5, None, False)

    path = tmp_path / "m.pt"
    torch.jit.script(M()).save(str(path))
    assert torch.equal(torch.jit.load(str(path))(sem, masks, boxes, labels), M()(sem, masks, boxes, labels))
    gm = torch.fx.symbolic_trace(M())
    assert fastops.panoptic_fuse in [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.equal(gm(sem, masks, boxes, labels), M()(sem, masks, boxes, labels))


@pytest.mark.parametrize("impl", ("cpp", "triton", "reference"))
def test_autocast_mixed_dtypes(impl):
    sem, masks, boxes, labels = _data(N=4, out=(24, 30))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fastops.panoptic_fuse(sem.bfloat16(), masks, boxes, labels, num_stuff=5, output_size=(24, 30),
                                    impl=impl)
        raw = torch.ops.fastops.panoptic_fuse(sem.bfloat16(), masks, boxes, labels, 5, [24, 30], True)
    exp = upsnet_fuse(sem.bfloat16().float(), masks, boxes, labels, 5, (24, 30), True)
    assert out.dtype == torch.int32 and torch.equal(out, exp) and torch.equal(raw, exp)
