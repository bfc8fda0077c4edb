//! AdamW's fused step (`AdamW::fused`): the gradients' squared norm and the
//! update of every parameter in one pass each, instead of a cat of all
//! gradients, a cat of all parameters, a dozen ops and one copy back per
//! parameter (about 1,300 ops for the 420 matrices of a LoRA r64 on all of
//! SmolLM2-135M's projections).
//!
//! On CUDA: two multi-tensor kernels (`grad_sumsq_multi`, `adamw_multi` in
//! `backend/kernels/fused.cu`) over a table of parameter and gradient pointers.
//! On the CPU: plain loops with the same arithmetic. `optim.rs` owns the state
//! and decides when this path applies; this module only computes.

use candle_core::{DType, Tensor, Var};

use super::optim::AdamWConfig;
use crate::Result;

/// Whether the fused step can take these parameters and gradients: all f32 on
/// one device.
pub(super) fn applies(params: &[Var], grads: &[Option<Tensor>]) -> bool {
    let Some(dev) = params.first().map(|p| p.device().location()) else { return false };
    params.iter().all(|p| p.dtype() == DType::F32 && p.device().location() == dev)
        && grads.iter().flatten().all(|g| g.dtype() == DType::F32 && g.device().location() == dev)
}

/// Clips the gradients to a global L2 norm of at most `max_norm` (when
/// positive) and takes AdamW step `*t + 1` on every parameter with a gradient;
/// `m`, `v` are the flat moments. Returns the norm before clipping; a
/// non-finite norm leaves everything, `t` included, untouched.
#[allow(clippy::too_many_arguments)]
pub(super) fn step_clipped(params: &[Var], grads: &[Option<Tensor>], m: &mut Tensor, v: &mut Tensor, offsets: &[usize], c: AdamWConfig, t: &mut usize, lr: f64, max_norm: f64) -> Result<f64> {
    let grads = contiguous(grads)?;
    let clip = |norm: f64| if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 };
    let scalars = |t: usize, gscale: f64| {
        let (bc1, bc2) = (1.0 - c.beta1.powi(t as i32), 1.0 - c.beta2.powi(t as i32));
        [lr, c.beta1, c.beta2, c.eps, c.weight_decay, bc1, bc2, gscale]
    };
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = m.device().clone() {
        // One pointer table for both kernels.
        let table = cuda::Table::new(&dev, params, &grads, offsets, m.elem_count())?;
        let norm = table.sum_squares(&dev)?.sqrt();
        if norm.is_finite() {
            *t += 1;
            table.step(&dev, (m, v), scalars(*t, clip(norm)))?;
        }
        return Ok(norm);
    }
    let gvs = grads.iter().map(|g| g.as_ref().map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose()).collect::<candle_core::Result<Vec<_>>>()?;
    let norm = gvs.iter().flatten().flat_map(|g| g.iter()).map(|&x| (x * x) as f64).sum::<f64>().sqrt();
    if !norm.is_finite() {
        return Ok(norm);
    }
    *t += 1;
    let (mut mv, mut vv) = (m.to_vec1::<f32>()?, v.to_vec1::<f32>()?);
    let [lr, b1, b2, eps, wd, bc1, bc2, gs] = scalars(*t, clip(norm)).map(|x| x as f32);
    for (i, (p, g)) in params.iter().zip(&gvs).enumerate() {
        let Some(gv) = g else { continue };
        let mut pv = p.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let (mi, vi) = (&mut mv[offsets[i]..offsets[i] + pv.len()], &mut vv[offsets[i]..offsets[i] + pv.len()]);
        for j in 0..pv.len() {
            let g = gv[j] * gs;
            mi[j] = b1 * mi[j] + (1.0 - b1) * g;
            vi[j] = b2 * vi[j] + (1.0 - b2) * g * g;
            pv[j] = pv[j] * (1.0 - lr * wd) - lr * (mi[j] / bc1) / ((vi[j] / bc2).sqrt() + eps);
        }
        p.set(&Tensor::from_vec(pv, p.dims(), p.device())?)?;
    }
    *m = Tensor::from_vec(mv, m.dims(), m.device())?;
    *v = Tensor::from_vec(vv, v.dims(), v.device())?;
    Ok(norm)
}

