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
}

impl EvalOptions {
    /// (min_len, max_len) to sample with.
    pub fn lengths_or(&self, preset: &TrainConfig) -> (usize, usize) {
        self.lengths.unwrap_or((preset.min_len, preset.max_len))
    }
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { samples: None, batch: 64, seed: 0, limit: None, lengths: None }
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
