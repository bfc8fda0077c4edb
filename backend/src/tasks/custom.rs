//! A task written by the user in the `[task]` table of a config file: a policy
//! prompt template and a reward template over `{X}`, `{Z}`, `{Y}`, examples
//! (inline or JSONL `{"x": …, "y": …}`), a one-token stop string, a token
//! mask (allowed characters or forbidden substrings), lengths and a reward
//! temperature. Metrics: the mean log-reward of samples and the rate at which
//! they end with the stop token.
//!
//! Also owns the small helpers the other presets share: reading JSONL with
//! errors that name the file and line, scanning the vocabulary for a token
//! mask, sampling Z's in prompt batches, and the evaluation draws of the
//! decoding baselines (beam / diverse beam search, `xC` compute).
//!
//! ```toml
//! [task]
//! policy_template = "Question: {X}\nAnswer:{Z}"
//! reward_template = "{X} is{Z}. So the answer is {Y}."
//! stop = "\n"
//! examples = [{ x = "Paris", y = "France" }]
//! ```

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{options, EvalOptions, EvalReport, Task};
use crate::decode::{self, SampleConfig, StopReason, TokenMask};
use crate::gfn::{log_rewards_in_calls, LmReward, Problem, States, TrainConfig, TrainTask, Trajectory, ROWS_PER_CALL};
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

// ---------------------------------------------------------------- shared helpers

/// Parses JSONL text (blank lines skipped); `check` validates each item. Errors
/// name `path` and the 1-based line number.
pub fn parse_jsonl<T: DeserializeOwned>(text: &str, path: &Path, check: impl Fn(&T) -> std::result::Result<(), String>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let item: T = serde_json::from_str(line).map_err(|e| {
            // serde_json appends "at line 1 column C" (of the line alone): say it once, our way.
            let mut msg = e.to_string();
            if let Some(at) = msg.rfind(" at line ") {
                msg.truncate(at);
            }
            Error::file(path, format!("line {n}, column {}: {msg}", e.column()))
        })?;
        check(&item).map_err(|m| Error::file(path, format!("line {n}: {m}")))?;
        out.push(item);
    }
    if out.is_empty() {
        return Err(Error::file(path, "no examples in the file"));
    }
    Ok(out)
}

/// Reads a JSONL file with [`parse_jsonl`].
pub fn read_jsonl<T: DeserializeOwned>(path: &Path, check: impl Fn(&T) -> std::result::Result<(), String>) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    parse_jsonl(&text, path, check)
}

/// Ids of the tokens whose text (decoded alone, specials kept) satisfies `pred`.
pub fn token_ids_where(lm: &LanguageModel, pred: impl Fn(&str) -> bool) -> Vec<u32> {
    lm.tokenizer.token_texts().iter().enumerate().filter(|(_, t)| pred(t)).map(|(i, _)| i as u32).collect()
}

/// The id of `text` when it is exactly one token; otherwise an error on `field`.
pub fn one_token(lm: &LanguageModel, text: &str, field: &str) -> Result<u32> {
    match lm.tokenizer.encode(text)?.as_slice() {
        [id] => Ok(*id),
        ids => Err(Error::invalid(field, format!("{text:?} is {} tokens for this tokenizer; it must be exactly one", ids.len()))),
    }
}

/// `Forbid(ids ∪ the EOS-like tokens)` without `keep` (the stop action).
pub fn forbid_with_eos(lm: &LanguageModel, mut ids: Vec<u32>, keep: u32) -> TokenMask {
    ids.extend(lm.tokenizer.stop_ids.iter().copied());
    ids.retain(|&i| i != keep);
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        TokenMask::None
    } else {
        TokenMask::Forbid(ids)
    }
}

/// One sampled Z: its policy tokens (stop token removed), text, and whether the
/// stop token ended it (rather than the length cap).
#[derive(Debug, Clone)]
pub struct Drawn {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stopped: bool,
    /// log q(Z ⊤) under the model that wrote it (masks applied, temperature 1;
    /// the stop token included): what best-of and beam search rank by.
    pub logprob: f32,
}

