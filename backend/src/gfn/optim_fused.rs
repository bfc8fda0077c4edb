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

/// Σ g² over all gradients (f64 on the host).
pub(super) fn sum_squares(grads: &[Option<Tensor>], offsets: &[usize], total: usize) -> Result<f64> {
    let grads = contiguous(grads)?;
    #[cfg(feature = "cuda")]
    if let Some(candle_core::Device::Cuda(dev)) = grads.iter().flatten().next().map(|g| g.device().clone()) {
        return cuda::sum_squares(&dev, &grads, offsets, total);
    }
    let _ = (offsets, total);
    let mut sum = 0f64;
    for g in grads.iter().flatten() {
        sum += g.flatten_all()?.to_vec1::<f32>()?.iter().map(|&x| (x * x) as f64).sum::<f64>();
    }
    Ok(sum)
}

/// One AdamW step (step number `t`) on every parameter with a gradient, the
/// gradients scaled by `gscale` first; `m`, `v` are the flat moments.
#[allow(clippy::too_many_arguments)]
pub(super) fn step(params: &[Var], grads: &[Option<Tensor>], m: &mut Tensor, v: &mut Tensor, offsets: &[usize], c: AdamWConfig, t: usize, lr: f64, gscale: f64) -> Result<()> {
    let grads = contiguous(grads)?;
    let bc1 = 1.0 - c.beta1.powi(t as i32);
    let bc2 = 1.0 - c.beta2.powi(t as i32);
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = m.device().clone() {
        return cuda::step(&dev, params, &grads, (m, v), offsets, [lr, c.beta1, c.beta2, c.eps, c.weight_decay, bc1, bc2, gscale]);
    }
    let (mut mv, mut vv) = (m.to_vec1::<f32>()?, v.to_vec1::<f32>()?);
    let [lr, b1, b2, eps, wd, bc1, bc2, gs] = [lr, c.beta1, c.beta2, c.eps, c.weight_decay, bc1, bc2, gscale].map(|x| x as f32);
    for (i, (p, g)) in params.iter().zip(&grads).enumerate() {
        let Some(g) = g else { continue };
        let mut pv = p.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
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
    Ok(())
}

fn contiguous(grads: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
    Ok(grads.iter().map(|g| g.as_ref().map(|g| g.detach().contiguous()).transpose()).collect::<candle_core::Result<_>>()?)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaDevice, Device, Storage, Tensor, Var};

    use crate::model::fused_cuda::{MODULE, PTX};
    use crate::Result;

    /// The device address of a tensor's first element, of element type `T`
    /// (the tensor, held by the caller, keeps it alive).
    fn address<T: CudaDType>(t: &Tensor, dev: &CudaDevice) -> Result<u64> {
        let (s, l) = t.storage_and_layout();
        let Storage::Cuda(s) = &*s else { return Err(crate::Error::invalid("optimizer", "tensors on different devices")) };
        let stream = dev.cuda_stream();
        let (ptr, _sync) = s.as_cuda_slice::<T>()?.device_ptr(&stream);
        Ok(ptr + (std::mem::size_of::<T>() * l.start_offset()) as u64)
    }

    /// The [4, n] table (parameters, gradients or 0, offsets, sizes) on the
    /// device, and n. (Freed when dropped: stream-ordered, after the kernels.)
    fn table(dev: &CudaDevice, params: Option<&[Var]>, grads: &[Option<Tensor>], offsets: &[usize]) -> Result<(Tensor, i32)> {
        let n = grads.len();
        let mut t = vec![0i64; 4 * n];
        for i in 0..n {
            if let Some(p) = params {
                t[i] = address::<f32>(p[i].as_tensor(), dev)? as i64;
            }
            if let Some(g) = &grads[i] {
                t[n + i] = address::<f32>(g, dev)? as i64;
            }
            t[2 * n + i] = offsets[i] as i64;
            t[3 * n + i] = grads[i].as_ref().map_or(0, |g| g.elem_count()) as i64;
        }
        let n = i32::try_from(n).map_err(|_| crate::Error::invalid("optimizer", "too many parameters"))?;
        Ok((Tensor::from_vec(t, 4 * grads.len(), &Device::Cuda(dev.clone()))?, n))
    }

    fn blocks(total: i64) -> u32 {
        (total.max(1) as u64).div_ceil(256).min(1024) as u32
    }

    pub(super) fn sum_squares(dev: &CudaDevice, grads: &[Option<Tensor>], offsets: &[usize], total: usize) -> Result<f64> {
        let (table, n) = table(dev, None, grads, offsets)?;
        let total = total as i64;
        let grid = blocks(total);
        let mut out = unsafe { dev.alloc::<f32>(grid as usize)? };
        let t = address::<i64>(&table, dev)?;
        let func = dev.get_or_load_custom_func("grad_sumsq_multi", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&t).arg(&n).arg(&total).arg(&mut out);
        // SAFETY: argument types and order match `grad_sumsq_multi` in fused.cu;
        // the table's pointers are live f32 tensors held by the caller.
        unsafe { b.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }.w()?;
        let parts = dev.clone_dtoh(&out)?;
        Ok(parts.iter().map(|&x| x as f64).sum())
    }

    pub(super) fn step(dev: &CudaDevice, params: &[Var], grads: &[Option<Tensor>], (m, v): (&Tensor, &Tensor), offsets: &[usize], s: [f64; 8]) -> Result<()> {
        let (table, n) = table(dev, Some(params), grads, offsets)?;
        let total = m.elem_count() as i64;
        let (t, mp, vp) = (address::<i64>(&table, dev)?, address::<f32>(m, dev)?, address::<f32>(v, dev)?);
        let [lr, b1, b2, eps, wd, bc1, bc2, gs] = s.map(|x| x as f32);
        let func = dev.get_or_load_custom_func("adamw_multi", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&t).arg(&n).arg(&total).arg(&mp).arg(&vp);
        for x in [&lr, &b1, &b2, &eps, &wd, &bc1, &bc2, &gs] {
            b.arg(x);
        }
        let grid = (total.max(1) as u64).div_ceil(256).min(65_535) as u32;
        // SAFETY: argument types and order match `adamw_multi` in fused.cu; the
        // parameters, gradients and moments are live f32 tensors held by the
        // caller, and the kernel writes only the parameters and moments.
        unsafe { b.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }.w()?;
        Ok(())
    }
}
