"""One-line swapping of fastops' kernels into torchvision (Liger-Kernel style monkey patching).

    fastops.patch_torchvision()                # from now on
    with fastops.patch_torchvision():          # only inside the block; the originals come back after
        model(images)

Swapped (where fastops provides the op): ``torchvision.ops`` roi_align / RoIAlign / MultiScaleRoIAlign /
nms / batched_nms (and the module attributes the detection models call: ``torchvision.ops.boxes.*``,
``torchvision.ops.poolers`` including the pooling of already-built ``MultiScaleRoIAlign`` modules) and
``torchvision.models.detection.roi_heads.paste_masks_in_image`` (also as imported by ``transform``). Existing
Mask R-CNN / Faster R-CNN / Keypoint R-CNN models pick the kernels up without being rebuilt.
"""
from __future__ import annotations

import importlib
from typing import Callable, List, Optional, Tuple


from torch import Tensor

import fastops


def _multiscale_roi_align(x_filtered: List[Tensor], boxes: List[Tensor], output_size, sampling_ratio: int,
                          scales: Optional[List[float]], mapper) -> Tensor:
    """fastops replacement of ``torchvision.ops.poolers._multiscale_roi_align``: one op for all levels."""
    if scales is None or mapper is None:
        raise ValueError("scales and mapper should not be None")
    output_size = tuple(output_size) if isinstance(output_size, (list, tuple)) else (output_size, output_size)
    f0 = x_filtered[0]
    if any(b.dtype != f0.dtype for b in boxes) or any(f.dtype != f0.dtype for f in x_filtered):
        return _ORIGINALS[("torchvision.ops.poolers", "_multiscale_roi_align")](
            x_filtered, boxes, list(output_size), sampling_ratio, scales, mapper)
    if len(x_filtered) == 1:
        return fastops.roi_align(f0, boxes, output_size, scales[0], sampling_ratio)
    return fastops.multi_scale_roi_align(x_filtered, boxes, output_size, scales, sampling_ratio, False,
                                         int(mapper.s0), int(mapper.lvl0))


def _paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], padding: int = 1) -> Tensor:
    return fastops.paste_masks(masks, boxes, img_shape, padding=padding)


def _replacements() -> List[Tuple[str, str, Callable]]:
    """(module, attribute, replacement) for every swap whose fastops op exists in this build."""
    swaps = [
        ("torchvision.ops", "roi_align", fastops.roi_align),
        ("torchvision.ops.roi_align", "roi_align", fastops.roi_align),
        ("torchvision.ops.poolers", "roi_align", fastops.roi_align),
        ("torchvision.ops", "RoIAlign", fastops.RoIAlign),
        ("torchvision.ops.roi_align", "RoIAlign", fastops.RoIAlign),
        ("torchvision.ops.poolers", "_multiscale_roi_align", _multiscale_roi_align),
    ]
    if hasattr(fastops, "nms"):
        swaps += [("torchvision.ops", "nms", fastops.nms), ("torchvision.ops.boxes", "nms", fastops.nms)]
    if hasattr(fastops, "batched_nms"):
        swaps += [("torchvision.ops", "batched_nms", fastops.batched_nms),
                  ("torchvision.ops.boxes", "batched_nms", fastops.batched_nms)]
    if hasattr(fastops, "paste_masks"):
        swaps += [("torchvision.models.detection.roi_heads", "paste_masks_in_image", _paste_masks_in_image),
                  ("torchvision.models.detection.transform", "paste_masks_in_image", _paste_masks_in_image)]
    return swaps


# (module, attribute) -> original object, for every swap currently applied.
_ORIGINALS: dict = {}


class patch_torchvision:
    """Swap fastops' kernels into torchvision. Call it (applies at once) or use it as a context manager
    (restores the originals on exit); ``fastops.unpatch_torchvision()`` restores them too."""

    def __init__(self):
        self._applied = []
        for module_name, attr, replacement in _replacements():
            module = importlib.import_module(module_name)
            key = (module_name, attr)
            if key not in _ORIGINALS:
                _ORIGINALS[key] = getattr(module, attr)
            setattr(module, attr, replacement)
            self._applied.append(key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        unpatch_torchvision(self._applied)
        return False


def unpatch_torchvision(keys=None) -> None:
    """Restore torchvision's own functions (all of them, or the given (module, attribute) keys)."""
    for key in list(_ORIGINALS if keys is None else keys):
        if key in _ORIGINALS:
            setattr(importlib.import_module(key[0]), key[1], _ORIGINALS.pop(key))


def is_patched() -> bool:
    return bool(_ORIGINALS)


__all__ = ["patch_torchvision", "unpatch_torchvision", "is_patched"]
