//! The tensor arithmetic after the encoder: masked mean pooling and L2
//! normalisation, as sentence-transformers' `Pooling(mean)` and `Normalize`
//! modules compute them.

use candle_core::{DType, Tensor, D};

/// Mean of the hidden states `[batch, len, hidden]` over the positions where
/// `mask` `[batch, len]` is 1 (padding excluded): Σ hᵢ mᵢ / max(Σ mᵢ, 1e-9),
/// giving `[batch, hidden]`.
pub fn masked_mean(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?; // [b, len, 1]
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // [b, hidden]
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?; // [b, 1]
    summed.broadcast_div(&counts)
}

/// Rows divided by their L2 norm, the norm floored at 1e-12 (torch's
/// `F.normalize` default), so a zero row stays zero instead of becoming NaN.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.to_dtype(DType::F32)?.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    x.to_dtype(DType::F32)?.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn mean_ignores_padding() {
        let d = Device::Cpu;
        // Two rows of three positions, hidden size 2; the second row has one padding slot.
        let h = Tensor::new(&[[[1f32, 2.], [3., 4.], [5., 6.]], [[2., 0.], [4., 2.], [100., 100.]]], &d).unwrap();
        let m = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &d).unwrap();
        let got: Vec<Vec<f32>> = masked_mean(&h, &m).unwrap().to_vec2().unwrap();
        assert_eq!(got, vec![vec![3.0, 4.0], vec![3.0, 1.0]]);
        // A row with no real token gives zeros, not NaN.
        let m0 = Tensor::new(&[[0u32, 0, 0], [1, 0, 0]], &d).unwrap();
        let got: Vec<Vec<f32>> = masked_mean(&h, &m0).unwrap().to_vec2().unwrap();
        assert_eq!(got, vec![vec![0.0, 0.0], vec![2.0, 0.0]]);
    }

    #[test]
    fn normalize_rows() {
        let d = Device::Cpu;
        let x = Tensor::new(&[[3f32, 4.], [0., 0.]], &d).unwrap();
        let got: Vec<Vec<f32>> = l2_normalize(&x).unwrap().to_vec2().unwrap();
        assert_eq!(got, vec![vec![0.6, 0.8], vec![0.0, 0.0]]);
    }
}
