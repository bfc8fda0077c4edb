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
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::gfn::{TrainConfig, TrainTask, Trajectory};
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
    /// Rewrites each test prompt before it is sampled from (the prompting
    /// baselines, e.g. k demonstrations in front); `None`: the task's prompt.
    /// Only the policy's prompt changes — rewards and metrics score Z as usual.
    #[serde(skip)]
    pub prompt: Option<Arc<dyn PromptTransform>>,
}

/// A rewrite of a task's evaluation prompt (its text, as the task writes it).
pub trait PromptTransform: Send + Sync + std::fmt::Debug {
    fn apply(&self, prompt: &str) -> String;
}

/// A worked example in the task's own format, for few-shot prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demonstration {
    /// The task's prompt for this example's X (what a test query looks like);
    /// a demonstration whose prompt equals the query's is never shown with it.
    pub prompt: String,
    /// The whole worked example (X, Z and Y as the task writes them) with its
    /// trailing separator; demonstrations are concatenated, then the query.
    pub text: String,
}

/// Decoding overrides for evaluation, joined with `+`: `greedy`, `t=0.7`,
/// `k=40`, `p=0.9`; beam search `beam[=N]` or diverse beam search
/// `dbeam[=N]` (with `g=GROUPS`, `div=λ`), `lp=LENGTH_PENALTY`; and `xC`, C
/// times the compute (samples or beams). Masks, stop tokens and lengths stay
/// the task's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decoding {
    pub greedy: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// Beam search instead of sampling.
    pub beam: Option<BeamSpec>,
    /// `xC`: C× the samples (or beams) per output; the task aggregates them
    /// (majority vote over all, or the best by the model's log-likelihood).
    pub compute: Option<usize>,
}

/// (Diverse) beam search for evaluation (see [`crate::decode::beam_search`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BeamSpec {
    /// Beams (= outputs) per prompt; the task's samples per prompt when `None`.
    pub beams: Option<usize>,
    /// Diverse beam search (Vijayakumar et al.): groups with a Hamming penalty.
    pub diverse: bool,
    /// Groups (diverse only); one beam per group when `None`.
    pub groups: Option<usize>,
    /// Hamming diversity strength λ (diverse only).
    pub diversity: f32,
    /// Ranking score logprob / len^lp (Hugging Face's default, 1).
    pub length_penalty: f32,
}

