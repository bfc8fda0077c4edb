//! Row-wise fused ops over logits [N, V] (f32), each a few passes over a row
//! instead of a handful of ops over the whole [N, V]:
//! - [`draw_rows`]: the next-token choice of `draw.rs` (used by
//!   [`super::draw::DeviceDraw`] when the model's fused ops are on): bias, stop
//!   mask, log-softmax, temperature and the Gumbel-max draw (or arg-max);
//! - [`logprobs_at`]: log-softmax(logits + bias) at given ids, the log-probabilities
//!   the reward reads, without the [N, V] log-softmax.
//!
//! The CPU bodies are here; the CUDA kernels are `draw_rows` and `logprobs_at` in
//! `backend/kernels/fused.cu`, with the same arithmetic in f32. Computes only:
//! callers own the masks and the noise.

use amortize_cpu_kernels::exp;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// Row-wise draw over logits [B, V] (f32). `bias`, `stop`: additive [1, V] (f32,
/// absent: none); `uniform`: U(0, 1) noise [B, V], required unless `greedy`.
/// Returns [B, 3] f32 on the logits' device: the token (exact below 2^24),
/// its log-probability at temperature 1 (masks applied), and its log-probability
/// under the tempered distribution it was drawn from (0 when greedy). Ties go to
/// the smallest token id.
pub(super) fn draw_rows(logits: &Tensor, bias: Option<&Tensor>, stop: Option<&Tensor>, uniform: Option<&Tensor>, temperature: f32, greedy: bool, u_max: f32) -> Result<Tensor> {
    let (b, v) = logits.dims2()?;
    let invalid = |what: String| crate::Error::invalid("draw", what);
    for (name, t) in [("bias", bias), ("stop mask", stop)] {
        if let Some(t) = t {
            if t.dims() != [1, v] || t.dtype() != DType::F32 {
                return Err(invalid(format!("{name}: {:?} {:?} for {v} logits", t.dims(), t.dtype())));
            }
        }
    }
    let uniform = match (uniform, greedy) {
        (Some(u), _) if u.dims() != [b, v] => return Err(invalid(format!("noise {:?} for logits [{b}, {v}]", u.dims()))),
        (Some(u), false) => Some(u.to_dtype(DType::F32)?.contiguous()?),
        (_, true) => None,
        (None, false) => return Err(invalid("on-device drawing needs noise".into())),
    };
    if logits.dtype() != DType::F32 || v == 0 || !(greedy || temperature > 0.0 && temperature.is_finite()) {
        return Err(invalid(format!("logits {:?} [{b}, {v}] at temperature {temperature}", logits.dtype())));
    }
    if b == 0 {
        return Ok(Tensor::zeros((0, 3), DType::F32, logits.device())?);
    }
    let op = DrawRows { bias: bias.map(|t| t.contiguous()).transpose()?, stop: stop.map(|t| t.contiguous()).transpose()?, uniform, temperature, greedy, u_max };
    Ok(logits.contiguous()?.apply_op1_no_bwd(&op)?)
}

pub(super) struct DrawRows {
    bias: Option<Tensor>,
    stop: Option<Tensor>,
    uniform: Option<Tensor>,
    temperature: f32,
    greedy: bool,
    u_max: f32,
}

/// The values of an f32 tensor held by the op (contiguous, on the CPU).
fn host(t: &Option<Tensor>) -> candle_core::Result<Option<Vec<f32>>> {
    t.as_ref().map(|t| t.flatten_all()?.to_vec1::<f32>()).transpose()
}

