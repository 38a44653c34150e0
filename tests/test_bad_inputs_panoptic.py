"""panoptic_fuse with hostile or careless input: each case that could crash runs in its own interpreter
(tests/isolated.py); the plain argument errors use pytest.raises."""
import pytest
import torch

import fastops
from isolated import expect_error, expect_ok

_SETUP = """
g = torch.Generator().manual_seed(0)
sem = torch.randn(9, 12, 15, generator=g)
masks = torch.randn(3, 7, 7, generator=g)
boxes = torch.tensor([[1.0, 2.0, 8.0, 9.0], [0.0, 0.0, 14.0, 11.0], [5.5, 3.2, 7.1, 4.9]])
labels = torch.tensor([1, 4, 2])
"""


@pytest.mark.parametrize("impl", ("cpp", "reference"))
def test_data_dependent_errors(impl):
    for bad in ("torch.tensor([1, 0, 2])", "torch.tensor([1, 5, 2])", "torch.tensor([1, -2**40, 2])"):
        expect_error(_SETUP + f"fastops.panoptic_fuse(sem, masks, boxes, {bad}, 5, impl={impl!r})",
                     RuntimeError, "labels")
    for bad in ("float('nan')", "float('inf')"):
        expect_error(_SETUP + f"boxes[1, 2] = {bad}\nfastops.panoptic_fuse(sem, masks, boxes, labels, 5, "
                     f"impl={impl!r})", RuntimeError, "boxes")


@pytest.mark.parametrize("impl", ("cpp", "triton"))
def test_extreme_boxes_and_shapes_do_not_crash(impl):
    expect_ok(_SETUP + f"""
boxes = torch.tensor([[-1e30, -1e30, 1e30, 1e30], [3.0, 3.0, 3e9, 5.0], [-5e18, 2.0, -1e18, 4.0]])
out = fastops.panoptic_fuse(sem, masks, boxes, labels, 5, impl={impl!r})
assert torch.equal(out, fastops.panoptic_fuse(sem, masks, boxes, labels, 5, impl="reference"))
s0 = sem[:, :1].expand(9, 12, 15)  # stride-0 rows
out = fastops.panoptic_fuse(s0, masks, boxes, labels, 5, [24, 30], impl={impl!r})
assert out.shape == (24, 30)
out = fastops.panoptic_fuse(sem[:, :0], masks, boxes, labels, 5, [0, 30], impl={impl!r})
assert out.shape == (0, 30)
out = fastops.panoptic_fuse(sem[:, :1, :1], masks[:, :1, :1], boxes, labels, 5, [40, 3], impl={impl!r})
assert out.shape == (40, 3)
""")


def test_raw_op_checks_in_cpp():
    expect_error(_SETUP + "torch.ops.fastops.panoptic_fuse(sem, masks, boxes, labels, 12, None, True)",
                 RuntimeError, "num_stuff")
    expect_error(_SETUP + "torch.ops.fastops.panoptic_fuse(sem, masks[:2], boxes, labels, 5, None, True)",
                 RuntimeError, "same N")
    expect_error(_SETUP + "torch.ops.fastops.panoptic_fuse(sem, masks, boxes, labels, 5, [-1, 4], True)",
                 RuntimeError, "output_size")
    expect_error(_SETUP + "torch.ops.fastops.panoptic_fuse(sem[:, :0], masks, boxes, labels, 5, [4, 4], True)",
                 RuntimeError, "upsample")


def test_argument_errors_name_the_argument():
    g = torch.Generator().manual_seed(0)
    sem, masks = torch.randn(9, 12, 15, generator=g), torch.randn(3, 7, 7, generator=g)
    boxes, labels = torch.rand(3, 4) * 10, torch.tensor([1, 4, 2])
    cases = [
        (dict(num_stuff=2 ** 32 + 5), "num_stuff"), (dict(num_stuff=-1), "num_stuff"),
        (dict(num_stuff=5.0), "num_stuff"), (dict(num_stuff=True), "num_stuff"),
        (dict(output_size=[2 ** 32 + 4, 8]), "output_size"), (dict(output_size=[-3, 8]), "output_size"),
        (dict(output_size=[3.5, 8]), "output_size"), (dict(output_size=[3]), "output_size"),
        (dict(void=1), "void"), (dict(labels=labels.float()), "labels"), (dict(boxes=boxes.int()), "boxes"),
        (dict(mask_logits=masks.double()), "mask_logits"), (dict(semantic_logits=sem[0]), "semantic_logits"),
        (dict(mask_logits=torch.randn(3, 0, 7)), "mask_logits"), (dict(impl="fast"), "impl"),
    ]
    for kw, name in cases:
        args = dict(semantic_logits=sem, mask_logits=masks, boxes=boxes, labels=labels, num_stuff=5)
        args.update(kw)
        with pytest.raises(ValueError, match=name):
            fastops.panoptic_fuse(**args)


def test_no_input_is_mutated():
    g = torch.Generator().manual_seed(0)
    sem, masks = torch.randn(9, 12, 15, generator=g), torch.randn(3, 7, 7, generator=g)
    boxes, labels = torch.rand(3, 4) * 10, torch.tensor([1, 4, 2])
    before = [t.clone() for t in (sem, masks, boxes, labels)]
    for impl in ("cpp", "triton", "reference"):
        fastops.panoptic_fuse(sem, masks, boxes, labels, 5, [20, 25], impl=impl)
    assert all(torch.equal(a, b) for a, b in zip(before, (sem, masks, boxes, labels)))
