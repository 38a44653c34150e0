// Per-ISA compilation of the CPU kernels, chosen at load time (as ATen does for its own CPU kernels).
//
// A portable build (the default) compiles every csrc/<family>/<family>_cpu.cpp once per CPU capability —
// DEFAULT (baseline x86-64), AVX2 (-mavx2 -mfma -mf16c) and, for the files in setup.py's AVX512_KERNELS, AVX512 —
// through generated wrapper sources (build/isa/<isa>/...) that define FASTOPS_CPU_ISA (this copy's variant) and
// FASTOPS_FILE_ISAS (the variants compiled of this file) and include this header before the kernel file. Here
// TORCH_LIBRARY_IMPL is redefined so that each copy registers its kernels only if its capability is the one selected
// for its file at load time (fastops::cpu_isa_among(FASTOPS_FILE_ISAS): the best variant of the file that
// at::get_cpu_capability() allows, so ATEN_CPU_CAPABILITY=default|avx2|avx512 selects ours too), and
// TORCH_LIBRARY_FRAGMENT (schemas) is kept only in the DEFAULT copy.
//
// Rules for kernel files (nothing to write for them): keep kernels and helpers in an anonymous namespace or
// `static` (each ISA copy then has its own), and no TORCH_LIBRARY(...) in a _cpu.cpp file. Code shared with
// other files (headers, <family>.cpp) is compiled for the baseline; the linker keeps the baseline copy of any
// inline function that is emitted out of line (the baseline objects come first on the link line).
#pragma once

#include <string>

namespace fastops {
// The widest capability whose kernels are registered: 0 = DEFAULT, 1 = AVX2, 2 = AVX512 (-1 in a non-dispatching
// build). A file without a copy for it registers its widest one below (cpu_isa_among).
int cpu_isa();
// The best of the variants in `mask` (bit i = capability i) that torch's CPU capability allows.
int cpu_isa_among(int mask);
const char* cpu_isa_name(int isa);
}  // namespace fastops

#ifdef FASTOPS_CPU_ISA
#include <torch/library.h>

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, k, m) FASTOPS_ISA_LIBRARY_IMPL_(ns, k, m, C10_UID)
#define FASTOPS_ISA_LIBRARY_IMPL_(ns, k, m, uid)                                                     \
  static void C10_CONCATENATE(fastops_isa_impl_##k##_, uid)(torch::Library&);                        \
  static void C10_CONCATENATE(fastops_isa_gate_##k##_, uid)(torch::Library & lib) {                  \
    if (::fastops::cpu_isa_among(FASTOPS_FILE_ISAS) == FASTOPS_CPU_ISA)                              \
      C10_CONCATENATE(fastops_isa_impl_##k##_, uid)(lib);                                            \
  }                                                                                                  \
  static const torch::detail::TorchLibraryInit C10_CONCATENATE(fastops_isa_init_##k##_, uid)(        \
      torch::Library::IMPL, &C10_CONCATENATE(fastops_isa_gate_##k##_, uid), C10_STRINGIZE(ns),       \
      std::make_optional(c10::DispatchKey::k), __FILE__, __LINE__);                                  \
  static void C10_CONCATENATE(fastops_isa_impl_##k##_, uid)(torch::Library & m)

#if FASTOPS_CPU_ISA != 0
#undef TORCH_LIBRARY_FRAGMENT
#define TORCH_LIBRARY_FRAGMENT(ns, m) FASTOPS_ISA_NO_FRAGMENT_(m, C10_UID)
#define FASTOPS_ISA_NO_FRAGMENT_(m, uid) \
  [[maybe_unused]] static void C10_CONCATENATE(fastops_isa_unused_fragment_, uid)(torch::Library & m)
#endif
#endif  // FASTOPS_CPU_ISA
