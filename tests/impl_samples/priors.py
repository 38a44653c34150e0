"""prior_nms (flat and padded) and match_priors (ssd with the hard-gt rule, yolact): samples for
tests/test_impls.py (cpp and Triton)."""
import torch

import fastops
from fastops.models.retinaface import prior_boxes
from impl_samples import Sample


def _nms(pad):
    def make(device):
        g = torch.Generator().manual_seed(0)
        pri = prior_boxes((48, 64))
        P = pri.size(0)
        loc = torch.randn(2, P, 4, generator=g) * 0.5
        sc = torch.rand(2, P, generator=g)
        lm = torch.randn(2, P, 10, generator=g)
        return ((loc.to(device), sc.to(device), lm.to(device), pri.to(device), (64.0, 48.0), 0.3, 0.4, 200, 30),
                {"pad": pad})
    return make


def _match(mode):
    def make(device):
        g = torch.Generator().manual_seed(1)
        B, G = 3, 6
        c = torch.rand(B, G, 2, generator=g) * 0.8 + 0.1
        wh = torch.rand(B, G, 2, generator=g) * 0.4 + 0.02
        boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
        labels = torch.randint(1, 4, (B, G), generator=g)
        lmk = torch.rand(B, G, 10, generator=g)
        counts = torch.tensor([6, 0, 3])
        pri = prior_boxes((64, 64))
        kw = {"mode": mode, "hard_threshold": 0.2} if mode == "ssd" else {"mode": mode, "pos_threshold": 0.5,
                                                                             "neg_threshold": 0.4}
        return (boxes.to(device), labels.to(device), pri.to(device), counts.to(device), lmk.to(device)), kw
    return make


SAMPLES = [
    Sample("prior_nms-flat", fastops.prior_nms, _nms(False), atol=1e-4, rtol=2e-6),
    Sample("prior_nms-pad", fastops.prior_nms, _nms(True), atol=1e-4, rtol=2e-6),
    Sample("match_priors-ssd", fastops.match_priors, _match("ssd"), atol=2e-6, rtol=2e-6),
    Sample("match_priors-yolact", fastops.match_priors, _match("yolact"), atol=2e-6, rtol=2e-6),
]
