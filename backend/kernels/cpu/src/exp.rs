//! Row reductions with e^x over logits: the parts of a log-sum-exp and the
//! softmax-shaped gradient, with e^x in SIMD lanes instead of a libm call
//! per value (a 49 152-token row has as many).
//!
//! e^x = 2^n · e^r with n = round(x·log₂e) and r = x − n·ln 2 split in two
//! constants, e^r by Cephes' degree-7 form 1 + r + r²·p(r) (relative error
//! about 1e-7, near libm's 0.5 ulp; the tests bound it). Below −103.98
//! the result is 0 (AVX2: below −87.68, where it would be a subnormal under
//! 8.3e-39), above ~88.7 it saturates at the largest exponent; a NaN stays
//! NaN. The portable path calls `f32::exp`.

use super::path;
#[cfg(target_arch = "x86_64")]
use super::Path;

/// Where e^x is 0 in f32 (below the smallest subnormal, 2^-149).
#[cfg(target_arch = "x86_64")]
const UNDERFLOW: f32 = -103.98;
#[cfg(target_arch = "x86_64")]
const OVERFLOW: f32 = 88.72;
#[cfg(target_arch = "x86_64")]
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI exact in few bits (Cephes' split).
#[cfg(target_arch = "x86_64")]
const LN2_HI: f32 = 0.693_359_4;
#[cfg(target_arch = "x86_64")]
const LN2_LO: f32 = -2.121_944_4e-4;
/// p(r), highest degree first.
#[cfg(target_arch = "x86_64")]
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// The largest of `x + bias` (`bias`, when given, as long as `x`).
pub fn max(x: &[f32], bias: Option<&[f32]>) -> f32 {
    match bias {
        Some(b) => x.iter().zip(b).map(|(x, b)| x + b).fold(f32::NEG_INFINITY, f32::max),
        None => x.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    }
}

/// Σ e^(x + bias − shift) (`bias`, when given, as long as `x`).
pub fn exp_sum(x: &[f32], bias: Option<&[f32]>, shift: f32) -> f32 {
    if let Some(b) = bias {
        assert_eq!(b.len(), x.len(), "exp_sum: bias length");
    }
    match path() {
        // SAFETY: `path` takes a SIMD path only where the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { avx512::exp_sum(x, bias, shift) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { avx2::exp_sum(x, bias, shift) },
        _ => portable_sum(x, bias, shift),
    }
}

/// x ← scale · e^(x − shift), in place.
pub fn exp_scale(x: &mut [f32], shift: f32, scale: f32) {
    match path() {
        // SAFETY: as in `exp_sum`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { avx512::exp_scale(x, shift, scale) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { avx2::exp_scale(x, shift, scale) },
        _ => x.iter_mut().for_each(|v| *v = scale * (*v - shift).exp()),
    }
}

fn portable_sum(x: &[f32], bias: Option<&[f32]>, shift: f32) -> f32 {
    match bias {
        Some(b) => x.iter().zip(b).map(|(x, b)| (x + b - shift).exp()).sum(),
        None => x.iter().map(|x| (x - shift).exp()).sum(),
    }
}

/// One module per instruction set: `exp` of a vector, and the two loops.
macro_rules! simd_exp {
    ($name:ident, $feature:literal, $lanes:literal, $v:ty, $set1:ident, $load:ident, $store:ident, $add:ident, $sub:ident, $mul:ident, $fmadd:ident, $fnmadd:ident, $maxp:ident, $minp:ident, $hsum:path, $round:path, $scale:path, $zero:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            use super::*;

            const L: usize = $lanes;

            /// e^x lane by lane.
            #[target_feature(enable = $feature)]
            #[inline]
            pub(super) unsafe fn exp(x: $v) -> $v {
                // The constant first: max/min return their second operand
                // when either is NaN, so a NaN passes through.
                let x = $minp($set1(OVERFLOW), $maxp($set1(UNDERFLOW), x));
                let n = $round(x);
                let r = $fnmadd(n, $set1(LN2_LO), $fnmadd(n, $set1(LN2_HI), x));
                let mut p = $set1(P[0]);
                for c in &P[1..] {
                    p = $fmadd(p, r, $set1(*c));
                }
                let er = $add($fmadd(p, $mul(r, r), r), $set1(1.0));
                $scale(er, n, x)
            }

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn exp_sum(x: &[f32], bias: Option<&[f32]>, shift: f32) -> f32 {
                let whole = x.len() / L * L;
                let (xp, s) = (x.as_ptr(), $set1(shift));
                let mut acc = [$zero(); 2];
                let mut c = 0;
                while c < whole {
                    let mut v = $load(xp.add(c));
                    if let Some(b) = bias {
                        v = $add(v, $load(b.as_ptr().add(c)));
                    }
                    acc[(c / L) & 1] = $add(acc[(c / L) & 1], exp($sub(v, s)));
                    c += L;
                }
                let tail = portable_sum(&x[whole..], bias.map(|b| &b[whole..]), shift);
                $hsum($add(acc[0], acc[1])) + tail
            }

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn exp_scale(x: &mut [f32], shift: f32, scale: f32) {
                let whole = x.len() / L * L;
                let (xp, s, k) = (x.as_mut_ptr(), $set1(shift), $set1(scale));
                let mut c = 0;
                while c < whole {
                    $store(xp.add(c), $mul(k, exp($sub($load(xp.add(c)), s))));
                    c += L;
                }
                x[whole..].iter_mut().for_each(|v| *v = scale * (*v - shift).exp());
            }
        }
    };
}

