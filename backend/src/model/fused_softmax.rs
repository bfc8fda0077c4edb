//! The taped attention's softmax as fused ops (`tape.rs`, when `Llama::fused`):
//! the forward's scores-to-probabilities step (the additive mask broadcast over
//! the heads, the softmax in f32) and its backward, one op each instead of
//! three and six. CPU bodies here (row-parallel, in f32), CUDA bodies in
//! `fused_cuda.rs` (kernels `masked_softmax_*`, `softmax_backward_*` in
//! `backend/kernels/fused.cu`). The composed ops in `tape.rs` stay the reference.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::fused::{cpu_slice, f, float_dispatch};
use crate::Result;

/// softmax(scores + mask) in f32: scores [B, KV, rep·T, S] (model dtype; row
/// `j` of a head group is query `j mod T`), mask [B, T, S] (f32, additive,
/// shared by every head). Returns the probabilities [B, KV, rep·T, S] in f32.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, _, rows, s) = scores.dims4()?;
    let (mb, t, ms) = mask.dims3()?;
    if mb != b || ms != s || t == 0 || rows % t != 0 || mask.dtype() != DType::F32 {
        return Err(crate::Error::invalid("masked_softmax", format!("scores {:?}, mask {:?} {:?}", scores.dims(), mask.dims(), mask.dtype())));
    }
    if scores.elem_count() == 0 {
        return Ok(Tensor::zeros(scores.dims(), DType::F32, scores.device())?);
    }
    Ok(scores.contiguous()?.apply_op2_no_bwd(&mask.contiguous()?, &MaskedSoftmax)?)
}

/// The backward of the softmax: d scores = p ⊙ (dp − Σ_s p_s dp_s) per row, in
/// f32, rounded once to `d_probs`' dtype. probs: f32; d_probs: the same shape.
pub fn softmax_backward(probs: &Tensor, d_probs: &Tensor) -> Result<Tensor> {
    if probs.dims() != d_probs.dims() || probs.dtype() != DType::F32 || probs.rank() == 0 {
        return Err(crate::Error::invalid("softmax_backward", format!("probs {:?} {:?}, d_probs {:?}", probs.dims(), probs.dtype(), d_probs.dims())));
    }
    if probs.elem_count() == 0 {
        return Ok(d_probs.zeros_like()?);
    }
    Ok(d_probs.contiguous()?.apply_op2_no_bwd(&probs.contiguous()?, &SoftmaxBackward)?)
}

pub(super) struct MaskedSoftmax;
pub(super) struct SoftmaxBackward;

/// softmax of `x` into `out`, in place of a row (max, exp, sum, divide).
fn softmax_row(x: impl Fn(usize) -> f32, out: &mut [f32]) {
    let m = (0..out.len()).map(&x).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (i, o) in out.iter_mut().enumerate() {
        *o = (x(i) - m).exp();
        sum += *o;
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, m: &CpuStorage, ml: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, kv, rows, s_n) = l.shape().dims4()?;
        let (_, t_n, _) = ml.shape().dims3()?;
        let mask = cpu_slice::<f32>(m, ml)?;
        float_dispatch!(s, self.name(), |T| {
            let x = cpu_slice::<T>(s, l)?;
            let mut out = vec![0f32; l.shape().elem_count()];
            out.par_chunks_mut(s_n).enumerate().for_each(|(r, out)| {
                let (b, t) = (r / (kv * rows), r % t_n);
                let (xr, mr) = (&x[r * s_n..(r + 1) * s_n], &mask[(b * t_n + t) * s_n..(b * t_n + t + 1) * s_n]);
                softmax_row(|i| f(xr[i]) + mr[i], out);
            });
            Ok((CpuStorage::F32(out), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout, m: &candle_core::CudaStorage, ml: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::masked_softmax((s, l), (m, ml))
    }
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(&self, d: &CpuStorage, dl: &Layout, p: &CpuStorage, pl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let s_n = *dl.dims().last().unwrap_or(&1);
        let p = cpu_slice::<f32>(p, pl)?;
        float_dispatch!(d, self.name(), |T| {
            let dp = cpu_slice::<T>(d, dl)?;
            let mut out = vec![T::from_f64(0.0); dl.shape().elem_count()];
            out.par_chunks_mut(s_n.max(1)).enumerate().for_each(|(r, out)| {
                let (pr, dr) = (&p[r * s_n..(r + 1) * s_n], &dp[r * s_n..(r + 1) * s_n]);
                let dot: f32 = pr.iter().zip(dr).map(|(&p, &d)| p * f(d)).sum();
                for ((o, &p), &d) in out.iter_mut().zip(pr).zip(dr) {
                    *o = T::from_f64((p * (f(d) - dot)) as f64);
                }
            });
            Ok((T::to_cpu_storage_owned(out), dl.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, d: &candle_core::CudaStorage, dl: &Layout, p: &candle_core::CudaStorage, pl: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::softmax_backward((d, dl), (p, pl))
    }
}
