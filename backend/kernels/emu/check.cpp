// Runs every kernel of kernels/fused.cu under the CPU emulator (cuda_emu.h),
// with the launch configurations of src/model/fused_cuda.rs and
// src/gfn/optim_fused.rs and with small grids (so that the grid-stride loops
// turn), and compares the results with plain double-precision references written
// from each kernel's documented maths. Prints one line per case; exits 1 when a
// case fails. Built and run by backend/tests/kernels_emu.rs.
#include "cuda_emu.h"

#include "../fused.cu"

#include <algorithm>
#include <functional>
#include <random>
#include <string>

using std::vector;

// The launch shapes of fused_cuda.rs (`elementwise`, `row_blocks`, `attend_threads`).
static unsigned elementwise(size_t n) { return (unsigned)std::clamp<size_t>((n + 255) / 256, 1, 65535); }
static unsigned row_threads(int hidden) { return (unsigned)std::clamp((hidden + 31) / 32, 1, 32) * 32; }
static unsigned attend_threads(int hd) {
  int a = hd, b = 32;
  while (b) std::swap(a %= b, b);
  int unit = hd / a * 32;
  return (unsigned)(unit * ((128 + unit - 1) / unit));
}

template <typename T> struct K;
#define KERNELS(NAME, T)                                                        \
  template <> struct K<T> {                                                     \
    static constexpr const char* name = #NAME;                                  \
    static constexpr auto silu_mul = silu_mul_##NAME;                           \
    static constexpr auto cache_write = cache_write_##NAME;                     \
    static constexpr auto rms_norm_backward = rms_norm_backward_##NAME;         \
    static constexpr auto swiglu_backward = swiglu_backward_##NAME;             \
    static constexpr auto block_diag = block_diag_##NAME;                       \
    static constexpr auto split_heads = split_heads_##NAME;                     \
    static constexpr auto merge_heads_backward = merge_heads_backward_##NAME;   \
    static constexpr auto add_rms_norm = add_rms_norm_##NAME;                   \
    static constexpr auto attend = attend_##NAME;                               \
    static constexpr auto masked_softmax = masked_softmax_##NAME;               \
    static constexpr auto softmax_backward = softmax_backward_##NAME;           \
    static constexpr auto gemv = gemv_##NAME;                                   \
  };
KERNELS(f32, float)
KERNELS(bf16, __nv_bfloat16)
KERNELS(f16, __half)

static int failures = 0;
static std::mt19937 rng(7);

template <typename T> static T cast(double x) { return from_f<T>((float)x); }
template <typename T> static double val(T x) { return to_f(x); }

// Values drawn uniformly from [-scale, scale], already in the dtype.
template <typename T> static vector<T> uniform(size_t n, double scale) {
  std::uniform_real_distribution<double> u(-scale, scale);
  vector<T> v(n);
  for (auto& x : v) x = cast<T>(u(rng));
  return v;
}
template <typename T> static vector<double> vals(const vector<T>& v) {
  vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = val(v[i]);
  return out;
}

// Relative tolerance of one rounding to the dtype (plus f32 accumulation).
template <typename T> static double rtol() {
  if constexpr (std::is_same_v<T, float>) return 1e-4;
  else if constexpr (std::is_same_v<T, __half>) return 1.0 / 512;
  else return 1.0 / 128;
}

template <typename T> static void expect(const std::string& name, const vector<T>& got, const vector<double>& want) {
  std::string full = name + " [" + K<T>::name + "]";
  if (got.size() != want.size()) {
    std::printf("FAIL %s: %zu values, want %zu\n", full.c_str(), got.size(), want.size());
    failures++;
    return;
  }
  double worst = 0;
  for (size_t i = 0; i < got.size(); i++) {
    double g = val(got[i]), w = want[i];
    double err = std::fabs(g - w), tol = 1e-4 + rtol<T>() * std::fabs(w);
    if (!std::isfinite(g) || err > tol) {
      std::printf("FAIL %s: element %zu is %.6g, want %.6g\n", full.c_str(), i, g, w);
      failures++;
      return;
    }
    worst = std::max(worst, err);
  }
  std::printf("ok   %s (worst error %.3g)\n", full.c_str(), worst);
}

