// Host memory for large fresh CPU outputs (shared by the CPU kernel files; inline only, see CONTRIBUTING's ISA
// rule, except the block cache, compiled once in cpu_memory.cpp). On these VMs a first-touch page fault costs
// more than the kernel's write of the page, and a zero pass over a gradient larger than the caches streams it
// through DRAM once more before the kernel touches it.
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
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

// A CPU tensor of `sizes` in `format` (the strides at::empty would give) on `nbytes` at `ptr`, which `deleter(ctx)`
// releases when the storage dies. The storage stays resizable through the ordinary CPU allocator.
inline at::Tensor tensor_on_mapping(void* ptr, MmapBlock* ctx, void (*deleter)(void*), size_t nbytes,
                                    at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  c10::DataPtr data(ptr, ctx, deleter, at::Device(at::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), c10::GetCPUAllocator(),
                       /*resizable=*/true);
  const at::Tensor meta = at::empty(sizes, options.device(at::kMeta).memory_format(format));
  return at::empty({0}, options).set_(storage, 0, sizes, meta.strides());
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
  return tensor_on_mapping(ptr, new MmapBlock{ptr, nbytes}, &free_mmap_block, nbytes, sizes, dtype, format);
}

// Whether t's memory is a zeros_fresh mmap block (its untouched pages are still the OS's zero pages).
inline bool is_fresh_mapping(const at::Tensor& t) {
  return t.storage().data_ptr().get_deleter() == &free_mmap_block;
}



// Large-block cache (csrc/cpu_memory.cpp): for kernels that write a large output or gradient on every call, such
// as a training step's backward. Tensors of at least kCachedMinBytes (4 MB) live on 2 MB-aligned, huge-page-advised
// anonymous mappings which, when the tensor dies, go back to a process-wide cache instead of to the OS, and are
// handed out again for a tensor of the same size (rounded up to 2 MB). A first call maps fresh zero pages; later
// calls get a block whose pages are already mapped, so the kernel pays one write pass over memory it owns instead
// of a page fault per page (and, on VMs with free-page reporting, the host's re-supply of the page).
// The cache holds at most FASTOPS_CPU_CACHE_MB (default 1024; 0 disables it) of released blocks, least recently
// released evicted first; fastops.empty_cpu_cache() unmaps them all.
constexpr size_t kCachedMinBytes = size_t(4) << 20;

// Uninitialised tensor of `sizes` in `format` (Contiguous or ChannelsLast); below kCachedMinBytes an ordinary
// at::empty. When `zeroed` is given it is set to whether the memory is known to read as zeros (a fresh mapping):
// a kernel that needs zeros writes them only when it is false, each thread over the part it then fills, while that
// part is in cache. `sizes` were checked by the caller (no overflow of the product).
at::Tensor empty_cached(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format,
                        bool* zeroed = nullptr);

// empty_cached shaped and laid out like t (Contiguous, else ChannelsLast); at::empty_like for other layouts.
inline at::Tensor empty_cached_like(const at::Tensor& t) {
  for (const auto fmt : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
    if (t.is_contiguous(fmt)) return empty_cached(t.sizes(), t.scalar_type(), fmt);
  }
  return at::empty_like(t, at::MemoryFormat::Preserve);
}

// Unmaps every cached block; returns the bytes released.
int64_t release_cached_blocks();
// Bytes held by released blocks waiting for reuse.
int64_t cached_block_bytes();

}  // namespace cpu_memory
}  // namespace fastops
