//! Hyper-parameters of a GFlowNet fine-tuning run. The struct and its
//! validation live in `amortize-shared` (the browser validates its form with
//! the same code); this module turns it into the engine's LoRA settings and
//! checks an adapter a run starts from against them.

pub use amortize_shared::config::{ConfigError, Objective, TrainConfig};

use std::path::Path;

use candle_core::Device;

use crate::model::{LlamaConfig, LoraAdapter, LoraConfig, Proj};
use crate::{Error, Result};

/// The LoRA settings of a run.
pub fn lora_config(cfg: &TrainConfig) -> Result<LoraConfig> {
    let targets = cfg.lora_targets.iter().map(|t| Proj::parse(t)).collect::<Result<Vec<_>>>()?;
    let c = LoraConfig { r: cfg.lora_r, alpha: cfg.lora_alpha, dropout: cfg.lora_dropout, targets };
    c.validate()?;
    Ok(c)
}

/// The adapter a run starts from instead of a fresh one (`train --adapter
/// DIR`, compare's `sft+gfn`, a server run started from another's): read
/// from a PEFT folder and checked against the run's LoRA settings — rank,
/// alpha and targets must be the config's (the run's checkpoints, its
/// `run.json` and a resume rebuild the adapter from them); dropout is the
/// run's.
pub fn starting_adapter(dir: &Path, cfg: &TrainConfig, model: &LlamaConfig, device: &Device) -> Result<LoraAdapter> {
    let want = lora_config(cfg)?;
    let mut a = LoraAdapter::load_peft(dir, model, device)?;
    let names = |ps: &[Proj]| {
        let mut v: Vec<&str> = ps.iter().map(|p| p.hf_name().trim_end_matches("_proj")).collect();
        v.sort_unstable();
        v.join(", ")
    };
    let (got_t, want_t) = (names(&a.config.targets), names(&want.targets));
    if a.config.r != want.r || (a.config.alpha - want.alpha).abs() > 1e-9 * want.alpha.abs().max(1.0) || got_t != want_t {
        return Err(Error::invalid(
            "adapter",
            format!(
                "{} has rank {}, alpha {} on [{got_t}]; the run's config has lora_r = {}, lora_alpha = {}, lora_targets = [{want_t}]: set the config to the adapter's",
                dir.display(),
                a.config.r,
                a.config.alpha,
                want.r,
                want.alpha,
            ),
        ));
    }
    a.config.dropout = want.dropout;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An adapter saved with one config starts a run of the same LoRA shape
    /// (taking the run's dropout) and is refused, naming both, by another.
    #[test]
    fn a_starting_adapter_must_have_the_configs_shape() {
        let model = LlamaConfig::tiny(40);
        let cfg = TrainConfig { lora_r: 4, lora_alpha: 8.0, lora_dropout: 0.0, lora_targets: vec!["q".into(), "v".into()], ..TrainConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        LoraAdapter::new(&model, lora_config(&cfg).unwrap(), &Device::Cpu, 3).unwrap().save_peft(dir.path(), "tiny").unwrap();
        let run = TrainConfig { lora_dropout: 0.1, lora_targets: vec!["v".into(), "q".into()], ..cfg.clone() };
        let a = starting_adapter(dir.path(), &run, &model, &Device::Cpu).unwrap();
        assert_eq!((a.config.r, a.config.dropout), (4, 0.1));
        for (other, says) in [
            (TrainConfig { lora_r: 8, ..cfg.clone() }, "lora_r = 8"),
            (TrainConfig { lora_alpha: 16.0, ..cfg.clone() }, "lora_alpha = 16"),
            (TrainConfig { lora_targets: vec!["q".into()], ..cfg.clone() }, "lora_targets = [q]"),
        ] {
            let e = starting_adapter(dir.path(), &other, &model, &Device::Cpu).err().unwrap().to_string();
            assert!(e.contains("has rank 4, alpha 8 on [q, v]") && e.contains(says), "{e}");
        }
    }
}
