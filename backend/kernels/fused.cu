// Fused inference kernels for the decoder's decode step (see src/model/fused.rs,
// which holds the CPU reference of each kernel and the launch code).
//
// Every kernel reads and writes the model dtype (f32, bf16 or f16) and computes in
// f32. Shapes are row-major and contiguous unless a stride is passed.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// The dynamic shared memory of a launch (kernels/emu/cuda_emu.h replaces it).
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

// Element d of one head's rotated vector: x is the head's hd values, cs holds
// cos in [0, hd/2) and sin in [hd/2, hd) (HF half-split layout).
template <typename T>
__device__ __forceinline__ float rotated(const T* x, const T* cs, int hd, int d) {
  int half = hd / 2;
  if (d < half) {
    return to_f(x[d]) * to_f(cs[d]) - to_f(x[d + half]) * to_f(cs[half + d]);
  }
  int i = d - half;
  return to_f(x[d]) * to_f(cs[i]) + to_f(x[i]) * to_f(cs[half + i]);
}

// y[r, i] = silu(x[r, i]) * x[r, inter + i];  x: [rows, 2·inter], y: [rows, inter].
template <typename T>
__device__ void silu_mul(const T* x, T* y, int64_t rows, int64_t inter) {
  int64_t n = rows * inter;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = idx / inter, i = idx % inter;
    float g = to_f(x[r * 2 * inter + i]);
    float u = to_f(x[r * 2 * inter + inter + i]);
    y[idx] = from_f<T>(g / (1.0f + __expf(-g)) * u);
  }
}

// Writes the keys (rotated by cs [B, T, hd]: cos | sin) and the values of qkv
// [B, T, width] into kv [2, B, heads, cap, hd] at positions [at, at + T): key
// head h is qkv's head first + h, value head h is first + heads + h. With
// at_dev set, `at` is read from it (a replayed CUDA graph's position), and a
// position that does not fit writes nothing.
template <typename T>
__device__ void cache_write(T* kv, const T* qkv, const T* cs, int b_n, int t_n, int heads, int hd,
                            int width, int first, int cap, int at, const unsigned* at_dev) {
  if (at_dev) at = *at_dev > (unsigned)cap ? cap + 1 : (int)*at_dev;
  if (at < 0 || at + t_n > cap) return;
  int64_t n = 2 * (int64_t)b_n * t_n * heads * hd;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int d = idx % hd;
    int h = (idx / hd) % heads;
    int t = (idx / ((int64_t)hd * heads)) % t_n;
    int64_t b = (idx / ((int64_t)hd * heads * t_n)) % b_n;
    int which = idx / ((int64_t)hd * heads * t_n * b_n);  // 0: key, 1: value
    const T* x = qkv + (b * t_n + t) * width + (int64_t)(first + which * heads + h) * hd;
    float v = which == 0 ? rotated(x, cs + (b * t_n + t) * hd, hd, d) : to_f(x[d]);
    kv[(((which * b_n + b) * heads + h) * cap + at + t) * hd + d] = from_f<T>(v);
  }
}

