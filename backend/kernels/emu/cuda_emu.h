// A small CPU emulator of the CUDA features that kernels/fused.cu uses, so that
// its kernels run (and are checked) on a machine without a GPU. It is a test
// tool (see check.cpp and backend/tests/kernels_emu.rs), not part of the product.
//
// Model: one OS thread per CUDA thread of a block; the threads walk the grid's
// blocks in order, all together, with a barrier between blocks, so a block's
// __shared__ memory (plain statics here) belongs to one block at a time.
// __syncthreads is a barrier of the block's threads; __shfl_xor_sync exchanges
// through a per-warp buffer between two barriers of the warp's threads. Built
// with AddressSanitizer, out-of-bounds reads and writes stop the run; built with
// ThreadSanitizer, unsynchronised accesses to shared memory are reported.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dyn_smem)

namespace emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
constexpr size_t DYN_SMEM_BYTES = 48 * 1024;  // the default limit of a launch
alignas(16) inline unsigned char dyn_smem[DYN_SMEM_BYTES];
inline float xchg[1024];
inline std::unique_ptr<std::barrier<>> block_bar;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
inline std::atomic<int> partial_warp_shuffles{0};

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emulator: %s\n", what);
  std::exit(2);
}
}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim

inline void __syncthreads() { emu::block_bar->arrive_and_wait(); }

// Full-mask shuffle of a 32-bit value: every lane of the warp must call it (as
// on the GPU).
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  unsigned t = threadIdx.x, w = t / 32, lane = t % 32;
  if (mask != 0xffffffffu || (w + 1) * 32 > blockDim.x) emu::partial_warp_shuffles++;
  std::memcpy(&emu::xchg[t], &v, 4);
  emu::warp_bars[w]->arrive_and_wait();
  unsigned src = w * 32 + (lane ^ (unsigned)lane_mask);
  T r = v;
  if (src < blockDim.x) std::memcpy(&r, &emu::xchg[src], 4);
  emu::warp_bars[w]->arrive_and_wait();
  return r;
}

// The vector types of 16-byte loads (aligned as on the GPU: UBSan reports a
// misaligned one).
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

// A load through the read-only data cache: a plain load here.
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// bf16: the top 16 bits of an f32, rounded to nearest even (as __float2bfloat16).
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  if (std::isnan(f)) return {0x7fc0};
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}

// f16 through the compiler's IEEE half type (round to nearest even).
struct __half {
  _Float16 v;
};
inline float __half2float(__half h) { return float(h.v); }
inline __half __float2half(float f) { return {_Float16(f)}; }

namespace emu {
// Runs kernel k over a 1-D grid of 1-D blocks with `smem` bytes of dynamic
// shared memory (filled with NaN first, so reads before writes show).
template <typename... P, typename... A>
void launch(dim3 grid, dim3 block, size_t smem, void (*k)(P...), A... args) {
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1) fail("only 1-D launches are emulated");
  if (block.x == 0 || block.x > 1024) fail("block size out of range (1..1024)");
  if (grid.x == 0) fail("empty grid");
  if (smem > DYN_SMEM_BYTES) fail("dynamic shared memory above 48 KiB");
  std::memset(dyn_smem, 0xff, sizeof dyn_smem);
  grid_dim = grid;
  block_dim = block;
  unsigned n = block.x;
  block_bar = std::make_unique<std::barrier<>>(n);
  warp_bars.clear();
  for (unsigned w = 0; w * 32 < n; w++) warp_bars.push_back(std::make_unique<std::barrier<>>(std::min(32u, n - w * 32)));
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (unsigned t = 0; t < n; t++) {
    threads.emplace_back([=] {
      thread_idx = {t, 1, 1};
      for (unsigned b = 0; b < grid.x; b++) {
        block_idx = {b, 1, 1};
        k(args...);
        block_bar->arrive_and_wait();
      }
    });
  }
  for (auto& t : threads) t.join();
}
}  // namespace emu
