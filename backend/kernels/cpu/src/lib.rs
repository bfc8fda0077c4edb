//! Amortize's hand-written CPU kernels: hot loops that must run optimised in
//! every build. The workspace's dev profile compiles its own crates at
//! opt-level 1, where LLVM does not vectorise loops; this crate is built at
//! opt-level 3 there too (root `Cargo.toml`), and has no candle types, so it
//! compiles in seconds.
//!
//! - [`x_wt`]: x Wᵀ for a few rows of x, f32 — a register-blocked kernel that
//!   reads the weight once, in its stored row-major layout, for all the rows.
//! - [`dot`]: a dot product in independent lanes (the portable path's, and
//!   the reward's branch blocks in `amortize::model::branch`).
//! - [`exp`]: a log-sum-exp's parts and a softmax-shaped row, with e^x in
//!   SIMD lanes (the reward's and the policy head's rows of 49 152 logits).
//!
//! A decode step multiplies every weight by a handful of rows. candle's CPU
//! matmul (the gemm crate) either packs the whole weight first ((W xᵀ)ᵀ: the
//! weight is copied on every call) or runs microkernels sized for many rows on
//! a few (x Wᵀ: most vector lanes idle — with AVX-512, 16 lanes of which a
//! batch of 2 fills 2). Here each tile of `G` weight rows × `R` rows of x keeps
//! `G·R` accumulators of `L` lanes in registers and streams both operands along
//! the shared dimension. Timed against candle in
//! `cargo bench -p amortize --bench cpu_matmul`.
//!
//! Owns the loops and their instruction-set dispatch ([`path`]: AVX-512,
//! AVX2+FMA, or plain code the compiler vectorises for the baseline target).
//! Knows nothing of tensors: the candle op around it is
//! `amortize::model::few_rows`.

use rayon::prelude::*;

pub mod exp;

/// The most rows of x [`x_wt`] takes.
pub const MAX_ROWS: usize = 16;

/// Output features per parallel task.
const BLOCK: usize = 64;

/// y = x Wᵀ as [m, n] for x [m, k] and W [n, k] (row-major slices).
///
/// # Panics
/// If the slices are shorter than the shapes or `m` is outside 1..=[`MAX_ROWS`].
pub fn x_wt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!((1..=MAX_ROWS).contains(&m) && k > 0 && x.len() >= m * k && w.len() >= n * k, "x_wt: m {m}, k {k}, n {n}");
    let (x, w) = (&x[..m * k], &w[..n * k]);
    // Output-major blocks in parallel ([BLOCK, m] each), then one transpose.
    let mut by_out = vec![0f32; n * m];
    by_out.par_chunks_mut(BLOCK * m).enumerate().for_each(|(b, out)| {
        let o0 = b * BLOCK;
        let rows = out.len() / m;
        block(x, &w[o0 * k..(o0 + rows) * k], m, k, out);
    });
    if m == 1 {
        return by_out;
    }
    let mut y = vec![0f32; m * n];
    for (o, vals) in by_out.chunks_exact(m).enumerate() {
        for (r, &v) in vals.iter().enumerate() {
            y[r * n + o] = v;
        }
    }
    y
}

/// The instruction set the kernels run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Avx512,
    Avx2,
    /// Plain code the compiler vectorises for the baseline target.
    Portable,
}

/// The best path this CPU runs, chosen once. `AMORTIZE_CPU_KERNEL=avx2` or
/// `=portable` asks for a lesser one (for benchmarks and checks); a path the
/// CPU lacks is never taken.
pub fn path() -> Path {
    static PATH: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        let wanted = match std::env::var("AMORTIZE_CPU_KERNEL").ok().as_deref() {
            Some("portable") => Path::Portable,
            Some("avx2") => Path::Avx2,
            _ => Path::Avx512,
        };
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            if wanted == Path::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
                return Path::Avx512;
            }
            if wanted != Path::Portable && avx2 {
                return Path::Avx2;
            }
        }
        let _ = wanted;
        Path::Portable
    })
}

/// Whether [`path`] has SIMD tiles. Callers should keep their own product
/// where it has not: the portable loop was never timed against one.
pub fn simd() -> bool {
    path() != Path::Portable
}