/// How [`draw_eval`] reduces the `xC` candidates to a task's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Every candidate (tasks that aggregate by majority vote).
    All,
    /// The best by the model's log-likelihood, as many as without `xC`.
    Best,
}

/// Evaluation draws: [`draw`] with the evaluation's decoding — sampling, or
/// (diverse) beam search when `opts` asks for it, each `xC` times the compute
/// (C× the samples or beams), reduced per prompt by `keep`. `cfg` carries the
/// task's sampling settings (already through [`EvalOptions::decode`]), masks,
/// stop token and lengths; `cfg.n` outputs per prompt (a beam spec may name its
/// own number of beams).
pub fn draw_eval(lm: &LanguageModel, lora: Option<&LoraView>, prompts: &[Vec<u32>], cfg: &SampleConfig, opts: &EvalOptions, keep: Keep) -> Result<Vec<Vec<Drawn>>> {
    let c = opts.compute();
    let Some(spec) = opts.beam() else {
        let mut groups = draw(lm, lora, prompts, &SampleConfig { n: cfg.n * c, ..cfg.clone() }, opts.batch)?;
        if keep == Keep::Best && c > 1 {
            for g in &mut groups {
                g.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                g.truncate(cfg.n);
            }
        }
        return Ok(groups);
    };
    let outputs = spec.beams.unwrap_or(cfg.n);
    let beams = outputs * c;
    let bc = decode::BeamConfig {
        beams,
        groups: if spec.diverse { spec.groups.unwrap_or(beams) } else { 1 },
        diversity_penalty: if spec.diverse { spec.diversity } else { 0.0 },
        max_new_tokens: cfg.max_new_tokens,
        min_new_tokens: cfg.min_new_tokens,
        length_penalty: spec.length_penalty,
        mask: cfg.mask.clone(),
        mask_penalty: cfg.mask_penalty,
        stop_tokens: cfg.stop_tokens.clone(),
    };
    let stop_ids = cfg.stop_tokens.clone().unwrap_or_else(|| lm.tokenizer.stop_ids.clone());
    let mut out = Vec::with_capacity(prompts.len());
    for p in prompts {
        crate::progress::report("beam search", out.len(), prompts.len());
        // Best first (the search's own ranking).
        let mut g = Vec::new();
        for h in decode::beam_search(lm, p, &bc, lora)? {
            let mut tokens = h.tokens;
            let stopped = h.finished && tokens.last().is_some_and(|t| stop_ids.contains(t));
            if stopped {
                tokens.pop();
            }
            g.push(Drawn { text: lm.tokenizer.decode(&tokens, true)?, tokens, stopped, logprob: h.logprob });
        }
        if keep == Keep::Best {
            g.truncate(outputs);
        }
        out.push(g);
    }
    crate::progress::report("beam search", out.len(), prompts.len());
    Ok(out)
}

/// Mean number of whitespace-separated words per text (0 for none): how long
/// the samples are, beside likelihoods that favour short ones.
pub fn mean_words<'a>(texts: impl Iterator<Item = &'a str>) -> f64 {
    let (mut words, mut n) = (0usize, 0usize);
    for t in texts {
        words += t.split_whitespace().count();
        n += 1;
    }
    if n == 0 { 0.0 } else { words as f64 / n as f64 }
}