// Rotation of element d of a head (HF half-split: cos in [0, hd/2), sin after).
static double rot(const double* x, const double* cs, int hd, int d, bool inverse) {
  int half = hd / 2, i = d % half;
  double c = cs[i], s = inverse ? -cs[half + i] : cs[half + i];
  return d < half ? x[d] * c - x[d + half] * s : x[d] * c + x[i] * s;
}

// cos | sin tables of random angles for `rows` rows of one head, times `scale`.
template <typename T> static vector<T> rope_table(size_t rows, int hd, double scale) {
  std::uniform_real_distribution<double> a(-3.1, 3.1);
  vector<T> cs(rows * hd);
  for (size_t r = 0; r < rows; r++)
    for (int i = 0; i < hd / 2; i++) {
      double th = a(rng);
      cs[r * hd + i] = cast<T>(std::cos(th) * scale);
      cs[r * hd + hd / 2 + i] = cast<T>(std::sin(th) * scale);
    }
  return cs;
}

template <typename T> static void check_silu_mul() {
  const int64_t rows = 5, inter = 1536;
  auto x = uniform<T>(rows * 2 * inter, 4.0);
  vector<double> want(rows * inter);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < inter; i++) {
      double g = val(x[r * 2 * inter + i]), u = val(x[r * 2 * inter + inter + i]);
      want[r * inter + i] = g / (1 + std::exp(-g)) * u;
    }
  for (unsigned grid : {elementwise(rows * inter), 3u}) {
    vector<T> y(rows * inter, cast<T>(NAN));
    emu::launch({grid}, {256}, 0, K<T>::silu_mul, x.data(), y.data(), rows, inter);
    expect("silu_mul grid " + std::to_string(grid), y, want);
  }
}

template <typename T> static void check_cache_write() {
  const int b_n = 3, t_n = 2, nh = 9, kv_n = 3, hd = 64, cap = 320, at = 250;
  const int width = (nh + 2 * kv_n) * hd, first = nh;
  auto qkv = uniform<T>((size_t)b_n * t_n * width, 2.0);
  auto cs = rope_table<T>(b_n * t_n, hd, 1.0);
  auto kv0 = uniform<T>(2ull * b_n * kv_n * cap * hd, 1.0);
  auto want = vals(kv0);
  auto q = vals(qkv), c = vals(cs);
  for (int which = 0; which < 2; which++)
    for (int b = 0; b < b_n; b++)
      for (int t = 0; t < t_n; t++)
        for (int h = 0; h < kv_n; h++)
          for (int d = 0; d < hd; d++) {
            const double* x = &q[((size_t)b * t_n + t) * width + (first + which * kv_n + h) * hd];
            double v = which == 0 ? rot(x, &c[((size_t)b * t_n + t) * hd], hd, d, false) : x[d];
            want[((((size_t)which * b_n + b) * kv_n + h) * cap + at + t) * hd + d] = v;
          }
  size_t n = 2ull * b_n * t_n * kv_n * hd;
  for (unsigned grid : {elementwise(n), 2u}) {
    auto kv = kv0;
    emu::launch({grid}, {256}, 0, K<T>::cache_write, kv.data(), qkv.data(), cs.data(), b_n, t_n, kv_n, hd, width, first,
                cap, at, (const unsigned*)nullptr);
    expect("cache_write grid " + std::to_string(grid), kv, want);
  }
  // The position read from memory (a replayed graph): the argument is ignored.
  const unsigned at_mem = at;
  auto kv = kv0;
  emu::launch({elementwise(n)}, {256}, 0, K<T>::cache_write, kv.data(), qkv.data(), cs.data(), b_n, t_n, kv_n, hd, width,
              first, cap, 7, &at_mem);
  expect("cache_write at_dev", kv, want);
  // A position from memory that does not fit writes nothing.
  for (unsigned bad : {(unsigned)cap - 1, (unsigned)cap, 0xffffffffu}) {
    auto kv = kv0;
    emu::launch({elementwise(n)}, {256}, 0, K<T>::cache_write, kv.data(), qkv.data(), cs.data(), b_n, t_n, kv_n, hd, width,
                first, cap, 0, &bad);
    expect("cache_write out of room", kv, vals(kv0));
  }
}

