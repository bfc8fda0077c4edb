//! PPO fine-tuning of a LoRA policy against a task's reward — the paper's
//! reward-maximising baseline (its Table E settings: clip 0.2, adaptive KL to
//! the base model from 0.2, 4 epochs on each batch). Token-level, as in TRL:
//! every action pays −β·(log π − log p_base), the last one also gets the task's
//! score; advantages by GAE from a linear value head on the policy's last
//! hidden state, whitened per batch. [`Ppo::starting_from`] starts the policy
//! from an adapter (SFT's: TRL's recipe), which is then also the reference of
//! the KL penalty in place of the base model. Uses the GFlowNet trainer's pieces (task,
//! sampler, policy pass, AdamW); knows nothing of the GFlowNet losses.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::gfn::optim::{AdamW, AdamWConfig};
use crate::gfn::policy::{policy_logprobs_and_states, policy_logprobs_taped, TapedPolicy};
use crate::gfn::trainer::sample_trajectories;
use crate::gfn::{config::lora_config, starting_adapter, Problem, States, TrainConfig, TrainTask, Trajectory};
use crate::model::{LanguageModel, LoraAdapter, LoraView, Mode};
use crate::{Error, Result};

/// PPO's own settings; the task's shape (lengths, LoRA) comes from its preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    pub steps: usize,
    /// Trajectories per step (all for one problem).
    pub batch_size: usize,
    pub lr: f64,
    /// Optimisation passes over each batch.
    pub epochs: usize,
    pub clip: f64,
    pub init_kl_coef: f64,
    /// Target of the per-sequence KL to the base (adaptive controller).
    pub target_kl: f64,
    pub kl_horizon: f64,
    pub gamma: f64,
    pub lam: f64,
    pub vf_coef: f64,
    pub max_grad_norm: f64,
    /// Scale of the task's log-reward before it enters PPO.
    pub reward_scale: f64,
    pub seed: u64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            steps: 200,
            batch_size: 16,
            lr: 1e-4,
            epochs: 4,
            clip: 0.2,
            init_kl_coef: 0.2,
            target_kl: 6.0,
            kl_horizon: 10_000.0,
            gamma: 1.0,
            lam: 0.95,
            vf_coef: 0.1,
            max_grad_norm: 1.0,
            reward_scale: 1.0,
            seed: 0,
        }
    }
}

impl PpoConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("ppo.steps", self.steps), ("ppo.batch_size", self.batch_size), ("ppo.epochs", self.epochs)] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        for (name, v) in [("ppo.lr", self.lr), ("ppo.clip", self.clip), ("ppo.target_kl", self.target_kl), ("ppo.kl_horizon", self.kl_horizon), ("ppo.reward_scale", self.reward_scale)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::invalid(name, "must be > 0"));
            }
        }
        for (name, v) in [("ppo.init_kl_coef", self.init_kl_coef), ("ppo.vf_coef", self.vf_coef), ("ppo.max_grad_norm", self.max_grad_norm)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::invalid(name, "must be ≥ 0"));
            }
        }
        for (name, v) in [("ppo.gamma", self.gamma), ("ppo.lam", self.lam)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::invalid(name, "must be in [0, 1]"));
            }
        }
        Ok(())
    }
}

/// One PPO step, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoMetrics {
    pub step: usize,
    pub pg_loss: f64,
    pub vf_loss: f64,
    /// The task's log-reward of the sampled trajectories: mean and max.
    pub mean_log_r: f64,
    pub max_log_r: f64,
    /// Mean per-sequence KL(π ‖ reference) estimate (the base model, or the
    /// adapter the policy started from), and the coefficient after the update.
    pub kl: f64,
    pub kl_coef: f64,
    pub mean_len: f64,
    pub seconds: f64,
}

pub struct Ppo<'a> {
    lm: &'a LanguageModel,
    task: TrainTask,
    shape: TrainConfig,
    pub cfg: PpoConfig,
    pub adapter: LoraAdapter,
    /// Value head: w [H, 1], b [1] (f32).
    value: (Var, Var),
    opt: AdamW,
    kl_coef: f64,
    pub step: usize,
    bias: Option<Tensor>,
    /// The KL penalty's reference policy: `None`, the base model.
    reference: Option<LoraView>,
}

/// GAE over one trajectory's actions: (advantages, returns).
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lam: f32) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    let (mut adv, mut last) = (vec![0f32; n], 0f32);
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        last = delta + gamma * lam * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Actions of trajectory `t`: its policy tokens, plus the stop action unless
/// termination was forced at `max_len`.
fn num_actions(t: &Trajectory, max_len: usize) -> usize {
    let n = t.num_actions();
    n + usize::from(n < max_len)
}