// Max (is_max != 0) or sum of v over the block; every thread gets the result.
// red: one float per warp. blockDim.x is a multiple of 32.
__device__ float block_reduce(float v, float* red, int is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    float w = __shfl_xor_sync(0xffffffff, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  int warps = blockDim.x / 32;
  __syncthreads();  // earlier readers of red are done
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = red[0];
  for (int i = 1; i < warps; i++) r = is_max ? fmaxf(r, red[i]) : r + red[i];
  return r;
}

#include "gemv.cuh"

// Attention of T new queries over S cached keys, one block per (b, t, head).
// q: heads [0, H) of qkv [B, T, width], rotated by csq [B, T, hd] (scaled by
// 1/√hd); k, v: key/value (b, g, s, d) at b·sb + g·sh + s·hd + d; mask: [B, T, S]
// additive, f32; y: [B, T, H·hd]. Shared memory: (hd + S + blockDim.x) floats.
// blockDim.x is a multiple of hd and of 32.
template <typename T>
__device__ void attend(const T* qkv, const T* csq, const T* k, const T* v, const float* mask, T* y,
                       int t_n, int h_n, int kv_n, int hd, int width, int s_n, int64_t sb, int64_t sh) {
  DYNAMIC_SHARED(float, smem);
  float* q = smem;
  float* p = smem + hd;
  float* red = p + s_n;
  int h = blockIdx.x % h_n;
  int t = (blockIdx.x / h_n) % t_n;
  int64_t b = blockIdx.x / ((int64_t)h_n * t_n);
  int g = h / (h_n / kv_n);
  int64_t row = b * t_n + t;

  const T* x = qkv + row * width + (int64_t)h * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) q[d] = rotated(x, csq + row * hd, hd, d);
  __syncthreads();

  const T* kb = k + b * sb + g * sh;
  const T* vb = v + b * sb + g * sh;
  const float* m = mask + row * s_n;
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < s_n; s += blockDim.x) {
    const T* kr = kb + (int64_t)s * hd;
    float acc = 0.0f;
    for (int d = 0; d < hd; d++) acc += q[d] * to_f(kr[d]);
    acc += m[s];
    p[s] = acc;
    mx = fmaxf(mx, acc);
  }
  mx = block_reduce(mx, red, 1);
  float sum = 0.0f;
  for (int s = threadIdx.x; s < s_n; s += blockDim.x) {
    float e = __expf(p[s] - mx);
    p[s] = e;
    sum += e;
  }
  sum = block_reduce(sum, red, 0);  // also orders the writes of p before the reads below

  int groups = blockDim.x / hd;
  int d = threadIdx.x % hd, gi = threadIdx.x / hd;
  float acc = 0.0f;
  for (int s = gi; s < s_n; s += groups) acc += p[s] * to_f(vb[(int64_t)s * hd + d]);
  __syncthreads();  // every thread has read red in block_reduce
  red[threadIdx.x] = acc;
  __syncthreads();
  if (gi == 0) {
    for (int j = 1; j < groups; j++) acc += red[j * hd + d];
    y[row * h_n * hd + (int64_t)h * hd + d] = from_f<T>(acc / sum);
  }
}

// out[0] = x + a (rounded to T), out[1] = rms_norm(out[0]) · w; one block per
// row of `hidden` values. x, a: [rows, hidden]; out: [2, rows, hidden].
template <typename T>
__device__ void add_rms_norm(const T* x, const T* a, const T* w, T* out, int64_t rows, int hidden, float eps) {
  __shared__ float red[32];
  int64_t row = blockIdx.x;
  const T* xr = x + row * hidden;
  const T* ar = a + row * hidden;
  T* sum = out + row * hidden;
  T* norm = out + (rows + row) * hidden;
  float sq = 0.0f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    T s = from_f<T>(to_f(xr[i]) + to_f(ar[i]));
    sum[i] = s;
    float f = to_f(s);
    sq += f * f;
  }
  sq = block_reduce(sq, red, 0);
  float scale = rsqrtf(sq / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    norm[i] = from_f<T>(to_f(sum[i]) * scale * to_f(w[i]));
  }
}

// The backward of y = rms_norm(x) · w for one row per block: dx = r·g −
// x·r³·mean(g ⊙ x) with g = w ⊙ dy, r = (mean x² + eps)^(−½); out = acc + dx
// (acc read only when has_acc). x, dy, acc, out: [rows, hidden].
template <typename T>
__device__ void rms_norm_backward(const T* x, const T* w, const T* dy, const T* acc, T* out, int hidden,
                                  float eps, int has_acc) {
  __shared__ float red[32];
  int64_t off = (int64_t)blockIdx.x * hidden;
  float sxx = 0.0f, sgx = 0.0f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float xi = to_f(x[off + i]);
    sxx += xi * xi;
    sgx += to_f(w[i]) * to_f(dy[off + i]) * xi;
  }
  sxx = block_reduce(sxx, red, 0);
  sgx = block_reduce(sgx, red, 0);
  float r = rsqrtf(sxx / hidden + eps);
  float c = r * r * r * sgx / hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float d = r * to_f(w[i]) * to_f(dy[off + i]) - to_f(x[off + i]) * c;
    if (has_acc) d += to_f(acc[off + i]);
    out[off + i] = from_f<T>(d);
  }
}

