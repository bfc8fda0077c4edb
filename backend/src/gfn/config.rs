//! Hyper-parameters of a GFlowNet fine-tuning run (the paper's Tables C.2, D.3,
//! E.2 are presets of this struct, in `tasks`). Serde with `deny_unknown_fields`:
//! a TOML/JSON override with a misspelt key is an error, not a silent default.

use serde::{Deserialize, Serialize};

use crate::model::{LoraConfig, Proj};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Modified subtrajectory balance (paper Eq. 3).
    Subtb,
    /// Trajectory balance with a learned log Z per problem.
    Tb,
    /// Modified detailed balance (adjacent states only).
    Db,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub objective: Objective,
    /// λ of SubTB: pair (i, j) weighs λ^(j−i−1).
    pub subtb_lambda: f64,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Projections with an adapter: any of q, k, v, o, gate, up, down.
    pub lora_targets: Vec<String>,
    pub lr: f64,
    /// Learning rate of log Z (TB only).
    pub logz_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// Trajectories per micro-batch (all for one problem).
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
    pub steps: usize,
    /// Probability that a micro-batch is replayed from the buffer.
    pub p_replay: f64,
    /// Probability that it is sampled from the tempered policy.
    pub p_tempered: f64,
    pub pf_temp_low: f64,
    pub pf_temp_high: f64,
    pub reward_temp_start: f64,
    pub reward_temp_end: f64,
    pub reward_temp_horizon: usize,
    /// Policy actions: stopping is masked below `min_len`; termination is forced at `max_len`.
    pub min_len: usize,
    pub max_len: usize,
    /// Added to the stop logits below `min_len` in the policy's log-probabilities
    /// (the sampler masks them outright), so log q matches what is sampled.
    pub min_len_penalty: f64,
    pub buffer_capacity: usize,
    pub buffer_tolerance: f64,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            objective: Objective::Subtb,
            subtb_lambda: 1.0,
            lora_r: 64,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            lora_targets: ["q", "k", "v", "o", "gate", "up", "down"].map(String::from).to_vec(),
            lr: 1e-4,
            logz_lr: 1e-1,
            warmup_steps: 20,
            weight_decay: 0.01,
            batch_size: 16,
            grad_accum: 1,
            max_grad_norm: 10.0,
            steps: 100,
            p_replay: 0.25,
            p_tempered: 0.25,
            pf_temp_low: 0.5,
            pf_temp_high: 2.0,
            reward_temp_start: 1.0,
            reward_temp_end: 1.0,
            reward_temp_horizon: 0,
            min_len: 0,
            max_len: 20,
            min_len_penalty: -99.0,
            buffer_capacity: 50,
            buffer_tolerance: 0.25,
            checkpoint_every: 50,
            seed: 0,
        }
    }
}

impl TrainConfig {
    pub fn lora(&self) -> Result<LoraConfig> {
        let targets = self.lora_targets.iter().map(|t| Proj::parse(t)).collect::<Result<Vec<_>>>()?;
        let c = LoraConfig { r: self.lora_r, alpha: self.lora_alpha, dropout: self.lora_dropout, targets };
        c.validate()?;
        Ok(c)
    }

    /// Every range check, with the offending field named.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: f64| if v > 0.0 && v.is_finite() { Ok(()) } else { Err(Error::invalid(name, "must be > 0")) };
        pos("lr", self.lr)?;
        pos("logz_lr", self.logz_lr)?;
        pos("reward_temp_start", self.reward_temp_start)?;
        pos("reward_temp_end", self.reward_temp_end)?;
        pos("pf_temp_low", self.pf_temp_low)?;
        pos("pf_temp_high", self.pf_temp_high)?;
        if self.pf_temp_low > self.pf_temp_high {
            return Err(Error::invalid("pf_temp_low", "exceeds pf_temp_high"));
        }
        if !(self.subtb_lambda >= 0.0 && self.subtb_lambda.is_finite()) {
            return Err(Error::invalid("subtb_lambda", "must be ≥ 0"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        if self.grad_accum == 0 {
            return Err(Error::invalid("grad_accum", "must be at least 1"));
        }
        if self.steps == 0 {
            return Err(Error::invalid("steps", "must be at least 1"));
        }
        if self.max_len == 0 {
            return Err(Error::invalid("max_len", "must be at least 1"));
        }
        if self.max_len < self.min_len {
            return Err(Error::invalid("max_len", format!("{} is below min_len {}", self.max_len, self.min_len)));
        }
        for (name, p) in [("p_replay", self.p_replay), ("p_tempered", self.p_tempered)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::invalid(name, "must be a probability in [0, 1]"));
            }
        }
        if self.p_replay + self.p_tempered > 1.0 + 1e-9 {
            return Err(Error::invalid("p_replay", "p_replay + p_tempered exceeds 1"));
        }
        if !(self.min_len_penalty <= 0.0 && self.min_len_penalty.is_finite()) {
            return Err(Error::invalid("min_len_penalty", "must be finite and ≤ 0"));
        }
        if self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return Err(Error::invalid("weight_decay", "weight_decay and max_grad_norm must be ≥ 0"));
        }
        if self.buffer_capacity == 0 {
            return Err(Error::invalid("buffer_capacity", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.buffer_tolerance) {
            return Err(Error::invalid("buffer_tolerance", "must be in [0, 1)"));
        }
        self.lora()?;
        Ok(())
    }

    /// Reward temperature at `step`.
    pub fn reward_temperature(&self, step: usize) -> f64 {
        super::schedule::Linear { start: self.reward_temp_start, end: self.reward_temp_end, horizon: self.reward_temp_horizon }.at(step)
    }
}