// Attention of t_n new tokens over s_n of cap cached positions (GQA nh / kv_n).
template <typename T> static void check_attend(int b_n, int t_n, int nh, int kv_n, int hd, int cap, int s_n) {
  const int width = (nh + 2 * kv_n) * hd;
  auto qkv = uniform<T>((size_t)b_n * t_n * width, 2.0);
  auto csq = rope_table<T>(b_n * t_n, hd, 1.0 / std::sqrt((double)hd));
  auto kv = uniform<T>(2ull * b_n * kv_n * cap * hd, 2.0);
  const int64_t sb = (int64_t)kv_n * cap * hd, sh = (int64_t)cap * hd;
  const size_t v_off = (size_t)b_n * kv_n * cap * hd;
  // Row (0, ·) sees everything; batch 1 has padded positions 0..4; the last
  // batch's first new token is fully masked.
  vector<float> mask((size_t)b_n * t_n * s_n, 0.0f);
  for (int t = 0; t < t_n; t++) {
    if (b_n > 1)
      for (int s = 0; s < std::min(5, s_n); s++) mask[((size_t)1 * t_n + t) * s_n + s] = -1e9f;
    for (int s = s_n - t_n + t + 1; s < s_n; s++)
      for (int b = 0; b < b_n; b++) mask[((size_t)b * t_n + t) * s_n + s] = -1e9f;  // causal among the new tokens
  }
  if (b_n > 2)
    for (int s = 0; s < s_n; s++) mask[((size_t)(b_n - 1) * t_n) * s_n + s] = -1e9f;

  auto x = vals(qkv), c = vals(csq), k = vals(kv);
  vector<double> want((size_t)b_n * t_n * nh * hd), q(hd), p(s_n);
  for (int b = 0; b < b_n; b++)
    for (int t = 0; t < t_n; t++)
      for (int h = 0; h < nh; h++) {
        size_t row = (size_t)b * t_n + t;
        int g = h / (nh / kv_n);
        for (int d = 0; d < hd; d++) q[d] = rot(&x[row * width + h * hd], &c[row * hd], hd, d, false);
        double mx = -INFINITY, sum = 0;
        for (int s = 0; s < s_n; s++) {
          double acc = 0;
          for (int d = 0; d < hd; d++) acc += q[d] * k[b * sb + g * sh + (size_t)s * hd + d];
          // The mask is added in f32, as in the kernel: −1e9 swallows the score,
          // so a fully masked row averages the values.
          p[s] = acc = (float)acc + mask[row * s_n + s];
          mx = std::max(mx, acc);
        }
        for (int s = 0; s < s_n; s++) sum += (p[s] = std::exp(p[s] - mx));
        for (int d = 0; d < hd; d++) {
          double acc = 0;
          for (int s = 0; s < s_n; s++) acc += p[s] * k[v_off + b * sb + g * sh + (size_t)s * hd + d];
          want[row * nh * hd + h * hd + d] = acc / sum;
        }
      }
  unsigned threads = attend_threads(hd);
  size_t smem = (hd + s_n + threads) * 4;
  vector<T> y(want.size(), cast<T>(NAN));
  emu::launch({(unsigned)(b_n * t_n * nh)}, {threads}, smem, K<T>::attend, qkv.data(), csq.data(), kv.data(),
              kv.data() + v_off, mask.data(), y.data(), t_n, nh, kv_n, hd, width, s_n, sb, sh);
  char name[96];
  std::snprintf(name, sizeof name, "attend b%d t%d h%d/%d hd%d s%d/%d", b_n, t_n, nh, kv_n, hd, s_n, cap);
  expect(name, y, want);
}

template <typename T> static void check_add_rms_norm(int64_t rows, int hidden) {
  const float eps = 1e-5f;
  auto x = uniform<T>(rows * hidden, 2.0), a = uniform<T>(rows * hidden, 2.0), w = uniform<T>(hidden, 1.5);
  vector<double> want(2 * rows * hidden);
  for (int64_t r = 0; r < rows; r++) {
    double sq = 0;
    for (int i = 0; i < hidden; i++) {
      // The sum is rounded to the dtype once, as the kernel's first output.
      double s = val(cast<T>(val(x[r * hidden + i]) + val(a[r * hidden + i])));
      want[r * hidden + i] = s;
      sq += s * s;
    }
    double scale = 1 / std::sqrt(sq / hidden + eps);
    for (int i = 0; i < hidden; i++) want[(rows + r) * hidden + i] = want[r * hidden + i] * scale * val(w[i]);
  }
  vector<T> out(2 * rows * hidden, cast<T>(NAN));
  emu::launch({(unsigned)rows}, {row_threads(hidden)}, 0, K<T>::add_rms_norm, x.data(), a.data(), w.data(),
              out.data(), rows, hidden, eps);
  expect("add_rms_norm hidden " + std::to_string(hidden), out, want);
}

