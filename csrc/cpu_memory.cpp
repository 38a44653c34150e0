// The large-block cache behind cpu_memory::empty_cached (see cpu_memory.h). Compiled once, for the baseline ISA.
//
// Why a cache: a large CPU tensor from the ordinary allocator is a fresh mmap (glibc's mmap threshold tops out at
// 32 MB), so every call of a kernel with a large output pays one first-touch page fault per page, and the pages go
// back to the OS when the tensor dies. On these VMs (free-page reporting to the host) that round trip dominates
// kernels that write a large gradient once per training step: measured, the DensePose chart-loss backward spent
// more time in page faults than in its own writes, and more at 2 threads than at 1. A block kept mapped and handed
// out again for the same size costs one parallel write pass instead, which the kernel fuses with its own writes.
#include "cpu_memory.h"

#include <torch/library.h>

#include <sys/mman.h>

#include <cstdlib>
#include <list>
#include <mutex>

namespace fastops {
namespace cpu_memory {
namespace {

constexpr size_t kHuge = size_t(2) << 20;

struct BlockCache {
  std::mutex mu;
  std::list<MmapBlock> free_blocks;  // most recently released first; kHuge-aligned, bytes a multiple of kHuge
  size_t cached_bytes = 0;
  size_t cap_bytes = 0;
};

size_t cap_from_env() {
  const char* s = std::getenv("FASTOPS_CPU_CACHE_MB");
  if (s == nullptr || *s == '\0') return size_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(s, &end, 10);
  return (end == s || mb <= 0) ? 0 : static_cast<size_t>(mb) << 20;
}

// Never destroyed: tensors may die during static destruction at exit.
BlockCache& cache() {
  static BlockCache* c = [] {
    auto* b = new BlockCache;
    b->cap_bytes = cap_from_env();
    return b;
  }();
  return *c;
}

// A fresh 2 MB-aligned anonymous mapping of `bytes` (a multiple of kHuge) with huge-page advice, so every 2 MB
// chunk can be one huge page; nullptr when out of memory.
void* map_aligned(size_t bytes) {
  void* raw = mmap(nullptr, bytes + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t a = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t lo = (a + kHuge - 1) & ~(kHuge - 1);
  if (lo > a) munmap(raw, lo - a);
  const uintptr_t end = a + bytes + kHuge;
  if (end > lo + bytes) munmap(reinterpret_cast<void*>(lo + bytes), end - (lo + bytes));
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(lo), bytes, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(lo);
}

void release_block(void* ctx) {
  auto* b = static_cast<MmapBlock*>(ctx);
  const MmapBlock blk = *b;
  delete b;
  std::list<MmapBlock> evicted;
  {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (blk.bytes <= c.cap_bytes) {
      c.free_blocks.push_front(blk);
      c.cached_bytes += blk.bytes;
      // Least recently released first out, until the cache fits its cap again.
      while (c.cached_bytes > c.cap_bytes) {
        c.cached_bytes -= c.free_blocks.back().bytes;
        evicted.splice(evicted.end(), c.free_blocks, std::prev(c.free_blocks.end()));
      }
    } else {
      evicted.push_back(blk);
    }
  }
  for (const MmapBlock& e : evicted) munmap(e.ptr, e.bytes);
}

}  // namespace

at::Tensor empty_cached(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat format, bool* zeroed) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (nbytes < kCachedMinBytes) {
    if (zeroed != nullptr) *zeroed = false;
    return at::empty(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU).memory_format(format));
  }
  const size_t bytes = (nbytes + kHuge - 1) & ~(kHuge - 1);
  void* ptr = nullptr;
  {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto it = c.free_blocks.begin(); it != c.free_blocks.end(); ++it) {
      if (it->bytes == bytes) {
        ptr = it->ptr;
        c.cached_bytes -= bytes;
        c.free_blocks.erase(it);
        break;
      }
    }
  }
  const bool fresh = ptr == nullptr;
  if (fresh) ptr = map_aligned(bytes);
  TORCH_CHECK(ptr != nullptr, "fastops: cannot map ", bytes, " bytes for a tensor of ", sizes,
              " elements (out of memory)");
  if (zeroed != nullptr) *zeroed = fresh;
  return tensor_on_mapping(ptr, new MmapBlock{ptr, bytes}, &release_block, nbytes, sizes, dtype, format);
}

int64_t release_cached_blocks() {
  std::list<MmapBlock> all;
  size_t freed = 0;
  {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    all.swap(c.free_blocks);
    freed = c.cached_bytes;
    c.cached_bytes = 0;
  }
  for (const MmapBlock& e : all) munmap(e.ptr, e.bytes);
  return static_cast<int64_t>(freed);
}

int64_t cached_block_bytes() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return static_cast<int64_t>(c.cached_bytes);
}

}  // namespace cpu_memory
}  // namespace fastops

namespace {
int64_t cpu_cache_release() { return fastops::cpu_memory::release_cached_blocks(); }
int64_t cpu_cache_bytes() { return fastops::cpu_memory::cached_block_bytes(); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // fastops.empty_cpu_cache(): unmaps the cached large blocks (cpu_memory.h), returns the bytes released.
  m.def("_cpu_cache_release() -> int");
  m.def("_cpu_cache_bytes() -> int");
}

TORCH_LIBRARY_IMPL(fastops, CompositeExplicitAutograd, m) {
  m.impl("_cpu_cache_release", &cpu_cache_release);
  m.impl("_cpu_cache_bytes", &cpu_cache_bytes);
}
