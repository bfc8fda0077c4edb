//! Hyper-parameters of a GFlowNet fine-tuning run and their validation. The
//! backend trains with this struct; the browser validates its "new run" form
//! with the very same [`TrainConfig::validate`], so a value the form accepts is
//! one the server accepts. Serde with `deny_unknown_fields`: an override with a
//! misspelt key is an error, not a silent default. No engine types here.

use serde::{Deserialize, Serialize};

/// A rejected value: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The projections a LoRA adapter may target (short names).
pub const LORA_TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

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
    /// Learning rate of log Z (TB's, or s_0's flow when `min_len > 0`).
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
    /// Every range check, with the offending field named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &str, msg: &str| Err(ConfigError::new(field, msg));
        for (name, v) in [
            ("lr", self.lr),
            ("logz_lr", self.logz_lr),
            ("reward_temp_start", self.reward_temp_start),
            ("reward_temp_end", self.reward_temp_end),
            ("pf_temp_low", self.pf_temp_low),
            ("pf_temp_high", self.pf_temp_high),
            ("lora_alpha", self.lora_alpha),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return err(name, "must be > 0");
            }
        }
        if self.pf_temp_low > self.pf_temp_high {
            return err("pf_temp_low", "exceeds pf_temp_high");
        }
        if !(self.subtb_lambda >= 0.0 && self.subtb_lambda.is_finite()) {
            return err("subtb_lambda", "must be ≥ 0");
        }
        for (name, v) in [("batch_size", self.batch_size), ("grad_accum", self.grad_accum), ("steps", self.steps), ("max_len", self.max_len), ("buffer_capacity", self.buffer_capacity), ("lora_r", self.lora_r)] {
            if v == 0 {
                return err(name, "must be at least 1");
            }
        }
        if self.max_len < self.min_len {
            return Err(ConfigError::new("max_len", format!("{} is below min_len {}", self.max_len, self.min_len)));
        }
        for (name, p) in [("p_replay", self.p_replay), ("p_tempered", self.p_tempered)] {
            if !(0.0..=1.0).contains(&p) {
                return err(name, "must be a probability in [0, 1]");
            }
        }
        if self.p_replay + self.p_tempered > 1.0 + 1e-9 {
            return err("p_replay", "p_replay + p_tempered exceeds 1");
        }
        if !(self.min_len_penalty <= 0.0 && self.min_len_penalty.is_finite()) {
            return err("min_len_penalty", "must be finite and ≤ 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return err("weight_decay", "must be ≥ 0");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return err("max_grad_norm", "must be ≥ 0");
        }
        if !(0.0..1.0).contains(&self.buffer_tolerance) {
            return err("buffer_tolerance", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return err("lora_dropout", "must be in [0, 1)");
        }
        if self.lora_targets.is_empty() {
            return err("lora_targets", "name at least one projection");
        }
        for t in &self.lora_targets {
            let short = t.trim().trim_end_matches("_proj");
            if !LORA_TARGETS.contains(&short) {
                return Err(ConfigError::new("lora_targets", format!("unknown projection `{t}` (use {})", LORA_TARGETS.join(","))));
            }
        }
        Ok(())
    }

    /// Reward temperature at `step`: linear from `reward_temp_start` to
    /// `reward_temp_end` over `reward_temp_horizon` steps, then constant.
    pub fn reward_temperature(&self, step: usize) -> f64 {
        let (a, b, h) = (self.reward_temp_start, self.reward_temp_end, self.reward_temp_horizon);
        if h == 0 || step >= h {
            b
        } else {
            a + (b - a) * step as f64 / h as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_field() {
        assert_eq!(TrainConfig::default().validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut TrainConfig)| {
            let mut c = TrainConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field
        };
        assert_eq!(bad(&|c| c.lr = 0.0), "lr");
        assert_eq!(bad(&|c| c.reward_temp_start = -1.0), "reward_temp_start");
        assert_eq!(bad(&|c| c.subtb_lambda = -0.5), "subtb_lambda");
        assert_eq!(bad(&|c| c.batch_size = 0), "batch_size");
        assert_eq!(bad(&|c| { c.min_len = 5; c.max_len = 4 }), "max_len");
        assert_eq!(bad(&|c| c.lora_targets = vec!["qq".into()]), "lora_targets");
        assert_eq!(bad(&|c| c.lr = f64::NAN), "lr");
    }

    #[test]
    fn reward_temperature_is_linear_then_flat() {
        let c = TrainConfig { reward_temp_start: 1.1, reward_temp_end: 0.5, reward_temp_horizon: 150, ..Default::default() };
        assert_eq!(c.reward_temperature(0), 1.1);
        assert!((c.reward_temperature(75) - 0.8).abs() < 1e-12);
        assert_eq!(c.reward_temperature(10_000), 0.5);
    }
}
