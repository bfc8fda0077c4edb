//! The balance objectives, each a short function over per-state tensors of a
//! batch of trajectories (B rows, up to N actions, states s_0..s_N):
//!
//! - `log_pf` [B, N]:   log q(z_k | s_{k-1}), k = 1..N
//! - `log_pt` [B, N+1]: log q(⊤ | s_i)
//! - `log_r`  [B, N+1]: log R(s_i ⊤), already divided by the reward temperature
//! - `lens`   [B]:      n_b, the number of actions of row b (states past n_b are padding)
//!
//! Padding entries must be finite (they are weighted by zero).

use candle_core::{DType, Tensor};

use crate::Result;

/// `G_i = log R_i − log pt_i − Σ_{k≤i} log pf_k`: the log-flow of s_i minus the
/// log-probability of reaching it. Every balance term is a difference of two G's.
fn g(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor) -> Result<Tensor> {
    let (b, _) = log_pf.dims2()?;
    let zero = Tensor::zeros((b, 1), log_pf.dtype(), log_pf.device())?;
    let prefix = Tensor::cat(&[&zero, &log_pf.cumsum(1)?], 1)?; // P_0 = 0 … P_N
    Ok(((log_r - log_pt)? - prefix)?)
}

/// Weights of the pairs (i, j) of each row: `w(j − i)` for 0 ≤ i < j ≤ n_b, else 0.
fn pair_weights(lens: &[usize], n_states: usize, w: impl Fn(usize) -> f64, like: &Tensor) -> Result<Tensor> {
    let mut out = vec![0f32; lens.len() * n_states * n_states];
    for (b, &n) in lens.iter().enumerate() {
        for i in 0..=n {
            for j in i + 1..=n {
                out[(b * n_states + i) * n_states + j] = w(j - i) as f32;
            }
        }
    }
    Ok(Tensor::from_vec(out, (lens.len(), n_states, n_states), like.device())?.to_dtype(like.dtype())?)
}

/// Σ_{pairs} w_ij (G_i − G_j)² / Σ w_ij (0 when there is no pair: a batch of
/// empty trajectories constrains nothing).
fn weighted_pairs(gs: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let total = weights.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if total <= 0.0 {
        return Ok(Tensor::zeros((), gs.dtype(), gs.device())?);
    }
    let diff = gs.unsqueeze(2)?.broadcast_sub(&gs.unsqueeze(1)?)?; // [B, i, j] = G_i − G_j
    Ok(((diff.sqr()? * weights)?.sum_all()? / total)?)
}

/// Modified subtrajectory balance (paper Eq. 3): for every pair i < j of states,
/// `log [R_i Π_{k=i+1..j} q(z_k) q(⊤|s_j) / (R_j q(⊤|s_i))]²`, weighted by
/// λ^(j−i−1) and normalised by the total weight.
pub fn subtb_loss(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize], lambda: f64) -> Result<Tensor> {
    let gs = g(log_pf, log_pt, log_r)?;
    let w = pair_weights(lens, gs.dim(1)?, |d| lambda.powi(d as i32 - 1), &gs)?;
    weighted_pairs(&gs, &w)
}

/// Modified detailed balance: the SubTB terms of adjacent states only,
/// `log [R_{k−1} q(z_k) q(⊤|s_k) / (R_k q(⊤|s_{k−1}))]²`, averaged.
pub fn db_loss(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize]) -> Result<Tensor> {
    let gs = g(log_pf, log_pt, log_r)?;
    let w = pair_weights(lens, gs.dim(1)?, |d| if d == 1 { 1.0 } else { 0.0 }, &gs)?;
    weighted_pairs(&gs, &w)
}

/// Trajectory balance with a learned log Z (one per row: the problem's):
/// `(log Z + Σ_k log q(z_k) + log q(⊤|s_n) − log R_n)²`, averaged over rows.
pub fn tb_loss(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize], log_z: &Tensor) -> Result<Tensor> {
    let gs = g(log_pf, log_pt, log_r)?; // G_n = log R_n − log pt_n − P_n
    let idx = Tensor::new(lens.iter().map(|&n| n as u32).collect::<Vec<_>>(), gs.device())?.unsqueeze(1)?;
    let g_end = gs.gather(&idx, 1)?.squeeze(1)?; // [B]
    Ok((log_z - g_end)?.sqr()?.mean_all()?)
}

