"""Build fastops._C: the C++ CPU kernels always, the CUDA kernels when a toolkit and a CUDA torch are present.

Environment:
  FASTOPS_CUDA=0/1        force the CUDA kernels off/on (default: on when CUDA_HOME has nvcc and torch.version.cuda)
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0")
  FASTOPS_MARCH           "portable" (the default, or ""): baseline x86-64 for every file, plus each CPU kernel
                          file compiled once more per ISA and chosen at load time (a wheel runs on any x86-64);
                          "native" or any -march value: every file compiled once for that CPU, no dispatch
  FASTOPS_CPU_ISAS        ISA variants of a portable build (default "default,avx2,avx512"; avx512 copies only of
                          the kernel files in AVX512_KERNELS below)
  FASTOPS_SANITIZE=1      ASan + UBSan instrumented CPU build (tools/sanitize.py builds it out of place)
  MAX_JOBS                parallel compile jobs (ninja)
  FASTOPS_NO_EXT=1        package only, no extension (make's editable install: `make build` compiles in place)
"""
import glob
import os
import platform
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
sanitize = os.environ.get("FASTOPS_SANITIZE", "0") not in ("0", "")
cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True)) if with_cuda else []
all_cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
kernel_cpp = [f for f in all_cpp if f.endswith("_cpu.cpp")]  # csrc/<family>/<family>_cpu.cpp: the CPU kernels
neutral_cpp = [f for f in all_cpp if f not in kernel_cpp]

# CPU instruction sets. Portable build (FASTOPS_MARCH=portable or empty): everything is compiled for baseline
# x86-64, and each CPU kernel file once more per wider ISA through a generated wrapper (build/isa/<isa>/...) that
# sets `#pragma GCC target` and FASTOPS_CPU_ISA; csrc/cpu_isa.h registers only the variant chosen at load time
# (the best one at::get_cpu_capability() allows), as ATen does for its own kernels. This is the default for
# every build (in place, `pip install`, `pip wheel`, sdist), so no build makes code the next CPU cannot run.
# FASTOPS_MARCH=native (or any -march value) compiles every file once for that CPU instead, without dispatch:
# a build for the machine it was made on only.
march = os.environ.get("FASTOPS_MARCH", "portable")
march = "" if march == "portable" else march
# ISA -> (FASTOPS_CPU_ISA level, `#pragma GCC target` string, feature macros). In C++, g++'s pragma enables the
# instructions but does not define __AVX2__ & co. (checked with gcc 12), so the wrapper defines what `-mavx2 -mfma
# -mf16c` (resp. the AVX-512 flags) would: the kernels' `#if defined(__AVX2__)` paths are compiled in the copy.
_AVX2_MACROS = ("__AVX__", "__AVX2__", "__FMA__", "__F16C__", "__SSE3__", "__SSSE3__", "__SSE4_1__", "__SSE4_2__",
                "__POPCNT__")
ISA_TARGETS = {"avx2": (1, "avx2,fma,f16c", _AVX2_MACROS),
               "avx512": (2, "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
                          _AVX2_MACROS + ("__AVX512F__", "__AVX512BW__", "__AVX512VL__", "__AVX512DQ__"))}
x86 = platform.machine() in ("x86_64", "AMD64")
dispatch = not march and not sanitize and x86
isas = [i.strip() for i in os.environ.get("FASTOPS_CPU_ISAS", "default,avx2,avx512").split(",") if i.strip()]
# The kernel files with an AVX-512 copy: those measured faster with it on an AVX-512 Xeon (CONTRIBUTING.md, "CPU
# instruction sets": the same build switched by ATEN_CPU_CAPABILITY, fastops medians avx2 / avx512). The others lose
# with it (nms, heatmap_argmax, keypoint decoding: 10-40%) or gain nothing (roi_align NCHW as a whole: its AVX-512
# forward step is a set of target("avx512...") functions in its AVX2 copy instead), and keep their AVX2 copy on an
# AVX-512 CPU (csrc/cpu_isa.h: each file registers the best variant it has).
AVX512_KERNELS = {"decode/soft_argmax_cpu.cpp", "flow_warp/flow_warp_cpu.cpp", "flow_warp/flow_warp_backward_cpu.cpp",
                  "panoptic/panoptic_cpu.cpp", "masks/masks_cpu.cpp", "densepose/densepose_cpu.cpp"}
if dispatch and (set(isas) - {"default"} - set(ISA_TARGETS) or "default" not in isas):
    raise SystemExit(f"FASTOPS_CPU_ISAS must list default plus any of {sorted(ISA_TARGETS)}, got {isas}")


def _write_if_changed(path, text):
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _file_isas(rel):
    """The variants compiled of one kernel file (csrc-relative path)."""
    return [i for i in isas if i != "avx512" or rel in AVX512_KERNELS]


def _isa_mask(names):
    return sum(1 << (0 if i == "default" else ISA_TARGETS[i][0]) for i in names)