impl DrawRows {
    /// One row: (token, logp[token], s[token] or 0), as the kernel computes it.
    fn row(&self, l: &[f32], bias: Option<&[f32]>, stop: Option<&[f32]>, u: Option<&[f32]>) -> [f32; 3] {
        let (temp, greedy, v) = (self.temperature, self.greedy, l.len());
        let x = |j: usize| l[j] + bias.map_or(0.0, |b| b[j]) + stop.map_or(0.0, |s| s[j]);
        let m = (0..v).map(x).fold(f32::NEG_INFINITY, f32::max);
        let lse = (0..v).map(|j| (x(j) - m).exp()).sum::<f32>().ln();
        let logp = |j: usize| (x(j) - m) - lse;
        let tempered = !greedy && temp != 1.0;
        let (ms, ls) = if tempered {
            let ms = (0..v).map(|j| logp(j) / temp).fold(f32::NEG_INFINITY, f32::max);
            (ms, (0..v).map(|j| (logp(j) / temp - ms).exp()).sum::<f32>().ln())
        } else {
            (0.0, 0.0)
        };
        let s = |j: usize| if tempered { (logp(j) / temp - ms) - ls } else { logp(j) };
        let key = |j: usize| match u {
            Some(u) if !greedy => s(j) - (-u[j].clamp(f32::MIN_POSITIVE, self.u_max).ln()).ln(),
            _ => logp(j),
        };
        let (mut best, mut tok) = (f32::NEG_INFINITY, usize::MAX);
        for j in 0..v {
            let k = key(j);
            if k > best || (k == best && j < tok) {
                (best, tok) = (k, j);
            }
        }
        if tok >= v {
            tok = 0; // every key NaN
        }
        [tok as f32, logp(tok), if greedy { 0.0 } else { s(tok) }]
    }
}

