//! From a run request to what the trainer needs: the task preset built from
//! its options (plus an uploaded dataset), and the preset's hyper-parameters
//! with the request's overrides applied and validated — the same checks as the
//! CLI's `--config`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::gfn::TrainConfig;
use crate::tasks::{self, Task};
use crate::{Error, Result};

/// A resolved run: task, config, and the task options as stored.
pub struct Spec {
    pub task: Box<dyn Task>,
    pub config: TrainConfig,
    pub options: toml::Table,
}

/// JSON task options → the TOML table tasks read (nulls are errors).
pub fn options_table(options: &Map<String, Value>) -> Result<toml::Table> {
    serde_json::from_value::<toml::Table>(Value::Object(options.clone())).map_err(|e| Error::invalid("task_options", e.to_string()))
}

/// Builds the task and its config; `dataset` is the stored file of an uploaded dataset.
pub fn resolve(task: &str, overrides: &Map<String, Value>, task_options: &Map<String, Value>, dataset: Option<&Path>) -> Result<Spec> {
    if !tasks::NAMES.contains(&task) {
        return Err(Error::invalid("task", format!("unknown task `{task}` (known: {})", tasks::NAMES.join(", "))));
    }
    let mut options = options_table(task_options)?;
    if let Some(path) = dataset {
        let (key, _) = tasks::dataset_spec(task).ok_or_else(|| Error::invalid("dataset", format!("task `{task}` takes no dataset")))?;
        options.insert(key.to_string(), toml::Value::String(path.display().to_string()));
    }
    let t = tasks::load(task, &options)?;
    let config = apply_overrides(t.default_config(), overrides)?;
    Ok(Spec { task: t, config, options })
}

/// The preset with `overrides` (top-level config fields) applied; unknown keys
/// and out-of-range values are errors naming the field.
pub fn apply_overrides(preset: TrainConfig, overrides: &Map<String, Value>) -> Result<TrainConfig> {
    let Value::Object(mut base) = serde_json::to_value(&preset)? else {
        return Err(Error::invalid("config", "preset is not an object"));
    };
    for (k, v) in overrides {
        if !base.contains_key(k) {
            return Err(Error::invalid(format!("config.{k}"), "unknown field"));
        }
        // Check each field alone first, so a type error names its field.
        let mut probe = base.clone();
        probe.insert(k.clone(), v.clone());
        serde_json::from_value::<TrainConfig>(Value::Object(probe)).map_err(|e| Error::invalid(format!("config.{k}"), e.to_string()))?;
        base.insert(k.clone(), v.clone());
    }
    let cfg: TrainConfig = serde_json::from_value(Value::Object(base)).map_err(|e| Error::invalid("config", e.to_string()))?;
    cfg.validate().map_err(|e| Error::invalid(format!("config.{}", e.field), e.message))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn overrides_apply_and_bad_ones_name_their_field() {
        let c = apply_overrides(TrainConfig::default(), &map(serde_json::json!({"steps": 7, "lr": 0.01}))).unwrap();
        assert_eq!((c.steps, c.lr), (7, 0.01));
        let field = |v: Value| match apply_overrides(TrainConfig::default(), &map(v)) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{:?}", other.map(|c| c.steps)),
        };
        assert_eq!(field(serde_json::json!({"stepz": 1})), "config.stepz");
        assert_eq!(field(serde_json::json!({"steps": "many"})), "config.steps");
        assert_eq!(field(serde_json::json!({"steps": -1})), "config.steps");
        assert_eq!(field(serde_json::json!({"lr": 0.0})), "config.lr");
        assert_eq!(field(serde_json::json!({"min_len": 9, "max_len": 3})), "config.max_len");
    }

    #[test]
    fn unknown_tasks_and_options_are_errors() {
        assert!(matches!(resolve("nope", &Map::new(), &Map::new(), None), Err(Error::Invalid { field, .. }) if field == "task"));
        let bad = map(serde_json::json!({"no_such_option": 1}));
        assert!(resolve("rng", &Map::new(), &bad, None).is_err());
        let ok = resolve("rng", &map(serde_json::json!({"steps": 3})), &Map::new(), None).unwrap();
        assert_eq!(ok.config.steps, 3);
    }
}