fn contiguous(grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    Ok(grads.iter().map(|g| g.as_ref().map(|g| g.detach().contiguous()).transpose()).collect::<candle_core::Result<_>>()?)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, Device, Tensor, Var};

    use crate::model::fused_cuda::{device_address, MODULE, PTX};
    use crate::Result;

    /// The [4, n] pointer table on the device (parameters, gradients or 0,
    /// offsets into the flat moments, sizes), with n and the moments' length.
    /// Freed when dropped: stream-ordered, after the kernels.
    pub(super) struct Table {
        table: Tensor,
        n: i32,
        total: i64,
    }

    impl Table {
        pub(super) fn new(dev: &CudaDevice, params: &[Var], grads: &[Option<Tensor>], offsets: &[usize], total: usize) -> Result<Self> {
            let n = params.len();
            let mut t = vec![0i64; 4 * n];
            for i in 0..n {
                t[i] = device_address::<f32>(params[i].as_tensor(), dev)? as i64;
                if let Some(g) = &grads[i] {
                    t[n + i] = device_address::<f32>(g, dev)? as i64;
                }
                t[2 * n + i] = offsets[i] as i64;
                t[3 * n + i] = params[i].elem_count() as i64;
            }
            let table = Tensor::from_vec(t, 4 * n, &Device::Cuda(dev.clone()))?;
            let n = i32::try_from(n).map_err(|_| crate::Error::invalid("optimizer", "too many parameters"))?;
            Ok(Table { table, n, total: total as i64 })
        }

        /// Σ g² over all gradients (f64 on the host).
        pub(super) fn sum_squares(&self, dev: &CudaDevice) -> Result<f64> {
            let grid = (self.total.max(1) as u64).div_ceil(256).min(1024) as u32;
            let mut out = unsafe { dev.alloc::<f32>(grid as usize)? };
            let t = device_address::<i64>(&self.table, dev)?;
            let func = dev.get_or_load_custom_func("grad_sumsq_multi", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&t).arg(&self.n).arg(&self.total).arg(&mut out);
            // SAFETY: argument types and order match `grad_sumsq_multi` in fused.cu;
            // the table's pointers are live f32 tensors held by the caller.
            unsafe { b.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }.w()?;
            let parts = dev.clone_dtoh(&out)?;
            Ok(parts.iter().map(|&x| x as f64).sum())
        }

        /// The update; `s`: lr, β1, β2, ε, weight decay, the two bias
        /// corrections and the gradients' scale.
        pub(super) fn step(&self, dev: &CudaDevice, (m, v): (&Tensor, &Tensor), s: [f64; 8]) -> Result<()> {
            let (t, mp, vp) = (device_address::<i64>(&self.table, dev)?, device_address::<f32>(m, dev)?, device_address::<f32>(v, dev)?);
            let [lr, b1, b2, eps, wd, bc1, bc2, gs] = s.map(|x| x as f32);
            let func = dev.get_or_load_custom_func("adamw_multi", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&t).arg(&self.n).arg(&self.total).arg(&mp).arg(&vp);
            for x in [&lr, &b1, &b2, &eps, &wd, &bc1, &bc2, &gs] {
                b.arg(x);
            }
            let grid = (self.total.max(1) as u64).div_ceil(256).min(65_535) as u32;
            // SAFETY: argument types and order match `adamw_multi` in fused.cu; the
            // parameters, gradients and moments are live f32 tensors held by the
            // caller, and the kernel writes only the parameters and moments.
            unsafe { b.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }.w()?;
            Ok(())
        }
    }
}
