//! The balance objectives, each a short function over per-state tensors of a
//! batch of trajectories (B rows, up to N actions, states s_0..s_N):
//!
//! - `log_pf` [B, N]:   log q(z_k | s_{k-1}), k = 1..N
//! - `log_pt` [B, N+1]: log q(⊤ | s_i)
//! - `log_r`  [B, N+1]: log R(s_i ⊤), already divided by the reward temperature
//! - `lens`   [B]:      n_b, the number of actions of row b (states past n_b are padding)
//!
//! Padding entries must be finite (they are weighted by zero).
//!
//! With a minimum length, states s_1..s_{min_len−1} cannot terminate, so they
//! have no flow R/q(⊤) and are not used as endpoints; s_0 then takes its flow
//! from a learned log Z (the partition function of the problem). [`Start`] says
//! which states are endpoints.

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

/// Which states are balance endpoints: s_0 (with its own flow when given a
/// log Z) and every state from `min_len` on.
#[derive(Clone, Copy, Default)]
pub struct Start<'a> {
    pub min_len: usize,
    /// log F(s_0) per row [B], required when `min_len > 0`.
    pub log_z: Option<&'a Tensor>,
}

impl Start<'_> {
    fn endpoint(&self, i: usize) -> bool {
        i >= self.min_len || (i == 0 && self.log_z.is_some())
    }

    /// G with s_0's flow replaced by log Z when s_0 cannot terminate.
    fn apply(&self, gs: Tensor) -> Result<Tensor> {
        match (self.min_len, self.log_z) {
            (0, _) | (_, None) => Ok(gs),
            (_, Some(z)) => {
                let s = gs.dim(1)?;
                Ok(Tensor::cat(&[&z.unsqueeze(1)?, &gs.narrow(1, 1, s - 1)?], 1)?)
            }
        }
    }
}