template <typename T> static void check_rms_norm_backward(int rows, int hidden, bool has_acc) {
  const float eps = 1e-5f;
  auto x = uniform<T>((size_t)rows * hidden, 2.0), dy = uniform<T>((size_t)rows * hidden, 1.0);
  auto w = uniform<T>(hidden, 1.5), acc = uniform<T>((size_t)rows * hidden, 1.0);
  vector<double> want((size_t)rows * hidden);
  for (int r = 0; r < rows; r++) {
    const size_t o = (size_t)r * hidden;
    double sxx = 0, sgx = 0;
    for (int i = 0; i < hidden; i++) {
      sxx += val(x[o + i]) * val(x[o + i]);
      sgx += val(w[i]) * val(dy[o + i]) * val(x[o + i]);
    }
    double rr = 1 / std::sqrt(sxx / hidden + eps);
    for (int i = 0; i < hidden; i++)
      want[o + i] = rr * val(w[i]) * val(dy[o + i]) - val(x[o + i]) * rr * rr * rr * sgx / hidden +
                    (has_acc ? val(acc[o + i]) : 0.0);
  }
  vector<T> out(want.size(), cast<T>(NAN));
  emu::launch({(unsigned)rows}, {row_threads(hidden)}, 0, K<T>::rms_norm_backward, x.data(), w.data(), dy.data(),
              has_acc ? acc.data() : x.data(), out.data(), hidden, eps, (int)has_acc);
  expect("rms_norm_backward hidden " + std::to_string(hidden) + (has_acc ? " + acc" : ""), out, want);
}

template <typename T> static void check_swiglu_backward() {
  const int64_t rows = 5, inter = 1536;
  auto gu = uniform<T>(rows * 2 * inter, 4.0), d = uniform<T>(rows * inter, 1.0);
  vector<double> want(rows * 2 * inter);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < inter; i++) {
      double g = val(gu[r * 2 * inter + i]), u = val(gu[r * 2 * inter + inter + i]), dd = val(d[r * inter + i]);
      double sig = 1 / (1 + std::exp(-g));
      want[r * 2 * inter + i] = dd * u * (sig + g * sig * (1 - sig));  // d/dg of g·σ(g), times u
      want[r * 2 * inter + inter + i] = dd * g * sig;
    }
  for (unsigned grid : {elementwise(rows * inter), 5u}) {
    vector<T> out(want.size(), cast<T>(NAN));
    emu::launch({grid}, {256}, 0, K<T>::swiglu_backward, gu.data(), d.data(), out.data(), rows, inter);
    expect("swiglu_backward grid " + std::to_string(grid), out, want);
  }
}

// q/k/v-like group with the middle member absent (rank 0).
template <typename T> static void check_block_diag() {
  const int o[3] = {576, 192, 192}, k[3] = {64, 0, 48};
  const float scale = 2.5f;
  int rows = o[0] + o[1] + o[2], cols = k[0] + k[1] + k[2];
  int rs[3] = {0, o[0], o[0] + o[1]}, cs[3] = {0, k[0], k[0] + k[1]};
  auto b0 = uniform<T>((size_t)o[0] * k[0], 1.0), b2 = uniform<T>((size_t)o[2] * k[2], 1.0);
  vector<double> want((size_t)rows * cols, 0.0);
  for (int r = 0; r < o[0]; r++)
    for (int c = 0; c < k[0]; c++) want[(size_t)r * cols + c] = scale * val(b0[(size_t)r * k[0] + c]);
  for (int r = 0; r < o[2]; r++)
    for (int c = 0; c < k[2]; c++) want[(size_t)(rs[2] + r) * cols + cs[2] + c] = scale * val(b2[(size_t)r * k[2] + c]);
  for (unsigned grid : {elementwise(want.size()), 7u}) {
    vector<T> out(want.size(), cast<T>(NAN));
    emu::launch({grid}, {256}, 0, K<T>::block_diag, b0.data(), b0.data(), b2.data(), out.data(), rows, cols, rs[0],
                rs[1], rs[2], o[0], o[1], o[2], cs[0], cs[1], cs[2], k[0], k[1], k[2], scale);
    expect("block_diag grid " + std::to_string(grid), out, want);
  }
}

