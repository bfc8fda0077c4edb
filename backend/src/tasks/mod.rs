//! Task presets: what to infer, how to reward it, how to evaluate it, with the
//! paper's hyper-parameters (Tables C.2, D.3, E.2; §4.1/B) scaled to the model at
//! hand. A task turns its options (the `[task]` table of a config file) into a
//! [`TrainTask`] for the trainer and computes its metrics for `eval`.
//! Owns datasets and prompts; knows nothing of training internals.

pub mod arithmetic;
pub mod config;
pub mod continuation;
pub mod custom;
pub mod infill;
pub mod rng;
pub mod subj;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::gfn::{TrainConfig, TrainTask};
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

/// How much evaluation to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Samples (rng) or samples per question (arithmetic, subj, …); task default when `None`.
    pub samples: Option<usize>,
    /// Rows sampled together.
    pub batch: usize,
    pub seed: u64,
    /// Cap on the number of test items (the task's default when `None`).
    pub limit: Option<usize>,
    /// (min_len, max_len) of the policy being evaluated — a run's overrides;
    /// the task preset's when `None`.
    pub lengths: Option<(usize, usize)>,
    /// Decoding to evaluate with instead of the task's (the decoding baselines).
    pub decoding: Option<Decoding>,
}

/// Decoding overrides for evaluation: `greedy`, `t=0.7`, `k=40`, `p=0.9`, joined
/// with `+` (e.g. `t=0.7+p=0.9`). Masks, stop tokens and lengths stay the task's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decoding {
    pub greedy: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
}

impl Decoding {
    pub fn parse(spec: &str) -> Result<Decoding> {
        let mut d = Decoding::default();
        for part in spec.split('+').map(str::trim) {
            let bad = || Error::invalid("decoding", format!("`{part}`: use greedy, t=TEMP, k=TOP_K or p=TOP_P joined with +"));
            match part.split_once('=') {
                None if part == "greedy" => d.greedy = true,
                Some(("t", v)) => d.temperature = Some(v.parse().map_err(|_| bad())?),
                Some(("k", v)) => d.top_k = Some(v.parse().map_err(|_| bad())?),
                Some(("p", v)) => d.top_p = Some(v.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        let t_ok = d.temperature.is_none_or(|t| t > 0.0 && t.is_finite());
        let p_ok = d.top_p.is_none_or(|p| p > 0.0 && p <= 1.0);
        if !t_ok || !p_ok || d.top_k == Some(0) {
            return Err(Error::invalid("decoding", format!("`{spec}`: t > 0, 0 < p ≤ 1, k ≥ 1")));
        }
        Ok(d)
    }
}

impl EvalOptions {
    /// The task's sampling settings with the decoding overrides applied.
    pub fn decode(&self, cfg: crate::decode::SampleConfig) -> crate::decode::SampleConfig {
        let Some(d) = &self.decoding else { return cfg };
        crate::decode::SampleConfig {
            greedy: d.greedy || cfg.greedy,
            temperature: d.temperature.unwrap_or(cfg.temperature),
            top_k: d.top_k.or(cfg.top_k),
            top_p: d.top_p.or(cfg.top_p),
            ..cfg
        }
    }

    /// (min_len, max_len) to sample with.
    pub fn lengths_or(&self, preset: &TrainConfig) -> (usize, usize) {
        self.lengths.unwrap_or((preset.min_len, preset.max_len))
    }
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { samples: None, batch: 64, seed: 0, limit: None, lengths: None, decoding: None }
    }
}

/// A task's metrics (names are stable: the CLI's `--json` keys) and some examples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalReport {
    pub metrics: BTreeMap<String, f64>,
    pub examples: Vec<serde_json::Value>,
}

/// A task preset.
pub trait Task: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// The paper's hyper-parameters for this task, scaled to a small model.
    fn default_config(&self) -> TrainConfig;
    /// Problems, reward, stop tokens, masks and tools for training.
    fn train_task(&self, lm: &LanguageModel) -> Result<TrainTask>;
    /// The task's metrics for the base model (`lora: None`) or an adapter.
    fn evaluate(&self, lm: &LanguageModel, lora: Option<&LoraView>, opts: &EvalOptions) -> Result<EvalReport>;
}

/// The preset names.
pub const NAMES: [&str; 6] = ["rng", "continuation", "infill", "subj", "arithmetic", "custom"];

/// Builds task `name` from its options (`[task]` table; unknown keys are errors).
pub fn load(name: &str, options: &toml::Table) -> Result<Box<dyn Task>> {
    match name {
        "rng" => Ok(Box::new(rng::RandomNumber::from_options(options)?)),
        "arithmetic" => Ok(Box::new(arithmetic::Arithmetic::from_options(options)?)),
        "continuation" => Ok(Box::new(continuation::Continuation::from_options(options)?)),
        "infill" => Ok(Box::new(infill::Infill::from_options(options)?)),
        "subj" => Ok(Box::new(subj::Subjectivity::from_options(options)?)),
        "custom" => Ok(Box::new(custom::Custom::from_options(options)?)),
        other => Err(Error::invalid("task", format!("unknown task `{other}` (known: {})", NAMES.join(", ")))),
    }
}