/// One block: `out[o·m + r]` for the block's weight rows `w` [n_b, k].
fn block(x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    match path() {
        // SAFETY: `path` takes a SIMD path only where the CPU has its
        // features; the slices hold m·k, n_b·k and n_b·m values (`x_wt`).
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { avx512::block(x, w, m, k, out) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { avx2::block(x, w, m, k, out) },
        _ => portable(x, w, m, k, out),
    }
}

/// The same sums without SIMD intrinsics (CPUs without AVX2+FMA, and
/// `AMORTIZE_CPU_KERNEL=portable`).
fn portable(x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    for (o, wr) in w.chunks_exact(k).enumerate() {
        for (r, xr) in x.chunks_exact(k).enumerate() {
            out[o * m + r] = dot(wr, xr);
        }
    }
}

/// Σ a·b over the shorter slice, in 8 independent lanes (a plain f32 sum is
/// one serial chain, which the compiler may not reorder into SIMD lanes).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// A module of tiles for one instruction set: `L` lanes a vector, tiles of
/// `G` weight rows × `R` rows of x (`G·R` accumulators + `G + 1` operand
/// vectors must fit the register file), edges as smaller tiles.
macro_rules! simd_tiles {
    ($name:ident, $feature:literal, $lanes:literal, $g:literal, $r:literal, $v:ty, $zero:ident, $load:ident, $fma:ident, $hsum:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use std::arch::x86_64::*;

            const L: usize = $lanes;

            /// # Safety
            /// The CPU has the module's features; `x` holds m·k values, `w` a
            /// multiple of k, `out` (w.len() / k)·m.
            #[target_feature(enable = $feature)]
            pub unsafe fn block(x: &[f32], w: &[f32], m: usize, k: usize, out: &mut [f32]) {
                let n = w.len() / k;
                let mut o = 0;
                while o < n {
                    let g = ($g).min(n - o);
                    let mut r = 0;
                    while r < m {
                        let rr = ($r).min(m - r);
                        macro_rules! rows {
                            ($gg:literal) => {
                                match rr {
                                    1 => tile::<$gg, 1>(x, w, k, m, o, r, out),
                                    2 => tile::<$gg, 2>(x, w, k, m, o, r, out),
                                    3 => tile::<$gg, 3>(x, w, k, m, o, r, out),
                                    4 if $r > 4 => tile::<$gg, 4>(x, w, k, m, o, r, out),
                                    5 if $r > 5 => tile::<$gg, 5>(x, w, k, m, o, r, out),
                                    _ => tile::<$gg, $r>(x, w, k, m, o, r, out),
                                }
                            };
                        }
                        match g {
                            1 => rows!(1),
                            2 => rows!(2),
                            3 => rows!(3),
                            _ => rows!($g),
                        }
                        r += rr;
                    }
                    o += g;
                }
            }

            /// `out[(o + i)·m + r + j] = x[r + j] · w[o + i]` for i < G, j < R.
            #[target_feature(enable = $feature)]
            #[allow(clippy::needless_range_loop)]
            unsafe fn tile<const G: usize, const R: usize>(x: &[f32], w: &[f32], k: usize, m: usize, o: usize, r: usize, out: &mut [f32]) {
                debug_assert!((o + G) * k <= w.len() && (r + R) * k <= x.len());
                let (wp, xp) = (w.as_ptr().add(o * k), x.as_ptr().add(r * k));
                let mut acc: [[$v; R]; G] = [[$zero(); R]; G];
                let whole = k / L * L;
                let mut c = 0;
                while c < whole {
                    let mut wv: [$v; G] = [$zero(); G];
                    for i in 0..G {
                        wv[i] = $load(wp.add(i * k + c));
                    }
                    for j in 0..R {
                        let xv = $load(xp.add(j * k + c));
                        for i in 0..G {
                            acc[i][j] = $fma(wv[i], xv, acc[i][j]);
                        }
                    }
                    c += L;
                }
                for i in 0..G {
                    for j in 0..R {
                        // A shuffle tree: summing the lanes in order is L - 1
                        // dependent adds, next to k / L loop steps (36 for k = 576).
                        let mut s = $hsum(acc[i][j]);
                        for c in whole..k {
                            s += *wp.add(i * k + c) * *xp.add(j * k + c);
                        }
                        out[(o + i) * m + r + j] = s;
                    }
                }
            }
        }
    };
}

// 32 vector registers: 4×4 accumulators + 4 weight + 1 input vector (4×6
// measured no faster, with the lanes then summed in order).
simd_tiles!(avx512, "avx512f", 16, 4, 4, __m512, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps);
// 16 vector registers: 4×2 accumulators + 4 weight + 1 input vector.
simd_tiles!(avx2, "avx2,fma", 8, 4, 2, __m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, super::hsum256);

/// The sum of an AVX vector's 8 lanes by halving.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    type BlockFn = fn(&[f32], &[f32], usize, usize, &mut [f32]);

    fn naive(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for o in 0..n {
                y[r * n + o] = (0..k).map(|c| x[r * k + c] as f64 * w[o * k + c] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn matches_the_plain_product_on_every_edge() {
        // Row counts 1–16 (every tile edge), output counts off the tile and
        // block sizes, and a shared dimension with a remainder after the lanes.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for &(k, n) in &[(64usize, 130usize), (37, 9), (576, 67), (8, 1)] {
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            for m in 1..=MAX_ROWS {
                let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
                let (got, want) = (x_wt(&x, &w, m, k, n), naive(&x, &w, m, k, n));
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "k {k} n {n} m {m} at {i}: {g} vs {e}");
                }
                // Every path this CPU can run agrees, not only the one `x_wt` picks.
                #[allow(unused_mut)] // nothing is pushed off x86-64
                let mut paths: Vec<(&str, BlockFn)> = vec![("portable", portable)];
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        paths.push(("avx2", |x, w, m, k, out| unsafe { avx2::block(x, w, m, k, out) }));
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        paths.push(("avx512", |x, w, m, k, out| unsafe { avx512::block(x, w, m, k, out) }));
                    }
                }
                for (name, path) in paths {
                    let mut out = vec![0f32; n * m];
                    path(&x, &w, m, k, &mut out);
                    for o in 0..n {
                        for r in 0..m {
                            let (g, e) = (out[o * m + r], want[r * n + o]);
                            assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{name}: k {k} n {n} m {m}: {g} vs {e}");
                        }
                    }
                }
            }
        }
    }
}
