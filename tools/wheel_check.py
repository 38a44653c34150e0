"""Packaging check (`make wheel-check`; not in CI: it builds the whole CPU extension, several minutes on 2 cores).

1. Copies the tracked (and new, not ignored) files of this clone to a temporary directory, so that the wheel is
   built from what a checkout holds and the in-place build (`make build`) is not touched.
2. Builds the wheel there: `pip wheel --no-deps --no-build-isolation` with FASTOPS_CUDA=0 (CPU kernels only, the
   portable per-ISA build every wheel gets), using this interpreter's torch.
3. Makes a fresh venv (no system site-packages), installs torch and torchvision from the package index pip is
   configured with (the same local wheels `make venv` uses: no other network), then the wheel without
   dependencies, and runs `pip check` (every declared dependency present).
4. In that venv, outside any source tree: imports fastops (from the venv's site-packages), runs one op of every
   family (the family list is read from the installed package, so a new family without a smoke call fails),
   checks that fastops/docs/*.md ship, and imports fastops.models.

Prints each step's time; exit status 0 when everything passed. `--keep` leaves the temporary directory.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]  # the Makefile's venv pins

# One call per op family (fastops/registrations/<family>.py), run inside the fresh venv.
SMOKE = r'''
import os, pkgutil, sys
import torch
import fastops
import fastops.registrations

site = os.path.dirname(os.path.dirname(fastops.__file__))
assert "site-packages" in site and not site.startswith(sys.argv[1]), f"fastops imported from {fastops.__file__}"
g = torch.Generator().manual_seed(0)
boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
scores = torch.tensor([0.9, 0.8, 0.7])
heat = torch.rand(1, 2, 8, 8, generator=g)
priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]])
dp = [torch.rand(1, k, 4, 4, generator=g) for k in (2, 3, 3, 3)]
SMOKE = {
    "corner_pool": lambda: fastops.corner_pool(heat, "top"),
    "decode": lambda: fastops.heatmap_argmax(heat),
    "densepose": lambda: (fastops.densepose_chart_to_iuv(*dp, boxes[:1]),
                          fastops.roi_point_sample(dp[1], torch.zeros(2, dtype=torch.int64), torch.rand(2, 2) * 3)),
    "flow_warp": lambda: fastops.flow_warp(heat, torch.zeros(1, 2, 8, 8)),
    "keypoint_rcnn": lambda: fastops.roi_heatmaps_to_keypoints(heat, boxes[:1]),
    "masks": lambda: fastops.paste_masks(torch.rand(3, 1, 5, 5, generator=g), boxes, (32, 32)),
    "nms": lambda: fastops.nms(boxes, scores, 0.5),
    "panoptic": lambda: fastops.panoptic_fuse(torch.randn(3, 8, 8), torch.randn(1, 4, 4),
                                              torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([1]), 2),
    "peaks": lambda: fastops.heatmap_peaks(heat, 3),
    "priors": lambda: fastops.prior_nms(torch.zeros(1, 2, 4), torch.tensor([[0.9, 0.8]]), None, priors),
    "render": lambda: fastops.render_gaussian_heatmaps(torch.rand(1, 1, 2, 2) * 8, (8, 8), 2.0),
    "roi_align": lambda: fastops.roi_align(heat, torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0]]), 2),
}
families = sorted(m.name for m in pkgutil.iter_modules(fastops.registrations.__path__)
                  if not m.name.startswith("_") and not m.name.endswith("_onnx"))
missing = sorted(set(families) - set(SMOKE))
assert not missing, f"no smoke call for families {missing}: add one to tools/wheel_check.py"
for name in families:
    SMOKE[name]()
    print(f"  {name}: ok")
docs = os.path.join(os.path.dirname(fastops.__file__), "docs")
pages = sorted(f for f in os.listdir(docs) if f.endswith(".md"))
assert "onnx.md" in pages and "README.md" in pages and len(pages) >= 10, pages
print(f"  fastops/docs: {len(pages)} pages")
import fastops.models  # noqa: E402
print(f"  fastops.models: {fastops.models.__file__}")
print(f"  fastops {fastops.__version__} from {fastops.__file__}, compiled CUDA: {fastops.cuda_compiled()}")
'''


def run(cmd, **kw):
    print("+", " ".join(a if len(a) < 200 else a.strip().splitlines()[0] + " ..." for a in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fastops-wheel-check-")
    times = {}
    try:
        t0 = time.monotonic()
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=HERE,
                               check=True, capture_output=True).stdout.decode().split("\0")
        src = os.path.join(tmp, "src")
        for f in filter(None, files):
            if os.path.isfile(os.path.join(HERE, f)):
                os.makedirs(os.path.dirname(os.path.join(src, f)), exist_ok=True)
                shutil.copy2(os.path.join(HERE, f), os.path.join(src, f))
        # ccache (when on PATH): paths relative to the copy, so a second run hits what the first one compiled
        env = dict(os.environ, FASTOPS_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"), CCACHE_BASEDIR=src,
                   CCACHE_NOHASHDIR="1",
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        env.pop("FASTOPS_NO_EXT", None)
        env.pop("FASTOPS_MARCH", None)
        dist = os.path.join(tmp, "dist")
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src],
            cwd=src, env=env)
        wheels = [os.path.join(dist, w) for w in os.listdir(dist) if w.endswith(".whl")]
        assert len(wheels) == 1, wheels
        times["build wheel"] = time.monotonic() - t0
        print(f"wheel: {os.path.basename(wheels[0])} ({os.path.getsize(wheels[0]) / 1e6:.1f} MB)")

        t0 = time.monotonic()
        venv = os.path.join(tmp, "venv")
        run([sys.executable, "-m", "venv", venv])
        vpy = os.path.join(venv, "bin", "python")
        run([vpy, "-m", "pip", "install", "-q", *TORCH_PINS])
        run([vpy, "-m", "pip", "install", "-q", "--no-index", "--no-deps", wheels[0]])
        run([vpy, "-m", "pip", "check"])
        times["venv + install"] = time.monotonic() - t0

        t0 = time.monotonic()
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
        run([vpy, "-c", SMOKE, HERE], cwd=tmp, env=clean)
        times["smoke"] = time.monotonic() - t0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("wheel-check passed: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