simd_exp!(
    avx512, "avx512f", 16, __m512, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_fmadd_ps, _mm512_fnmadd_ps, _mm512_max_ps,
    _mm512_min_ps, _mm512_reduce_add_ps, round_512, scale_512, _mm512_setzero_ps
);
simd_exp!(
    avx2, "avx2,fma", 8, __m256, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_max_ps,
    _mm256_min_ps, crate::hsum256, round_256, scale_256, _mm256_setzero_ps
);

/// n = round(x·log₂e).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn round_512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)))
}

/// e^r · 2^n: `scalef` gives 0 where that is below the subnormals.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn scale_512(er: std::arch::x86_64::__m512, n: std::arch::x86_64::__m512, _x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    std::arch::x86_64::_mm512_scalef_ps(er, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn round_256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)))
}

/// e^r · 2^n with 2^n built in the exponent bits, which hold n ≥ −126
/// (x ≥ −87.68; results below 2^-126 are the product's subnormals): below
/// that the result is 0. A NaN x keeps its NaN.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scale_256(er: std::arch::x86_64::__m256, n: std::arch::x86_64::__m256, x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let low = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.68));
    // n = 128 (x ≥ 88.38) as 2^127 · 2.
    let n1 = _mm256_min_ps(_mm256_set1_ps(127.0), _mm256_max_ps(_mm256_set1_ps(-126.0), n));
    let twice = _mm256_add_ps(_mm256_set1_ps(1.0), _mm256_sub_ps(n, n1));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n1), _mm256_set1_epi32(127)));
    _mm256_andnot_ps(low, _mm256_mul_ps(_mm256_mul_ps(er, twice), _mm256_castsi256_ps(bits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path this CPU runs: (name, exp_sum, exp_scale).
    #[allow(clippy::type_complexity)]
    fn paths() -> Vec<(&'static str, fn(&[f32], Option<&[f32]>, f32) -> f32, fn(&mut [f32], f32, f32))> {
        #[allow(unused_mut)]
        let mut out: Vec<(&'static str, fn(&[f32], Option<&[f32]>, f32) -> f32, fn(&mut [f32], f32, f32))> =
            vec![("portable", portable_sum, |x, s, k| x.iter_mut().for_each(|v| *v = k * (*v - s).exp()))];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                out.push(("avx2", |x, b, s| unsafe { avx2::exp_sum(x, b, s) }, |x, s, k| unsafe { avx2::exp_scale(x, s, k) }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(("avx512", |x, b, s| unsafe { avx512::exp_sum(x, b, s) }, |x, s, k| unsafe { avx512::exp_scale(x, s, k) }));
            }
        }
        out
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_f64_everywhere() {
        // −110..88.7 in small steps: underflow, subnormal results, 0, up to
        // the largest finite result.
        let xs: Vec<f32> = (0..198_700).map(|i| -110.0 + i as f32 * 0.001).collect();
        for (name, _, scale) in paths() {
            let mut got = xs.clone();
            scale(&mut got, 0.0, 1.0);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = (x as f64).exp();
                if want < f32::MIN_POSITIVE as f64 {
                    // Subnormal or below: 0 or within one subnormal step.
                    assert!(g >= 0.0 && (g as f64 - want).abs() <= 2.0 * 1.4e-45_f64.max(want * 1e-6) + 1.2e-38, "{name}: e^{x} = {g}, want {want}");
                } else {
                    assert!((g as f64 - want).abs() <= 3e-7 * want, "{name}: e^{x} = {g}, want {want}");
                }
            }
        }
    }

    #[test]
    fn sums_and_scales_match_f64_with_bias_and_tails() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 20.0 - 10.0
        };
        for n in [1usize, 7, 16, 33, 1000, 49_152] {
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            // A masked block, as the tasks' −99 penalty makes.
            let b: Vec<f32> = (0..n).map(|i| if i % 5 == 0 { -99.0 } else { 0.0 }).collect();
            let m = max(&x, Some(&b));
            let want: f64 = x.iter().zip(&b).map(|(x, b)| ((x + b - m) as f64).exp()).sum();
            for (name, sum, scale) in paths() {
                let got = sum(&x, Some(&b), m) as f64;
                // f32 sums: the portable path adds in order (2e-5 off at 49 152).
                assert!((got - want).abs() <= 1e-4 * want, "{name}, n {n}: {got} vs {want}");
                let xb: Vec<f32> = x.iter().zip(&b).map(|(x, b)| x + b).collect();
                let mut y = xb.clone();
                scale(&mut y, m, -0.5);
                for (i, (&yi, &xi)) in y.iter().zip(&xb).enumerate() {
                    let e = -0.5 * ((xi - m) as f64).exp();
                    assert!((yi as f64 - e).abs() <= 3e-7 * e.abs() + 1e-30, "{name}, n {n} at {i}: {yi} vs {e}");
                }
            }
        }
    }

    #[test]
    fn nan_stays_nan() {
        let mut x = vec![0f32; 40];
        x[17] = f32::NAN;
        for (name, sum, scale) in paths() {
            assert!(sum(&x, None, 0.0).is_nan(), "{name}: a NaN vanished from the sum");
            let mut y = x.clone();
            scale(&mut y, 0.0, 1.0);
            assert!(y[17].is_nan() && y[16] == 1.0, "{name}: {:?}", &y[15..19]);
        }
    }
}
