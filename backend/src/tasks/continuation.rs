//! Sentence continuation (paper §4.1, appendix B): given a prompt X (1–3
//! sentences of web text), sample the next sentence Z, ending at ".", from the
//! tempered posterior R(Z) = p_LM(Z "." | X)^(1/T) with T annealed to 0.875.
//! Owns the prompt list (a text file, one prompt per line, or a built-in
//! handful), the forbidden-token mask, and the likelihood/diversity metrics
//! (word-set and, with the embedding model, sentence-embedding diversity).
//!
//! Spacing: prompts are trimmed; the space before the next sentence is carried
//! by Z's first token (byte-level BPE attaches a space to the following word,
//! " The"), so X · Z · "." tokenizes like the text itself.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use amortize_shared::metrics::mean_pairwise_cosine_distance;
use serde::{Deserialize, Serialize};

use super::custom::{draw_eval, forbid_with_eos, mean_words, one_token, token_ids_where, Keep};
use super::{data_root, options, EvalOptions, EvalReport, Task};
use crate::decode::{self, SampleConfig, TokenMask};
use crate::embed::Embedder;
use crate::gfn::{LmReward, Problem, TrainConfig, TrainTask};
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

/// Used when no prompt file is given and the shared data has none.
pub const BUILTIN_PROMPTS: [&str; 10] = [
    "The city council met on Tuesday to discuss the new bus routes.",
    "Researchers at the university have been studying how bees find their way home.",
    "The company announced that it would open a new factory next spring.",
    "After three days of heavy rain, the river finally began to fall.",
    "She had never seen the ocean before the summer she turned twelve.",
    "The museum's newest exhibit features tools used by farmers a century ago.",
    "Local volunteers spent the weekend cleaning up the park near the old train station.",
    "The team lost its first two games of the season. The coach said nobody was giving up.",
    "Scientists say the comet will be visible without a telescope next week.",
    "He opened the letter slowly, unsure of what it would say.",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContinuationOptions {
    /// One prompt per line (blank lines skipped); default: the shared data's
    /// `continuation/openwebtext-prompts.txt`, else [`BUILTIN_PROMPTS`].
    pub prompts_file: Option<PathBuf>,
    /// The first `train_prompts` prompts train; the next `test_prompts` test.
    /// A file with fewer prompts is split in the same proportion (≥ 1 each).
    pub train_prompts: usize,
    pub test_prompts: usize,
    /// Samples per test prompt (the paper's 8).
    pub eval_samples: usize,
    pub eval_temperature: f32,
}

impl Default for ContinuationOptions {
    fn default() -> Self {
        ContinuationOptions { prompts_file: None, train_prompts: 200, test_prompts: 20, eval_samples: 8, eval_temperature: 1.0 }
    }
}

/// Sizes of the train and test splits of `n` prompts.
pub fn split_sizes(n: usize, train: usize, test: usize) -> Option<(usize, usize)> {
    if n >= train + test {
        return Some((train, test));
    }
    if n < 2 {
        return None;
    }
    let t = ((n * test) as f64 / (train + test) as f64).round() as usize;
    let t = t.clamp(1, n - 1);
    Some((n - t, t))
}

/// A token the policy may not emit: newlines, URL pieces, runs of punctuation.
pub fn forbidden_text(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    if text.contains('\n') || text.contains('\r') || lower.contains("http") || lower.contains("www") {
        return true;
    }
    let c: Vec<char> = text.trim().chars().collect();
    c.len() >= 2 && c.iter().all(|c| c.is_ascii_punctuation()) && c.windows(2).any(|w| w[0] == w[1])
}

/// Mean over pairs of 1 − |A ∩ B| / |A ∪ B| of the samples' lower-cased word
/// sets (0 with fewer than two samples; two empty texts are identical).
pub fn mean_pairwise_jaccard_distance<S: AsRef<str>>(texts: &[S]) -> f64 {
    let sets: Vec<HashSet<String>> = texts.iter().map(|t| t.as_ref().split_whitespace().map(str::to_lowercase).collect()).collect();
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..sets.len() {
        for j in i + 1..sets.len() {
            let union = sets[i].union(&sets[j]).count();
            let sim = if union == 0 { 1.0 } else { sets[i].intersection(&sets[j]).count() as f64 / union as f64 };
            sum += 1.0 - sim;
            pairs += 1;
        }
    }
    if pairs == 0 {
        0.0
    } else {
        sum / pairs as f64
    }
}

/// Mean over groups (one per prompt) of the mean pairwise cosine distance of
/// the group's sentence embeddings (0 for a group of fewer than two; 0 with
/// no groups). All texts are embedded in one batched pass.
pub fn embedding_diversity(embedder: &Embedder, groups: &[Vec<String>]) -> Result<f64> {
    if groups.is_empty() {
        return Ok(0.0);
    }
    let flat: Vec<String> = groups.iter().flatten().cloned().collect();
    let mut vectors = embedder.sentences(&flat)?.into_iter();
    let total: f64 = groups
        .iter()
        .map(|g| {
            let v: Vec<Vec<f32>> = vectors.by_ref().take(g.len()).collect();
            mean_pairwise_cosine_distance(&v)
        })
        .sum();
    Ok(total / groups.len() as f64)
}

#[derive(Debug)]
pub struct Continuation {
    pub opts: ContinuationOptions,
    pub train: Vec<String>,
    pub test: Vec<String>,
}

impl Continuation {
    pub fn from_options(table: &toml::Table) -> Result<Self> {
        let opts: ContinuationOptions = options("continuation", table)?;
        for (field, v) in [("task.train_prompts", opts.train_prompts), ("task.test_prompts", opts.test_prompts), ("task.eval_samples", opts.eval_samples)] {
            if v == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        if !(opts.eval_temperature > 0.0 && opts.eval_temperature.is_finite()) {
            return Err(Error::invalid("task.eval_temperature", "must be > 0"));
        }
        let file = opts.prompts_file.clone().or_else(|| data_root().map(|d| d.join("continuation/openwebtext-prompts.txt")).filter(|p| p.is_file()));
        let prompts: Vec<String> = match &file {
            Some(p) => read_prompts(p)?,
            None => BUILTIN_PROMPTS.iter().map(|s| s.to_string()).collect(),
        };
        let (n_train, n_test) = split_sizes(prompts.len(), opts.train_prompts, opts.test_prompts).ok_or_else(|| {
            let src = file.as_ref().map_or("the built-in list".to_string(), |p| p.display().to_string());
            Error::invalid("task.prompts_file", format!("{src} has {} prompt(s); need at least 2 (train and test)", prompts.len()))
        })?;
        Ok(Continuation { train: prompts[..n_train].to_vec(), test: prompts[n_train..n_train + n_test].to_vec(), opts })
    }

    fn stop_token(lm: &LanguageModel) -> Result<u32> {
        one_token(lm, ".", "stop token")
    }

    /// Newlines, URLs, runs of punctuation and the EOS-like tokens (never ".").
    pub fn mask(lm: &LanguageModel) -> Result<TokenMask> {
        Ok(forbid_with_eos(lm, token_ids_where(lm, forbidden_text), Self::stop_token(lm)?))
    }
}

fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let prompts: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if prompts.is_empty() {
        return Err(Error::file(path, "no prompts (one per line)"));
    }
    Ok(prompts)
}

impl Task for Continuation {
    fn name(&self) -> &'static str {
        "continuation"
    }

    fn description(&self) -> &'static str {
        "Sample likely yet diverse next sentences for a prompt, R = p_LM(Z. | X)^(1/T) (paper §4.1, Fig. 3)"
    }

    fn default_config(&self) -> TrainConfig {
        // §4.1/B give no table: reward temperature 0.875 (annealed from 1.0 over
        // half the run) and a LoRA policy. Sized for a ~135M model on CPU: rank
        // 16 (the paper's adapter had 80M parameters on GPT-2 XL), 200 steps of
        // 16 samples, lr 5e-4 for the short run; 25 tokens cover a sentence.
        TrainConfig {
            lora_r: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            lr: 5e-4,
            warmup_steps: 20,
            batch_size: 16,
            steps: 200,
            p_replay: 0.25,
            p_tempered: 0.25,
            pf_temp_low: 0.5,
            pf_temp_high: 2.0,
            reward_temp_start: 1.0,
            reward_temp_end: 0.875,
            reward_temp_horizon: 100,
            buffer_capacity: 50,
            min_len: 1,
            max_len: 25,
            ..TrainConfig::default()
        }
    }

    fn train_task(&self, lm: &LanguageModel) -> Result<TrainTask> {
        let stop = Self::stop_token(lm)?;
        let mask = Self::mask(lm)?;
        let problems = self
            .train
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let ids = lm.tokenizer.encode(x)?;
                let key: String = x.chars().take(60).collect();
                Ok(Problem { key: format!("{i}:{key}"), policy_prompt: ids.clone(), reward_context: ids, reward_suffix: vec![stop], seeds: vec![] })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TrainTask { problems, reward: Box::new(LmReward::new(lm, vec![], &mask, -99.0, None)?), stop_tokens: vec![stop], mask, mask_penalty: -99.0, tool: None })
    }

    /// `max_loglik` / `mean_loglik`: over test prompts, the mean of the max /
    /// mean of log p_LM(Z "." | X) (base model) among the prompt's samples
    /// (the posterior favours short sentences: `mean_words` shows how short).
    /// `diversity_embedding` (when the embedding model is present, see
    /// [`crate::embed::Embedder::load_default`]): mean over prompts of the mean
    /// pairwise cosine distance of the samples' sentence embeddings — the
    /// paper's diversity (Fig. 3). `diversity_jaccard`: the same with word-set
    /// Jaccard distances, which needs no model.
    fn evaluate(&self, lm: &LanguageModel, lora: Option<&LoraView>, opts: &EvalOptions) -> Result<EvalReport> {
        let stop = Self::stop_token(lm)?;
        let k = opts.samples.unwrap_or(self.opts.eval_samples);
        let n = opts.limit.unwrap_or(self.test.len()).min(self.test.len());
        let (min_len, max_len) = opts.lengths_or(&self.default_config());
        let prompts = self.test[..n].iter().map(|x| lm.tokenizer.encode(x)).collect::<Result<Vec<_>>>()?;
        let cfg = SampleConfig {
            n: k,
            max_new_tokens: max_len,
            min_new_tokens: min_len,
            temperature: self.opts.eval_temperature,
            mask: Self::mask(lm)?,
            stop_tokens: Some(vec![stop]),
            seed: opts.seed,
            ..SampleConfig::default()
        };
        let cfg = opts.decode(cfg);
        // Loaded before sampling, so a broken model directory fails fast.
        let embedder = Embedder::load_default(lm.device())?;
        // The policy reads the (possibly rewritten) prompt; Z is scored after the plain one.
        let policy = self.test[..n].iter().map(|x| lm.tokenizer.encode(&opts.prompt_text(x))).collect::<Result<Vec<_>>>()?;
        let drawn = draw_eval(lm, lora, &policy, &cfg, opts, Keep::Best)?;
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = prompts
            .iter()
            .zip(&drawn)
            .flat_map(|(p, g)| g.iter().map(move |d| (p.clone(), [d.tokens.as_slice(), &[stop]].concat())))
            .collect();
        let scores = decode::score(lm, &pairs, None, opts.batch)?;
        let mut report = EvalReport::default();
        let (mut per_prompt, mut diversity, mut stopped) = (Vec::new(), 0.0, 0usize);
        let mut it = scores.iter();
        for (x, g) in self.test[..n].iter().zip(&drawn) {
            let ll: Vec<f64> = g.iter().map(|_| it.next().map_or(f64::NEG_INFINITY, |s| s.total as f64)).collect();
            let texts: Vec<&str> = g.iter().map(|d| d.text.as_str()).collect();
            diversity += mean_pairwise_jaccard_distance(&texts);
            stopped += g.iter().filter(|d| d.stopped).count();
            if report.examples.len() < 5 {
                report.examples.push(serde_json::json!({"prompt": x, "samples": texts, "loglik": ll}));
            }
            per_prompt.push(ll);
        }
        let summary = amortize_shared::metrics::log_likelihood_summary(&per_prompt);
        let m = &mut report.metrics;
        m.insert("max_loglik".into(), summary.map_or(0.0, |s| s.max.mean));
        m.insert("mean_loglik".into(), summary.map_or(0.0, |s| s.mean.mean));
        m.insert("diversity_jaccard".into(), if n > 0 { diversity / n as f64 } else { 0.0 });
        if let Some(e) = &embedder {
            let groups: Vec<Vec<String>> = drawn.iter().map(|g| g.iter().map(|d| d.text.trim().to_string()).collect()).collect();
            m.insert("diversity_embedding".into(), embedding_diversity(e, &groups)?);
        }
        m.insert("stop_rate".into(), amortize_shared::metrics::valid_rate(stopped, drawn.iter().map(Vec::len).sum()));
        m.insert("mean_words".into(), mean_words(drawn.iter().flatten().map(|d| d.text.as_str())));
        m.insert("prompts".into(), n as f64);
        m.insert("samples_per_prompt".into(), drawn.iter().map(Vec::len).sum::<usize>() as f64 / n.max(1) as f64);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_tokens() {
        for t in ["\n", ".\n", "Ġ\n", "http", "://www", "..", "!!", "??", "--", " ...", "?!!"] {
            assert!(forbidden_text(t), "{t:?}");
        }
        for t in [".", ",", " the", "!", "?\"", "(", " U.S", "'s", "?!"] {
            assert!(!forbidden_text(t), "{t:?}");
        }
    }

    #[test]
    fn jaccard_diversity() {
        assert_eq!(mean_pairwise_jaccard_distance(&["a b", "a b"]), 0.0);
        assert_eq!(mean_pairwise_jaccard_distance(&["a b", "c d"]), 1.0);
        // {a,b} vs {b,c}: 1 − 1/3.
        assert!((mean_pairwise_jaccard_distance(&["a b", "B c"]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(mean_pairwise_jaccard_distance(&["only one"]), 0.0);
        assert_eq!(mean_pairwise_jaccard_distance(&["", ""]), 0.0);
    }

    #[test]
    fn evaluate_without_the_embedder_leaves_its_metric_out() {
        use crate::model::tiny::write_tiny_model;
        let dir = tempfile::tempdir().unwrap();
        let lm = LanguageModel::load(&write_tiny_model(dir.path(), 7).unwrap().gguf, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let prompts = dir.path().join("p.txt");
        std::fs::write(&prompts, "The cat sat.\nIt was cold.\nThe bus was late.\n").unwrap();
        let task = Continuation::from_options(&format!("prompts_file = {:?}\ntrain_prompts = 2\ntest_prompts = 1", prompts.display().to_string()).parse().unwrap()).unwrap();
        let m = task.evaluate(&lm, None, &EvalOptions { samples: Some(2), batch: 4, ..Default::default() }).unwrap().metrics;
        assert!(m.contains_key("diversity_jaccard"));
        // Tests run in backend/, where the default models/ path is absent unless AMORTIZE_EMBEDDER points at it.
        assert_eq!(m.contains_key("diversity_embedding"), Embedder::default_dir().exists(), "{m:?}");
    }

    #[test]
    fn splits_are_disjoint_and_proportional() {
        assert_eq!(split_sizes(1000, 200, 20), Some((200, 20)));
        assert_eq!(split_sizes(10, 200, 20), Some((9, 1)));
        assert_eq!(split_sizes(10, 5, 5), Some((5, 5)));
        assert_eq!(split_sizes(4, 3, 3), Some((2, 2)));
        assert_eq!(split_sizes(1, 200, 20), None);
        let c = Continuation::from_options(&"prompts_file = \"/nonexistent/prompts.txt\"".parse().unwrap());
        assert!(c.err().unwrap().to_string().contains("/nonexistent/prompts.txt"));
        let e = Continuation::from_options(&"test_prompts = 0".parse().unwrap()).err().unwrap().to_string();
        assert!(e.contains("task.test_prompts"), "{e}");
    }
}