def _isa_wrappers(isa):
    """One generated source per kernel file that has this variant: `#include`s it with FASTOPS_CPU_ISA and
    FASTOPS_FILE_ISAS (the file's variants) set (see csrc/cpu_isa.h)."""
    out = []
    for src in kernel_cpp:
        rel = os.path.relpath(src, "csrc")
        if isa not in _file_isas(rel):
            continue
        level, target, macros = (0, None, ()) if isa == "default" else ISA_TARGETS[isa]
        text = (f"// Generated by setup.py: {src} compiled for the {isa} CPU capability (csrc/cpu_isa.h).\n"
                + (f'#pragma GCC target("{target}")\n' if target else "")
                + "".join(f"#ifndef {m}\n#define {m} 1\n#endif\n" for m in macros)
                # gcc 12's avx512fintrin.h warns about its own _mm512_undefined_* temporaries (a false positive)
                + ('#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"\n' if isa == "avx512" else "")
                + ("#if !(defined(__AVX2__) && defined(__FMA__))\n#error the AVX2 copy would compile its vector paths "
                   "as scalar code\n#endif\n" if level else "")
                + f"#define FASTOPS_CPU_ISA {level}\n#define FASTOPS_FILE_ISAS {_isa_mask(_file_isas(rel))}\n"
                + f"#include \"cpu_isa.h\"\n#include \"{rel}\"\n")
        path = os.path.join("build", "isa", isa, rel)
        _write_if_changed(os.path.join(here, path), text)
        out.append(path)
    return out


# -fopenmp compiles ATen's at::parallel_for (an inline `#pragma omp parallel`) into a real parallel region.
# It is a compile flag only: the GOMP_* symbols then resolve to the OpenMP runtime torch itself loads
# (libtorch_cpu's libgomp), so the extension follows torch.set_num_threads and no second runtime is loaded.
cxx_flags = ["-O3", "-g0", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-fopenmp"]
if march:
    cxx_flags.append(f"-march={march}")
elif x86:
    cxx_flags += ["-march=x86-64", "-mtune=generic"]  # other architectures: the compiler's default target
define_macros = [("FASTOPS_WITH_CUDA", "1" if with_cuda else "0")]
if dispatch:
    # Link order matters: baseline objects first (_BuildExt below), so the linker keeps their copy of any inline
    # function that is emitted out of line in several objects (a wider-ISA copy must never serve baseline code).
    cpp_sources = neutral_cpp + _isa_wrappers("default")
    wide_sources = [w for isa in isas if isa != "default" for w in _isa_wrappers(isa)]
    define_macros.append(("FASTOPS_CPU_ISAS", str(_isa_mask(isas))))
else:
    cpp_sources, wide_sources = all_cpp, []
link_flags = []
if sanitize:
    # -O1 keeps the reports' stacks readable; no recovery: the first UBSan report aborts (tools/sanitize.py).
    # Python's own CFLAGS (sysconfig, put first on the compile line) carry -fwrapv, which defines signed overflow
    # as wrapping and so hides it from UBSan; -fno-wrapv comes later on the line and wins.
    checks = "address,undefined,float-cast-overflow,signed-integer-overflow"
    san = [f"-fsanitize={checks}", "-fno-sanitize-recover=undefined,float-cast-overflow,signed-integer-overflow"]
    cxx_flags = ([f for f in cxx_flags if not f.startswith("-O")] + san +
                 ["-fno-wrapv", "-fno-omit-frame-pointer", "-O1", "-g"])
    link_flags += san
nvcc_flags = ["-O3", "-Xptxas", "-v", "-lineinfo", "--expt-relaxed-constexpr"]

ext_cls = CUDAExtension if with_cuda else CppExtension
ext = ext_cls(
    name="fastops._C",
    sources=cpp_sources + cuda_sources + wide_sources,
    include_dirs=[os.path.join(here, "csrc")],
    define_macros=define_macros,
    extra_link_args=link_flags,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
)

def _isa_rank(obj):
    """Link position of an object: baseline code (neutral files, CUDA hosts, the default kernel copies) first,
    then each wider ISA in turn."""
    parts = obj.replace(os.sep, "/").split("/isa/")
    if len(parts) == 1:
        return 0
    isa = parts[1].split("/")[0]
    return 0 if isa == "default" else 1 + ISA_TARGETS[isa][0]


class _BuildExt(BuildExtension.with_options(use_ninja=True)):
    """BuildExtension that links the baseline objects first. An inline function emitted out of line in several
    objects (torch's header templates, say) is kept from the first object on the link line, and setuptools sorts
    the sources (build/isa/avx2/... before build/isa/default/... and csrc/...): without this, the AVX2 copy of
    such a function would serve the baseline code too and crash a CPU without AVX2 (tests/test_build.py)."""

    def build_extensions(self):
        link = self.compiler.link_shared_object

        def link_baseline_first(objects, *args, **kwargs):
            return link(sorted(objects, key=_isa_rank), *args, **kwargs)

        self.compiler.link_shared_object = link_baseline_first
        super().build_extensions()


# models/ installs as fastops.models; docs/ (the pages the docstrings point to) as fastops/docs/*.md in the wheel.
packages = find_packages(include=["fastops", "fastops.*"]) + ["fastops.models", "fastops.docs"]

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
    package_dir={"fastops.models": "models", "fastops.docs": "docs"},
    package_data={"fastops.docs": ["*.md"]},
    ext_modules=[] if os.environ.get("FASTOPS_NO_EXT") == "1" else [ext],
    cmdclass={"build_ext": _BuildExt},
    python_requires=">=3.10",
    install_requires=["torch>=2.14", "torchvision>=0.29"],
)
