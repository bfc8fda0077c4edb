//! Hyper-parameters of a GFlowNet fine-tuning run. The struct and its
//! validation live in `amortize-shared` (the browser validates its form with
//! the same code); this module turns it into the engine's LoRA settings.

pub use amortize_shared::config::{ConfigError, Objective, TrainConfig};

use crate::model::{LoraConfig, Proj};
use crate::Result;

/// The LoRA settings of a run.
pub fn lora_config(cfg: &TrainConfig) -> Result<LoraConfig> {
    let targets = cfg.lora_targets.iter().map(|t| Proj::parse(t)).collect::<Result<Vec<_>>>()?;
    let c = LoraConfig { r: cfg.lora_r, alpha: cfg.lora_alpha, dropout: cfg.lora_dropout, targets };
    c.validate()?;
    Ok(c)
}
