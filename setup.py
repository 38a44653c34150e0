"""Build fastops._C: the C++ CPU kernels always, the CUDA kernels when a toolkit and a CUDA torch are present.

Environment:
  FASTOPS_CUDA=0/1        force the CUDA kernels off/on (default: on when CUDA_HOME has nvcc and torch.version.cuda)
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0")
  FASTOPS_MARCH           value for -march= on the CPU side (default "native"; "" for a portable build)
  MAX_JOBS                parallel compile jobs (ninja)
  FASTOPS_NO_EXT=1        package only, no extension (make's editable install: `make build` compiles in place)
"""
import glob
import os
import shutil

from setuptools import find_packages, setup


def _cuda_home():
    # The nvcc on PATH may be a wrapper script; its exec line names the real toolkit (see BUILD_FACTS).
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):
            for line in head.decode(errors="ignore").splitlines():
                parts = line.split()
                if parts and parts[0] == "exec" and len(parts) > 1 and parts[1].endswith("/nvcc"):
                    return os.path.dirname(os.path.dirname(parts[1]))
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


cuda_home = _cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

try:
    import torch  # noqa: E402  (after CUDA_HOME is fixed: cpp_extension reads it at import)
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on how pip was called
    raise SystemExit(
        "fastops builds against the torch it will run with, and this build environment has no torch "
        f"({exc}). Install torch first (pip install torch==2.14.1 torchvision==0.29.1), then run "
        "`pip install --no-build-isolation .` (or `make build` in a clone).") from exc

here = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    forced = os.environ.get("FASTOPS_CUDA")
    if forced is not None:
        return forced not in ("0", "", "false", "False")
    have_nvcc = bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))
    return have_nvcc and torch.version.cuda is not None


with_cuda = _want_cuda()
cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True)) if with_cuda else []

march = os.environ.get("FASTOPS_MARCH", "native")
# -fopenmp compiles ATen's at::parallel_for (an inline `#pragma omp parallel`) into a real parallel region.
# It is a compile flag only: the GOMP_* symbols then resolve to the OpenMP runtime torch itself loads
# (libtorch_cpu's libgomp), so the extension follows torch.set_num_threads and no second runtime is loaded.
cxx_flags = ["-O3", "-g0", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-fopenmp"]
if march:
    cxx_flags.append(f"-march={march}")
nvcc_flags = ["-O3", "-Xptxas", "-v", "-lineinfo", "--expt-relaxed-constexpr"]
define_macros = [("FASTOPS_WITH_CUDA", "1" if with_cuda else "0")]

ext_cls = CUDAExtension if with_cuda else CppExtension
ext = ext_cls(
    name="fastops._C",
    sources=cpp_sources + cuda_sources,
    include_dirs=[os.path.join(here, "csrc")],
    define_macros=define_macros,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
)

packages = find_packages(include=["fastops", "fastops.*"]) + ["fastops.models"]

def _version():
    # The version is defined once, in fastops/version.py.
    scope = {}
    with open(os.path.join(here, "fastops", "version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


setup(
    name="fastops",
    version=_version(),
    description="Fast C++/CUDA/Triton kernels for segmentation and keypoint models, as torch ops",
    packages=packages,
    package_dir={"fastops.models": "models"},
    ext_modules=[] if os.environ.get("FASTOPS_NO_EXT") == "1" else [ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.14", "torchvision>=0.29"],
)