/// Samples `cfg.n` Z's for every prompt, about `batch` rows at a time (chunk c
/// uses seed `cfg.seed + c`); one group of `cfg.n` per prompt.
pub fn draw(lm: &LanguageModel, lora: Option<&LoraView>, prompts: &[Vec<u32>], cfg: &SampleConfig, batch: usize) -> Result<Vec<Vec<Drawn>>> {
    let per = (batch / cfg.n.max(1)).max(1);
    let mut out = Vec::with_capacity(prompts.len());
    let total = prompts.len() * cfg.n;
    for (c, chunk) in prompts.chunks(per).enumerate() {
        crate::progress::report("drawing samples", out.len() * cfg.n, total);
        let cfg = SampleConfig { seed: cfg.seed.wrapping_add(c as u64), ..cfg.clone() };
        let samples = decode::sample(lm, chunk, &cfg, lora, None)?;
        for group in samples.chunks(cfg.n) {
            let mut g = Vec::with_capacity(group.len());
            for s in group {
                let stopped = s.stop == StopReason::StopToken;
                let mut tokens = s.tokens.clone();
                if stopped {
                    tokens.pop();
                }
                g.push(Drawn { text: lm.tokenizer.decode(&tokens, true)?, tokens, stopped, logprob: s.logprob() });
            }
            out.push(g);
        }
    }
    crate::progress::report("drawing samples", total, total);
    Ok(out)
}

// ---------------------------------------------------------------- the custom task

/// One (X, Y) pair (`y` may be omitted when the reward template has no `{Y}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub x: String,
    #[serde(default)]
    pub y: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomOptions {
    /// What the policy reads; `{Z}` last (only whitespace after it, ignored).
    pub policy_template: String,
    /// What the reward scores: `{X}` … `{Z}` … optional `{Y}`; the text up to `{Z}`
    /// is the context (not scored), Z and everything after it are scored. Z is
    /// joined as generated: write `A:{Z}` so that Z's leading space joins naturally.
    pub reward_template: String,
    /// JSONL `{"x": …, "y": …}`; or `examples` inline (not both).
    pub data_file: Option<PathBuf>,
    pub examples: Vec<Example>,
    /// Evaluation examples (JSONL); default: the training examples.
    pub test_file: Option<PathBuf>,
    /// The stop action: a string that must be one token.
    pub stop: String,
    /// Only tokens made of these characters are free (the stop token always is).
    pub allowed_chars: Option<String>,
    /// Tokens containing any of these are penalised (the EOS-like tokens always are).
    pub forbidden_strings: Vec<String>,
    pub min_len: usize,
    pub max_len: usize,
    pub reward_temperature: f64,
    pub eval_samples: usize,
    pub eval_temperature: f32,
}

impl Default for CustomOptions {
    fn default() -> Self {
        CustomOptions {
            policy_template: "{X}{Z}".into(),
            reward_template: "{X}{Z}{Y}".into(),
            data_file: None,
            examples: vec![],
            test_file: None,
            stop: "\n".into(),
            allowed_chars: None,
            forbidden_strings: vec![],
            min_len: 1,
            max_len: 20,
            reward_temperature: 1.0,
            eval_samples: 8,
            eval_temperature: 1.0,
        }
    }
}

