//! Dense products with a weight in the HF layout (out × in): [`Linear`]
//! (y = x Wᵀ + b) and [`matmul_t`] (x Wᵀ), which the projections, the LoRA
//! factors of inference passes and the output head go through.
//!
//! On the CPU, outside autograd, a product of 1–16 rows of f32 (decode steps
//! of a batch) takes `few_rows`, which streams the weight once for all rows.
//! Where that kernel does not apply, 2–16 rows are computed as (W xᵀ)ᵀ, which
//! candle's CPU matmul (the gemm crate) runs faster than x Wᵀ; from 32–64 rows
//! the plain form wins.
//! Measured on the 135M model's shapes, this project's 2-core CPU:
//! `cargo bench -p amortize --bench cpu_matmul` (`docs/results/cpu-2026-11-28c/`
//! and `-28d/`). Other devices keep x Wᵀ.
//!
//! Owns these two products; the weights belong to the model (`llama.rs`).

use candle_core::{Tensor, D};

use super::few_rows;
use crate::Result;

/// The CPU computes x Wᵀ with `few_rows` (the weight streamed once for all
/// rows) for 1–16 rows of f32. Against candle's better form on the 135M
/// model's shapes: 2.1–3.4× faster at 1 row, 1.4–8.5× at 2–8, 0.93–2.3× at 16
/// (the output head 0.93×, the layers' products 1.09–2.3×); at 32 rows
/// 0.79–1.78× (`cargo bench -p amortize --bench cpu_matmul`,
/// docs/results/cpu-2026-11-28d).
const FEW_ROWS: std::ops::RangeInclusive<usize> = 1..=16;

/// Otherwise (other dtypes, CPUs without SIMD tiles) it computes x Wᵀ as
/// (W xᵀ)ᵀ for this many rows of x: from 2 (one row is a matrix-vector product
/// either way) to 16 (at 32 rows the output head's product ran 0.87×). Before
/// `few_rows` the flipped form ran 1.2–1.8× faster than x Wᵀ at 2–16 rows
/// (docs/results/cpu-2026-11-28c).
const FLIPPED_ROWS: std::ops::RangeInclusive<usize> = 2..=16;

/// x Wᵀ for x [.., in] and W [out, in] → [.., out] (on the CPU outside
/// autograd: `few_rows` for 1–16 rows of f32, else flipped for 2–16 rows).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out, k) = w.dims2()?;
    let rows = x.elem_count() / k.max(1);
    // Autograd passes keep the plain form: the flipped one would hand the
    // frozen weight itself a gradient, and `few_rows` has no backward.
    let tracked = x.track_op() || w.track_op();
    // FEW_ROWS covers FLIPPED_ROWS.
    if x.device().is_cpu() && !tracked && FEW_ROWS.contains(&rows) && x.dim(D::Minus1)? == k {
        let mut shape = x.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        let x2 = x.reshape((rows, k))?;
        if few_rows::fits(&x2, w) {
            return Ok(few_rows::x_wt(&x2, w)?.reshape(shape)?);
        }
        if FLIPPED_ROWS.contains(&rows) {
            let y = w.matmul(&x2.t()?)?; // [out, rows]
            return Ok(y.t()?.contiguous()?.reshape(shape)?);
        }
    }
    Ok(x.broadcast_matmul(&w.t()?)?)
}

/// A dense projection `y = x Wᵀ (+ b)`, W: [out, in].
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Projections stacked along the output dimension (a missing bias is zero).
    pub(super) fn cat(parts: &[&Linear]) -> Result<Linear> {
        let weight = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0)?;
        let bias = if parts.iter().any(|l| l.bias.is_some()) {
            let bs = parts
                .iter()
                .map(|l| match &l.bias {
                    Some(b) => Ok(b.clone()),
                    None => Ok(Tensor::zeros(l.weight.dim(0)?, l.weight.dtype(), l.weight.device())?),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// Rows `start..start + len` of the output, copied into their own storage
    /// (writers such as GGUF quantisation read storage, not views).
    pub(super) fn rows(&self, start: usize, len: usize) -> Result<Linear> {
        let bias = match &self.bias {
            Some(b) => Some(b.narrow(0, start, len)?.force_contiguous()?),
            None => None,
        };
        Ok(Linear { weight: self.weight.narrow(0, start, len)?.force_contiguous()?, bias })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = matmul_t(x, &self.weight)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
        d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn every_cpu_form_gives_the_plain_product() {
        // Row counts through each form: the few-rows kernel (1-16 rows of f32),
        // the flipped form (2-16 rows of other dtypes), the plain one (32 rows);
        // a leading batch dimension is kept.
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 48), &dev).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let w = w.to_dtype(dtype).unwrap();
            for rows in [1usize, 3, 8, 12, 16, 32] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, 48), &dev).unwrap().to_dtype(dtype).unwrap();
                let got = matmul_t(&x, &w).unwrap();
                assert_eq!(got.dims(), &[1, rows, 70]);
                let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
                let tol = if dtype == DType::F32 { 1e-4 } else { 0.25 };
                assert!(max_diff(&got, &want) < tol, "{dtype:?}, {rows} rows");
            }
        }
    }

    #[test]
    fn autograd_passes_keep_the_plain_form() {
        // A tracked input of a few rows: the gradient reaches x (sum over
        // outputs of W's rows), as through x Wᵀ.
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (10, 16), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 16), &dev).unwrap()).unwrap();
        let y = matmul_t(x.as_tensor(), &w).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).expect("x has a gradient");
        let want = w.sum_keepdim(0).unwrap().broadcast_as((4, 16)).unwrap();
        assert!(max_diff(gx, &want) < 1e-4);
    }
}
