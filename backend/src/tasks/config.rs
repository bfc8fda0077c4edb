//! Run configuration files (TOML): top-level keys override the task preset's
//! [`TrainConfig`]; the `[task]` table holds the task's own options. Unknown
//! keys anywhere are errors that name the key.
//!
//! ```toml
//! steps = 200
//! lr = 1e-3
//! [task]
//! target = "uniform"
//! [ppo]        # the PPO baseline's own settings (`amortize compare`)
//! steps = 100
//! ```

use std::path::Path;

use crate::gfn::TrainConfig;
use crate::{Error, Result};

/// The preset's config with the file's overrides, and the `[task]` options.
pub fn load(preset: &TrainConfig, file: Option<&Path>) -> Result<(TrainConfig, toml::Table)> {
    let Some(path) = file else { return Ok((preset.clone(), toml::Table::new())) };
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::file(path, format!("invalid TOML: {}", e.message())))?;
    merge(preset, table).map_err(|e| match e {
        Error::Invalid { field, message } => Error::file(path, format!("{field}: {message}")),
        other => other,
    })
}

/// Tables of a run file that configure baselines rather than GFlowNet training.
pub const BASELINE_SECTIONS: [&str; 4] = ["ppo", "sft", "fewshot", "em"];

/// The `[name]` table of a config file (empty without a file or table).
pub fn section(file: Option<&Path>, name: &str) -> Result<toml::Table> {
    let Some(path) = file else { return Ok(toml::Table::new()) };
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::file(path, format!("invalid TOML: {}", e.message())))?;
    match table.remove(name) {
        Some(toml::Value::Table(t)) => Ok(t),
        Some(_) => Err(Error::file(path, format!("[{name}] must be a table"))),
        None => Ok(toml::Table::new()),
    }
}

/// Applies `table`'s top-level keys to `preset`; returns the `[task]` table.
pub fn merge(preset: &TrainConfig, mut table: toml::Table) -> Result<(TrainConfig, toml::Table)> {
    let task = match table.remove("task") {
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err(Error::invalid("task", "must be a table ([task])")),
        None => toml::Table::new(),
    };
    // Baselines' own settings (see `section`); not GFlowNet fields.
    for name in BASELINE_SECTIONS {
        if let Some(v) = table.remove(name) {
            if !v.is_table() {
                return Err(Error::invalid(name, format!("must be a table ([{name}])")));
            }
        }
    }
    let mut base = toml::Table::try_from(preset).map_err(|e| Error::invalid("config", e.to_string()))?;
    for (k, v) in table {
        if !base.contains_key(&k) {
            return Err(Error::invalid(k.clone(), "unknown field"));
        }
        base.insert(k, v);
    }
    let cfg: TrainConfig = toml::Value::Table(base).try_into().map_err(|e: toml::de::Error| Error::invalid("config", e.message().to_string()))?;
    cfg.validate()?;
    Ok((cfg, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_unknown_keys_fail() {
        let preset = TrainConfig::default();
        let (cfg, task) = merge(&preset, "steps = 7\nlr = 0.5\n[task]\nfoo = 1".parse().unwrap()).unwrap();
        assert_eq!((cfg.steps, cfg.lr), (7, 0.5));
        assert_eq!(task["foo"].as_integer(), Some(1));
        let e = merge(&preset, "stepz = 7".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("stepz"), "{e}");
        let e = merge(&preset, "reward_temp_end = 0.0".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("reward_temp_end"), "{e}");
        let e = merge(&preset, "subtb_lambda = -1.0".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("subtb_lambda"), "{e}");
        let e = merge(&preset, "min_len = 9\nmax_len = 3".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("max_len"), "{e}");
        let e = merge(&preset, "batch_size = 0".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = merge(&preset, "steps = \"many\"".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("steps") || e.contains("invalid type"), "{e}");
    }
}
