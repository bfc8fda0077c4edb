//! Supervised fine-tuning: maximum likelihood of the task's reference Z's
//! (the same Z's that seed the GFlowNet replay buffer: reference middles for
//! infilling, demonstration rationales for arithmetic, prompted rationales
//! for SUBJ) under the LoRA policy, stop action included — log q(Z ⊤ | X) from
//! the same teacher-forced pass the GFlowNet losses use. The paper's settings:
//! lr 1e-4, 10 epochs.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::gfn::optim::{AdamW, AdamWConfig};
use crate::gfn::policy::policy_logprobs_taped;
use crate::gfn::{config::lora_config, TrainConfig, TrainTask, Trajectory};
use crate::model::{LanguageModel, LoraAdapter, LoraGrads, Mode};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    pub epochs: usize,
    /// (X, Z) pairs per optimiser step.
    pub batch_size: usize,
    pub lr: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig { epochs: 10, batch_size: 16, lr: 1e-4, max_grad_norm: 1.0, seed: 0 }
    }
}

impl SftConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::invalid("sft.epochs", "epochs and batch_size must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("sft.lr", "must be > 0"));
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err(Error::invalid("sft.max_grad_norm", "must be ≥ 0"));
        }
        Ok(())
    }
}

/// One optimiser step, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftMetrics {
    pub step: usize,
    pub epoch: usize,
    /// Mean negative log-likelihood per action (tokens and stop).
    pub loss: f64,
    pub seconds: f64,
}

/// Trains a fresh adapter on the task's reference Z's; metrics to
/// `out/metrics.jsonl` and the adapter to `out/adapter` when `out` is given.
pub fn train_sft(
    lm: &LanguageModel,
    task: &TrainTask,
    shape: &TrainConfig,
    cfg: &SftConfig,
    out: Option<&Path>,
    mut on_step: impl FnMut(&SftMetrics) -> ControlFlow<()>,
) -> Result<LoraAdapter> {
    train_sft_observed(lm, task, shape, cfg, out, |_, m| on_step(m))
}

/// [`train_sft`], the callback also seeing the adapter as trained so far
/// (to evaluate it along the way).
pub fn train_sft_observed(
    lm: &LanguageModel,
    task: &TrainTask,
    shape: &TrainConfig,
    cfg: &SftConfig,
    out: Option<&Path>,
    mut on_step: impl FnMut(&LoraAdapter, &SftMetrics) -> ControlFlow<()>,
) -> Result<LoraAdapter> {
    cfg.validate()?;
    // (problem index, Z) for every reference that fits the preset's max_len.
    let pairs: Vec<(usize, Trajectory)> = task
        .problems
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.seeds.iter().filter(|z| z.num_actions() <= shape.max_len).map(move |z| (i, z.clone())))
        .collect();
    if pairs.is_empty() {
        return Err(Error::invalid("method", "this task has no reference Z's to fine-tune on (SFT needs a dataset with rationales or middles)"));
    }
    let adapter = LoraAdapter::new(lm.config(), lora_config(shape)?, lm.device(), cfg.seed)?;
    let mut opt = AdamW::new(adapter.vars(), AdamWConfig { weight_decay: 0.0, ..Default::default() })?;
    opt.fused = lm.llama.fused();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    if let Some(o) = out {
        std::fs::create_dir_all(o)?;
        let _ = std::fs::remove_file(o.join("metrics.jsonl"));
    }
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size) {
            let t0 = Instant::now();
            // The taped pass: no gradients for frozen weights (`model::tape`).
            let view = adapter.view_seeded(Mode::Tape, lm.llama.dtype(), cfg.seed ^ step as u64)?;
            let mut tapes = Vec::new();
            // Group the batch by problem: one policy pass per prompt.
            let mut by_problem: std::collections::BTreeMap<usize, Vec<Trajectory>> = Default::default();
            for &k in batch {
                by_problem.entry(pairs[k].0).or_default().push(pairs[k].1.clone());
            }
            let mut total: Option<candle_core::Tensor> = None;
            let mut actions = 0usize;
            for (pi, zs) in &by_problem {
                let p = &task.problems[*pi];
                let min_len = (shape.min_len, shape.min_len_penalty as f32);
                let t = policy_logprobs_taped(lm, &view, &p.policy_prompt, zs, None, &task.stop_tokens, min_len, shape.max_len)?;
                let (log_pf, log_pt) = (t.log_pf.clone(), t.log_pt.clone());
                tapes.push(t);
                // log q(Z ⊤ | X) = Σ log q(z_k | ·) + log q(⊤ | s_n) (0 when forced at max_len).
                let stop_at: Vec<f32> = zs.iter().flat_map(|z| (0..log_pt.dim(1).unwrap_or(0)).map(move |i| if i == z.num_actions() { 1.0 } else { 0.0 })).collect();
                let stop_at = candle_core::Tensor::from_vec(stop_at, log_pt.shape(), lm.device())?;
                let ll = (log_pf.sum_all()? + (log_pt * stop_at)?.sum_all()?)?;
                actions += zs.iter().map(|z| z.num_actions() + usize::from(z.num_actions() < shape.max_len)).sum::<usize>();
                total = Some(match total {
                    Some(t) => (t + ll)?,
                    None => ll,
                });
            }
            let Some(total) = total else { continue };
            let loss = (total.neg()? / actions.max(1) as f64)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::NonFinite(format!("SFT loss at step {}", step + 1)));
            }
            let g = loss.backward()?;
            let mut sum = LoraGrads::new(lm.config().num_hidden_layers);
            for t in &tapes {
                t.backward_into(lm, &view, &g, &mut sum)?;
            }
            let grads = sum.in_var_order(&adapter)?;
            // Clipped (when max_grad_norm > 0) and applied in one flat update.
            let norm = opt.step_clipped(&grads, cfg.lr, cfg.max_grad_norm)?;
            if !norm.is_finite() {
                return Err(Error::NonFinite(format!("gradient norm at step {}", step + 1)));
            }
            step += 1;
            let m = SftMetrics { step, epoch: epoch + 1, loss: lv, seconds: t0.elapsed().as_secs_f64() };
            if let Some(o) = out {
                crate::util::append_metrics(o, &m)?;
            }
            if on_step(&adapter, &m).is_break() {
                return Err(Error::Cancelled);
            }
        }
    }
    if let Some(o) = out {
        adapter.save_peft(&o.join("adapter"), &lm.name)?;
    }
    Ok(adapter)
}
