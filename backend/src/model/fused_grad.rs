//! Fused backward steps of the taped training pass (`tape.rs`, `tape_ops.rs`):
//! RMSNorm's backward with the residual gradient it adds to, and SwiGLU's
//! backward, each one op instead of a dozen. CPU bodies here (row-parallel, in
//! f32), CUDA bodies in `fused_cuda.rs`. The composed versions in `tape_ops.rs`
//! stay the reference; which runs is `Llama::fused`'s choice.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::fused::{cpu_slice, f, float_dispatch};
use crate::Result;

/// `acc + dx` for y = rms_norm(x) · w and the gradient `dy` of y: dx = r·g −
/// x·r³·mean(g ⊙ x), g = w ⊙ dy, r = (mean x² + ε)^(−½), in f32, rounded once.
/// x, dy (and acc): [N, hidden]; w: [hidden]. Without `acc`, dx alone.
pub fn rms_norm_backward(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64, acc: Option<&Tensor>) -> Result<Tensor> {
    let hidden = x.dim(candle_core::D::Minus1)?;
    let same = |t: &Tensor| t.dims() == x.dims() && t.dtype() == x.dtype();
    if !same(dy) || w.dims() != [hidden] || w.dtype() != x.dtype() || !acc.is_none_or(same) {
        return Err(crate::Error::invalid("rms_norm_backward", format!("x {:?}, w {:?}, dy {:?}", x.dims(), w.dims(), dy.dims())));
    }
    let op = RmsNormBackward { eps: eps as f32, acc: acc.map(|a| a.contiguous()).transpose()? };
    Ok(x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &dy.contiguous()?, &op)?)
}

/// d(gate · up) [N, 2I] of act = silu(gate) ⊙ up from d act [N, I].
pub fn swiglu_backward(gu: &Tensor, d_act: &Tensor) -> Result<Tensor> {
    let (n, two_i) = gu.dims2()?;
    if d_act.dims() != [n, two_i / 2] || two_i % 2 != 0 || d_act.dtype() != gu.dtype() {
        return Err(crate::Error::invalid("swiglu_backward", format!("gu {:?}, d_act {:?}", gu.dims(), d_act.dims())));
    }
    Ok(gu.contiguous()?.apply_op2_no_bwd(&d_act.contiguous()?, &SwigluBackward)?)
}

pub(super) struct RmsNormBackward {
    pub eps: f32,
    pub acc: Option<Tensor>,
}
pub(super) struct SwigluBackward;

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout, dy: &CpuStorage, dl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let hidden = *xl.dims().last().unwrap_or(&1);
        let acc = self.acc.as_ref().map(|a| a.storage_and_layout());
        float_dispatch!(x, self.name(), |T| {
            let (x, w, dy) = (cpu_slice::<T>(x, xl)?, cpu_slice::<T>(w, wl)?, cpu_slice::<T>(dy, dl)?);
            let acc = match &acc {
                Some((s, l)) => match &**s {
                    Storage::Cpu(s) => Some(cpu_slice::<T>(s, l)?),
                    _ => bail!("rms-norm-backward: inputs on different devices"),
                },
                None => None,
            };
            let mut out = vec![T::from_f64(0.0); xl.shape().elem_count()];
            out.par_chunks_mut(hidden).enumerate().for_each(|(r, out)| {
                let (x, dy) = (&x[r * hidden..(r + 1) * hidden], &dy[r * hidden..(r + 1) * hidden]);
                let (mut sxx, mut sgx) = (0f32, 0f32);
                for i in 0..hidden {
                    let xi = f(x[i]);
                    sxx += xi * xi;
                    sgx += f(w[i]) * f(dy[i]) * xi;
                }
                let rr = 1.0 / (sxx / hidden as f32 + self.eps).sqrt();
                let c = rr * rr * rr * sgx / hidden as f32;
                for (i, o) in out.iter_mut().enumerate() {
                    let mut d = rr * f(w[i]) * f(dy[i]) - f(x[i]) * c;
                    if let Some(acc) = acc {
                        d += f(acc[r * hidden + i]);
                    }
                    *o = T::from_f64(d as f64);
                }
            });
            Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        dy: &candle_core::CudaStorage,
        dl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::rms_norm_backward(self, (x, xl), (w, wl), (dy, dl))
    }
}

impl CustomOp2 for SwigluBackward {
    fn name(&self) -> &'static str {
        "swiglu-backward"
    }

    fn cpu_fwd(&self, gu: &CpuStorage, gl: &Layout, d: &CpuStorage, dl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, two_i) = gl.shape().dims2()?;
        let inter = two_i / 2;
        float_dispatch!(gu, self.name(), |T| {
            let (gu, d) = (cpu_slice::<T>(gu, gl)?, cpu_slice::<T>(d, dl)?);
            let mut out = vec![T::from_f64(0.0); n * two_i];
            out.par_chunks_mut(two_i).enumerate().for_each(|(r, out)| {
                let (dg, du) = out.split_at_mut(inter);
                for i in 0..inter {
                    let (g, u, d) = (f(gu[r * two_i + i]), f(gu[r * two_i + inter + i]), f(d[r * inter + i]));
                    let sig = 1.0 / (1.0 + (-g).exp());
                    dg[i] = T::from_f64((d * u * sig * (1.0 + g * (1.0 - sig))) as f64);
                    du[i] = T::from_f64((d * g * sig) as f64);
                }
            });
            Ok((T::to_cpu_storage_owned(out), gl.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, gu: &candle_core::CudaStorage, gl: &Layout, d: &candle_core::CudaStorage, dl: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::swiglu_backward((gu, gl), (d, dl))
    }
}
