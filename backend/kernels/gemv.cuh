// Decode-step projections for a few rows (src/model/gemv.rs holds the CPU
// reference and the shape checks; included by fused.cu, which defines to_f,
// from_f and block_reduce).
//
// y[r, o] = epilogue(Σ_k x'[r, k] · W[o, k]) for r < m ≤ GEMV_MAX_ROWS rows,
// with W [n, k] in the HF layout (out × in). One warp per output feature: it
// streams that feature's weight row once, 16 bytes a lane a load, and applies
// it to every input row, so the weights are read once whatever m is. Optional
// fusions, as bit flags in `mode`:
//   GEMV_NORM      x' = rms_norm(x) · nw (eps), rounded to T as the composed
//                  ops round it; each block recomputes its rows' 1/rms.
//   GEMV_RESIDUAL  y = res + T(Σ) (the residual add after o / down).
//   GEMV_SWIGLU    W holds n gate rows then n up rows: y = silu(T(g)) · T(u).
// k is a multiple of 8 and x, W, nw start 16-byte aligned (the caller checks).
// Launch: GEMV_WARPS warps a block, ceil(n / GEMV_WARPS) blocks.

#define GEMV_MAX_ROWS 8
#define GEMV_WARPS 4
#define GEMV_NORM 1
#define GEMV_RESIDUAL 2
#define GEMV_SWIGLU 4

// Eight consecutive elements as f32: one 16-byte load for 2-byte types, two for
// f32, through the read-only data cache (nothing the kernel reads is written
// during it).
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* out) {
  uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int j = 0; j < 8; j++) out[j] = to_f(h[j]);
}
template <>
__device__ __forceinline__ void load8<float>(const float* p, float* out) {
  float4 a = __ldg(reinterpret_cast<const float4*>(p));
  float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// The value as the model dtype would hold it.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f(from_f<T>(v)); }

template <typename T>
__device__ void gemv(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ nw,
                     const T* __restrict__ res, T* __restrict__ y, int m, int n, int k, float eps, int mode) {
  __shared__ float rstd[GEMV_MAX_ROWS];
  __shared__ float red[32];
  const bool norm = mode & GEMV_NORM, swiglu = mode & GEMV_SWIGLU;
  if (norm) {
    for (int r = 0; r < m; r++) {
      float ss = 0.0f;
      for (int i = threadIdx.x; i < k; i += blockDim.x) {
        float v = to_f(x[(int64_t)r * k + i]);
        ss += v * v;
      }
      ss = block_reduce(ss, red, 0);
      if (threadIdx.x == 0) rstd[r] = rsqrtf(ss / k + eps);
    }
    __syncthreads();
  }
  const int lane = threadIdx.x % 32;
  const int o = blockIdx.x * GEMV_WARPS + threadIdx.x / 32;  // this warp's output feature
  if (o >= n) return;  // a whole warp: no barrier or shuffle follows for it
  const T* wg = w + (int64_t)o * k;
  const T* wu = w + (int64_t)(n + o) * k;  // read only with GEMV_SWIGLU
  float acc[GEMV_MAX_ROWS], accu[GEMV_MAX_ROWS];
#pragma unroll
  for (int r = 0; r < GEMV_MAX_ROWS; r++) acc[r] = 0.0f, accu[r] = 0.0f;
#pragma unroll 2
  for (int i = lane * 8; i < k; i += 32 * 8) {
    float wv[8], uv[8], nv[8];
    load8(wg + i, wv);
    if (swiglu) load8(wu + i, uv);
    if (norm) load8(nw + i, nv);
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; r++) {
      if (r >= m) break;
      float xv[8];
      load8(x + (int64_t)r * k + i, xv);
      if (norm) {
#pragma unroll
        for (int j = 0; j < 8; j++) xv[j] = round_to<T>(xv[j] * rstd[r] * nv[j]);
      }
#pragma unroll
      for (int j = 0; j < 8; j++) acc[r] += xv[j] * wv[j];
      if (swiglu) {
#pragma unroll
        for (int j = 0; j < 8; j++) accu[r] += xv[j] * uv[j];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < GEMV_MAX_ROWS; r++) {
    if (r >= m) break;
    for (int s = 16; s > 0; s >>= 1) {
      acc[r] += __shfl_xor_sync(0xffffffff, acc[r], s);
      if (swiglu) accu[r] += __shfl_xor_sync(0xffffffff, accu[r], s);
    }
    if (lane == 0) {
      float v = round_to<T>(acc[r]);
      if (swiglu) v = v / (1.0f + __expf(-v)) * round_to<T>(accu[r]);
      if (mode & GEMV_RESIDUAL) v += to_f(res[(int64_t)r * n + o]);
      y[(int64_t)r * n + o] = from_f<T>(v);
    }
  }
}
