// fastops._C: the library definition and the Python module stub.
//
// Every op family adds its schemas with TORCH_LIBRARY_FRAGMENT(fastops, m) at the top of its
// csrc/<op>/<op>_cpu.cpp, and its kernels with TORCH_LIBRARY_IMPL(fastops, CPU|CUDA, m).
// This file only owns the namespace and the module that Python imports to run those initialisers.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <chrono>
#include <mutex>
#include <set>
#include <thread>

TORCH_LIBRARY(fastops, m) {
  // Reports whether the CUDA kernels were compiled into this build (they are registered for the CUDA key).
  m.def("_cuda_compiled() -> bool");
  // Diagnostic for tests/test_threads.py: the number of distinct OS threads that ran a chunk of an
  // at::parallel_for over `n` items (grain 1). It is 1 whatever torch.set_num_threads says when the extension
  // is compiled without OpenMP (ATen's parallel_for is an inline `#pragma omp parallel`, compiled into our .so).
  m.def("_parallel_threads_seen(int n) -> int");
}

namespace {
bool cuda_compiled() { return FASTOPS_WITH_CUDA != 0; }

int64_t parallel_threads_seen(int64_t n) {
  TORCH_CHECK(n >= 1 && n <= (1 << 20), "_parallel_threads_seen: n must be in [1, 2^20], got ", n);
  std::mutex mu;
  std::set<std::thread::id> seen;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    // Each chunk runs on the thread ATen hands it to; a short spin keeps one thread from taking every chunk
    // under a dynamic schedule.
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
    while (std::chrono::steady_clock::now() < until) {
    }
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(seen.size());
}
}  // namespace

TORCH_LIBRARY_IMPL(fastops, CompositeExplicitAutograd, m) {
  m.impl("_cuda_compiled", &cuda_compiled);
  m.impl("_parallel_threads_seen", &parallel_threads_seen);
}

extern "C" {
// No pybind11: importing fastops._C only has to run the static TORCH_LIBRARY initialisers above and in
// every op's files.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
