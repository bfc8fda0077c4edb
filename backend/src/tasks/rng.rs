//! Random number generation (paper §4.1): the prompt "The following is a random
//! integer drawn uniformly between 0 and 100: " and reward = the target
//! probability of the parsed integer (uniform by default, or any table over
//! 0..=100), with a tiny floor for text that is not such a number. Metrics: KL of
//! the empirical distribution to the target over the support, the valid rate,
//! and the finite-sample floor of the KL for the sample count used.

use serde::{Deserialize, Serialize};

use super::{options, single_token_ids, EvalOptions, EvalReport, Task};
use crate::decode::{self, SampleConfig, StopReason, TokenMask};
use crate::gfn::{Problem, Reward, States, TrainConfig, TrainTask, Trajectory};
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

pub const PROMPT: &str = "The following is a random integer drawn uniformly between 0 and 100: ";
const SUPPORT: usize = 101;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RngOptions {
    pub prompt: String,
    /// `uniform`, or 101 non-negative weights for 0..=100 (normalised).
    pub target: Target,
    /// log-reward of anything that is not an integer in 0..=100.
    pub invalid_log_reward: f64,
    /// Default number of samples for `eval`.
    pub eval_samples: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    Named(String),
    Table(Vec<f64>),
}

impl Default for RngOptions {
    fn default() -> Self {
        // The floor must be tiny against the number of invalid strings (~V^max_len):
        // at -20, 4-token junk from a 49k vocabulary would outweigh all numbers.
        RngOptions { prompt: PROMPT.into(), target: Target::Named("uniform".into()), invalid_log_reward: -100.0, eval_samples: 10_000 }
    }
}

pub struct RandomNumber {
    pub opts: RngOptions,
    /// Target probabilities over 0..=100.
    pub target: Vec<f64>,
}

impl RandomNumber {
    pub fn from_options(table: &toml::Table) -> Result<Self> {
        let opts: RngOptions = options("rng", table)?;
        let target = match &opts.target {
            Target::Named(n) if n == "uniform" => vec![1.0 / SUPPORT as f64; SUPPORT],
            Target::Named(n) => return Err(Error::invalid("task.target", format!("unknown target `{n}` (use \"uniform\" or 101 weights)"))),
            Target::Table(w) => {
                if w.len() != SUPPORT || w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) || w.iter().sum::<f64>() <= 0.0 {
                    return Err(Error::invalid("task.target", "needs 101 finite non-negative weights with a positive sum"));
                }
                let s: f64 = w.iter().sum();
                w.iter().map(|x| x / s).collect()
            }
        };
        if opts.prompt.is_empty() {
            return Err(Error::invalid("task.prompt", "must not be empty"));
        }
        if opts.eval_samples == 0 {
            return Err(Error::invalid("task.eval_samples", "must be at least 1"));
        }
        Ok(RandomNumber { opts, target })
    }

    /// Stop actions: the model's end tokens, a newline, a full stop and a comma.
    fn stop_tokens(lm: &LanguageModel) -> Vec<u32> {
        let mut s = lm.tokenizer.stop_ids.clone();
        s.extend(single_token_ids(lm, &["\n", ".", ","]));
        s.sort_unstable();
        s.dedup();
        s
    }
}

/// The integer a text denotes, if it is one in 0..=100 (surrounding spaces allowed).
pub fn parse_number(text: &str) -> Option<usize> {
    let t = text.trim();
    if t.is_empty() || t.len() > 3 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse::<usize>().ok().filter(|&v| v < SUPPORT)
}

struct NumberReward {
    log_target: Vec<f64>,
    invalid: f64,
}

impl Reward for NumberReward {
    /// Every state is scored whatever `states` asks: parsing a prefix costs nothing.
    fn log_rewards_of(&self, lm: &LanguageModel, _problem: &Problem, trajs: &[Trajectory], _states: States) -> Result<Vec<Vec<f32>>> {
        trajs
            .iter()
            .map(|t| {
                t.state_lens()
                    .iter()
                    .map(|&len| {
                        let text = lm.tokenizer.decode(&t.tokens[..len], true)?;
                        Ok(parse_number(&text).map_or(self.invalid, |v| self.log_target[v]) as f32)
                    })
                    .collect()
            })
            .collect()
    }
}

