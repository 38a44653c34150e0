"""Shared helpers of the keypoint families' tests (test_render, test_decode, test_peaks, test_corner_pool,
test_keypoint_rcnn and its bad-input module)."""
import torch

from fastops.reference import render as RR

LOW = (torch.float16, torch.bfloat16)
TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-5, 1e-6), torch.float16: (1e-2, 2e-3),
       torch.bfloat16: (2e-2, 1e-2)}
REFINES = ["none", "quarter", "hourglass", "dark", "dark_udp"]
POOL_MODES = ["top", "bottom", "left", "right"]


def close(a, b, dtype=torch.float32, rtol=None, atol=None):
    """assert_close in float64 with the dtype's default tolerances; rtol=0 / atol=0 are taken as given (exact)."""
    r, t = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), rtol=r if rtol is None else rtol,
                               atol=t if atol is None else atol, equal_nan=True)


def assert_same_as_torchvision(got, want, impl="cpp"):
    """(keypoints, scores) of roi_heatmaps_to_keypoints against torchvision's heatmaps_to_keypoints: bit for bit
    (NaN where torchvision has NaN). One exception: the Triton kernel fuses multiply-adds where ATen's AVX2 kernels
    (and the GPU) do, so at torch's baseline CPU capability (ATEN_CPU_CAPABILITY=default, as in `make sanitize`),
    where ATen rounds twice, it is equal to the last bits only."""
    fused_vs_baseline = impl == "triton" and torch.backends.cpu.get_cpu_capability() == "DEFAULT"
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        if fused_vs_baseline:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
            continue
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5)), (a - b).abs().max()


def special_keypoints(B, K, H, W, gen=None):
    """Random keypoints plus the hard cases: outside the map, on the border, exact .5 positions."""
    kp = torch.rand(B, K, 2, generator=gen) * torch.tensor([W + 12.0, H + 12.0]) - 6
    extra = torch.tensor([[0.0, 0.0], [W - 1.0, H - 1.0], [W - 0.5, 3.5], [2.5, H - 0.5], [-0.5, -0.5],
                          [10.5, 7.5], [-3.2, 5.0], [W + 2.7, 4.0], [5.0, -9.9], [W / 2, H + 0.4]])
    n = min(K, extra.size(0))
    kp[0, :n] = extra[:n]
    return kp


def realistic_maps(B, K, H, W, sigma=2.0, noise=0.02, dtype=torch.float32):
    kp = torch.rand(B, K, 2) * torch.tensor([W - 1.0, H - 1.0])
    hm, _ = RR.render_gaussian_heatmaps(kp, (H, W), sigma, None, "dark")
    return (hm + noise * torch.rand_like(hm)).to(dtype)


def onnx_roundtrip(module, args, dynamo, dynamic_batch=True):
    """Export `module` with one exporter, check the file (onnx.checker, no fastops domain) and run it in
    onnxruntime on `args`; returns the outputs as tensors."""
    import io

    import onnx
    import onnxruntime as ort

    import fastops.onnx

    f = io.BytesIO()
    names = [f"in{i}" for i in range(len(args))]
    if dynamo:
        shapes = tuple({0: torch.export.Dim("batch", min=1, max=64)} for _ in names)
        prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes if dynamic_batch else None,
                                 custom_translation_table=fastops.onnx.translations(), input_names=names)
        model = prog.model_proto
    else:
        axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
        torch.onnx.export(module, args, f, dynamo=False, input_names=names, dynamic_axes=axes, opset_version=18)
        model = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(model)
    domains = {n.domain for n in model.graph.node}
    assert not any("fastops" in d for d in domains), domains
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    return [torch.from_numpy(o) for o in outs]


def onnx_session(module, args, dynamo, dynamic=None, opset=18):
    """Export `module` once with one exporter (`dynamic`: {input index: {axis: name}} for the sizes that stay
    symbolic), check the file (onnx.checker, no node or opset import of a fastops domain) and return a function
    that runs it in onnxruntime (CPUExecutionProvider) on any inputs (a list of tensors out)."""
    import io

    import onnx
    import onnxruntime as ort

    import fastops.onnx

    names = [f"in{i}" for i in range(len(args))]
    dynamic = dynamic or {}
    if dynamo:
        dims = {}
        shapes = tuple({ax: dims.setdefault(n, torch.export.Dim(n, min=1, max=4096))
                        for ax, n in dynamic.get(i, {}).items()} or None for i in range(len(args)))
        prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes if dynamic else None,
                                 custom_translation_table=fastops.onnx.translations(), input_names=names,
                                 opset_version=opset)
        model = prog.model_proto
    else:
        f = io.BytesIO()
        axes = {names[i]: dict(a) for i, a in dynamic.items()}
        torch.onnx.export(module, args, f, dynamo=False, input_names=names, dynamic_axes=axes or None,
                          opset_version=opset)
        model = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(model, full_check=True)
    assert not [n.op_type for n in model.graph.node if "fastops" in n.domain]
    assert not [o.domain for o in model.opset_import if "fastops" in o.domain]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed_names = {i.name for i in sess.get_inputs()}  # an input the graph does not read is dropped

    def run(*inputs):
        outs = sess.run(None, {n: a.numpy() for n, a in zip(names, inputs) if n in feed_names})
        return [torch.from_numpy(o) for o in outs]

    return run