impl Decoding {
    pub fn parse(spec: &str) -> Result<Decoding> {
        let mut d = Decoding::default();
        let (mut groups, mut div, mut lp) = (None, None, None);
        for part in spec.split('+').map(str::trim) {
            let bad = || Error::invalid("decoding", format!("`{part}`: use greedy, t=TEMP, k=TOP_K, p=TOP_P, beam[=N], dbeam[=N], g=GROUPS, div=λ, lp=PENALTY or xC, joined with +"));
            let num = |v: &str| v.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| Error::invalid("decoding", format!("`{part}`: expected a whole number ≥ 1")));
            let beam = |n: Option<usize>, diverse: bool| BeamSpec { beams: n, diverse, groups: None, diversity: 1.0, length_penalty: 1.0 };
            match part.split_once('=') {
                None if part == "greedy" => d.greedy = true,
                None if part == "beam" => d.beam = Some(beam(None, false)),
                None if part == "dbeam" => d.beam = Some(beam(None, true)),
                None if part.starts_with('x') => d.compute = Some(num(&part[1..])?),
                Some(("t", v)) => d.temperature = Some(v.parse().map_err(|_| bad())?),
                Some(("k", v)) => d.top_k = Some(v.parse().map_err(|_| bad())?),
                Some(("p", v)) => d.top_p = Some(v.parse().map_err(|_| bad())?),
                Some(("beam", v)) => d.beam = Some(beam(Some(num(v)?), false)),
                Some(("dbeam", v)) => d.beam = Some(beam(Some(num(v)?), true)),
                Some(("g", v)) => groups = Some(num(v)?),
                Some(("div", v)) => div = Some(v.parse::<f32>().map_err(|_| bad())?),
                Some(("lp", v)) => lp = Some(v.parse::<f32>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        let t_ok = d.temperature.is_none_or(|t| t > 0.0 && t.is_finite());
        let p_ok = d.top_p.is_none_or(|p| p > 0.0 && p <= 1.0);
        if !t_ok || !p_ok || d.top_k == Some(0) {
            return Err(Error::invalid("decoding", format!("`{spec}`: t > 0, 0 < p ≤ 1, k ≥ 1")));
        }
        match &mut d.beam {
            Some(b) => {
                if d.greedy || d.temperature.is_some() || d.top_k.is_some() || d.top_p.is_some() {
                    return Err(Error::invalid("decoding", format!("`{spec}`: beam search does not sample; drop greedy, t=, k=, p=")));
                }
                if (groups.is_some() || div.is_some()) && !b.diverse {
                    return Err(Error::invalid("decoding", format!("`{spec}`: g= and div= belong to diverse beam search (dbeam)")));
                }
                if div.is_some_and(|x| !(x >= 0.0 && x.is_finite())) || lp.is_some_and(|x| !x.is_finite()) {
                    return Err(Error::invalid("decoding", format!("`{spec}`: div ≥ 0 and a finite lp")));
                }
                b.groups = groups;
                b.diversity = div.unwrap_or(b.diversity);
                b.length_penalty = lp.unwrap_or(b.length_penalty);
            }
            None if groups.is_some() || div.is_some() || lp.is_some() => {
                return Err(Error::invalid("decoding", format!("`{spec}`: g=, div= and lp= need beam or dbeam")));
            }
            None if d.greedy && d.compute.is_some() => {
                return Err(Error::invalid("decoding", format!("`{spec}`: greedy decoding gives the same output every time; xC needs sampling or beams")));
            }
            None => {}
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

    /// The evaluation prompt for a task prompt (the prompt transform applied).
    pub fn prompt_text(&self, prompt: &str) -> String {
        match &self.prompt {
            Some(t) => t.apply(prompt),
            None => prompt.to_string(),
        }
    }

    /// The compute multiplier of `xC` (1 without).
    pub fn compute(&self) -> usize {
        self.decoding.as_ref().and_then(|d| d.compute).unwrap_or(1)
    }

    /// The beam search to evaluate with, if any.
    pub fn beam(&self) -> Option<&BeamSpec> {
        self.decoding.as_ref().and_then(|d| d.beam.as_ref())
    }

    /// Refuses beam search for tasks whose evaluation cannot use it (`why`).
    pub fn refuse_beam(&self, task: &str, why: &str) -> Result<()> {
        match self.beam() {
            Some(_) => Err(Error::invalid("decoding", format!("beam search does not apply to {task}: {why}"))),
            None => Ok(()),
        }
    }
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { samples: None, batch: 64, seed: 0, limit: None, lengths: None, decoding: None, prompt: None }
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
    /// Refuses evaluation settings the task cannot honour (e.g. beam search
    /// where evaluation needs a tool or many samples), before anything trains.
    fn check_eval(&self, _opts: &EvalOptions) -> Result<()> {
        Ok(())
    }
    /// Worked examples from the training data in the task's own format, for
    /// few-shot prompting (the same data SFT learns from); empty: none.
    fn demonstrations(&self) -> Vec<Demonstration> {
        Vec::new()
    }
    /// Demonstrations per few-shot prompt when `k` is not given.
    fn default_shots(&self) -> usize {
        3
    }
    /// Whether the task's reward accepts each sampled Z, given as (index into
    /// `train_task(lm).problems`, Z) — the EM step keeps the accepted ones
    /// (arithmetic: the right answer; SUBJ: a vote for the right label).
    /// Default: every Z.
    fn accept(&self, _lm: &LanguageModel, _task: &TrainTask, samples: &[(usize, Trajectory)]) -> Result<Vec<bool>> {
        Ok(vec![true; samples.len()])
    }
}

/// The methods `amortize compare --task NAME` runs without `--methods`: the
/// rows of the paper's figure or table for the task (see docs/compare.md).
pub fn compare_methods(task: &str) -> &'static [&'static str] {
    match task {
        // Fig. 2: the base model, PPO (reward maximisation), GFlowNet (distribution matching).
        "rng" => &["base", "ppo", "gfn"],
        // Fig. 3: decoding baselines (diverse beam also at 5× compute) and GFlowNet fine-tuning.
        "continuation" => &["base@greedy", "base", "base@t=0.8", "base@p=0.95", "base@beam", "base@dbeam", "base@dbeam+x5", "gfn"],
        // Table 2: prompting, supervised fine-tuning, GFlowNet fine-tuning.
        "infill" => &["zeroshot", "sft", "gfn"],
        // Table 3: zero-shot, few-shot (every training example), SFT, GFlowNet, GFlowNet + SFT.
        "subj" => &["zeroshot", "fewshot", "sft", "gfn", "gfn+sft"],
        // Table 4: k-shot prompting for k = 0, 3, 5, 10, 20, SFT, PPO, GFlowNet.
        "arithmetic" => &["zeroshot", "fewshot:k=3", "fewshot:k=5", "fewshot:k=10", "fewshot:k=20", "sft", "ppo", "gfn"],
        _ => &["base", "gfn"],
    }
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

/// Whether the task's reward can score with a LoRA adapter over the base
/// model (`[task] reward_adapter`): the paper's infilling reward is a model
/// fine-tuned on the stories (§4.2).
pub fn takes_reward_adapter(task: &str) -> bool {
    task == "infill"
}

/// The metric names `eval` reports for a task; the first is its key metric.
/// The embedding metrics (`diversity_embedding`, `bertscore_*`,
/// `sentence_cosine`) are left out of a report when the embedding model is
/// absent (see [`crate::embed::Embedder::load_default`]).
pub fn metric_names(task: &str) -> &'static [&'static str] {
    match task {
        "rng" => &["kl", "valid_rate", "kl_floor"],
        "arithmetic" => &["accuracy_id", "accuracy_ood"],
        "subj" => &["accuracy", "accuracy_calibrated"],
        "continuation" => &["mean_loglik", "max_loglik", "diversity_jaccard", "stop_rate", "mean_words", "diversity_embedding"],
        "infill" => &["bleu4", "gleu4", "loglik", "stop_rate", "mean_words", "bertscore_f1", "bertscore_p", "bertscore_r", "sentence_cosine"],
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
        for bad in ["t=0", "p=1.5", "k=0", "t=x", ""] {
            assert!(Decoding::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn beam_and_compute_specs() {
        let b = Decoding::parse("beam").unwrap().beam.unwrap();
        assert_eq!((b.beams, b.diverse, b.groups), (None, false, None));
        let d = Decoding::parse("dbeam=8+g=4+div=0.5+x5").unwrap();
        let b = d.beam.clone().unwrap();
        assert_eq!((b.beams, b.diverse, b.groups, b.diversity, b.length_penalty), (Some(8), true, Some(4), 0.5, 1.0));
        assert_eq!(d.compute, Some(5));
        assert_eq!(Decoding::parse("t=0.7+x5").unwrap().compute, Some(5));
        assert_eq!(Decoding::parse("beam=3+lp=0").unwrap().beam.unwrap().length_penalty, 0.0);
        // Each refusal names the offending part.
        for (bad, part) in [("beam=0", "beam=0"), ("beam+t=0.5", "beam search does not sample"), ("beam+g=2", "dbeam"), ("g=2", "need beam"), ("x0", "x0"), ("xx", "xx"), ("greedy+x5", "greedy"), ("dbeam+div=-1", "div"), ("beam=two", "beam=two"), ("bream", "bream")] {
            let e = Decoding::parse(bad).unwrap_err().to_string();
            assert!(e.contains(part), "{bad}: {e}");
        }
    }
}