impl CustomOp1 for DrawRows {
    fn name(&self) -> &'static str {
        "draw-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, v) = l.shape().dims2()?;
        let CpuStorage::F32(all) = s else { bail!("draw-rows: logits must be f32") };
        let logits = &all[l.start_offset()..l.start_offset() + b * v];
        let (bias, stop, u) = (host(&self.bias)?, host(&self.stop)?, host(&self.uniform)?);
        let mut out = vec![0f32; b * 3];
        out.par_chunks_mut(3).enumerate().for_each(|(r, o)| {
            let u = u.as_deref().map(|u| &u[r * v..(r + 1) * v]);
            o.copy_from_slice(&self.row(&logits[r * v..(r + 1) * v], bias.as_deref(), stop.as_deref(), u));
        });
        Ok((CpuStorage::F32(out), Shape::from((b, 3))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::draw_rows(self, s, l)
    }
}

/// log-softmax(logits + bias) of each row of `logits` [N, V] (f32) at that
/// row's `k` ids (`ids`: row-major [N, k], each < V); `bias`: additive, V values
/// (f32). Returns [N, k] f32 on the logits' device.
pub(crate) fn logprobs_at(logits: &Tensor, ids: &[u32], k: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let invalid = |what: String| crate::Error::invalid("log-probabilities", what);
    if logits.dtype() != DType::F32 || k == 0 || ids.len() != n * k {
        return Err(invalid(format!("{} ids for logits {:?} [{n}, {v}] and {k} a row", ids.len(), logits.dtype())));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(invalid(format!("id {bad} outside the vocabulary of {v}")));
    }
    let bias = match bias {
        Some(b) if b.elem_count() == v && b.dtype() == DType::F32 => Some(b.flatten_all()?.contiguous()?),
        Some(b) => return Err(invalid(format!("bias {:?} {:?} for {v} logits", b.dims(), b.dtype()))),
        None => None,
    };
    if n == 0 {
        return Ok(Tensor::zeros((0, k), DType::F32, logits.device())?);
    }
    let ids = Tensor::from_slice(ids, n * k, logits.device())?;
    Ok(logits.contiguous()?.apply_op2_no_bwd(&ids, &LogprobsAt { bias, k })?)
}

pub(super) struct LogprobsAt {
    bias: Option<Tensor>,
    k: usize,
}

impl CustomOp2 for LogprobsAt {
    fn name(&self) -> &'static str {
        "logprobs-at"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, si: &CpuStorage, li: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((n, v), k) = (l.shape().dims2()?, self.k);
        let (CpuStorage::F32(all), CpuStorage::U32(ids)) = (s, si) else { bail!("logprobs-at: f32 logits and u32 ids") };
        let logits = &all[l.start_offset()..l.start_offset() + n * v];
        let ids = &ids[li.start_offset()..li.start_offset() + n * k];
        let bias = host(&self.bias)?;
        let mut out = vec![0f32; n * k];
        out.par_chunks_mut(k).enumerate().for_each(|(r, o)| {
            let row = &logits[r * v..(r + 1) * v];
            let x = |j: usize| row[j] + bias.as_deref().map_or(0.0, |b| b[j]);
            let m = exp::max(row, bias.as_deref());
            let lse = exp::exp_sum(row, bias.as_deref(), m).ln();
            for (o, &id) in o.iter_mut().zip(&ids[r * k..(r + 1) * k]) {
                *o = (x(id as usize) - m) - lse;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout, si: &candle_core::CudaStorage, li: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::logprobs_at(self, (s, l), (si, li))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{bail, CudaStorage, Layout, Shape, Tensor};

    use super::{DrawRows, LogprobsAt};
    use crate::model::fused_cuda::{device_address, row_blocks, MODULE, PTX};

    /// The device address of an f32 tensor held by the op (0 when absent).
    fn address(t: &Option<Tensor>, s: &CudaStorage) -> candle_core::Result<u64> {
        Ok(t.as_ref().map(|t| device_address::<f32>(t, s.device())).transpose()?.unwrap_or(0))
    }

    pub(super) fn draw_rows(op: &DrawRows, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, v) = l.shape().dims2()?;
        let Ok(v_n) = i32::try_from(v) else { bail!("draw-rows: [{b}, {v}] logits too large") };
        let dev = s.device();
        let logits = s.as_cuda_slice::<f32>()?.slice(l.start_offset()..);
        let (bias, stop, u) = (address(&op.bias, s)?, address(&op.stop, s)?, address(&op.uniform, s)?);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(b * 3)? };
        let func = dev.get_or_load_custom_func("draw_rows", MODULE, PTX)?;
        let greedy = op.greedy as i32;
        let mut a = func.builder();
        a.arg(&logits).arg(&bias).arg(&stop).arg(&u).arg(&out).arg(&v_n).arg(&op.temperature).arg(&greedy).arg(&op.u_max);
        // SAFETY: argument types and order match `draw_rows` in fused.cu; the
        // bias, stop mask and noise are live [V], [V] and [B, V] f32 tensors held
        // by the op (checked by `draw_rows` above).
        unsafe { a.launch(row_blocks(b, v)?) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((b, 3))))
    }

    pub(super) fn logprobs_at(op: &LogprobsAt, (s, l): (&CudaStorage, &Layout), (si, li): (&CudaStorage, &Layout)) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n, v) = l.shape().dims2()?;
        let (Ok(v_n), Ok(k)) = (i32::try_from(v), i32::try_from(op.k)) else { bail!("logprobs-at: [{n}, {v}] logits too large") };
        let dev = s.device();
        let logits = s.as_cuda_slice::<f32>()?.slice(l.start_offset()..);
        let ids = si.as_cuda_slice::<u32>()?.slice(li.start_offset()..);
        let bias = address(&op.bias, s)?;
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(n * op.k)? };
        let func = dev.get_or_load_custom_func("logprobs_at", MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&logits).arg(&bias).arg(&ids).arg(&out).arg(&v_n).arg(&k);
        // SAFETY: argument types and order match `logprobs_at` in fused.cu; the
        // bias is a live [V] f32 tensor held by the op, and every id is below V
        // (checked by `logprobs_at` above).
        unsafe { a.launch(row_blocks(n, v)?) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((n, op.k))))
    }
}