/// Deserializes a task's options with unknown keys rejected (field named).
pub(crate) fn options<T: serde::de::DeserializeOwned>(task: &str, table: &toml::Table) -> Result<T> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| Error::invalid(format!("task.{task}"), e.message().to_string()))
}

/// Where the paper's public data lives: `$AMORTIZE_DATA`, else `../shared/data`
/// or `shared-data/` next to the working directory, if present.
pub fn data_root() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AMORTIZE_DATA") {
        return Some(PathBuf::from(p));
    }
    ["../shared/data", "../../shared/data"].iter().map(PathBuf::from).find(|p| p.is_dir())
}

/// Token ids of the tokens whose text is exactly one of `texts` (e.g. "." or "\n").
pub fn single_token_ids(lm: &LanguageModel, texts: &[&str]) -> Vec<u32> {
    texts
        .iter()
        .filter_map(|t| match lm.tokenizer.encode(t) {
            Ok(ids) if ids.len() == 1 => Some(ids[0]),
            _ => None,
        })
        .collect()
}

/// The task option an uploaded dataset fills and what one line looks like
/// (`None`: the task takes no dataset).
pub fn dataset_spec(task: &str) -> Option<(&'static str, &'static str)> {
    match task {
        "continuation" => Some(("prompts_file", "text: one prompt per line")),
        "infill" => Some(("data_file", r#"JSONL: {"beginning": "…", "middle": "…", "end": "…"}"#)),
        "subj" => Some(("data_file", r#"JSONL: {"text": "…", "label_text": "objective" | "subjective"}"#)),
        "arithmetic" => Some(("demos_file", r#"JSONL: {"str_query": "…", "num_sol": 3, "str_rationale": "…"}"#)),
        "custom" => Some(("data_file", r#"JSONL: {"x": "…", "y": "…"}"#)),
        _ => None,
    }
}

/// The metric names `eval` reports for a task; the first is its key metric.
/// The embedding metrics (`diversity_embedding`, `bertscore_*`,
/// `sentence_cosine`) are left out of a report when the embedding model is
/// absent (see [`crate::embed::Embedder::load_default`]).
pub fn metric_names(task: &str) -> &'static [&'static str] {
    match task {
        "rng" => &["kl", "valid_rate", "kl_floor"],
        "arithmetic" => &["accuracy_id", "accuracy_ood"],
        "subj" => &["accuracy"],
        "continuation" => &["mean_loglik", "max_loglik", "diversity_jaccard", "stop_rate", "diversity_embedding"],
        "infill" => &["bleu4", "gleu4", "loglik", "stop_rate", "bertscore_f1", "bertscore_p", "bertscore_r", "sentence_cosine"],
        "custom" => &["mean_loglik", "valid_rate"],
        _ => &[],
    }
}

/// Checks an uploaded dataset for `task` line by line (errors name the line);
/// returns the number of items.
pub fn validate_dataset(task: &str, name: &str, text: &str) -> Result<usize> {
    use std::path::Path;
    let path = Path::new(name);
    match task {
        "continuation" => {
            let n = text.lines().filter(|l| !l.trim().is_empty()).count();
            if n == 0 {
                return Err(Error::file(path, "no prompts in the file"));
            }
            Ok(n)
        }
        "infill" => Ok(custom::parse_jsonl(text, path, infill::Story::check)?.len()),
        "subj" => Ok(custom::parse_jsonl(text, path, subj::Review::check)?.len()),
        "arithmetic" => Ok(custom::parse_jsonl::<arithmetic::Item>(text, path, |_| Ok(()))?.len()),
        "custom" => Ok(custom::parse_jsonl(text, path, |e: &custom::Example| if e.x.trim().is_empty() { Err("`x` is empty".into()) } else { Ok(()) })?.len()),
        other if NAMES.contains(&other) => Err(Error::invalid("task", format!("task `{other}` takes no dataset"))),
        other => Err(Error::invalid("task", format!("unknown task `{other}` (known: {})", NAMES.join(", ")))),
    }
}

#[cfg(test)]
mod decoding_tests {
    use super::Decoding;

    #[test]
    fn decoding_specs_parse_or_name_the_problem() {
        assert_eq!(Decoding::parse("greedy").unwrap(), Decoding { greedy: true, ..Default::default() });
        assert_eq!(Decoding::parse("t=0.7+p=0.9").unwrap(), Decoding { temperature: Some(0.7), top_p: Some(0.9), ..Default::default() });
        assert_eq!(Decoding::parse("k=40").unwrap().top_k, Some(40));
        for bad in ["beam", "t=0", "p=1.5", "k=0", "t=x", ""] {
            assert!(Decoding::parse(bad).is_err(), "{bad}");
        }
    }
}