impl<'a> Ppo<'a> {
    /// The paper's baseline: a fresh adapter, kept close to the base model.
    pub fn new(lm: &'a LanguageModel, task: TrainTask, shape: TrainConfig, cfg: PpoConfig) -> Result<Self> {
        shape.validate()?;
        let adapter = LoraAdapter::new(lm.config(), lora_config(&shape)?, lm.device(), cfg.seed)?;
        Self::assemble(lm, task, shape, cfg, adapter, None)
    }

    /// The policy starts as the PEFT adapter in `start` (checked against
    /// `shape`'s LoRA settings) and is kept close to it: a second, frozen copy
    /// read from the same folder is the KL penalty's reference.
    pub fn starting_from(lm: &'a LanguageModel, task: TrainTask, shape: TrainConfig, cfg: PpoConfig, start: &Path) -> Result<Self> {
        shape.validate()?;
        let adapter = starting_adapter(start, &shape, lm.config(), lm.device())?;
        let reference = starting_adapter(start, &shape, lm.config(), lm.device())?.view(Mode::Infer, lm.llama.dtype())?;
        Self::assemble(lm, task, shape, cfg, adapter, Some(reference))
    }

    fn assemble(lm: &'a LanguageModel, task: TrainTask, shape: TrainConfig, cfg: PpoConfig, adapter: LoraAdapter, reference: Option<LoraView>) -> Result<Self> {
        cfg.validate()?;
        if task.problems.is_empty() {
            return Err(Error::invalid("dataset", "the task has no problems to train on"));
        }
        let h = lm.config().hidden_size;
        let value = (Var::zeros((h, 1), DType::F32, lm.device())?, Var::zeros(1, DType::F32, lm.device())?);
        let mut params = adapter.vars();
        params.extend([value.0.clone(), value.1.clone()]);
        let mut opt = AdamW::new(params, AdamWConfig { weight_decay: 0.0, ..Default::default() })?;
        opt.fused = lm.llama.fused();
        let bias = match task.mask.bias(lm.config().vocab_size, task.mask_penalty) {
            Some(b) => Some(Tensor::from_vec(b, lm.config().vocab_size, lm.device())?),
            None => None,
        };
        Ok(Ppo { lm, task, shape, kl_coef: cfg.init_kl_coef, cfg, adapter, value, opt, step: 0, bias, reference })
    }

    fn sample(&self, problem: &Problem, seed: u64) -> Result<Vec<Trajectory>> {
        let view = self.adapter.view(Mode::Infer, self.lm.llama.dtype())?;
        // Folded into the weights where that pays (as the trainer does).
        let view = if self.lm.llama.fold_pays(&view, self.cfg.batch_size * self.shape.max_len) { self.lm.llama.fold(&view)? } else { view };
        sample_trajectories(self.lm, &self.task, &view, problem, self.cfg.batch_size, (self.shape.min_len, self.shape.max_len), 1.0, seed)
    }

    /// Per-action log-probabilities `[B, S]` (actions then stop; 0 past the end)
    /// and the value of the state each action is taken from `[B, S]`.
    fn pass(&self, view: Option<&crate::model::LoraView>, problem: &Problem, trajs: &[Trajectory], stop_at: &Tensor) -> Result<(Tensor, Tensor)> {
        let (log_pf, log_pt, states) = policy_logprobs_and_states(
            self.lm,
            view,
            &problem.policy_prompt,
            trajs,
            self.bias.as_ref(),
            &self.task.stop_tokens,
            (self.shape.min_len, self.shape.min_len_penalty as f32),
            self.shape.max_len,
        )?;
        self.head(&log_pf, &log_pt, &states, stop_at)
    }

    /// [`Ppo::pass`] through the taped policy pass (for the updates).
    fn pass_taped(&self, view: &crate::model::LoraView, problem: &Problem, trajs: &[Trajectory], stop_at: &Tensor) -> Result<(Tensor, Tensor, TapedPolicy)> {
        let min_len = (self.shape.min_len, self.shape.min_len_penalty as f32);
        let t = policy_logprobs_taped(self.lm, view, &problem.policy_prompt, trajs, self.bias.as_ref(), &self.task.stop_tokens, min_len, self.shape.max_len)?;
        let (lp, v) = self.head(&t.log_pf, &t.log_pt, &t.states, stop_at)?;
        Ok((lp, v, t))
    }