/// Weights of the pairs (i, j) of each row: `w(j − i, rank gap)` for endpoints
/// 0 ≤ i < j ≤ n_b (the rank gap counts endpoints between them), else 0.
fn pair_weights(lens: &[usize], n_states: usize, start: Start, w: impl Fn(usize, usize) -> f64, like: &Tensor) -> Result<Tensor> {
    let mut out = vec![0f32; lens.len() * n_states * n_states];
    for (b, &n) in lens.iter().enumerate() {
        let ends: Vec<usize> = (0..=n).filter(|&i| start.endpoint(i)).collect();
        for (ri, &i) in ends.iter().enumerate() {
            for (rj, &j) in ends.iter().enumerate().skip(ri + 1) {
                out[(b * n_states + i) * n_states + j] = w(j - i, rj - ri) as f32;
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
pub fn subtb_loss(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize], lambda: f64, start: Start) -> Result<Tensor> {
    let gs = start.apply(g(log_pf, log_pt, log_r)?)?;
    let w = pair_weights(lens, gs.dim(1)?, start, |d, _| lambda.powi(d as i32 - 1), &gs)?;
    weighted_pairs(&gs, &w)
}

/// Modified detailed balance: the SubTB terms of adjacent states only,
/// `log [R_{k−1} q(z_k) q(⊤|s_k) / (R_k q(⊤|s_{k−1}))]²`, averaged (adjacent
/// endpoints, when a minimum length removes some).
pub fn db_loss(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize], start: Start) -> Result<Tensor> {
    let gs = start.apply(g(log_pf, log_pt, log_r)?)?;
    let w = pair_weights(lens, gs.dim(1)?, start, |_, rank| if rank == 1 { 1.0 } else { 0.0 }, &gs)?;
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

/// A starting log Z for a problem, no gradient: `log (1/B) Σ_b exp G_b` with
/// G at state `at(n_b)` (the final state for TB, the first terminable one
/// otherwise) — the importance-sampling estimate of the flow out of s_0 from
/// the sampler's rows (F(s)/q(s | s_0) averaged under q). The plain mean of G
/// (a Jensen lower bound) is dragged to the floor by a few rows at the floor
/// reward: RNG's log R = −100 for text that is not a number put log Z near
/// −57 where it belongs near 0, beyond what 400 steps of its optimiser can climb.
pub fn log_z_estimate(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize], at: impl Fn(usize) -> usize) -> Result<f64> {
    let gs = g(log_pf, log_pt, log_r)?.detach();
    let idx = Tensor::new(lens.iter().map(|&n| at(n) as u32).collect::<Vec<_>>(), gs.device())?.unsqueeze(1)?;
    let g_at: Vec<f64> = gs.gather(&idx, 1)?.squeeze(1)?.to_dtype(DType::F64)?.to_vec1()?;
    let top = g_at.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok(top + (g_at.iter().map(|x| (x - top).exp()).sum::<f64>() / g_at.len() as f64).ln())
}

/// How close the sampler q is to its target R^(1/T), judged on q's own samples
/// of one problem (a diagnostic; no gradient).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerFit {
    /// Effective sample size of the importance weights w_b = R(Z_b ⊤)^(1/T) /
    /// q(Z_b ⊤ | X) as a share of the rows: (Σ w)² / (B Σ w²), in (0, 1]; 1 when
    /// every sample has the same weight, as when q ∝ R^(1/T).
    pub ess: f64,
    /// Standard deviation of log w_b over the rows, in nats (0 likewise).
    pub log_w_std: f64,
}

/// [`SamplerFit`] of rows drawn from the policy: log w_b is G at the row's
/// final state, `log R_n − log q(⊤ | s_n) − Σ_k log q(z_k)`. `None` for no rows.
pub fn sampler_fit(log_pf: &Tensor, log_pt: &Tensor, log_r: &Tensor, lens: &[usize]) -> Result<Option<SamplerFit>> {
    if lens.is_empty() {
        return Ok(None);
    }
    let gs = g(log_pf, log_pt, log_r)?.detach();
    let idx = Tensor::new(lens.iter().map(|&n| n as u32).collect::<Vec<_>>(), gs.device())?.unsqueeze(1)?;
    let log_w: Vec<f64> = gs.gather(&idx, 1)?.squeeze(1)?.to_dtype(DType::F64)?.to_vec1()?;
    let b = log_w.len() as f64;
    let top = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (s1, s2) = log_w.iter().map(|x| (x - top).exp()).fold((0.0, 0.0), |(s1, s2), w| (s1 + w, s2 + w * w));
    let mean = log_w.iter().sum::<f64>() / b;
    let var = log_w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / b;
    Ok(Some(SamplerFit { ess: s1 * s1 / (b * s2), log_w_std: var.sqrt() }))
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
        assert!((val(subtb_loss(&pf, &pt, &r, &[2], 1.0, Start::default()).unwrap()) - 6.5).abs() < 1e-6);
        // λ = 0.5: (1 + 6.25 + 0.5 · 12.25) / 2.5
        assert!((val(subtb_loss(&pf, &pt, &r, &[2], 0.5, Start::default()).unwrap()) - 5.35).abs() < 1e-6);
    }

    #[test]
    fn db_and_tb_match_hand_computation() {
        let (pf, pt, r) = example();
        assert!((val(db_loss(&pf, &pt, &r, &[2], Start::default()).unwrap()) - 3.625).abs() < 1e-6);
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
        let both = val(subtb_loss(&pf, &pt, &r, &[2, 1], 1.0, Start::default()).unwrap());
        assert!((both - 19.5 / 4.0).abs() < 1e-5, "{both}");
        let lz = Tensor::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let tb = val(tb_loss(&pf, &pt, &r, &[2, 1], &lz).unwrap());
        assert!((tb - 2.5f32.powi(2) / 2.0).abs() < 1e-5, "{tb}");
    }

    #[test]
    fn a_minimum_length_uses_log_z_for_s0_and_skips_non_terminable_states() {
        let (pf, pt, r) = example();
        // min_len 2: endpoints s_0 (flow = log Z = 1) and s_2 (G2 = 2.5): (1 − 2.5)².
        let z = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let start = Start { min_len: 2, log_z: Some(&z) };
        assert!((val(subtb_loss(&pf, &pt, &r, &[2], 1.0, start).unwrap()) - 2.25).abs() < 1e-6);
        assert!((val(db_loss(&pf, &pt, &r, &[2], start).unwrap()) - 2.25).abs() < 1e-6);
    }

    /// The trainer scores only the endpoints' rewards (`reward::States`): the
    /// others must change neither a loss nor its gradient.
    #[test]
    fn rewards_of_non_endpoints_do_not_matter() {
        let (pf, pt, r) = example();
        let pf = candle_core::Var::from_tensor(&pf).unwrap();
        let z = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let start = Start { min_len: 2, log_z: Some(&z) };
        let run = |r: &Tensor| -> Vec<(f32, Vec<f32>)> {
            let losses = [
                subtb_loss(&pf, &pt, r, &[2], 0.9, start).unwrap(),
                db_loss(&pf, &pt, r, &[2], start).unwrap(),
                tb_loss(&pf, &pt, r, &[2], &z).unwrap(),
            ];
            losses.into_iter().map(|l| (val(l.clone()), l.backward().unwrap().get(&pf).unwrap().flatten_all().unwrap().to_vec1().unwrap())).collect()
        };
        // s_0 and s_1 are not endpoints with min_len 2 (nor for TB).
        let skipped = t(&[&[0.0, 0.0, -1.0]]);
        assert_eq!(run(&r), run(&skipped));
        let junk = t(&[&[-1e4, 3e3, -1.0]]);
        assert_eq!(run(&r), run(&junk));
        // The last state's reward does matter.
        assert_ne!(run(&r), run(&t(&[&[-4.0, -2.0, -1.5]])));
    }

    #[test]
    fn empty_trajectories_have_no_balance_terms() {
        let pf = Tensor::zeros((1, 0), DType::F32, &Device::Cpu).unwrap();
        let pt = Tensor::new(&[[-0.3f32]], &Device::Cpu).unwrap();
        assert_eq!(val(subtb_loss(&pf, &pt, &pt, &[0], 1.0, Start::default()).unwrap()), 0.0);
        assert_eq!(val(db_loss(&pf, &pt, &pt, &[0], Start::default()).unwrap()), 0.0);
    }

    // Two rows: log w = G at each final state. Row 0 (n = 2) is the worked
    // example above, G_2 = 2.5; row 1 (n = 1): log pf = [-1], log pt = [-2, -0.5],
    // log R = [-3, -2 + ln 3]: G_1 = -2 + ln 3 + 0.5 + 1 = ln 3 − 0.5.
    // w ∝ (e^2.5, 3 e^-0.5) = e^-0.5 (e^3, 3): ESS = (e^3 + 3)² / (2 (e^6 + 9)).
    #[test]
    fn sampler_fit_weighs_each_row_at_its_final_state() {
        let l3 = 3f32.ln();
        let pf = t(&[&[-1.0, -2.0], &[-1.0, 0.0]]);
        let pt = t(&[&[-3.0, -1.0, -0.5], &[-2.0, -0.5, 0.0]]);
        let r = t(&[&[-4.0, -2.0, -1.0], &[-3.0, -2.0 + l3, 0.0]]);
        let fit = sampler_fit(&pf, &pt, &r, &[2, 1]).unwrap().unwrap();
        let e3 = 3f64.exp();
        let ess = (e3 + 3.0).powi(2) / (2.0 * (e3 * e3 + 9.0));
        assert!((fit.ess - ess).abs() < 1e-5, "{} vs {ess}", fit.ess);
        let half_gap = (2.5 - (3f64.ln() - 0.5)) / 2.0; // two rows: std = |a − b| / 2
        assert!((fit.log_w_std - half_gap).abs() < 1e-5, "{}", fit.log_w_std);
        // Equal weights, as a perfect sampler's rows have: row 0 twice.
        let (pf0, pt0, r0) = example();
        let twice = |x: &Tensor| Tensor::cat(&[x, x], 0).unwrap();
        let same = sampler_fit(&twice(&pf0), &twice(&pt0), &twice(&r0), &[2, 2]).unwrap().unwrap();
        assert!((same.ess - 1.0).abs() < 1e-12 && same.log_w_std.abs() < 1e-12);
        assert_eq!(sampler_fit(&pf, &pt, &r, &[]).unwrap(), None);
    }

    #[test]
    fn log_z_starts_at_the_log_mean_flow_not_dragged_by_floor_rewards() {
        // One action each, min_len 1: G_1 = log R_1 − log pt_1 − log pf_1.
        // Row 1: −1 + 0.5 + 0.5 = 0; row 2 at the floor: −100 + 0.5 + 0.5 = −99.
        let pf = t(&[&[-0.5], &[-0.5]]);
        let pt = t(&[&[-9.0, -0.5], &[-9.0, -0.5]]);
        let r = t(&[&[-50.0, -1.0], &[-50.0, -100.0]]);
        let est = log_z_estimate(&pf, &pt, &r, &[1, 1], |n| n).unwrap();
        // log((e^0 + e^−99) / 2) = −ln 2 to within e^−99; the mean of G would be −49.5.
        assert!((est + std::f64::consts::LN_2).abs() < 1e-9, "{est}");
        // Balanced rows (equal G) give that G exactly.
        let est = log_z_estimate(&pf, &pt, &t(&[&[-50.0, -1.0], &[-50.0, -1.0]]), &[1, 1], |n| n).unwrap();
        assert!(est.abs() < 1e-9, "{est}");
    }
}
