"""roi_heatmaps_to_keypoints: samples for tests/test_impls.py (small maps: the Triton interpreter is slow)."""
import torch

import fastops
from impl_samples import Sample


def _h2k(R, K, H, W, ties=False):
    def make(device):
        g = torch.Generator().manual_seed(R * 100 + H)
        maps = torch.randn(R, K, H, W, generator=g)
        if ties:
            maps = torch.randint(0, 3, (R, K, H, W), generator=g).float() / 2
        xy = torch.rand(R, 2, generator=g) * 30
        rois = torch.cat([xy, xy + torch.rand(R, 2, generator=g) * 40], 1)
        if R > 2:
            rois[0] = torch.tensor([3.0, 4.0, 3.0, 4.0])  # empty box: 1 x 1 px
            rois[1] = torch.tensor([5.5, 9.0, 2.0, 30.25])  # inverted width
        return (maps.to(device), rois.to(device)), {}
    return make


SAMPLES = [
    Sample("roi_heatmaps_to_keypoints", fastops.roi_heatmaps_to_keypoints, _h2k(4, 3, 9, 11), atol=0, rtol=0),
    Sample("roi_heatmaps_to_keypoints-ties", fastops.roi_heatmaps_to_keypoints, _h2k(3, 2, 6, 6, True), atol=0,
           rtol=0),
    Sample("roi_heatmaps_to_keypoints-empty", fastops.roi_heatmaps_to_keypoints, _h2k(0, 17, 8, 8), atol=0, rtol=0),
]
