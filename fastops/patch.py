"""One-line swapping of fastops' kernels into torchvision (Liger-Kernel style monkey patching).

    fastops.patch_torchvision()                # from now on (until fastops.unpatch_torchvision())
    with fastops.patch_torchvision():          # only inside the block; on exit the state before it comes back
        model(images)

Names swapped (module attribute -> fastops replacement):

- ``torchvision.ops.roi_align``, ``torchvision.ops.roi_align.roi_align``, ``torchvision.ops.poolers.roi_align``
  and ``torchvision.models.detection.roi_heads.roi_align`` (Mask R-CNN's mask targets in training)
  -> :func:`fastops.roi_align`;
- ``torchvision.ops.RoIAlign``, ``torchvision.ops.roi_align.RoIAlign`` -> :class:`fastops.RoIAlign`;
- ``torchvision.ops.poolers._multiscale_roi_align`` (the pooling inside every ``MultiScaleRoIAlign``, including
  modules built before the patch) -> one :func:`fastops.multi_scale_roi_align` call for all levels;
- ``torchvision.ops.nms``, ``torchvision.ops.boxes.nms`` -> :func:`fastops.nms`;
- ``torchvision.ops.batched_nms``, ``torchvision.ops.boxes.batched_nms`` (the RPN's and the box head's NMS)
  -> :func:`fastops.batched_nms`;
- ``torchvision.models.detection.roi_heads.paste_masks_in_image`` and
  ``torchvision.models.detection.transform.paste_masks_in_image`` (Mask R-CNN post-processing)
  -> :func:`fastops.paste_masks`.

Eager models, already built or not, pick the kernels up at once. TorchScript resolves these names when it
compiles, so patching (and unpatching) clears torch.jit's caches of torchvision's compiled code: a
``torch.jit.script(model)`` made afterwards runs fastops' ops. A ScriptModule made *before* keeps the kernels it
was compiled with; when torch.jit had compiled torchvision code before the patch, a ``UserWarning`` says so.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

import fastops

# torchvision's names the replacements use, bound by _import_torchvision() on the first patch (fastops does not
# import torchvision by itself). TorchScript resolves them, and the string annotations, when it compiles.
LevelMapper = None
_convert_to_roi_format = None
_tv_multiscale_roi_align = None


def _import_torchvision() -> None:
    global LevelMapper, _convert_to_roi_format, _tv_multiscale_roi_align
    from torchvision.ops import poolers

    LevelMapper, _convert_to_roi_format = poolers.LevelMapper, poolers._convert_to_roi_format
    _tv_multiscale_roi_align = _ORIGINALS.get(("torchvision.ops.poolers", "_multiscale_roi_align"),
                                              poolers._multiscale_roi_align)


def _multiscale_roi_align(x_filtered: List[Tensor], boxes: List[Tensor], output_size: List[int],
                          sampling_ratio: int, scales: Optional[List[float]], mapper: Optional[LevelMapper]) -> Tensor:
    """fastops replacement of ``torchvision.ops.poolers._multiscale_roi_align`` (same signature, scriptable):
    one op pools every level. In eager mode, levels or boxes of mixed dtypes (autocast) take torchvision's
    per-level path, whose ``roi_align`` is fastops' once patched."""
    if scales is None or mapper is None:
        raise ValueError("scales and mapper should not be None")
    oh, ow = output_size[0], output_size[-1]
    if torch.jit.is_scripting():
        rois = _convert_to_roi_format(boxes)
        if len(x_filtered) == 1:
            return torch.ops.fastops.roi_align(x_filtered[0], rois, scales[0], oh, ow, sampling_ratio, False)
        return torch.ops.fastops.multi_scale_roi_align(x_filtered, rois, scales, oh, ow, sampling_ratio, False,
                                                       mapper.s0, mapper.lvl0)
    f0 = x_filtered[0]
    if any(f.dtype != f0.dtype for f in x_filtered) or any(b.dtype != f0.dtype for b in boxes):
        return _tv_multiscale_roi_align(x_filtered, boxes, output_size, sampling_ratio, scales, mapper)
    if len(x_filtered) == 1:
        return fastops.roi_align(f0, boxes, (oh, ow), scales[0], sampling_ratio)
    return fastops.multi_scale_roi_align(x_filtered, boxes, (oh, ow), scales, sampling_ratio, False,
                                         int(mapper.s0), int(mapper.lvl0))


def _paste_masks_in_image(masks: Tensor, boxes: Tensor, img_shape: Tuple[int, int], padding: int = 1) -> Tensor:
    """fastops replacement of ``torchvision.models.detection.roi_heads.paste_masks_in_image`` (same signature,
    scriptable). The result has the masks' dtype, as torchvision's: under autocast fastops computes in float32 and
    the result is rounded back (torchvision interpolates bfloat16/float16 masks in their own dtype)."""
    if torch.jit.is_scripting():
        out = torch.ops.fastops.paste_masks(masks[:, 0], boxes, img_shape[0], img_shape[1], padding, None)
    else:
        out = fastops.paste_masks(masks, boxes, img_shape, padding=padding)
    return out.to(masks.dtype)