// The backward of act = silu(g) ⊙ u over gu = [g · u] [rows, 2I]: out [rows, 2I]
// = [d ⊙ u ⊙ σ(g)(1 + g(1 − σ(g))) · d ⊙ silu(g)] for d = d_act [rows, I].
template <typename T>
__device__ void swiglu_backward(const T* gu, const T* d_act, T* out, int64_t rows, int64_t inter) {
  int64_t n = rows * inter;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = idx / inter, i = idx % inter;
    float g = to_f(gu[r * 2 * inter + i]);
    float u = to_f(gu[r * 2 * inter + inter + i]);
    float d = to_f(d_act[idx]);
    float sig = 1.0f / (1.0f + __expf(-g));
    out[r * 2 * inter + i] = from_f<T>(d * u * sig * (1.0f + g * (1.0f - sig)));
    out[r * 2 * inter + inter + i] = from_f<T>(d * g * sig);
  }
}

// Block-diagonal scale·[B0; B1; B2] [rows, cols]: member m (rank k_m, 0 when
// absent) owns rows [rs_m, rs_m + o_m) and columns [cs_m, cs_m + k_m), and
// reads b_m [o_m, k_m]; every other element is 0.
template <typename T>
__device__ void block_diag(const T* b0, const T* b1, const T* b2, T* out, int rows, int cols, int rs0,
                           int rs1, int rs2, int o0, int o1, int o2, int cs0, int cs1, int cs2, int k0,
                           int k1, int k2, float scale) {
  int64_t n = (int64_t)rows * cols;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int row = idx / cols, col = idx % cols;
    const T* b = b0;
    int rs = rs0, cs = cs0, k = k0;
    if (row >= rs2 && row < rs2 + o2) { b = b2; rs = rs2; cs = cs2; k = k2; }
    else if (row >= rs1 && row < rs1 + o1) { b = b1; rs = rs1; cs = cs1; k = k1; }
    else if (!(row >= rs0 && row < rs0 + o0)) { k = 0; }
    float v = 0.0f;
    if (k > 0 && col >= cs && col < cs + k) v = to_f(b[(int64_t)(row - rs) * k + (col - cs)]) * scale;
    out[idx] = from_f<T>(v);
  }
}

// The heads of qkv [B, T, (H + 2·KV)·hd] as three contiguous blocks of dst:
// q [B, H, T, hd] rotated by csq, k [B, KV, T, hd] rotated by cs, v [B, KV, T, hd].
template <typename T>
__device__ void split_heads(const T* qkv, const T* cs, const T* csq, T* dst, int b_n, int t_n, int h_n,
                            int kv_n, int hd) {
  int width = (h_n + 2 * kv_n) * hd;
  int64_t n = (int64_t)b_n * t_n * width;
  int64_t q_size = (int64_t)b_n * h_n * t_n * hd, kv_size = (int64_t)b_n * kv_n * t_n * hd;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int part = idx < q_size ? 0 : (idx < q_size + kv_size ? 1 : 2);
    int64_t o = part == 0 ? idx : (part == 1 ? idx - q_size : idx - q_size - kv_size);
    int heads_n = part == 0 ? h_n : kv_n;
    int d = o % hd;
    int t = (o / hd) % t_n;
    int h = (o / ((int64_t)hd * t_n)) % heads_n;
    int64_t b = o / ((int64_t)hd * t_n * heads_n);
    int head = part == 0 ? h : (part == 1 ? h_n + h : h_n + kv_n + h);
    int64_t row = b * t_n + t;
    const T* x = qkv + row * width + (int64_t)head * hd;
    float v = part == 2 ? to_f(x[d]) : rotated(x, (part == 0 ? csq : cs) + row * hd, hd, d);
    dst[idx] = from_f<T>(v);
  }
}

// The backward of split_heads: d_qkv [B, T, width] from dq [B, H, T, hd],
// dk, dv [B, KV, T, hd]; dq and dk rotated back (by −θ).
template <typename T>
__device__ void merge_heads_backward(const T* dq, const T* dk, const T* dv, const T* cs, const T* csq, T* dst,
                                     int b_n, int t_n, int h_n, int kv_n, int hd) {
  int width = (h_n + 2 * kv_n) * hd;
  int64_t n = (int64_t)b_n * t_n * width;
  int half = hd / 2;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int d = idx % hd;
    int head = (idx / hd) % (h_n + 2 * kv_n);
    int64_t row = idx / width;
    int64_t b = row / t_n;
    int t = row % t_n;
    int part = head < h_n ? 0 : (head < h_n + kv_n ? 1 : 2);
    int h = part == 0 ? head : (part == 1 ? head - h_n : head - h_n - kv_n);
    int heads_n = part == 0 ? h_n : kv_n;
    const T* x = (part == 0 ? dq : (part == 1 ? dk : dv)) + ((b * heads_n + h) * t_n + t) * hd;
    const T* c = (part == 0 ? csq : cs) + row * hd;
    float v;
    if (part == 2) v = to_f(x[d]);
    else if (d < half) v = to_f(x[d]) * to_f(c[d]) + to_f(x[d + half]) * to_f(c[half + d]);
    else v = to_f(x[d]) * to_f(c[d - half]) - to_f(x[d - half]) * to_f(c[d]);
    dst[idx] = from_f<T>(v);
  }
}

