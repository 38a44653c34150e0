"""Shared benchmark fixtures: thread pinning and the side-by-side convention.

Each comparison is a test parametrised by `threads` (1, 2) and by `side` ("anchor", "fastops"), `side`
innermost so the two run back to back; `benchutil.record(...)` tags the result for
tools/speedup_table.py.
"""
import pytest
import torch

THREADS = (1, 2)
SIDES = ("anchor", "fastops")


@pytest.fixture(params=THREADS, ids=lambda n: f"t{n}")
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)



def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved with every run (.benchmarks/, build/bench.json): which build and environment produced the figures."""
    import os

    import fastops

    ops = torch.ops.fastops
    machine_info["fastops"] = {
        "version": fastops.__version__,
        "cpu_isa": ops._cpu_isa() if hasattr(ops, "_cpu_isa") else "unknown",
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
    }


def pytest_report_header(config):
    ops = torch.ops.fastops
    isa = ops._cpu_isa() if hasattr(ops, "_cpu_isa") else "unknown"
    return (f"fastops CPU kernels: up to {isa} (avx512 copies only for setup.py's AVX512_KERNELS, avx2 elsewhere); "
            f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
