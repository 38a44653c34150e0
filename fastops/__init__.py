"""fastops: hand-written CPU/CUDA/Triton kernels for segmentation and keypoint models, as torch ops.

Every public function takes `impl="auto"|"cpp"|"triton"|"reference"`: "auto"/"cpp" run the compiled kernel
for the tensor's device (`torch.ops.fastops.*`), "triton" the Triton kernel (CUDA tensors, or CPU tensors
under TRITON_INTERPRET=1), "reference" the plain-PyTorch reference in fastops.reference.
"""
import torch  # noqa: F401  (must be imported before fastops._C: it loads libc10)

from fastops._library import cpu_cache_bytes, cuda_compiled, empty_cpu_cache  # noqa: F401
from fastops.version import __version__  # noqa: F401
from fastops.ops.masks import paste_masks, yolact_mask_loss, yolact_masks  # noqa: F401
from fastops.ops.flow_warp import flow_warp  # noqa: F401
from fastops.ops.panoptic import panoptic_fuse  # noqa: F401
from fastops.ops.nms import batched_nms, fast_nms, multiclass_nms, nms, soft_nms  # noqa: F401
from fastops.ops.roi_align import MultiScaleRoIAlign, RoIAlign, multi_scale_roi_align, roi_align  # noqa: F401
from fastops.ops.render import gaussian_radius, render_center_heatmap, render_gaussian_heatmaps  # noqa: F401
from fastops.ops.decode import heatmap_argmax, soft_argmax  # noqa: F401
from fastops.ops.peaks import centernet_decode, heatmap_peaks  # noqa: F401
from fastops.ops.corner_pool import corner_pool  # noqa: F401
from fastops.ops.keypoint_rcnn import roi_heatmaps_to_keypoints  # noqa: F401
from fastops.ops.priors import match_priors, prior_nms  # noqa: F401
from fastops.ops.densepose import (densepose_chart_to_iuv, densepose_paste_iuv, densepose_point_grid,  # noqa: F401
                                   densepose_unpack, roi_point_sample)

from fastops.patch import is_patched, patch_torchvision, unpatch_torchvision  # noqa: F401,E402