// softmax(scores + mask) in f32, one block per row of scores [B, KV, rep·T, S]
// (rows_b = KV·rep·T rows a batch row; row j of a head group is query j mod T),
// mask [B, T, S] f32. probs: [B, KV, rep·T, S] f32.
template <typename T>
__device__ void masked_softmax(const T* scores, const float* mask, float* probs, int t_n, int rows_b, int s_n) {
  __shared__ float red[32];
  int64_t row = blockIdx.x;
  int64_t b = row / rows_b;
  int t = row % t_n;
  const T* x = scores + row * s_n;
  const float* m = mask + (b * t_n + t) * s_n;
  float* p = probs + row * s_n;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < s_n; i += blockDim.x) mx = fmaxf(mx, to_f(x[i]) + m[i]);
  mx = block_reduce(mx, red, 1);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < s_n; i += blockDim.x) {
    float e = __expf(to_f(x[i]) + m[i] - mx);
    p[i] = e;
    sum += e;
  }
  sum = block_reduce(sum, red, 0);
  for (int i = threadIdx.x; i < s_n; i += blockDim.x) p[i] = p[i] / sum;
}

// The softmax's backward, one block per row: out = p ⊙ (dp − Σ p·dp) in f32,
// rounded to T. p: [rows, S] f32; dp, out: [rows, S].
template <typename T>
__device__ void softmax_backward(const T* dp, const float* p, T* out, int s_n) {
  __shared__ float red[32];
  int64_t off = (int64_t)blockIdx.x * s_n;
  float dot = 0.0f;
  for (int i = threadIdx.x; i < s_n; i += blockDim.x) dot += p[off + i] * to_f(dp[off + i]);
  dot = block_reduce(dot, red, 0);
  for (int i = threadIdx.x; i < s_n; i += blockDim.x) out[off + i] = from_f<T>(p[off + i] * (to_f(dp[off + i]) - dot));
}

