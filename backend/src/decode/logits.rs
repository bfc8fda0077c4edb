//! Turning one row of logits into a distribution: additive token-mask penalties,
//! hard masks (stop tokens below the minimum length), temperature, top-k, top-p,
//! and drawing a token. Host-side, one row at a time.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which tokens the policy may emit. Masked tokens get an additive penalty (as in
/// the paper's code) rather than −∞, both when sampling and in `log q`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum TokenMask {
    #[default]
    None,
    /// Only these ids are free; every other id is penalised.
    Allow(Vec<u32>),
    /// These ids are penalised.
    Forbid(Vec<u32>),
}

impl TokenMask {
    /// Dense additive bias over the vocabulary (`None` when there is no mask).
    pub fn bias(&self, vocab: usize, penalty: f32) -> Option<Vec<f32>> {
        match self {
            TokenMask::None => None,
            TokenMask::Allow(ids) => {
                let mut b = vec![penalty; vocab];
                for &i in ids {
                    if let Some(x) = b.get_mut(i as usize) {
                        *x = 0.0;
                    }
                }
                Some(b)
            }
            TokenMask::Forbid(ids) => {
                let mut b = vec![0.0; vocab];
                for &i in ids {
                    if let Some(x) = b.get_mut(i as usize) {
                        *x = penalty;
                    }
                }
                Some(b)
            }
        }
    }
}

/// In-place log-softmax; returns nothing (row becomes log-probabilities).
pub fn log_softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    for x in row.iter_mut() {
        *x -= lse;
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Log-probabilities of the sampling distribution: temperature, then top-k, then
/// top-p (the smallest set of most likely tokens whose mass reaches `p`).
/// Tokens outside the kept set get −∞. `logp` must be log-probabilities at T = 1.
pub fn sampling_logprobs(logp: &[f32], temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Vec<f32> {
    let mut s: Vec<f32> = logp.iter().map(|&x| x / temperature).collect();
    log_softmax_in_place(&mut s);
    let restrict = top_k.is_some_and(|k| k < s.len()) || top_p.is_some_and(|p| p < 1.0);
    if !restrict {
        return s;
    }
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_unstable_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
    let mut keep = top_k.unwrap_or(s.len()).min(s.len()).max(1);
    if let Some(p) = top_p {
        let mut mass = 0.0f64;
        for (n, &i) in order.iter().take(keep).enumerate() {
            mass += (s[i] as f64).exp();
            if mass >= p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    let mut out = vec![f32::NEG_INFINITY; s.len()];
    for &i in &order[..keep] {
        out[i] = s[i];
    }
    log_softmax_in_place(&mut out);
    out
}

/// Draws an index from log-probabilities (−∞ entries are never drawn).
pub fn draw(logp: &[f32], rng: &mut impl Rng) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0f64;
    let mut last = 0;
    for (i, &l) in logp.iter().enumerate() {
        if l == f32::NEG_INFINITY {
            continue;
        }
        acc += (l as f64).exp();
        last = i;
        if u < acc {
            return i;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn top_k_and_top_p_keep_the_right_sets() {
        let logp: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let k2 = sampling_logprobs(&logp, 1.0, Some(2), None);
        assert!((k2[0].exp() - 0.625).abs() < 1e-6 && k2[2] == f32::NEG_INFINITY);
        // p = 0.79 needs the first two tokens (0.5 + 0.3).
        let p = sampling_logprobs(&logp, 1.0, None, Some(0.79));
        assert!(p[1].is_finite() && p[2] == f32::NEG_INFINITY);
        let p = sampling_logprobs(&logp, 1.0, None, Some(0.81));
        assert!(p[2].is_finite() && p[3] == f32::NEG_INFINITY);
    }

    #[test]
    fn temperature_sharpens_and_draw_follows_the_distribution() {
        let logp: Vec<f32> = [0.75f32, 0.25].iter().map(|p| p.ln()).collect();
        let cold = sampling_logprobs(&logp, 0.5, None, None);
        assert!((cold[0].exp() - 0.9).abs() < 1e-6);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let n = 20_000;
        let ones = (0..n).filter(|_| draw(&logp, &mut rng) == 1).count();
        assert!((ones as f64 / n as f64 - 0.25).abs() < 0.015);
    }

    #[test]
    fn masks_add_penalties() {
        let b = TokenMask::Allow(vec![1]).bias(3, -50.0).unwrap();
        assert_eq!(b, vec![-50.0, 0.0, -50.0]);
        let b = TokenMask::Forbid(vec![1, 7]).bias(3, -50.0).unwrap();
        assert_eq!(b, vec![0.0, -50.0, 0.0]);
        assert!(TokenMask::None.bias(3, -50.0).is_none());
    }
}