template <typename T> static void check_heads() {
  const int b_n = 2, t_n = 5, nh = 9, kv_n = 3, hd = 64, width = (nh + 2 * kv_n) * hd;
  auto qkv = uniform<T>((size_t)b_n * t_n * width, 2.0);
  auto cs = rope_table<T>(b_n * t_n, hd, 1.0), csq = rope_table<T>(b_n * t_n, hd, 0.125);
  auto x = vals(qkv), c = vals(cs), cq = vals(csq);
  // split: q [B, H, T, hd] | k [B, KV, T, hd] | v [B, KV, T, hd].
  vector<double> want;
  for (int part = 0; part < 3; part++) {
    int heads = part == 0 ? nh : kv_n, base = part == 0 ? 0 : (part == 1 ? nh : nh + kv_n);
    for (int b = 0; b < b_n; b++)
      for (int h = 0; h < heads; h++)
        for (int t = 0; t < t_n; t++)
          for (int d = 0; d < hd; d++) {
            size_t row = (size_t)b * t_n + t;
            const double* xh = &x[row * width + (base + h) * hd];
            want.push_back(part == 2 ? xh[d] : rot(xh, &(part == 0 ? cq : c)[row * hd], hd, d, false));
          }
  }
  size_t n = want.size();
  for (unsigned grid : {elementwise(n), 4u}) {
    vector<T> out(n, cast<T>(NAN));
    emu::launch({grid}, {256}, 0, K<T>::split_heads, qkv.data(), cs.data(), csq.data(), out.data(), b_n, t_n, nh,
                kv_n, hd);
    expect("split_heads grid " + std::to_string(grid), out, want);
  }
  // merge backward: the gradients dq, dk, dv back to [B, T, width], rotated by −θ.
  size_t q_size = (size_t)b_n * nh * t_n * hd, kv_size = (size_t)b_n * kv_n * t_n * hd;
  auto grads = uniform<T>(q_size + 2 * kv_size, 1.0);
  auto gv = vals(grads);
  vector<double> back((size_t)b_n * t_n * width);
  for (int b = 0; b < b_n; b++)
    for (int t = 0; t < t_n; t++)
      for (int head = 0; head < nh + 2 * kv_n; head++) {
        int part = head < nh ? 0 : (head < nh + kv_n ? 1 : 2);
        int h = head - (part == 0 ? 0 : (part == 1 ? nh : nh + kv_n)), heads = part == 0 ? nh : kv_n;
        size_t off = part == 0 ? 0 : (part == 1 ? q_size : q_size + kv_size);
        const double* g = &gv[off + (((size_t)b * heads + h) * t_n + t) * hd];
        size_t row = (size_t)b * t_n + t;
        for (int d = 0; d < hd; d++)
          back[row * width + head * hd + d] = part == 2 ? g[d] : rot(g, &(part == 0 ? cq : c)[row * hd], hd, d, true);
      }
  for (unsigned grid : {elementwise(back.size()), 4u}) {
    vector<T> out(back.size(), cast<T>(NAN));
    emu::launch({grid}, {256}, 0, K<T>::merge_heads_backward, grads.data(), grads.data() + q_size,
                grads.data() + q_size + kv_size, cs.data(), csq.data(), out.data(), b_n, t_n, nh, kv_n, hd);
    expect("merge_heads_backward grid " + std::to_string(grid), out, back);
  }
}

