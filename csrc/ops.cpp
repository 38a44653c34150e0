// fastops._C: the library definition and the Python module stub.
//
// Every op family adds its schemas with TORCH_LIBRARY_FRAGMENT(fastops, m) at the top of its
// csrc/<op>/<op>_cpu.cpp, and its kernels with TORCH_LIBRARY_IMPL(fastops, CPU|CUDA, m).
// This file only owns the namespace and the module that Python imports to run those initialisers.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fastops, m) {
  // Reports whether the CUDA kernels were compiled into this build (they are registered for the CUDA key).
  m.def("_cuda_compiled() -> bool");
}

namespace {
bool cuda_compiled() { return FASTOPS_WITH_CUDA != 0; }
}  // namespace

TORCH_LIBRARY_IMPL(fastops, CompositeExplicitAutograd, m) {
  m.impl("_cuda_compiled", &cuda_compiled);
}

extern "C" {
// No pybind11: importing fastops._C only has to run the static TORCH_LIBRARY initialisers above and in
// every op's files.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
