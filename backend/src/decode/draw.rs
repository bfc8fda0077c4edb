//! Choosing the next token where the logits are (on the GPU): token-mask bias,
//! the minimum-length stop mask, log-softmax, temperature, and a Gumbel-max draw
//! (or argmax) run as a handful of batched tensor ops; only the chosen ids and
//! their two log-probabilities (policy at T = 1, and sampled-from) go to the host,
//! one small copy per decode step instead of the whole `[B, V]` logits.
//!
//! Top-k / top-p stay on the host path (`logits.rs`): they need a sort.
//! Randomness comes in as a uniform tensor, so the CPU tests feed seeded host
//! noise and the GPU feeds the device generator. Owns no model state.

use candle_core::{DType, Device, Tensor, D};

use super::fused_rows::draw_rows;
use crate::Result;

/// The largest f32 below 1: a uniform draw of exactly 1 would give an infinite
/// Gumbel value. (The clamp changes a draw's probability by at most ~1e-7.)
const U_MAX: f64 = 1.0 - f32::EPSILON as f64 / 2.0;

/// The chosen token of one row, its log q at temperature 1 (masks applied) and
/// its log-probability under the distribution it was drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub logprob: f32,
    pub sample_logprob: f32,
}

/// The per-run constants of on-device drawing (mask biases over the vocabulary).
pub struct DeviceDraw {
    /// Token-mask penalty `[1, V]`, if any.
    bias: Option<Tensor>,
    /// `-inf` at the stop tokens, `[1, V]` (added below the minimum length).
    stop_bias: Option<Tensor>,
    /// One fused op per draw (`fused_rows.rs`) instead of the composed ops.
    fused: bool,
}

