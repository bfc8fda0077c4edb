// Checks of kernels/gemv.cuh under the emulator (included by check.cpp, after
// its helpers): every mode at the launch shape of src/model/fused_cuda.rs
// (`gemv`: GEMV_WARPS warps a block, one output feature a warp), against a
// double-precision reference that rounds where the composed ops round.
#pragma once

// m rows of x [m, k] through W [n (2n with SWIGLU), k]; `what` names the case.
template <typename T> static void check_gemv(const char* what, int m, int n, int k, int mode) {
  const float eps = 1e-5f;
  const bool norm = mode & GEMV_NORM, swiglu = mode & GEMV_SWIGLU, residual = mode & GEMV_RESIDUAL;
  const int rows_w = swiglu ? 2 * n : n;
  auto x = uniform<T>((size_t)m * k, 2.0), w = uniform<T>((size_t)rows_w * k, 0.5);
  auto nw = uniform<T>(k, 1.5), res = uniform<T>((size_t)m * n, 3.0);
  vector<double> want((size_t)m * n), scale((size_t)m * n);
  for (int r = 0; r < m; r++) {
    vector<double> xr(k);
    double sq = 0;
    for (int i = 0; i < k; i++) sq += val(x[(size_t)r * k + i]) * val(x[(size_t)r * k + i]);
    double rs = 1 / std::sqrt(sq / k + eps);
    for (int i = 0; i < k; i++) {
      double v = val(x[(size_t)r * k + i]);
      xr[i] = norm ? val(cast<T>(v * rs * val(nw[i]))) : v;
    }
    // Σ x'·W[o], its spread (the scale of accumulated roundings) and T(Σ).
    auto dot = [&](int row, double& spread) {
      double s = 0, s2 = 0;
      for (int i = 0; i < k; i++) {
        double t = xr[i] * val(w[(size_t)row * k + i]);
        s += t, s2 += t * t;
      }
      spread += std::sqrt(s2) + std::fabs(s);
      return val(cast<T>(s));
    };
    for (int o = 0; o < n; o++) {
      double spread = 0, v = dot(o, spread);
      if (swiglu) v = v / (1 + std::exp(-v)) * dot(n + o, spread);
      if (residual) v += val(res[(size_t)r * n + o]), spread += std::fabs(val(res[(size_t)r * n + o]));
      want[(size_t)r * n + o] = v;
      scale[(size_t)r * n + o] = spread + std::fabs(v);
    }
  }
  vector<T> y((size_t)m * n, cast<T>(NAN));
  unsigned grid = (unsigned)((n + GEMV_WARPS - 1) / GEMV_WARPS);
  emu::launch({grid}, {32 * GEMV_WARPS}, 0, K<T>::gemv, x.data(), w.data(), nw.data(), res.data(), y.data(), m, n,
              k, eps, mode);
  std::string full = std::string("gemv ") + what + " [" + K<T>::name + "]";
  double worst = 0;
  for (size_t i = 0; i < y.size(); i++) {
    double g = val(y[i]), err = std::fabs(g - want[i]), tol = 1e-4 + rtol<T>() * scale[i];
    if (!std::isfinite(g) || err > tol) {
      std::printf("FAIL %s: element %zu is %.6g, want %.6g\n", full.c_str(), i, g, want[i]);
      failures++;
      return;
    }
    worst = std::max(worst, err);
  }
  std::printf("ok   %s (worst error %.3g)\n", full.c_str(), worst);
}

template <typename T> static void check_gemvs() {
  check_gemv<T>("plain m1 n37 k200", 1, 37, 200, 0);     // a partial block; lanes with fewer chunks
  check_gemv<T>("plain m8 n9 k8", 8, 9, 8, 0);           // the most rows; one chunk, lane 0 only
  check_gemv<T>("norm m3 n96 k576", 3, 96, 576, GEMV_NORM);
  check_gemv<T>("residual m8 n64 k1536", 8, 64, 1536, GEMV_RESIDUAL);
  check_gemv<T>("norm+swiglu m2 n40 k576", 2, 40, 576, GEMV_NORM | GEMV_SWIGLU);
  check_gemv<T>("norm+residual m5 n20 k200", 5, 20, 200, GEMV_NORM | GEMV_RESIDUAL);
}
