"""Helpers for the side-by-side benchmarks (see conftest.py)."""
import contextlib
import os
import resource

import torch


def record(benchmark, op, workload, threads, side, peak_mb=None):
    benchmark.group = f"{op}:{workload}:t{threads}"
    benchmark.extra_info.update(op=op, workload=workload, threads=threads, side=side)
    if peak_mb is not None:
        benchmark.extra_info["peak_mb"] = peak_mb


def patched(side):
    """fastops.patch_torchvision() on the fastops side, nothing on the anchor side (torchvision model benchmarks)."""
    if side == "fastops":
        import fastops

        return fastops.patch_torchvision()
    return contextlib.nullcontext()


def run(benchmark, fn, *, rounds=5, warmup=1):
    """Time `fn` with a fixed number of rounds (the slow anchors would otherwise take minutes)."""
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)


# docs/heatmaps.md's keypoint workload: 32 samples x 17 keypoints on 64x48 heatmaps.
HEATMAP_SHAPE = (32, 17, 64, 48)


def heatmap_keypoints(shape=HEATMAP_SHAPE):
    """[B, K, 2] (x, y) keypoints uniform inside the [H, W] map of shape = (B, K, H, W) (seed 0)."""
    b, k, h, w = shape
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, k, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])


_DETECTORS = {}


def torchvision_detector(builder):
    """(model, [image]) for a torchvision detector builder at random init (seed 0), cached, and one 800x1216 image.

    A random head scores every box ~1/num_classes: box_score_thresh=0 keeps all detections, so the post-processing
    does the work it does on a trained model (100 detections)."""
    if builder not in _DETECTORS:
        torch.manual_seed(0)
        model = builder(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
        _DETECTORS[builder] = (model, [torch.rand(3, 800, 1216, generator=torch.Generator().manual_seed(1))])
    return _DETECTORS[builder]


def run_patched_inference(benchmark, threads, side, builder, rounds):
    """One inference of torchvision_detector(builder) without (anchor) / with (fastops) fastops.patch_torchvision()."""
    model, images = torchvision_detector(builder)

    def step():
        with torch.no_grad(), patched(side):
            return model(images)

    record(benchmark, builder.__name__, "inference 1x800x1216, 100 dets", threads, side)
    run(benchmark, step, rounds=rounds)


def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def _reset_peak():
    """Return freed heap pages to the OS and reset the RSS high-water mark (VmHWM) to the current RSS.

    Without this, memory the parent freed but glibc or fastops' block cache kept (e.g. blocks below glibc's dynamic
    32 MB mmap threshold) is reused by the call without raising RSS, and its temporaries go uncounted. Returns False if unsupported.
    """
    try:
        import ctypes

        import fastops

        fastops.empty_cpu_cache()  # fastops' cached large blocks too (docs/README.md, "CPU memory")
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_mb(fn):
    """Peak memory (MB) that one call of `fn` adds on top of what the process holds, measured in a fork.

    The child's high-water mark (ru_maxrss) starts at its RSS when forked; the difference after one call is the
    call's peak extra memory (temporaries included, freed or not).

    The child runs `fn` with one intra-op thread: a forked child cannot use the parent's OpenMP (libgomp) thread
    pool, and a parallel region there hangs forever once the parent has run one with 2+ threads. Peak memory is
    essentially thread-count independent for these ops (per-thread scratch is small).
    Before the call the child trims glibc's free heap and resets VmHWM (see _reset_peak), so memory the parent
    freed but kept resident is not silently reused; peak = VmHWM - VmRSS around the call.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            import torch as _torch

            _torch.set_num_threads(1)
            if _reset_peak():
                base = _status_kb("VmRSS")
                fn()
                peak = _status_kb("VmHWM")
            else:
                base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                base = max(base, _rss_kb())
                fn()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            os.write(w, str((peak - base) / 1024.0).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 64):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return float(out or 0.0)