#define FUSED_KERNELS(NAME, T)                                                                        \
  extern "C" __global__ void silu_mul_##NAME(const T* x, T* y, int64_t rows, int64_t inter) {        \
    silu_mul<T>(x, y, rows, inter);                                                                   \
  }                                                                                                   \
  extern "C" __global__ void cache_write_##NAME(T* kv, const T* qkv, const T* cs, int b_n, int t_n,  \
                                                int heads, int hd, int width, int first, int cap,     \
                                                int at, const unsigned* at_dev) {                     \
    cache_write<T>(kv, qkv, cs, b_n, t_n, heads, hd, width, first, cap, at, at_dev);                  \
  }                                                                                                   \
  extern "C" __global__ void rms_norm_backward_##NAME(const T* x, const T* w, const T* dy,             \
                                                      const T* acc, T* out, int hidden, float eps,    \
                                                      int has_acc) {                                  \
    rms_norm_backward<T>(x, w, dy, acc, out, hidden, eps, has_acc);                                   \
  }                                                                                                   \
  extern "C" __global__ void swiglu_backward_##NAME(const T* gu, const T* d_act, T* out, int64_t rows, \
                                                    int64_t inter) {                                  \
    swiglu_backward<T>(gu, d_act, out, rows, inter);                                                  \
  }                                                                                                   \
  extern "C" __global__ void block_diag_##NAME(const T* b0, const T* b1, const T* b2, T* out, int rows, \
                                               int cols, int rs0, int rs1, int rs2, int o0, int o1,   \
                                               int o2, int cs0, int cs1, int cs2, int k0, int k1,     \
                                               int k2, float scale) {                                 \
    block_diag<T>(b0, b1, b2, out, rows, cols, rs0, rs1, rs2, o0, o1, o2, cs0, cs1, cs2, k0, k1, k2,  \
                  scale);                                                                             \
  }                                                                                                   \
  extern "C" __global__ void split_heads_##NAME(const T* qkv, const T* cs, const T* csq, T* dst,      \
                                                int b_n, int t_n, int h_n, int kv_n, int hd) {        \
    split_heads<T>(qkv, cs, csq, dst, b_n, t_n, h_n, kv_n, hd);                                       \
  }                                                                                                   \
  extern "C" __global__ void merge_heads_backward_##NAME(const T* dq, const T* dk, const T* dv,       \
                                                         const T* cs, const T* csq, T* dst, int b_n,  \
                                                         int t_n, int h_n, int kv_n, int hd) {        \
    merge_heads_backward<T>(dq, dk, dv, cs, csq, dst, b_n, t_n, h_n, kv_n, hd);                       \
  }                                                                                                   \
  extern "C" __global__ void add_rms_norm_##NAME(const T* x, const T* a, const T* w, T* out,         \
                                                 int64_t rows, int hidden, float eps) {               \
    add_rms_norm<T>(x, a, w, out, rows, hidden, eps);                                                 \
  }                                                                                                   \
  extern "C" __global__ void masked_softmax_##NAME(const T* scores, const float* mask, float* probs, int t_n,  \
                                                   int rows_b, int s_n) {                                   \
    masked_softmax<T>(scores, mask, probs, t_n, rows_b, s_n);                                             \
  }                                                                                                   \
  extern "C" __global__ void softmax_backward_##NAME(const T* dp, const float* p, T* out, int s_n) {       \
    softmax_backward<T>(dp, p, out, s_n);                                                              \
  }                                                                                                   \
  extern "C" __global__ void gemv_##NAME(const T* x, const T* w, const T* nw, const T* res, T* y, int m, \
                                         int n, int k, float eps, int mode) {                         \
    gemv<T>(x, w, nw, res, y, m, n, k, eps, mode);                                                    \
  }                                                                                                   \
  extern "C" __global__ void attend_##NAME(const T* qkv, const T* csq, const T* k, const T* v,       \
                                           const float* mask, T* y, int t_n, int h_n, int kv_n,      \
                                           int hd, int width, int s_n, int64_t sb, int64_t sh) {     \
    attend<T>(qkv, csq, k, v, mask, y, t_n, h_n, kv_n, hd, width, s_n, sb, sh);                       \
  }

FUSED_KERNELS(f32, float)
FUSED_KERNELS(bf16, __nv_bfloat16)
FUSED_KERNELS(f16, __half)

// Multi-tensor AdamW over n f32 tensors (the optimizer's parameters), with flat
// f32 moments m, v. table: [4, n] int64: parameter pointers, gradient pointers
// (0: no gradient, the tensor and its moments are left alone), offsets into the
// flat moments (ascending) and sizes. Element idx of the flat range belongs to
// the last tensor whose offset is <= idx.
__device__ __forceinline__ int owner(const int64_t* offsets, int n, int64_t idx) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= idx) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Per-block partial sums of the squared gradients (out: [gridDim.x]).
extern "C" __global__ void grad_sumsq_multi(const int64_t* table, int n, int64_t total, float* out) {
  __shared__ float red[32];
  const int64_t* grads = table + n;
  const int64_t* offsets = table + 2 * n;
  float acc = 0.0f;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int i = owner(offsets, n, idx);
    if (grads[i] == 0) continue;
    float g = ((const float*)grads[i])[idx - offsets[i]];
    acc += g * g;
  }
  acc = block_reduce(acc, red, 0);
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// p <- p (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps), with g scaled by gscale.
extern "C" __global__ void adamw_multi(const int64_t* table, int n, int64_t total, float* m, float* v,
                                       float lr, float beta1, float beta2, float eps, float wd, float bc1,
                                       float bc2, float gscale) {
  const int64_t* params = table;
  const int64_t* grads = table + n;
  const int64_t* offsets = table + 2 * n;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int i = owner(offsets, n, idx);
    if (grads[i] == 0) continue;
    int64_t j = idx - offsets[i];
    float g = ((const float*)grads[i])[j] * gscale;
    float mi = beta1 * m[idx] + (1.0f - beta1) * g;
    float vi = beta2 * v[idx] + (1.0f - beta2) * g * g;
    m[idx] = mi;
    v[idx] = vi;
    float* p = (float*)params[i];
    p[j] = p[j] * (1.0f - lr * wd) - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
  }
}

