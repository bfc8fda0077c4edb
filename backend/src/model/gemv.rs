//! Decode-step projections for a few rows, each one kernel with its neighbours
//! fused in (`backend/kernels/gemv.cuh`): the RMSNorm before a projection, the
//! residual add after one, SwiGLU between gate/up and down.
//!
//! A decode step of a small batch reads every weight once for a handful of
//! rows: it is bound by memory and, on a GPU, by how many kernels the host
//! queues. cuBLAS spends at least one kernel on each product and the fused ops
//! of `fused.rs` one more on each norm, add and SwiGLU (9 a layer); with these
//! a layer takes 5 (`llama.rs`: norm+q/k/v, the cache write, attention,
//! o+add, norm+gate/up+SwiGLU, down+add — see `Llama::set_gemv`).
//!
//! Owns the op, its CPU reference (in f32, rounding to the model dtype where
//! the composed ops round, so both paths agree to rounding) and its shape
//! checks; the CUDA launch is in `fused_cuda.rs`. Inference only: no backward.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::fused::{cpu_slice, f, float_dispatch};
use crate::{Error, Result};

/// Rows (batch × new tokens) a call takes at most (the kernel's accumulators per lane).
pub const MAX_ROWS: usize = 8;

/// The most rows (batch × new tokens) a pass of a model on `device` runs
/// through the gemv blocks unless told otherwise ([`crate::model::Llama::set_gemv_rows`];
/// 0: off): `AMORTIZE_GEMV=1` gives [`MAX_ROWS`] and `0` turns them off; else 1
/// on the CPU and off elsewhere. On the CPU (random SmolLM2-135M shape, f32, this
/// project's 2-core machine, dependencies built without debug assertions) they
/// decoded 1.13× faster than the fused blocks at batch 1, but 0.82× at 2 and
/// 0.55× at 4 (docs/results/cpu-2026-11-28c); since their f32 products and
/// the fused blocks' both take the few-rows kernel, they run alike at batch 1
/// (docs/results/cpu-2026-11-28d). On CUDA they stay off until the kernel's
/// device tests and timings have run on a GPU.
pub fn default_rows(device: &candle_core::Device) -> usize {
    match std::env::var("AMORTIZE_GEMV").ok().as_deref() {
        Some("1") => MAX_ROWS,
        Some("0") => 0,
        _ => usize::from(device.is_cpu()),
    }
}

/// Passes run through the gemv blocks so far in this process (for tests and
/// benchmarks: a pass that does not qualify runs the fused blocks silently).
pub fn block_passes() -> usize {
    PASSES.load(std::sync::atomic::Ordering::Relaxed)
}

pub(super) static PASSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Kernel mode bits (`GEMV_*` in gemv.cuh).
pub(super) const NORM: i32 = 1;
pub(super) const RESIDUAL: i32 = 2;
pub(super) const SWIGLU: i32 = 4;

/// What is fused around the product `x · Wᵀ`.
#[derive(Clone, Copy, Default)]
pub struct Fuse<'a> {
    /// RMSNorm of x first, with this weight [k] and eps.
    pub norm: Option<(&'a Tensor, f64)>,
    /// Added to the product: [.., n], x's rows.
    pub residual: Option<&'a Tensor>,
    /// `w` holds n gate rows then n up rows; the result is `silu(gate) · up`.
    pub swiglu: bool,
}

/// Whether [`gemv`] takes `x` [.., k] and `w` [n, k] (or [2n, k]): at most
/// [`MAX_ROWS`] rows, k a multiple of 8 (16-byte loads) and `w` dense from
/// an aligned start (x and the rest are made dense by `gemv`).
pub fn fits(x: &Tensor, w: &Tensor) -> bool {
    let k = x.dims().last().copied().unwrap_or(0);
    let rows = x.elem_count() / k.max(1);
    let (start, dense) = w.layout().contiguous_offsets().map_or((1, false), |(s, _)| (s, true));
    (1..=MAX_ROWS).contains(&rows) && k > 0 && k % 8 == 0 && w.rank() == 2 && w.dim(1).is_ok_and(|c| c == k) && dense && start % 8 == 0 && x.dtype() == w.dtype()
}

