//! A training step of any method as the store's [`MetricPoint`] — the one
//! series the API and the browser draw. Used by the runner as steps come and
//! by [`super::import`] for the `metrics.jsonl` of a run trained elsewhere,
//! so both give the same points. Pure conversions.

use amortize_shared::api::MetricPoint;

use crate::baselines::{PpoMetrics, SftMetrics};
use crate::gfn::StepMetrics;

/// A GFlowNet step.
pub fn gfn(m: &StepMetrics) -> MetricPoint {
    MetricPoint {
        step: m.step,
        loss: m.loss,
        log_z: m.log_z,
        mean_log_r: m.mean_log_r,
        max_log_r: m.max_log_r,
        mean_len: m.mean_len,
        sampler_ess: m.sampler_ess,
        log_w_std: m.log_w_std,
        lr: m.lr,
        reward_temp: m.reward_temp,
        grad_norm: m.grad_norm,
        tokens_per_s: m.tokens_per_s,
        traj_per_s: m.traj_per_s,
        seconds: m.seconds,
    }
}

/// A PPO step (its loss is the policy-gradient loss) at learning rate `lr`.
pub fn ppo(m: &PpoMetrics, lr: f64) -> MetricPoint {
    let none = empty(m.step, m.pg_loss, lr, m.seconds);
    MetricPoint { mean_log_r: m.mean_log_r, max_log_r: m.max_log_r, mean_len: m.mean_len, ..none }
}

/// An SFT step (its loss is the mean negative log-likelihood per action) at learning rate `lr`.
pub fn sft(m: &SftMetrics, lr: f64) -> MetricPoint {
    empty(m.step, m.loss, lr, m.seconds)
}

/// A point with only what every method has.
fn empty(step: usize, loss: f64, lr: f64, seconds: f64) -> MetricPoint {
    MetricPoint { step, loss, log_z: None, mean_log_r: 0.0, max_log_r: 0.0, mean_len: 0.0, sampler_ess: None, log_w_std: None, lr, reward_temp: 1.0, grad_norm: 0.0, tokens_per_s: 0.0, traj_per_s: 0.0, seconds }
}