impl Task for RandomNumber {
    fn name(&self) -> &'static str {
        "rng"
    }

    fn description(&self) -> &'static str {
        "Sample an integer in 0..=100 from a target distribution (paper §4.1, Fig. 2)"
    }

    fn default_config(&self) -> TrainConfig {
        // §4.1 gives no table; a short run of the arithmetic-task recipe, sized for CPU.
        TrainConfig {
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            lr: 1e-3,
            warmup_steps: 10,
            batch_size: 16,
            // 400 steps: KL 1.33 → 0.019 on SmolLM2-135M (docs/results.md); still improving.
            steps: 400,
            p_replay: 0.25,
            p_tempered: 0.25,
            pf_temp_low: 0.5,
            pf_temp_high: 2.0,
            min_len: 1,
            max_len: 4,
            buffer_capacity: 101,
            buffer_tolerance: 0.0,
            checkpoint_every: 50,
            ..TrainConfig::default()
        }
    }

    fn train_task(&self, lm: &LanguageModel) -> Result<TrainTask> {
        let prompt = lm.tokenizer.encode(&self.opts.prompt)?;
        Ok(TrainTask {
            problems: vec![Problem { key: "rng".into(), policy_prompt: prompt.clone(), reward_context: prompt, reward_suffix: vec![], seeds: vec![] }],
            reward: Box::new(NumberReward { log_target: self.target.iter().map(|p| p.ln()).collect(), invalid: self.opts.invalid_log_reward }),
            stop_tokens: Self::stop_tokens(lm),
            mask: TokenMask::None,
            mask_penalty: -99.0,
            tool: None,
        })
    }

    fn evaluate(&self, lm: &LanguageModel, lora: Option<&LoraView>, opts: &EvalOptions) -> Result<EvalReport> {
        self.check_eval(opts)?;
        // `xC`: C times the samples in the histogram.
        let n = opts.samples.unwrap_or(self.opts.eval_samples) * opts.compute();
        let prompt = lm.tokenizer.encode(&opts.prompt_text(&self.opts.prompt))?;
        let mut counts = vec![0u64; SUPPORT];
        let (mut valid, mut done) = (0usize, 0usize);
        let mut examples = Vec::new();
        let mut chunk = 0u64;
        while done < n {
            crate::progress::report("drawing samples", done, n);
            let b = opts.batch.max(1).min(n - done);
            // The policy's own constraints (as in training): at least one token before stopping.
            let cfg = SampleConfig {
                n: b,
                max_new_tokens: 6,
                min_new_tokens: opts.lengths_or(&self.default_config()).0,
                stop_tokens: Some(Self::stop_tokens(lm)),
                seed: opts.seed.wrapping_add(chunk),
                ..SampleConfig::default()
            };
            let cfg = opts.decode(cfg);
            for s in decode::sample(lm, std::slice::from_ref(&prompt), &cfg, lora, None)? {
                // The number is the text before the stop token (which may be "," "." or
                // "\n", so it is not part of the number); running out of tokens is invalid.
                let v = match (s.stop, s.tokens.split_last()) {
                    (StopReason::StopToken, Some((_, body))) => parse_number(&lm.tokenizer.decode(body, true)?),
                    _ => None,
                };
                if let Some(v) = v {
                    counts[v] += 1;
                    valid += 1;
                }
                if examples.len() < 20 {
                    examples.push(serde_json::json!({"text": s.text, "valid": v.is_some()}));
                }
            }
            done += b;
            chunk += 1;
        }
        crate::progress::report("drawing samples", done, n);
        let dist = amortize_shared::metrics::empirical_distribution(&counts);
        let mut report = EvalReport { examples, ..Default::default() };
        let m = &mut report.metrics;
        // No valid number: the sampled distribution does not exist, so neither does its KL.
        if valid > 0 {
            m.insert("kl".into(), amortize_shared::metrics::kl_divergence(&dist, &self.target));
            m.insert("kl_floor".into(), amortize_shared::metrics::finite_sample_kl_floor(SUPPORT, valid as u64));
        }
        m.insert("valid_rate".into(), valid as f64 / n as f64);
        m.insert("samples".into(), n as f64);
        m.insert("valid_samples".into(), valid as f64);

        Ok(report)
    }

    fn check_eval(&self, opts: &EvalOptions) -> Result<()> {
        opts.refuse_beam("rng", "its metric is the distribution of many samples, and beam search returns a few fixed outputs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_within_the_support() {
        assert_eq!(parse_number("42"), Some(42));
        assert_eq!(parse_number(" 7 "), Some(7));
        assert_eq!(parse_number("100"), Some(100));
        assert_eq!(parse_number("101"), None);
        assert_eq!(parse_number("4.5"), None);
        assert_eq!(parse_number("seven"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn bad_targets_are_rejected() {
        let t: toml::Table = "target = [1.0, 2.0]".parse().unwrap();
        assert!(RandomNumber::from_options(&t).is_err());
        let t: toml::Table = "target = \"zipf\"".parse().unwrap();
        assert!(RandomNumber::from_options(&t).is_err());
        let t: toml::Table = "targett = \"uniform\"".parse().unwrap();
        assert!(RandomNumber::from_options(&t).is_err());
        let r = RandomNumber::from_options(&toml::Table::new()).unwrap();
        assert!((r.target.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
