// Load-time choice of the CPU kernel variant (see cpu_isa.h). Compiled for the baseline ISA.
#include "cpu_isa.h"

#include <ATen/Version.h>
#include <torch/library.h>

#include <cstdlib>

// Bit mask of the variants this build compiled (setup.py): 1 = DEFAULT, 2 = AVX2, 4 = AVX512.
#ifndef FASTOPS_CPU_ISAS
#define FASTOPS_CPU_ISAS 0
#endif

namespace fastops {

const char* cpu_isa_name(int isa) {
  switch (isa) {
    case 0: return "default";
    case 1: return "avx2";
    case 2: return "avx512";
    default: return "native";  // one compilation with the build's -march (FASTOPS_MARCH), no dispatch
  }
}

int cpu_isa_among(int mask) {
  // torch's own choice (cpuinfo + OS support, lowered by ATEN_CPU_CAPABILITY), so ours never exceeds it.
  static const int allowed = [] {
    const std::string cap = at::get_cpu_capability();
    return cap == "AVX512" ? 2 : cap == "AVX2" ? 1 : 0;
  }();
  int best = 0;
  for (int i = 0; i <= allowed; ++i)
    if (mask & (1 << i)) best = i;
  return best;
}

int cpu_isa() {
  static const int isa = FASTOPS_CPU_ISAS == 0 ? -1 : cpu_isa_among(FASTOPS_CPU_ISAS);
  return isa;
}

namespace {
std::string cpu_isa_str() { return cpu_isa_name(cpu_isa()); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // The CPU kernel variant registered at load time: "default", "avx2", "avx512", or "native" (no dispatch).
  m.def("_cpu_isa() -> str");
}

TORCH_LIBRARY_IMPL(fastops, CompositeExplicitAutograd, m) {
  m.impl("_cpu_isa", &cpu_isa_str);
}

}  // namespace fastops