// The multi-tensor AdamW over parameters of these sizes; the third has no gradient.
static void check_adamw() {
  const vector<size_t> sizes = {600, 70000, 33, 700, 1};
  const size_t n = sizes.size();
  vector<vector<float>> p, g;
  vector<int64_t> table(4 * n);
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    p.push_back(uniform<float>(sizes[i], 1.0));
    g.push_back(uniform<float>(sizes[i], 0.01));
    table[2 * n + i] = (int64_t)total;
    table[3 * n + i] = (int64_t)sizes[i];
    total += sizes[i];
  }
  auto m = uniform<float>(total, 0.01), v = uniform<float>(total, 0.0001);
  for (auto& x : v) x = std::fabs(x);
  auto fill = [&](vector<vector<float>>& ps) {
    for (size_t i = 0; i < n; i++) {
      table[i] = (int64_t)(intptr_t)ps[i].data();
      table[n + i] = i == 2 ? 0 : (int64_t)(intptr_t)g[i].data();
    }
  };
  double sumsq = 0;
  for (size_t i = 0; i < n; i++)
    if (i != 2)
      for (float x : g[i]) sumsq += (double)x * x;
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f, bc1 = 1 - 0.9f * 0.9f,
              bc2 = 1 - 0.999f * 0.999f, gs = 0.5f;
  // Reference: flat parameters then moments, in double.
  vector<double> want_p, want_m, want_v;
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < sizes[i]; j++) {
      size_t idx = table[2 * n + i] + j;
      double pi = p[i][j], mi = m[idx], vi = v[idx];
      if (i != 2) {
        double gg = (double)g[i][j] * gs;
        mi = b1 * mi + (1 - b1) * gg;
        vi = b2 * vi + (1 - b2) * gg * gg;
        pi = pi * (1 - (double)lr * wd) - lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
      }
      want_p.push_back(pi);
      want_m.push_back(mi);
      want_v.push_back(vi);
    }
  unsigned sum_grid = (unsigned)std::min<size_t>((total + 255) / 256, 1024);
  for (unsigned grid : {sum_grid, 3u}) {
    fill(p);
    vector<float> parts(grid, NAN);
    emu::launch({grid}, {256}, 0, grad_sumsq_multi, table.data(), (int)n, (int64_t)total, parts.data());
    double got = 0;
    for (float x : parts) got += x;
    expect("grad_sumsq_multi grid " + std::to_string(grid), vector<float>{(float)got}, vector<double>{sumsq});
  }
  for (unsigned grid : {elementwise(total), 2u}) {
    auto ps = p;
    auto ms = m, vs = v;
    fill(ps);
    emu::launch({grid}, {256}, 0, adamw_multi, table.data(), (int)n, (int64_t)total, ms.data(), vs.data(), lr, b1, b2,
                eps, wd, bc1, bc2, gs);
    vector<float> flat;
    for (auto& x : ps) flat.insert(flat.end(), x.begin(), x.end());
    std::string grid_s = " grid " + std::to_string(grid);
    expect("adamw_multi parameters" + grid_s, flat, want_p);
    expect("adamw_multi first moments" + grid_s, ms, want_m);
    expect("adamw_multi second moments" + grid_s, vs, want_v);
  }
}

// draw_rows: the launch of decode/fused_rows.rs (one block per row, 32·k threads
// up to 1024). The token may differ from the double reference's only on a near
// tie of the keys; its log-probabilities are checked at the token it took.
static void check_draw(int b_n, int v_n, bool masked, bool stop_on, float temp, bool greedy) {
  vector<float> logits = uniform<float>((size_t)b_n * v_n, 6.0), bias(v_n, 0.0f), stop(v_n, 0.0f);
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  vector<float> u((size_t)b_n * v_n);
  for (auto& x : u) x = u01(rng);
  u[3] = 0.0f;  // clamped to FLT_MIN, not an infinite key
  for (int j = 0; j < v_n; j += 7) bias[j] = -99.0f;
  for (int j : {2, 5, 9}) stop[j % v_n] = -INFINITY;
  const float u_max = 1.0f - 5.96046448e-08f;
  vector<float> out((size_t)b_n * 3, NAN);
  unsigned threads = row_threads(v_n);
  emu::launch({(unsigned)b_n}, {threads}, 0, draw_rows, logits.data(), masked ? bias.data() : nullptr,
              stop_on ? stop.data() : nullptr, greedy ? nullptr : u.data(), out.data(), v_n, temp, (int)greedy, u_max);
  char name[96];
  std::snprintf(name, sizeof name, "draw_rows v%d bias %d stop %d T %.1f greedy %d [f32]", v_n, masked, stop_on, temp,
                greedy);
  for (int r = 0; r < b_n; r++) {
    vector<double> logp(v_n), s(v_n), key(v_n);
    double m = -INFINITY, sum = 0;
    for (int j = 0; j < v_n; j++) {
      logp[j] = (double)logits[(size_t)r * v_n + j] + (masked ? bias[j] : 0.0) + (stop_on ? stop[j] : 0.0);
      m = std::max(m, logp[j]);
    }
    for (int j = 0; j < v_n; j++) sum += std::exp(logp[j] - m);
    for (int j = 0; j < v_n; j++) logp[j] -= m + std::log(sum);
    double ms = -INFINITY, ss = 0;
    for (int j = 0; j < v_n; j++) ms = std::max(ms, logp[j] / temp);
    for (int j = 0; j < v_n; j++) ss += std::exp(logp[j] / temp - ms);
    int best = 0;
    for (int j = 0; j < v_n; j++) {
      s[j] = logp[j] / temp - ms - std::log(ss);
      double uj = std::clamp((double)u[(size_t)r * v_n + j], 1.17549435e-38, (double)u_max);
      key[j] = greedy ? logp[j] : s[j] - std::log(-std::log(uj));
      if (key[j] > key[best]) best = j;
    }
    double tok = out[r * 3];
    int t = (int)tok;
    bool ok = tok == t && t >= 0 && t < v_n && key[t] >= key[best] - 1e-4 &&
              std::fabs(out[r * 3 + 1] - logp[t]) <= 1e-4 + 1e-5 * std::fabs(logp[t]) &&
              std::fabs(out[r * 3 + 2] - (greedy ? 0.0 : s[t])) <= 1e-4 + 1e-5 * std::fabs(s[t]) &&
              !(stop_on && (t == 2 || t == 5 || t == 9));
    if (!ok) {
      std::printf("FAIL %s: row %d took %g (logp %g, s %g), want %d (logp %g, s %g)\n", name, r, tok, out[r * 3 + 1],
                  out[r * 3 + 2], best, logp[best], greedy ? 0.0 : s[best]);
      failures++;
      return;
    }
  }
  std::printf("ok   %s\n", name);
}