/// `x · Wᵀ` with `fuse` around it: x [.., k] (see [`fits`]), w [n, k] ([2n, k]
/// with SwiGLU) → [.., n], in x's dtype.
pub fn gemv(x: &Tensor, w: &Tensor, fuse: Fuse) -> Result<Tensor> {
    let k = x.dims().last().copied().unwrap_or(0);
    let n = if fuse.swiglu { w.dim(0)? / 2 } else { w.dim(0)? };
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = n;
    }
    let bad = !fits(x, w)
        || (fuse.swiglu && w.dim(0)? % 2 != 0)
        || fuse.norm.is_some_and(|(nw, _)| nw.dims() != [k] || nw.dtype() != x.dtype())
        || fuse.residual.is_some_and(|r| r.dims() != out_dims.as_slice() || r.dtype() != x.dtype());
    if bad {
        return Err(Error::invalid("gemv", format!("x {:?}, w {:?} {:?} (at most {MAX_ROWS} rows, k a multiple of 8)", x.dims(), w.dims(), w.dtype())));
    }
    let mode = fuse.norm.map_or(0, |_| NORM) | fuse.residual.map_or(0, |_| RESIDUAL) | if fuse.swiglu { SWIGLU } else { 0 };
    // The kernel reads 16-byte vectors from each start: dense copies from
    // offset 0 where needed (`copy` would keep the offset).
    let aligned = |t: &Tensor| -> Result<Tensor> {
        match t.layout().contiguous_offsets() {
            Some((s, _)) if s % 8 == 0 => Ok(t.clone()),
            _ => Ok(t.force_contiguous()?),
        }
    };
    let op = Gemv {
        w: w.clone(),
        norm: fuse.norm.map(|(nw, _)| aligned(nw)).transpose()?,
        residual: fuse.residual.map(|r| r.contiguous()).transpose()?,
        eps: fuse.norm.map_or(0.0, |(_, e)| e as f32),
        mode,
        n,
    };
    let x2 = aligned(x)?.reshape((x.elem_count() / k, k))?;
    Ok(x2.apply_op1_no_bwd(&op)?.reshape(out_dims)?)
}

/// `x · w` in f32 over eight independent lanes (k is a multiple of 8), which
/// the compiler can keep in vector registers.
fn dot8<T: WithDType>(x: &[f32], w: &[T]) -> f32 {
    let mut acc = [0f32; 8];
    for (a, b) in x.chunks_exact(8).zip(w.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += a[j] * f(b[j]);
        }
    }
    acc.iter().sum()
}

/// The CPU values behind an optional operand's storage guard.
fn cpu_of<'a, T: WithDType, G: std::ops::Deref<Target = Storage>>(g: &'a Option<(G, &Layout)>) -> candle_core::Result<Option<&'a [T]>> {
    match g {
        None => Ok(None),
        Some((s, l)) => match &**s {
            Storage::Cpu(c) => Ok(Some(cpu_slice::<T>(c, l)?)),
            _ => bail!("gemv: inputs on different devices"),
        },
    }
}

/// The op on x [m, k]: the weights and the fused operands ride along.
pub(super) struct Gemv {
    pub w: Tensor,
    pub norm: Option<Tensor>,
    pub residual: Option<Tensor>,
    pub eps: f32,
    pub mode: i32,
    /// Output features.
    pub n: usize,
}