impl DeviceDraw {
    pub fn new(vocab: usize, bias: Option<&[f32]>, stop_ids: &[u32], device: &Device) -> Result<Self> {
        let bias = match bias {
            Some(b) => Some(Tensor::from_slice(b, (1, vocab), device)?),
            None => None,
        };
        let stop_bias = if stop_ids.is_empty() {
            None
        } else {
            let mut s = vec![0f32; vocab];
            for &t in stop_ids {
                if let Some(x) = s.get_mut(t as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
            Some(Tensor::from_vec(s, (1, vocab), device)?)
        };
        Ok(DeviceDraw { bias, stop_bias, fused: false })
    }

    /// Draws with one fused op (`fused_rows.rs`) when `on`: the model's
    /// [`crate::model::Llama::fused`] switch.
    pub fn with_fused(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    /// Picks one token per row of `logits` `[B, V]` (f32). `uniform` `[B, V]`
    /// holds U(0, 1) noise and is required unless `greedy`.
    pub fn choose(&self, logits: &Tensor, below_min: bool, temperature: f32, greedy: bool, uniform: Option<&Tensor>) -> Result<Vec<Pick>> {
        picks(&self.choose_rows(logits, below_min, temperature, greedy, uniform)?)
    }

    /// [`DeviceDraw::choose`] without the copy to the host: `[B, 3]` f32 rows
    /// of (id, log q, log q_sampled), left on the device (ids < 2^24 are exact).
    pub fn choose_rows(&self, logits: &Tensor, below_min: bool, temperature: f32, greedy: bool, uniform: Option<&Tensor>) -> Result<Tensor> {
        let mut x = logits.to_dtype(DType::F32)?;
        if self.fused {
            let stop = if below_min { self.stop_bias.as_ref() } else { None };
            return draw_rows(&x, self.bias.as_ref(), stop, uniform, temperature, greedy, U_MAX as f32);
        }
        if let Some(b) = &self.bias {
            x = x.broadcast_add(b)?;
        }
        if below_min {
            if let Some(s) = &self.stop_bias {
                x = x.broadcast_add(s)?;
            }
        }
        let logp = candle_nn::ops::log_softmax(&x, D::Minus1)?; // [B, V]
        let (token, sampled) = if greedy {
            (logp.argmax_keepdim(D::Minus1)?, None)
        } else {
            let u = uniform.ok_or_else(|| crate::Error::invalid("sample", "on-device drawing needs noise"))?;
            let s = if temperature == 1.0 { logp.clone() } else { candle_nn::ops::log_softmax(&(&logp / temperature as f64)?, D::Minus1)? };
            // Gumbel-max: argmax(s + G), G = -ln(-ln U), written as s - ln(E), E = -ln U.
            let e = u.to_dtype(DType::F32)?.clamp(f32::MIN_POSITIVE, U_MAX)?.log()?.neg()?;
            ((&s - e.log()?)?.argmax_keepdim(D::Minus1)?, Some(s))
        }; // token: [B, 1] u32
        let lp = logp.gather(&token, D::Minus1)?;
        let slp = match &sampled {
            Some(s) => s.gather(&token, D::Minus1)?,
            None => lp.zeros_like()?,
        };
        Ok(Tensor::cat(&[&token.to_dtype(DType::F32)?, &lp, &slp], 1)?)
    }
}

/// One copy to the host of [B, 3] = (id, log q, log q_sampled); ids < 2^24 are
/// exact in f32.
fn picks(rows: &Tensor) -> Result<Vec<Pick>> {
    let rows: Vec<Vec<f32>> = rows.to_vec2()?;
    Ok(rows.into_iter().map(|r| Pick { token: r[0] as u32, logprob: r[1], sample_logprob: r[2] }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::logits::{log_softmax_in_place, sampling_logprobs};
    use rand::{Rng, SeedableRng};

    fn noise(b: usize, v: usize, rng: &mut impl Rng) -> Tensor {
        let u: Vec<f32> = (0..b * v).map(|_| rng.random::<f32>()).collect();
        Tensor::from_vec(u, (b, v), &Device::Cpu).unwrap()
    }

    #[test]
    fn gumbel_draws_follow_the_tempered_masked_distribution() {
        let dev = Device::Cpu;
        let raw = [1.0f32, 0.2, -0.5, 2.0, 0.0];
        let bias = [0.0f32, 0.0, 0.0, 0.0, -3.0];
        for fused in [false, true] {
            draws_follow_the_distribution(DeviceDraw::new(5, Some(&bias), &[3], &dev).unwrap().with_fused(fused), raw, bias);
        }
    }

    fn draws_follow_the_distribution(d: DeviceDraw, raw: [f32; 5], bias: [f32; 5]) {
        let dev = Device::Cpu;
        let (b, rounds) = (500, 40);
        let logits = Tensor::from_vec(raw.repeat(b), (b, 5), &dev).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (below_min, temp) in [(false, 1.0f32), (true, 0.7)] {
            // Host reference: bias, stop mask, log-softmax, temperature.
            let mut l: Vec<f32> = raw.iter().zip(&bias).map(|(x, b)| x + b).collect();
            if below_min {
                l[3] = f32::NEG_INFINITY;
            }
            log_softmax_in_place(&mut l);
            let s = sampling_logprobs(&l, temp, None, None);
            let mut counts = [0usize; 5];
            for _ in 0..rounds {
                for p in d.choose(&logits, below_min, temp, false, Some(&noise(b, 5, &mut rng))).unwrap() {
                    counts[p.token as usize] += 1;
                    assert!((p.logprob - l[p.token as usize]).abs() < 1e-5);
                    assert!((p.sample_logprob - s[p.token as usize]).abs() < 1e-5);
                }
            }
            let n = (b * rounds) as f64;
            for (i, &c) in counts.iter().enumerate() {
                let p = (s[i] as f64).exp();
                let sd = (p * (1.0 - p) / n).sqrt();
                assert!((c as f64 / n - p).abs() < 5.0 * sd + 1e-9, "token {i}: {} vs {p} ({below_min}, {temp})", c as f64 / n);
            }
            if below_min {
                assert_eq!(counts[3], 0, "a masked stop token was drawn");
            }
        }
    }

    #[test]
    fn greedy_takes_the_argmax_and_needs_no_noise() {
        let dev = Device::Cpu;
        for fused in [false, true] {
            let d = DeviceDraw::new(3, None, &[], &dev).unwrap().with_fused(fused);
            let logits = Tensor::new(&[[0.1f32, 0.9, 0.3], [2.0, -1.0, 0.0]], &dev).unwrap();
            let p = d.choose(&logits, false, 1.0, true, None).unwrap();
            assert_eq!((p[0].token, p[1].token), (1, 0));
            assert_eq!(p[0].sample_logprob, 0.0);
            assert!(d.choose(&logits, false, 1.0, false, None).is_err());
        }
    }
}