/// `template` with `{X}` and `{Y}` filled in one pass (values are not re-scanned).
pub fn render(template: &str, x: &str, y: &str) -> String {
    let mut out = String::with_capacity(template.len() + x.len() + y.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{X}") {
            out.push_str(x);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{Y}") {
            out.push_str(y);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Splits the templates at their single `{Z}` and checks the placeholders' order.
/// Returns (policy text before `{Z}`, reward text before `{Z}`, reward text after).
fn split_templates(policy: &str, reward: &str) -> Result<(String, String, String)> {
    let at = |t: &str, field: &str| -> Result<(String, String)> {
        match t.matches("{Z}").count() {
            1 => {
                let (a, b) = t.split_once("{Z}").unwrap_or((t, ""));
                Ok((a.to_string(), b.to_string()))
            }
            n => Err(Error::invalid(field, format!("must contain {{Z}} exactly once (found {n})"))),
        }
    };
    let (p_before, p_after) = at(policy, "task.policy_template")?;
    if !p_after.trim().is_empty() {
        return Err(Error::invalid("task.policy_template", "{Z} must come last (the policy writes Z at the end of its prompt)"));
    }
    let (r_before, r_after) = at(reward, "task.reward_template")?;
    if r_before.matches("{X}").count() != 1 || r_after.contains("{X}") {
        return Err(Error::invalid("task.reward_template", "needs {X} exactly once, before {Z}"));
    }
    if r_before.contains("{Y}") || r_after.matches("{Y}").count() > 1 {
        return Err(Error::invalid("task.reward_template", "{Y} may appear at most once, after {Z}"));
    }
    Ok((p_before, r_before, r_after))
}

#[derive(Debug)]
pub struct Custom {
    pub opts: CustomOptions,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
    policy_before: String,
    reward_before: String,
    reward_after: String,
}

impl Custom {
    pub fn from_options(table: &toml::Table) -> Result<Self> {
        let opts: CustomOptions = options("custom", table)?;
        let (policy_before, reward_before, reward_after) = split_templates(&opts.policy_template, &opts.reward_template)?;
        if opts.stop.is_empty() {
            return Err(Error::invalid("task.stop", "must not be empty"));
        }
        if opts.allowed_chars.is_some() && !opts.forbidden_strings.is_empty() {
            return Err(Error::invalid("task.allowed_chars", "set allowed_chars or forbidden_strings, not both"));
        }
        if opts.allowed_chars.as_deref() == Some("") {
            return Err(Error::invalid("task.allowed_chars", "must not be empty"));
        }
        if opts.forbidden_strings.iter().any(|s| s.is_empty()) {
            return Err(Error::invalid("task.forbidden_strings", "must not contain an empty string"));
        }
        if opts.max_len == 0 || opts.min_len > opts.max_len {
            return Err(Error::invalid("task.max_len", format!("need 1 ≤ max_len and min_len ≤ max_len (got {} and {})", opts.min_len, opts.max_len)));
        }
        if !(opts.reward_temperature > 0.0 && opts.reward_temperature.is_finite()) {
            return Err(Error::invalid("task.reward_temperature", "must be > 0"));
        }
        if opts.eval_samples == 0 {
            return Err(Error::invalid("task.eval_samples", "must be at least 1"));
        }
        if !(opts.eval_temperature > 0.0 && opts.eval_temperature.is_finite()) {
            return Err(Error::invalid("task.eval_temperature", "must be > 0"));
        }
        let ok = |_: &Example| Ok(());
        let train = match (&opts.data_file, opts.examples.is_empty()) {
            (Some(_), false) => return Err(Error::invalid("task.examples", "set data_file or examples, not both")),
            (Some(p), true) => read_jsonl(p, ok)?,
            (None, false) => opts.examples.clone(),
            (None, true) => return Err(Error::invalid("task.data_file", "no examples: set task.data_file (JSONL {\"x\": …, \"y\": …}) or task.examples")),
        };
        let test = match &opts.test_file {
            Some(p) => read_jsonl(p, ok)?,
            None => train.clone(),
        };
        Ok(Custom { opts, train, test, policy_before, reward_before, reward_after })
    }

    fn stop_token(&self, lm: &LanguageModel) -> Result<u32> {
        one_token(lm, &self.opts.stop, "task.stop")
    }

    fn mask(&self, lm: &LanguageModel, stop: u32) -> TokenMask {
        match &self.opts.allowed_chars {
            Some(chars) => {
                let mut ids = token_ids_where(lm, |t| !t.is_empty() && t.chars().all(|c| chars.contains(c)));
                ids.retain(|i| !lm.tokenizer.stop_ids.contains(i));
                ids.push(stop);
                ids.sort_unstable();
                ids.dedup();
                TokenMask::Allow(ids)
            }
            None => forbid_with_eos(lm, token_ids_where(lm, |t| self.opts.forbidden_strings.iter().any(|f| t.contains(f.as_str()))), stop),
        }
    }

    /// The problem of example `i`.
    pub fn problem(&self, lm: &LanguageModel, i: usize, ex: &Example) -> Result<Problem> {
        let prompt = render(&self.policy_before, &ex.x, &ex.y);
        let context = render(&self.reward_before, &ex.x, &ex.y);
        if prompt.is_empty() || context.is_empty() {
            return Err(Error::invalid("task.examples", format!("example {i}: the policy prompt and the reward's context must not be empty")));
        }
        let key: String = ex.x.chars().take(60).collect();
        Ok(Problem {
            key: format!("{i}:{key}"),
            policy_prompt: lm.tokenizer.encode(&prompt)?,
            reward_context: lm.tokenizer.encode(&context)?,
            reward_suffix: lm.tokenizer.encode(&render(&self.reward_after, &ex.x, &ex.y))?,
            seeds: vec![],
        })
    }
}

impl Task for Custom {
    fn name(&self) -> &'static str {
        "custom"
    }

    fn description(&self) -> &'static str {
        "A user-defined task: policy and reward templates over {X}, {Z}, {Y}, with examples"
    }

    fn default_config(&self) -> TrainConfig {
        // No paper table: the presets' common recipe sized for a ~135M model on
        // CPU (rank 16, 200 steps, batch 16), with the task's lengths and a fixed
        // reward temperature.
        TrainConfig {
            lora_r: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            lr: 5e-4,
            warmup_steps: 20,
            batch_size: 16,
            steps: 200,
            reward_temp_start: self.opts.reward_temperature,
            reward_temp_end: self.opts.reward_temperature,
            reward_temp_horizon: 0,
            min_len: self.opts.min_len,
            max_len: self.opts.max_len,
            buffer_capacity: 50,
            ..TrainConfig::default()
        }
    }

    fn train_task(&self, lm: &LanguageModel) -> Result<TrainTask> {
        let stop = self.stop_token(lm)?;
        let mask = self.mask(lm, stop);
        let problems = self.train.iter().enumerate().map(|(i, ex)| self.problem(lm, i, ex)).collect::<Result<Vec<_>>>()?;
        Ok(TrainTask {
            problems,
            reward: Box::new(LmReward::new(lm, vec![], &mask, -99.0, None)?),
            stop_tokens: vec![stop],
            mask,
            mask_penalty: -99.0,
            tool: None,
        })
    }

    /// `mean_loglik`: mean over samples of log R(Z) = log p_LM(Z Y | context)
    /// (the untempered training reward, base model); `valid_rate`: fraction of
    /// samples that ended with the stop token.
    fn evaluate(&self, lm: &LanguageModel, lora: Option<&LoraView>, opts: &EvalOptions) -> Result<EvalReport> {
        let stop = self.stop_token(lm)?;
        let mask = self.mask(lm, stop);
        let k = opts.samples.unwrap_or(self.opts.eval_samples);
        let n = opts.limit.unwrap_or(self.test.len()).min(self.test.len());
        let problems = self.test[..n].iter().enumerate().map(|(i, ex)| self.problem(lm, i, ex)).collect::<Result<Vec<_>>>()?;
        let cfg = SampleConfig {
            n: k,
            max_new_tokens: self.opts.max_len,
            min_new_tokens: self.opts.min_len,
            temperature: self.opts.eval_temperature,
            mask: mask.clone(),
            stop_tokens: Some(vec![stop]),
            seed: opts.seed,
            ..SampleConfig::default()
        };
        let cfg = opts.decode(cfg);
        let prompts = self.test[..n].iter().map(|ex| lm.tokenizer.encode(&opts.prompt_text(&render(&self.policy_before, &ex.x, &ex.y)))).collect::<Result<Vec<_>>>()?;
        let drawn = draw_eval(lm, lora, &prompts, &cfg, opts, Keep::Best)?;
        let reward = LmReward::new(lm, vec![], &mask, -99.0, None)?;
        let (mut total, mut count, mut valid) = (0.0, 0usize, 0usize);
        let mut report = EvalReport::default();
        // Every example's samples, scored together (a few per example).
        let trajs: Vec<Vec<Trajectory>> = drawn.iter().map(|g| g.iter().map(|d| Trajectory::from_actions(d.tokens.clone())).collect()).collect();
        let items: Vec<(&Problem, &[Trajectory])> = problems.iter().zip(&trajs).map(|(p, t)| (p, t.as_slice())).collect();
        let rewards = log_rewards_in_calls(&reward, lm, &items, States::Last, ROWS_PER_CALL, "scoring samples")?;
        for ((group, r), ex) in drawn.iter().zip(&rewards).zip(&self.test) {
            for (d, r) in group.iter().zip(r) {
                let v = *r.last().unwrap_or(&0.0) as f64;
                total += v;
                count += 1;
                valid += usize::from(d.stopped);
                if report.examples.len() < 10 {
                    report.examples.push(serde_json::json!({"x": ex.x, "y": ex.y, "z": d.text, "log_reward": v, "valid": d.stopped}));
                }
            }
        }
        let m = &mut report.metrics;
        m.insert("mean_loglik".into(), if count > 0 { total / count as f64 } else { 0.0 });
        m.insert("valid_rate".into(), amortize_shared::metrics::valid_rate(valid, count));
        m.insert("test_examples".into(), n as f64);
        m.insert("samples_per_example".into(), count as f64 / n.max(1) as f64);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_words_by_hand() {
        assert_eq!(mean_words([" The dog ran", "Hi", "  a  b "].into_iter()), 2.0);
        assert_eq!(mean_words(std::iter::empty()), 0.0);
    }

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn templates_render_and_validate() {
        assert_eq!(render("Q: {X} ({Y}) {W}", "a{Y}", "b"), "Q: a{Y} (b) {W}");
        assert!(split_templates("{X}{Z}", "{X}{Z}{Y}").is_ok());
        assert!(split_templates("{X}{Z}\n", "{X}{Z}").is_ok());
        let e = |p: &str, r: &str| split_templates(p, r).unwrap_err().to_string();
        assert!(e("{Z}{X}", "{X}{Z}").contains("last"));
        assert!(e("{X}", "{X}{Z}").contains("exactly once"));
        assert!(e("{X}{Z}", "{Z}{X}").contains("{X}"));
        assert!(e("{X}{Z}", "{X}{Y}{Z}").contains("{Y}"));
        assert!(e("{X}{Z}", "{X}{Z}{Z}").contains("exactly once"));
    }

    #[test]
    fn options_are_checked() {
        let ok = "examples = [{x = \"a\", y = \"b\"}]\n";
        assert!(Custom::from_options(&table(ok)).is_ok());
        let err = |extra: &str| Custom::from_options(&table(&format!("{ok}{extra}"))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("stopp = \"x\"").contains("stopp"));
        assert!(err("allowed_chars = \"ab\"\nforbidden_strings = [\"x\"]").contains("allowed_chars"));
        assert!(err("min_len = 5\nmax_len = 2").contains("max_len"));
        assert!(err("reward_temperature = 0.0").contains("reward_temperature"));
        assert!(err("data_file = \"x.jsonl\"").contains("not both"));
        assert!(Custom::from_options(&toml::Table::new()).unwrap_err().to_string().contains("task.data_file"));
        let e = Custom::from_options(&table("examples = [{x = \"a\", why = \"b\"}]")).unwrap_err().to_string();
        assert!(e.contains("why"), "{e}");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let text = "{\"x\": \"a\"}\n\n{\"x\": \"b\", \"y\": 3}\n";
        let e = parse_jsonl::<Example>(text, Path::new("d.jsonl"), |_| Ok(())).unwrap_err().to_string();
        assert!(e.starts_with("d.jsonl: line 3, column"), "{e}");
        let e = parse_jsonl::<Example>("{\"x\": \"\"}", Path::new("d.jsonl"), |x| if x.x.is_empty() { Err("empty x".into()) } else { Ok(()) }).unwrap_err().to_string();
        assert_eq!(e, "d.jsonl: line 1: empty x");
        assert!(parse_jsonl::<Example>("\n\n", Path::new("d.jsonl"), |_| Ok(())).is_err());
    }
}
