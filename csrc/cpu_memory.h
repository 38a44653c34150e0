// Host memory for large fresh CPU outputs (shared by the CPU kernel files; inline only, see CONTRIBUTING's ISA
// rule). On these VMs a first-touch page fault costs more than the kernel's write of the page, and a zero pass
// over a gradient larger than the caches streams it through DRAM once more before the kernel touches it.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>

namespace fastops {
namespace cpu_memory {

// Asks for transparent huge pages on the whole 2 MB pages of [ptr, ptr + n) before their first touch, so the
// kernel faults them in 2 MB at a time. Advice only: errors are ignored; small blocks are left alone.
inline void advise_huge_pages(void* ptr, size_t n) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (n < 4 * kHuge) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t lo = (a + kHuge - 1) & ~(kHuge - 1), hi = (a + n) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)ptr, (void)n;
#endif
}

inline void advise_huge_pages(const at::Tensor& t) { advise_huge_pages(t.data_ptr(), t.nbytes()); }

struct MmapBlock {
  void* ptr;
  size_t bytes;
};

inline void free_mmap_block(void* ctx) {
  auto* b = static_cast<MmapBlock*>(ctx);
  munmap(b->ptr, b->bytes);
  delete b;
}

// A zero-filled tensor of `sizes` in `format` (Contiguous or ChannelsLast), without a zero pass when it is
// large (>= min_mmap_bytes): fresh anonymous mmap, whose pages the OS supplies zeroed at their first touch (by the
// kernel that fills the tensor, while the page is in cache), with huge-page advice when `huge_pages`. Pages a
// kernel never writes are never touched (no RSS): for sparse writes (the masks' boxes) pass huge_pages = false,
// or one written byte would fault in 2 MB. Small tensors: at::empty + zero_(). The storage stays resizable
// through the ordinary CPU allocator. `sizes` were checked by the caller (no overflow of the product).
// (calloc is not enough: glibc serves blocks below its dynamic mmap threshold, up to 32 MB, from the heap and
// memsets them.)
inline at::Tensor zeros_fresh(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format,
                              size_t min_mmap_bytes = size_t(8) << 20, bool huge_pages = true) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (nbytes < min_mmap_bytes) return at::empty(sizes, options.memory_format(format)).zero_();
  void* ptr = mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(ptr != MAP_FAILED, "fastops: cannot map ", nbytes, " bytes for a tensor of ", sizes,
              " elements (out of memory)");
  if (huge_pages) advise_huge_pages(ptr, nbytes);
  auto* ctx = new MmapBlock{ptr, nbytes};
  c10::DataPtr data(ptr, ctx, &free_mmap_block, at::Device(at::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), c10::GetCPUAllocator(),
                       /*resizable=*/true);
  // Strides of `format` (what at::empty would give), then the storage swapped in.
  const at::Tensor meta = at::empty(sizes, options.device(at::kMeta).memory_format(format));
  return at::empty({0}, options).set_(storage, 0, sizes, meta.strides());
}

// Whether t's memory is a zeros_fresh mmap block (its untouched pages are still the OS's zero pages).
inline bool is_fresh_mapping(const at::Tensor& t) {
  return t.storage().data_ptr().get_deleter() == &free_mmap_block;
}


// Faults in the pages of a zeros_fresh block before a multi-threaded kernel writes it, each thread its own run of
// whole 2 MB chunks. Without this, threads that write interleaved parts of the block (a tile of every channel
// plane, a channel block of every RoI) fault the same huge page at once and each clears it: measured, 2 threads
// were 1.4-3x slower than 1 on flow_warp's 58 MB output. Writes zeros over zeros: the contents do not change.
inline void prefault_parallel(const at::Tensor& t) {
  if (!is_fresh_mapping(t) || at::get_num_threads() < 2) return;
  constexpr int64_t kChunk = int64_t(2) << 20, kPage = 4096;
  char* base = static_cast<char*>(t.storage().data_ptr().get());
  const int64_t n = static_cast<int64_t>(t.storage().nbytes());
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t o = c0 * kChunk; o < std::min(n, c1 * kChunk); o += kPage) {
      reinterpret_cast<volatile char*>(base)[o] = 0;
    }
  });
}

}  // namespace cpu_memory
}  // namespace fastops