def _replacements() -> List[Tuple[str, str, Callable]]:
    """(module, attribute, replacement) for every swap (the list in the module docstring)."""
    return [
        ("torchvision.ops", "roi_align", fastops.roi_align),
        ("torchvision.ops.roi_align", "roi_align", fastops.roi_align),
        ("torchvision.ops.poolers", "roi_align", fastops.roi_align),
        ("torchvision.models.detection.roi_heads", "roi_align", fastops.roi_align),
        ("torchvision.ops", "RoIAlign", fastops.RoIAlign),
        ("torchvision.ops.roi_align", "RoIAlign", fastops.RoIAlign),
        ("torchvision.ops.poolers", "_multiscale_roi_align", _multiscale_roi_align),
        ("torchvision.ops", "nms", fastops.nms),
        ("torchvision.ops.boxes", "nms", fastops.nms),
        ("torchvision.ops", "batched_nms", fastops.batched_nms),
        ("torchvision.ops.boxes", "batched_nms", fastops.batched_nms),
        ("torchvision.models.detection.roi_heads", "paste_masks_in_image", _paste_masks_in_image),
        ("torchvision.models.detection.transform", "paste_masks_in_image", _paste_masks_in_image),
    ]


# (module, attribute) -> torchvision's own object, recorded the first time the attribute is swapped.
_ORIGINALS: Dict[Tuple[str, str], Any] = {}


def _torchvision_jit_cache_entries() -> Tuple[list, list]:
    """torch.jit's cached compilations of torchvision code: (module classes, free functions).

    ``torch.jit.script`` reuses the compiled methods of a module class it has seen (``concrete_type_store``) and
    compiled free functions (``_jit_caching_layer``); both captured the torchvision names as they were then.
    """
    from torch.jit import _recursive, _state

    classes = [c for c in list(_recursive.concrete_type_store.type_store)
               if getattr(c, "__module__", "").startswith("torchvision")]
    fns = [f for f in list(_state._jit_caching_layer.keys())
           if getattr(f, "__module__", "") and f.__module__.startswith("torchvision")]
    return classes, fns


def _clear_torchvision_jit_caches() -> bool:
    """Forget torch.jit's compilations of torchvision code, so the next ``torch.jit.script`` recompiles it with
    the names now in place. Returns whether there was anything to forget. Already-made ScriptModules keep theirs."""
    from torch.jit import _recursive, _state

    classes, fns = _torchvision_jit_cache_entries()
    store = _recursive.concrete_type_store
    for c in classes:
        for concrete in store.type_store.pop(c, []):
            store.methods_compiled.discard(concrete)
    for f in fns:
        _state._jit_caching_layer.pop(f, None)
    return bool(classes or fns)


def _set(swaps: List[Tuple[str, str, Any]]) -> None:
    for module_name, attr, value in swaps:
        setattr(importlib.import_module(module_name), attr, value)
    _clear_torchvision_jit_caches()


class patch_torchvision:
    """Swap fastops' kernels into torchvision (every name listed in :mod:`fastops.patch`'s docstring).

    Call it (applies at once, stays until :func:`unpatch_torchvision`) or use it as a context manager: on exit,
    every swapped name gets back the value it had on entry, so ``with`` blocks nest inside each other and inside
    a patch applied by a plain call (which they leave in place).
    """

    def __init__(self):
        self._saved: List[Tuple[str, str, Any]] = []
        _import_torchvision()
        swaps = _replacements()
        fresh = False
        for module_name, attr, replacement in swaps:
            current = getattr(importlib.import_module(module_name), attr)
            self._saved.append((module_name, attr, current))
            if current is not replacement:
                fresh = True
                _ORIGINALS.setdefault((module_name, attr), current)
        if fresh and any(_torchvision_jit_cache_entries()):
            warnings.warn(
                "fastops.patch_torchvision(): torch.jit had already compiled torchvision code; ScriptModules made "
                "before this call keep torchvision's kernels. torch.jit.script them again (the caches were cleared "
                "so new scripts use fastops).", UserWarning, stacklevel=2)
        _set(swaps)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _set(self._saved)
        return False


def unpatch_torchvision() -> None:
    """Restore torchvision's own functions everywhere (whatever ``with`` blocks are open)."""
    _set([(m, a, orig) for (m, a), orig in _ORIGINALS.items()])


def is_patched() -> bool:
    """True when any of the names is currently fastops'."""
    return bool(_ORIGINALS) and any(getattr(importlib.import_module(m), a) is r for m, a, r in _replacements())


__all__ = ["patch_torchvision", "unpatch_torchvision", "is_patched"]