// Arg-max of (v, i) over the block, ties to the smaller index; every thread
// gets the result. red_v, red_i: one slot per warp.
__device__ void block_argmax(float& v, int& i, float* red_v, int* red_i) {
  for (int o = 16; o > 0; o >>= 1) {
    float w = __shfl_xor_sync(0xffffffff, v, o);
    int j = __shfl_xor_sync(0xffffffff, i, o);
    if (w > v || (w == v && j < i)) { v = w; i = j; }
  }
  int warps = blockDim.x / 32;
  __syncthreads();  // earlier readers of red_v / red_i are done
  if (threadIdx.x % 32 == 0) { red_v[threadIdx.x / 32] = v; red_i[threadIdx.x / 32] = i; }
  __syncthreads();
  v = red_v[0];
  i = red_i[0];
  for (int k = 1; k < warps; k++) {
    if (red_v[k] > v || (red_v[k] == v && red_i[k] < i)) { v = red_v[k]; i = red_i[k]; }
  }
}

// m = max of f(j) over j < n, and lse = ln Σ exp(f(j) − m), over the block
// (every thread gets both).
template <typename F>
__device__ void block_max_lse(F f, int n, float* red, float& m, float& lse) {
  m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, f(j));
  m = block_reduce(m, red, 1);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) sum += expf(f(j) - m);
  lse = logf(block_reduce(sum, red, 0));
}

// The next token of each row of logits [B, V] (f32), one block per row (see
// src/decode/fused_rows.rs, which holds the CPU reference): x = logits + bias +
// stop (each [V], null when absent); logp = log_softmax(x); greedy: the arg-max
// of logp; else s = logp when temp == 1, log_softmax(logp / temp) otherwise, and
// the Gumbel-max draw argmax(s − ln(−ln u)) with u [B, V] clamped to
// [FLT_MIN (1.17549435e-38), u_max]. out [B, 3]: (token, logp[token], s[token] or 0).
extern "C" __global__ void draw_rows(const float* logits, const float* bias, const float* stop, const float* u,
                                     float* out, int v_n, float temp, int greedy, float u_max) {
  __shared__ float red[32];
  __shared__ float red_v[32];
  __shared__ int red_i[32];
  int64_t row = blockIdx.x;
  const float* l = logits + row * v_n;
  auto x_at = [&](int j) {
    float x = l[j];
    if (bias) x += bias[j];
    if (stop) x += stop[j];
    return x;
  };
  float m, lse;
  block_max_lse(x_at, v_n, red, m, lse);
  auto logp_at = [&](int j) { return (x_at(j) - m) - lse; };

  // s_j = (logp_j / temp − ms) − ln Σ exp(logp_k / temp − ms); s = logp at temp 1.
  bool tempered = !greedy && temp != 1.0f;
  float ms = 0.0f, ls = 0.0f;
  if (tempered) block_max_lse([&](int j) { return logp_at(j) / temp; }, v_n, red, ms, ls);
  auto s_at = [&](int j) { return tempered ? (logp_at(j) / temp - ms) - ls : logp_at(j); };

  float best = -INFINITY;
  int tok = 0x7fffffff;
  const float* ur = u ? u + row * v_n : nullptr;
  for (int j = threadIdx.x; j < v_n; j += blockDim.x) {
    float key = greedy ? logp_at(j) : s_at(j) - logf(-logf(fminf(fmaxf(ur[j], 1.17549435e-38f), u_max)));
    if (key > best || (key == best && j < tok)) { best = key; tok = j; }
  }
  block_argmax(best, tok, red_v, red_i);
  if (threadIdx.x == 0) {
    if (tok >= v_n) tok = 0;  // every key NaN
    out[row * 3] = (float)tok;
    out[row * 3 + 1] = logp_at(tok);
    out[row * 3 + 2] = greedy ? 0.0f : s_at(tok);
  }
}

// log_softmax(logits + bias) [N, V] (f32) at k ids per row (ids [N, k], each
// < V), one block per row (see src/decode/fused_rows.rs); bias [V] or null.
// out [N, k].
extern "C" __global__ void logprobs_at(const float* logits, const float* bias, const uint32_t* ids, float* out,
                                       int v_n, int k) {
  __shared__ float red[32];
  int64_t row = blockIdx.x;
  const float* l = logits + row * v_n;
  auto x_at = [&](int j) { return bias ? l[j] + bias[j] : l[j]; };
  float m, lse;
  block_max_lse(x_at, v_n, red, m, lse);
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[row * k + i] = (x_at((int)ids[row * k + i]) - m) - lse;
}