impl CustomOp1 for Gemv {
    fn name(&self) -> &'static str {
        "gemv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let n = self.n;
        let (w, wl) = self.w.storage_and_layout();
        let nw = self.norm.as_ref().map(|t| t.storage_and_layout());
        let res = self.residual.as_ref().map(|t| t.storage_and_layout());
        let Storage::Cpu(w) = &*w else { bail!("gemv: inputs on different devices") };
        let w32 = cpu_slice::<f32>(w, wl).ok();
        float_dispatch!(s, self.name(), |T| {
            let x = cpu_slice::<T>(s, l)?;
            let w = cpu_slice::<T>(w, wl)?;
            let (nw, res) = (cpu_of::<T, _>(&nw)?, cpu_of::<T, _>(&res)?);
            let round = |v: f32| f(T::from_f64(v as f64));
            // Each row's input as the product reads it (normed and rounded with NORM).
            let xs: Vec<Vec<f32>> = (0..m)
                .map(|r| {
                    let row = &x[r * k..(r + 1) * k];
                    match nw {
                        None => row.iter().map(|&v| f(v)).collect(),
                        Some(nw) => {
                            let rstd = 1.0 / (row.iter().map(|&v| f(v) * f(v)).sum::<f32>() / k as f32 + self.eps).sqrt();
                            row.iter().zip(nw).map(|(&v, &g)| round(f(v) * rstd * f(g))).collect()
                        }
                    }
                })
                .collect();
            let swiglu = self.mode & SWIGLU != 0;
            let silu_mul = |g: f32, u: f32| g / (1.0 + (-g).exp()) * u;
            // Output-major values [n, m] before the residual add.
            let mut by_out = vec![0f32; n * m];
            if let (Some(w), true) = (w32, m <= amortize_cpu_kernels::MAX_ROWS && amortize_cpu_kernels::simd()) {
                // In f32 (rounding is the identity) the products are the CPU
                // kernel's, which streams each weight row once for all the rows.
                let rows = if swiglu { 2 * n } else { n };
                let p = amortize_cpu_kernels::x_wt(&xs.concat(), w, m, k, rows); // [m, rows]
                for (i, v) in by_out.iter_mut().enumerate() {
                    let (o, r) = (i / m, i % m);
                    let g = p[r * rows + o];
                    *v = if swiglu { silu_mul(g, p[r * rows + n + o]) } else { g };
                }
            } else {
                // In parallel over blocks of output features: each weight row
                // is read once for all the rows (as the kernel does).
                by_out.par_chunks_mut(64 * m).enumerate().for_each(|(blk, chunk)| {
                    for (j, vals) in chunk.chunks_mut(m).enumerate() {
                        let o = blk * 64 + j;
                        for (v, xr) in vals.iter_mut().zip(&xs) {
                            *v = round(dot8(xr, &w[o * k..(o + 1) * k]));
                            if swiglu {
                                *v = silu_mul(*v, round(dot8(xr, &w[(n + o) * k..(n + o + 1) * k])));
                            }
                        }
                    }
                });
            }
            let mut y = vec![T::from_f64(0.0); m * n];
            for (i, y) in y.iter_mut().enumerate() {
                let (r, o) = (i / n, i % n);
                let v = by_out[o * m + r] + res.map_or(0.0, |res| f(res[i]));
                *y = T::from_f64(v as f64);
            }
            Ok((T::to_cpu_storage_owned(y), Shape::from((m, n))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::gemv(self, s, l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    // The values against the composed ops: `backend/tests/gemv.rs` (also on CUDA).

    fn rand(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    #[test]
    fn gemv_refuses_what_the_kernel_cannot_take() {
        let w = rand(&[8, 64], DType::F32);
        assert!(gemv(&rand(&[9, 64], DType::F32), &w, Fuse::default()).unwrap_err().to_string().contains("at most 8 rows"));
        assert!(gemv(&rand(&[1, 60], DType::F32), &rand(&[8, 60], DType::F32), Fuse::default()).is_err());
        assert!(gemv(&rand(&[1, 64], DType::BF16), &w, Fuse::default()).is_err());
        let r = rand(&[1, 7], DType::F32);
        assert!(gemv(&rand(&[1, 64], DType::F32), &w, Fuse { residual: Some(&r), ..Fuse::default() }).is_err());
        // A weight view from an unaligned row start is not taken.
        let big = rand(&[9, 64], DType::F32);
        assert!(fits(&rand(&[1, 64], DType::F32), &big.narrow(0, 1, 8).unwrap()));
        assert!(!fits(&rand(&[1, 64], DType::F32), &big.flatten_all().unwrap().narrow(0, 4, 512).unwrap().reshape((8, 64)).unwrap()));
    }
}
