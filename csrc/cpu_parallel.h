// Dynamic scheduling for CPU kernels whose work items differ in cost (boxes of 32-400 px, image rows covered by
// many or few boxes). at::parallel_for splits a range statically into one contiguous block per thread, so the
// thread with the heavier half sets the time (paste_iuv's upper image half held 64% of the work: 1.10x at 2
// threads); here each worker takes the next item from a shared counter. Items write disjoint outputs, so results
// do not depend on the thread count or the order items are taken in.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace fastops {
// Anonymous: each per-ISA copy of a kernel file keeps its own (csrc/cpu_isa.h).
namespace {

// f(item, state) for item in [0, n), items taken in increasing order by min(n, at::get_num_threads()) workers;
// make_state() builds one per-worker scratch state. Callers put the costliest items first where they know them.
template <typename MakeState, typename F>
void dynamic_for(int64_t n, MakeState make_state, F f) {
  if (n <= 0) return;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
    auto state = make_state();
    for (int64_t w = b; w < e; ++w)
      for (int64_t k = next.fetch_add(1); k < n; k = next.fetch_add(1)) f(k, state);
  });
}

}  // namespace
}  // namespace fastops
