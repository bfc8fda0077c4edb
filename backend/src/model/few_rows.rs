//! The candle op around [`amortize_cpu_kernels::x_wt`]: x Wᵀ for a few rows of
//! x on the CPU, in f32, reading the weight once in its stored layout (why and
//! how: that crate's docs). `linear::matmul_t` decides when to use it.
//!
//! Owns the op and its checks; the loops live in `backend/kernels/cpu` (built
//! optimised in every profile). Inference only: no backward.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::Result;

pub use amortize_cpu_kernels::MAX_ROWS;

/// x Wᵀ for x [m, k] (m ≤ [`MAX_ROWS`]) and W [n, k], both f32 on the CPU,
/// W contiguous → [m, n].
pub fn x_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2_no_bwd(w, &FewRows)?)
}

/// Whether [`x_wt`] takes this pair and pays: the CPU has SIMD tiles for it
/// (AVX-512 or AVX2+FMA; elsewhere candle's matmul stays).
pub fn fits(x: &Tensor, w: &Tensor) -> bool {
    let (Ok((m, k)), Ok((_, wk))) = (x.dims2(), w.dims2()) else { return false };
    amortize_cpu_kernels::simd()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && w.dtype() == candle_core::DType::F32
        && (1..=MAX_ROWS).contains(&m)
        && k == wk
        && k > 0
        && w.is_contiguous()
}

struct FewRows;

impl CustomOp2 for FewRows {
    fn name(&self) -> &'static str {
        "few-rows-matmul"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((m, k), (n, wk)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        if k != wk || m == 0 || m > MAX_ROWS || !xl.is_contiguous() || !wl.is_contiguous() {
            bail!("few-rows matmul: x {:?} and W {:?} do not fit", xl.shape(), wl.shape());
        }
        let x = &xs.as_slice::<f32>()?[xl.start_offset()..][..m * k];
        let w = &ws.as_slice::<f32>()?[wl.start_offset()..][..n * k];
        Ok((CpuStorage::F32(amortize_cpu_kernels::x_wt(x, w, m, k, n)), Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn the_op_reads_views_and_refuses_what_it_cannot_take() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (40, 32), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 32), &dev).unwrap();
        // A weight view (rows 8..40) with a start offset.
        let wv = w.i(8..40).unwrap();
        let want = x.matmul(&wv.t().unwrap()).unwrap();
        let got = x_wt(&x, &wv).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
        assert_eq!(fits(&x, &wv), amortize_cpu_kernels::simd());
        assert!(!fits(&x, &w.t().unwrap().contiguous().unwrap().t().unwrap()));
        assert!(!fits(&Tensor::zeros((17, 32), candle_core::DType::F32, &dev).unwrap(), &w));
        assert!(!fits(&x.to_dtype(candle_core::DType::BF16).unwrap(), &w));
        assert!(x_wt(&Tensor::zeros((17, 32), candle_core::DType::F32, &dev).unwrap(), &w).is_err());
    }
}