// logprobs_at: the launch of decode/fused_rows.rs (one block per row, 32·k
// threads up to 1024), k ids a row.
static void check_logprobs_at(int n, int v_n, int k, bool with_bias) {
  vector<float> logits = uniform<float>((size_t)n * v_n, 8.0), bias(v_n, 0.0f);
  for (int j = 0; j < v_n; j += 5) bias[j] = -50.0f;
  std::uniform_int_distribution<uint32_t> pick(0, v_n - 1);
  vector<uint32_t> ids((size_t)n * k);
  for (auto& i : ids) i = pick(rng);
  ids[0] = 0;
  ids.back() = v_n - 1;
  vector<double> want(ids.size());
  for (int r = 0; r < n; r++) {
    double m = -INFINITY, sum = 0;
    auto x = [&](int j) { return (double)logits[(size_t)r * v_n + j] + (with_bias ? bias[j] : 0.0); };
    for (int j = 0; j < v_n; j++) m = std::max(m, x(j));
    for (int j = 0; j < v_n; j++) sum += std::exp(x(j) - m);
    for (int i = 0; i < k; i++) want[(size_t)r * k + i] = x(ids[(size_t)r * k + i]) - m - std::log(sum);
  }
  vector<float> out(ids.size(), NAN);
  unsigned threads = row_threads(v_n);
  emu::launch({(unsigned)n}, {threads}, 0, logprobs_at, logits.data(), with_bias ? bias.data() : nullptr, ids.data(),
              out.data(), v_n, k);
  expect("logprobs_at v" + std::to_string(v_n) + " k" + std::to_string(k) + (with_bias ? " bias" : ""), out, want);
}