    /// log q(a | s) per state [B, S] (the stop action where `stop_at`) and the value head.
    fn head(&self, log_pf: &Tensor, log_pt: &Tensor, states: &Tensor, stop_at: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = log_pf.dim(0)?;
        let pf = Tensor::cat(&[log_pf, &Tensor::zeros((b, 1), DType::F32, self.lm.device())?], 1)?; // [B, S]
        let lp = (pf + (log_pt * stop_at)?)?;
        let (_, s, h) = states.dims3()?;
        let v = states.to_dtype(DType::F32)?.reshape((b * s, h))?.matmul(self.value.0.as_tensor())?.reshape((b, s))?.broadcast_add(self.value.1.as_tensor())?;
        Ok((lp, v))
    }

    /// One PPO step: sample a batch, score it, `epochs` clipped updates.
    pub fn train_step(&mut self) -> Result<PpoMetrics> {
        let t0 = Instant::now();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (self.step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let problem = self.task.problems[rng.random_range(0..self.task.problems.len())].clone();
        let trajs = self.sample(&problem, rng.random())?;
        // PPO rewards the whole sequence only: no prefix is scored.
        let scores: Vec<f32> = self.task.reward.log_rewards_of(self.lm, &problem, &trajs, States::Last)?.iter().map(|r| *r.last().unwrap_or(&0.0)).collect();
        let (b, max_len) = (trajs.len(), self.shape.max_len);
        let s = trajs.iter().map(|t| t.num_actions()).max().unwrap_or(0) + 1;
        let dev = self.lm.device().clone();
        let (mut mask, mut stop_at) = (vec![0f32; b * s], vec![0f32; b * s]);
        for (i, t) in trajs.iter().enumerate() {
            let m = num_actions(t, max_len);
            mask[i * s..i * s + m].iter_mut().for_each(|x| *x = 1.0);
            if t.num_actions() < max_len {
                stop_at[i * s + t.num_actions()] = 1.0;
            }
        }
        let stop_at = Tensor::from_vec(stop_at, (b, s), &dev)?;
        let infer = self.adapter.view(Mode::Infer, self.lm.llama.dtype())?;
        let (old_lp, old_v) = self.pass(Some(&infer), &problem, &trajs, &stop_at)?;
        let (old_lp, old_v) = (old_lp.detach(), old_v.detach());
        let (base_lp, _) = self.pass(self.reference.as_ref(), &problem, &trajs, &stop_at)?;
        let (old, base, vals) = (old_lp.to_vec2::<f32>()?, base_lp.to_vec2::<f32>()?, old_v.to_vec2::<f32>()?);

        // Per-action rewards: the KL penalty, plus the score on the last action.
        let (mut adv, mut ret, mut kl_sum) = (vec![0f32; b * s], vec![0f32; b * s], 0f64);
        for (i, t) in trajs.iter().enumerate() {
            let m = num_actions(t, max_len);
            let kl: Vec<f32> = (0..m).map(|j| old[i][j] - base[i][j]).collect();
            kl_sum += kl.iter().map(|&x| x as f64).sum::<f64>();
            let mut r: Vec<f32> = kl.iter().map(|k| -(self.kl_coef as f32) * k).collect();
            r[m - 1] += scores[i] * self.cfg.reward_scale as f32;
            let (a, rt) = gae(&r, &vals[i][..m], self.cfg.gamma as f32, self.cfg.lam as f32);
            adv[i * s..i * s + m].copy_from_slice(&a);
            ret[i * s..i * s + m].copy_from_slice(&rt);
        }
        // Whiten advantages over the batch's actions.
        let live: Vec<f32> = adv.iter().zip(&mask).filter(|(_, m)| **m > 0.0).map(|(a, _)| *a).collect();
        let mean = live.iter().sum::<f32>() / live.len().max(1) as f32;
        let std = (live.iter().map(|a| (a - mean).powi(2)).sum::<f32>() / live.len().max(1) as f32).sqrt();
        for (a, m) in adv.iter_mut().zip(&mask) {
            *a = if *m > 0.0 { (*a - mean) / (std + 1e-8) } else { 0.0 };
        }
        let (adv, ret, mask) = (Tensor::from_vec(adv, (b, s), &dev)?, Tensor::from_vec(ret, (b, s), &dev)?, Tensor::from_vec(mask, (b, s), &dev)?);
        let n_live = mask.sum_all()?.to_scalar::<f32>()? as f64;

        let (mut pg_last, mut vf_last) = (0.0, 0.0);
        for _ in 0..self.cfg.epochs {
            let view = self.adapter.view_seeded(Mode::Tape, self.lm.llama.dtype(), rng.random())?;
            let (lp, v, taped) = self.pass_taped(&view, &problem, &trajs, &stop_at)?;
            let ratio = (lp - &old_lp)?.exp()?;
            let pg1 = (adv.neg()? * &ratio)?;
            let pg2 = (adv.neg()? * ratio.clamp(1.0 - self.cfg.clip, 1.0 + self.cfg.clip)?)?;
            let pg = ((pg1.maximum(&pg2)? * &mask)?.sum_all()? / n_live)?;
            let vf = ((((v - &ret)?.sqr()? * &mask)?.sum_all()? / n_live)? * 0.5)?;
            let loss = (&pg + (&vf * self.cfg.vf_coef)?)?;
            let (pgv, vfv) = (pg.to_scalar::<f32>()? as f64, vf.to_scalar::<f32>()? as f64);
            if !(pgv.is_finite() && vfv.is_finite()) {
                return Err(Error::NonFinite(format!("PPO loss at step {}", self.step + 1)));
            }
            let g = loss.backward()?;
            // The adapter's gradients from the taped pass, then the value head's.
            let mut grads = taped.backward(self.lm, &view, &g)?.in_var_order(&self.adapter)?;
            grads.extend([&self.value.0, &self.value.1].map(|v| g.get(v.as_tensor()).cloned()));
            // Clipped (when max_grad_norm > 0) and applied in one flat update.
            let norm = self.opt.step_clipped(&grads, self.cfg.lr, self.cfg.max_grad_norm)?;
            if !norm.is_finite() {
                return Err(Error::NonFinite(format!("gradient norm at step {}", self.step + 1)));
            }
            (pg_last, vf_last) = (pgv, vfv);
        }

        // Adaptive KL controller (Ziegler et al. 2019).
        let kl = kl_sum / b as f64;
        let err = (kl / self.cfg.target_kl - 1.0).clamp(-0.2, 0.2);
        self.kl_coef *= 1.0 + err * b as f64 / self.cfg.kl_horizon;
        self.step += 1;
        let n = scores.len().max(1) as f64;
        Ok(PpoMetrics {
            step: self.step,
            pg_loss: pg_last,
            vf_loss: vf_last,
            mean_log_r: scores.iter().map(|&x| x as f64).sum::<f64>() / n,
            max_log_r: scores.iter().map(|&x| x as f64).fold(f64::NEG_INFINITY, f64::max),
            kl,
            kl_coef: self.kl_coef,
            mean_len: trajs.iter().map(|t| t.num_actions() as f64).sum::<f64>() / n,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Trains to `cfg.steps`, appending metrics to `out/metrics.jsonl` and saving
    /// the adapter to `out/adapter` at the end.
    pub fn run(&mut self, out: Option<&Path>, mut on_step: impl FnMut(&PpoMetrics) -> ControlFlow<()>) -> Result<()> {
        self.run_observed(out, |_, m| on_step(m))
    }

    /// [`Ppo::run`], the callback also seeing the trainer (its adapter, to
    /// evaluate it along the way).
    pub fn run_observed(&mut self, out: Option<&Path>, mut on_step: impl FnMut(&Self, &PpoMetrics) -> ControlFlow<()>) -> Result<()> {
        if let Some(o) = out {
            std::fs::create_dir_all(o)?;
        }
        while self.step < self.cfg.steps {
            let m = self.train_step()?;
            if let Some(o) = out {
                crate::util::append_metrics(o, &m)?;
            }
            if on_step(self, &m).is_break() {
                return Err(Error::Cancelled);
            }
        }
        if let Some(o) = out {
            self.adapter.save_peft(&o.join("adapter"), &self.lm.name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_by_hand() {
        // γ = 1, λ = 1: advantages are returns-to-go minus values.
        let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.5, 0.5], 1.0, 1.0);
        assert_eq!(a, vec![0.5, 0.5, 0.5]);
        assert_eq!(r, vec![1.0, 1.0, 1.0]);
        // λ = 0: one-step TD errors.
        let (a, _) = gae(&[1.0, 2.0], &[0.0, 1.0], 1.0, 0.0);
        assert_eq!(a, vec![2.0, 1.0]);
        // γ = 0.5, λ = 0.5: δ = [1 + 0.5·1 − 0, 2 − 1] = [1.5, 1]; A0 = 1.5 + 0.25·1.
        let (a, _) = gae(&[1.0, 2.0], &[0.0, 1.0], 0.5, 0.5);
        assert_eq!(a, vec![1.75, 1.0]);
    }
}