/// The log Z that zeroes TB's mean residual on this batch: mean_b G_n (no gradient).
pub fn tb_log_z_estimate(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize]) -> Result<f64> {
    let gs = g(log_pf, log_pt, log_r)?.detach();
    let idx = Tensor::new(lens.iter().map(|&n| n as u32).collect::<Vec<_>>(), gs.device())?.unsqueeze(1)?;
    Ok(gs.gather(&idx, 1)?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: &[&[f32]]) -> Tensor {
        let w = rows[0].len();
        Tensor::from_vec(rows.concat(), (rows.len(), w), &Device::Cpu).unwrap()
    }

    fn val(x: Tensor) -> f32 {
        x.to_scalar::<f32>().unwrap()
    }

    // One trajectory z1 z2 (n = 2), worked by hand:
    //   log pf = [-1, -2], log pt = [-3, -1, -0.5], log R = [-4, -2, -1]
    //   G_i = log R_i − log pt_i − P_i:  G0 = -1, G1 = -1 + 1 = 0, G2 = -0.5 + 3 = 2.5
    //   pairs: (0,1): 1, (1,2): 6.25, (0,2): 12.25
    fn example() -> (Tensor, Tensor, Tensor) {
        (t(&[&[-1.0, -2.0]]), t(&[&[-3.0, -1.0, -0.5]]), t(&[&[-4.0, -2.0, -1.0]]))
    }

    #[test]
    fn subtb_matches_hand_computation() {
        let (pf, pt, r) = example();
        // λ = 1: (1 + 6.25 + 12.25) / 3
        assert!((val(subtb_loss(&pf, &pt, &r, &[2], 1.0).unwrap()) - 6.5).abs() < 1e-6);
        // λ = 0.5: (1 + 6.25 + 0.5 · 12.25) / 2.5
        assert!((val(subtb_loss(&pf, &pt, &r, &[2], 0.5).unwrap()) - 5.35).abs() < 1e-6);
    }

    #[test]
    fn db_and_tb_match_hand_computation() {
        let (pf, pt, r) = example();
        assert!((val(db_loss(&pf, &pt, &r, &[2]).unwrap()) - 3.625).abs() < 1e-6);
        // TB: log Z + P_2 + log pt_2 − log R_2 = 0.7 − 3 − 0.5 + 1 = −1.8 → 3.24
        let log_z = Tensor::new(&[0.7f32], &Device::Cpu).unwrap();
        assert!((val(tb_loss(&pf, &pt, &r, &[2], &log_z).unwrap()) - 3.24).abs() < 1e-5);
    }

    #[test]
    fn padding_is_ignored_and_balanced_trajectories_score_zero() {
        // Row 2 has one action; its padding holds junk that must not count.
        let pf = t(&[&[-1.0, -2.0], &[-0.7, 55.0]]);
        let pt = t(&[&[-3.0, -1.0, -0.5], &[-2.0, -0.1, 9.0]]);
        let r = t(&[&[-4.0, -2.0, -1.0], &[-2.0, -0.8, 7.0]]);
        // Row 2: G0 = 0, G1 = -0.8 + 0.1 + 0.7 = 0 → balanced; row 1 as before.
        let both = val(subtb_loss(&pf, &pt, &r, &[2, 1], 1.0).unwrap());
        assert!((both - 19.5 / 4.0).abs() < 1e-5, "{both}");
        let lz = Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let tb = val(tb_loss(&pf, &pt, &r, &[2, 1], &lz).unwrap());
        assert!((tb - 2.5f32.powi(2) / 2.0).abs() < 1e-5, "{tb}");
    }

    #[test]
    fn empty_trajectories_have_no_balance_terms() {
        let pf = Tensor::zeros((1, 0), DType::F32, &Device::Cpu).unwrap();
        let pt = Tensor::new(&[[-0.3f32]], &Device::Cpu).unwrap();
        assert_eq!(val(subtb_loss(&pf, &pt, &pt, &[0], 1.0).unwrap()), 0.0);
        assert_eq!(val(db_loss(&pf, &pt, &pt, &[0]).unwrap()), 0.0);
    }
}