// The taped attention's softmax over scores [B, KV, rep·T, S] with the mask
// [B, T, S], and its backward, at the launches of fused_cuda.rs (row_blocks).
template <typename T> static void check_softmax(int b_n, int kv, int rep, int t_n, int s_n) {
  const int rows = b_n * kv * rep * t_n;
  auto scores = uniform<T>((size_t)rows * s_n, 4.0);
  vector<float> mask((size_t)b_n * t_n * s_n, 0.0f);
  for (int s = 0; s < s_n; s++) mask[s] = -1e9f;  // batch row 0, query 0: nothing visible
  for (int q = 0; q < t_n; q++)
    for (int s = 0; s < std::min(3, s_n); s++) mask[((size_t)(b_n - 1) * t_n + q) * s_n + s] = -1e9f;
  vector<double> want((size_t)rows * s_n);
  for (int r = 0; r < rows; r++) {
    int b = r / (kv * rep * t_n), t = r % t_n;
    double mx = -INFINITY, sum = 0;
    // The mask is added in f32, as in the kernel (−1e9 swallows the score).
    auto x = [&](int s) { return (double)((float)val(scores[(size_t)r * s_n + s]) + mask[((size_t)b * t_n + t) * s_n + s]); };
    for (int s = 0; s < s_n; s++) mx = std::max(mx, x(s));
    for (int s = 0; s < s_n; s++) sum += std::exp(x(s) - mx);
    for (int s = 0; s < s_n; s++) want[(size_t)r * s_n + s] = std::exp(x(s) - mx) / sum;
  }
  vector<float> probs(want.size(), NAN);
  emu::launch({(unsigned)rows}, {row_threads(s_n)}, 0, K<T>::masked_softmax, scores.data(), mask.data(), probs.data(),
              t_n, kv * rep * t_n, s_n);
  std::string shape = " b" + std::to_string(b_n) + " rows " + std::to_string(rows) + " s" + std::to_string(s_n);
  // f32 probabilities: compared at f32's tolerance whatever T is.
  double worst = 0;
  for (size_t i = 0; i < want.size(); i++) worst = std::max(worst, std::fabs(probs[i] - want[i]));
  bool ok = worst <= 1e-5 && std::all_of(probs.begin(), probs.end(), [](float p) { return std::isfinite(p); });
  std::printf("%s masked_softmax%s [%s] (worst error %.3g)\n", ok ? "ok  " : "FAIL", shape.c_str(), K<T>::name, worst);
  failures += !ok;

  auto dp = uniform<T>(want.size(), 1.0);
  vector<double> back(want.size());
  for (int r = 0; r < rows; r++) {
    double dot = 0;
    for (int s = 0; s < s_n; s++) dot += (double)probs[(size_t)r * s_n + s] * val(dp[(size_t)r * s_n + s]);
    for (int s = 0; s < s_n; s++) back[(size_t)r * s_n + s] = probs[(size_t)r * s_n + s] * (val(dp[(size_t)r * s_n + s]) - dot);
  }
  vector<T> out(want.size(), cast<T>(NAN));
  emu::launch({(unsigned)rows}, {row_threads(s_n)}, 0, K<T>::softmax_backward, dp.data(), probs.data(), out.data(), s_n);
  expect("softmax_backward" + shape, out, back);
}

#include "check_gemv.h"

template <typename T> static void check_all() {
  check_gemvs<T>();
  check_silu_mul<T>();
  check_cache_write<T>();
  check_attend<T>(3, 1, 9, 3, 64, 320, 300);   // SmolLM2-135M heads, one new token
  check_attend<T>(3, 3, 9, 3, 64, 320, 257);   // three new tokens
  check_attend<T>(2, 2, 4, 4, 96, 40, 33);     // no GQA, 192 threads a block
  check_attend<T>(1, 1, 2, 1, 32, 8192, 8192); // the longest cache attend takes
  for (int hidden : {576, 2560, 100}) {
    check_add_rms_norm<T>(4, hidden);
    check_rms_norm_backward<T>(3, hidden, false);
    check_rms_norm_backward<T>(3, hidden, true);
  }
  check_swiglu_backward<T>();
  check_softmax<T>(2, 3, 3, 2, 300);  // SmolLM2-135M's heads, 300 keys
  check_softmax<T>(1, 1, 1, 3, 1500); // rows longer than a block's 1,024 threads
  check_block_diag<T>();
  check_heads<T>();
}

// Arguments: the dtypes to check (f32, bf16, f16; all when none). AdamW's
// kernels are f32 and always run.
int main(int argc, char** argv) {
  auto wanted = [&](const char* name) {
    if (argc < 2) return true;
    for (int i = 1; i < argc; i++)
      if (std::string(argv[i]) == name) return true;
    return false;
  };
  if (wanted("f32")) check_all<float>();
  if (wanted("bf16")) check_all<__nv_bfloat16>();
  if (wanted("f16")) check_all<__half>();
  check_adamw();
  check_draw(5, 49152, true, true, 0.7f, false);  // SmolLM2's vocabulary
  check_draw(5, 49152, false, false, 1.0f, false);
  check_draw(3, 1000, true, false, 1.3f, false);
  check_draw(4, 100, true, true, 1.0f, true);
  check_draw(2, 5, false, false, 1.0f, false);
  check_logprobs_at(7, 49152, 2, true);
  check_logprobs_at(5, 49152, 1, false);
  check_logprobs_at(3, 20, 40, true);  // more ids (40) than threads (32) a row
  if (emu::partial_warp_shuffles) {
    std::printf("FAIL %d warp shuffles ran in a partial warp\n", emu::partial_warp_shuffles.load());
    failures++;
  }
  std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
