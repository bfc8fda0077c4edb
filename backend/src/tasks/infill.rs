//! Story infilling (paper §4.2, appendix C, Table C.2): given a story's
//! beginning X (3 sentences) and end Y (the 5th), sample the missing 4th
//! sentence Z from p_LM(Z | X, Y) ∝ p_LM(X Z Y). Owns the stories (JSONL
//! `{"beginning", "middle", "end"}`; built in: `backend/data/stories.jsonl`,
//! 36 short original stories), the prompts, the optional reward adapter, and
//! the BLEU/GLEU/likelihood metrics and, with the embedding model, the
//! BERTScore-style and sentence-cosine similarity to the reference middle.
//!
//! Spacing: the policy reads "Beginning: {X}\n End: {Y}\n Middle:" — the
//! paper's prompt without its final space, which Z's first token carries
//! (" She …"), as byte-level BPE writes it. The reward scores the plain story:
//! context X, then Z, then " " + Y, so X · Z · Y tokenizes as the text would.
//! The stop action is the newline token (Z is one line, one sentence).

use std::path::{Path, PathBuf};

use amortize_shared::metrics::{bert_score, cosine_similarity};
use serde::{Deserialize, Serialize};

use super::custom::{draw, draw_eval, forbid_with_eos, mean_words, one_token, parse_jsonl, read_jsonl, token_ids_where, Keep};
use super::{options, Demonstration, EvalOptions, EvalReport, Task};
use crate::decode::{self, SampleConfig, TokenMask};
use crate::embed::Embedder;
use crate::gfn::{LmReward, Problem, TrainConfig, TrainTask, Trajectory};
use crate::model::{LanguageModel, LoraAdapter, LoraView, Mode};
use crate::{Error, Result};

/// The built-in stories (written for this project, in the style of ROCStories).
pub const BUILTIN_STORIES: &str = include_str!("../../data/stories.jsonl");
const BUILTIN_NAME: &str = "backend/data/stories.jsonl (built in)";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfillOptions {
    /// JSONL `{"beginning": …, "middle": …, "end": …}`; default: the built-in stories.
    pub data_file: Option<PathBuf>,
    /// The last `test_fraction` of the stories are the test set.
    pub test_fraction: f64,
    /// A PEFT adapter directory switched on when scoring the reward (the paper's
    /// reward model was GPT-2 fine-tuned on the stories; here an SFT adapter).
    /// In `amortize compare`, `"sft"` names the SFT adapter it trains per seed.
    pub reward_adapter: Option<PathBuf>,
    /// Seed the replay buffer with each training story's reference middle.
    pub seed_buffer: bool,
    /// Middles sampled per test story.
    pub eval_samples: usize,
    /// The paper's evaluation temperature (Table C.2).
    pub eval_temperature: f32,
}

impl Default for InfillOptions {
    fn default() -> Self {
        InfillOptions { data_file: None, test_fraction: 0.25, reward_adapter: None, seed_buffer: true, eval_samples: 4, eval_temperature: 0.8 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Story {
    pub beginning: String,
    pub middle: String,
    pub end: String,
}

impl Story {
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        for (name, v) in [("beginning", &self.beginning), ("middle", &self.middle), ("end", &self.end)] {
            if v.trim().is_empty() {
                return Err(format!("`{name}` is empty"));
            }
            if v.contains('\n') {
                return Err(format!("`{name}` spans several lines (the newline ends the middle)"));
            }
        }
        Ok(())
    }

    /// What the policy reads.
    pub fn policy_prompt(&self) -> String {
        format!("Beginning: {}\n End: {}\n Middle:", self.beginning.trim(), self.end.trim())
    }

    /// The reward's context (X) and suffix (" " + Y).
    pub fn reward_parts(&self) -> (String, String) {
        (self.beginning.trim().to_string(), format!(" {}", self.end.trim()))
    }

    /// The reference middle as Z (with its leading space).
    pub fn middle_z(&self) -> String {
        format!(" {}", self.middle.trim())
    }
}

/// Reads stories from a JSONL file.
pub fn read_stories(path: &Path) -> Result<Vec<Story>> {
    read_jsonl(path, Story::check)
}

#[derive(Debug)]
pub struct Infill {
    pub opts: InfillOptions,
    pub train: Vec<Story>,
    pub test: Vec<Story>,
}

impl Infill {
    pub fn from_options(table: &toml::Table) -> Result<Self> {
        let opts: InfillOptions = options("infill", table)?;
        if !(opts.test_fraction > 0.0 && opts.test_fraction < 1.0) {
            return Err(Error::invalid("task.test_fraction", "must be in (0, 1)"));
        }
        if opts.eval_samples == 0 {
            return Err(Error::invalid("task.eval_samples", "must be at least 1"));
        }
        if !(opts.eval_temperature > 0.0 && opts.eval_temperature.is_finite()) {
            return Err(Error::invalid("task.eval_temperature", "must be > 0"));
        }
        if let Some(dir) = &opts.reward_adapter {
            if dir.as_os_str() == "sft" {
                return Err(Error::invalid("task.reward_adapter", "\"sft\" (the SFT adapter trained alongside) works in `amortize compare` only; here give an adapter directory"));
            }
            if !dir.join("adapter_config.json").is_file() {
                return Err(Error::invalid("task.reward_adapter", format!("{} is not a PEFT adapter directory (no adapter_config.json)", dir.display())));
            }
        }
        let stories = match &opts.data_file {
            Some(p) => read_stories(p)?,
            None => parse_jsonl(BUILTIN_STORIES, Path::new(BUILTIN_NAME), Story::check)?,
        };
        if stories.len() < 2 {
            return Err(Error::invalid("task.data_file", "needs at least 2 stories (train and test)"));
        }
        let n_test = ((stories.len() as f64 * opts.test_fraction).round() as usize).clamp(1, stories.len() - 1);
        let split = stories.len() - n_test;
        Ok(Infill { train: stories[..split].to_vec(), test: stories[split..].to_vec(), opts })
    }

    fn stop_token(lm: &LanguageModel) -> Result<u32> {
        one_token(lm, "\n", "stop token")
    }

    /// Every other token containing a newline, and the EOS-like tokens.
    pub fn mask(lm: &LanguageModel) -> Result<TokenMask> {
        Ok(forbid_with_eos(lm, token_ids_where(lm, |t| t.contains('\n') || t.contains('\r')), Self::stop_token(lm)?))
    }

    fn problem(lm: &LanguageModel, i: usize, s: &Story, seed: bool, max_len: usize) -> Result<Problem> {
        let (ctx, suffix) = s.reward_parts();
        let mut seeds = Vec::new();
        if seed {
            let z = lm.tokenizer.encode(&s.middle_z())?;
            // A reference longer than the preset's max_len is not a state the policy can reach.
            if z.len() <= max_len {
                seeds.push(Trajectory::from_actions(z));
            }
        }
        let key: String = s.beginning.chars().take(60).collect();
        Ok(Problem {
            key: format!("{i}:{key}"),
            policy_prompt: lm.tokenizer.encode(&s.policy_prompt())?,
            reward_context: lm.tokenizer.encode(&ctx)?,
            reward_suffix: lm.tokenizer.encode(&suffix)?,
            seeds,
        })
    }
}

/// Embedding similarity of sampled middles to reference middles, averaged
/// over samples (see [`middle_similarity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MiddleSimilarity {
    pub bertscore_p: f64,
    pub bertscore_r: f64,
    pub bertscore_f1: f64,
    /// Cosine of the sentence embeddings.
    pub sentence_cosine: f64,
}

/// BERTScore P/R/F1 (token embeddings, no idf, no rescaling) and sentence
/// cosine of every sample in `samples[i]` against `references[i]`, averaged
/// over all samples (all zero when there are none). Batched: each text is
/// encoded once.
///
/// # Panics
/// If `samples` and `references` have different lengths.
pub fn middle_similarity(embedder: &Embedder, references: &[String], samples: &[Vec<String>]) -> Result<MiddleSimilarity> {
    assert_eq!(references.len(), samples.len(), "middle_similarity: one group of samples per reference");
    let flat: Vec<String> = samples.iter().flatten().cloned().collect();
    if flat.is_empty() {
        return Ok(MiddleSimilarity::default());
    }
    let (ref_tokens, ref_vecs) = (embedder.tokens_batch(references)?, embedder.sentences(references)?);
    let (tokens, vecs) = (embedder.tokens_batch(&flat)?, embedder.sentences(&flat)?);
    let mut sum = MiddleSimilarity::default();
    let owners = samples.iter().enumerate().flat_map(|(i, g)| std::iter::repeat_n(i, g.len()));
    for ((t, v), i) in tokens.iter().zip(&vecs).zip(owners) {
        let b = bert_score(t, &ref_tokens[i]);
        sum.bertscore_p += b.precision;
        sum.bertscore_r += b.recall;
        sum.bertscore_f1 += b.f1;
        sum.sentence_cosine += cosine_similarity(v, &ref_vecs[i]);
    }
    let n = flat.len() as f64;
    Ok(MiddleSimilarity { bertscore_p: sum.bertscore_p / n, bertscore_r: sum.bertscore_r / n, bertscore_f1: sum.bertscore_f1 / n, sentence_cosine: sum.sentence_cosine / n })
}

/// A middle written between a beginning and an end, with how well it explains the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Middle {
    pub text: String,
    /// log p_base(Z Y | X): the infilling log-reward of the middle Z.
    pub score: f64,
    /// `score` per scored token (|Z| + |Y|).
    pub per_token: f64,
}

/// Samples `k` middles for one (beginning, end) pair from the base model or an
/// adapter, with the task's prompt, mask and stop token, each scored by the base
/// model; best first. What the server's infilling playground shows.
pub fn write_middles(lm: &LanguageModel, lora: Option<&LoraView>, beginning: &str, end: &str, cfg: &SampleConfig) -> Result<Vec<Middle>> {
    let story = Story { beginning: beginning.into(), middle: "-".into(), end: end.into() };
    for (name, v) in [("beginning", beginning), ("end", end)] {
        if v.trim().is_empty() {
            return Err(Error::invalid(name, "must not be empty"));
        }
    }
    let prompt = lm.tokenizer.encode(&story.policy_prompt())?;
    let cfg = SampleConfig { mask: Infill::mask(lm)?, stop_tokens: Some(vec![Infill::stop_token(lm)?]), ..cfg.clone() };
    let drawn = draw(lm, lora, &[prompt], &cfg, cfg.n)?.pop().unwrap_or_default();
    let (ctx, suffix) = story.reward_parts();
    let (ctx, suffix) = (lm.tokenizer.encode(&ctx)?, lm.tokenizer.encode(&suffix)?);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = drawn.iter().map(|d| (ctx.clone(), [d.tokens.as_slice(), suffix.as_slice()].concat())).collect();
    let scored = decode::score(lm, &pairs, None, 16)?;
    let mut out: Vec<Middle> = drawn
        .into_iter()
        .zip(scored)
        .zip(&pairs)
        .map(|((d, s), (_, cont))| Middle { text: d.text.trim().to_string(), score: s.total as f64, per_token: s.total as f64 / cont.len().max(1) as f64 })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(out)
}

impl Task for Infill {
    fn name(&self) -> &'static str {
        "infill"
    }

    fn description(&self) -> &'static str {
        "Fill in the missing 4th sentence of a 5-sentence story, Z ~ p_LM(Z | X, Y) (paper §4.2, Table 2)"
    }

    fn default_config(&self) -> TrainConfig {
        // Table C.2, scaled to a ~135M model on CPU: LoRA rank 64 → 16, batch
        // 64 → 16, 16 accumulation steps → 1, 1000 steps → 200. The rest is the
        // table's: α 16, dropout 0.1, lr 1e-4, P_F temperature 0.5–2, reward
        // temperature 1.1 → 0.85 over 100 steps, buffer 25, length 5–25.
        TrainConfig {
            lora_r: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            lr: 1e-4,
            warmup_steps: 20,
            batch_size: 16,
            grad_accum: 1,
            steps: 200,
            p_replay: 0.25,
            p_tempered: 0.25,
            pf_temp_low: 0.5,
            pf_temp_high: 2.0,
            reward_temp_start: 1.1,
            reward_temp_end: 0.85,
            reward_temp_horizon: 100,
            buffer_capacity: 25,
            min_len: 5,
            max_len: 25,
            ..TrainConfig::default()
        }
    }

    fn train_task(&self, lm: &LanguageModel) -> Result<TrainTask> {
        let mask = Self::mask(lm)?;
        let max_len = self.default_config().max_len;
        let problems = self.train.iter().enumerate().map(|(i, s)| Self::problem(lm, i, s, self.opts.seed_buffer, max_len)).collect::<Result<Vec<_>>>()?;
        let reward_lora = match &self.opts.reward_adapter {
            Some(dir) => Some(LoraAdapter::load_peft(dir, lm.config(), lm.device())?.view(Mode::Infer, lm.llama.dtype())?),
            None => None,
        };
        Ok(TrainTask {
            problems,
            reward: Box::new(LmReward::new(lm, vec![], &mask, -99.0, reward_lora)?),
            stop_tokens: vec![Self::stop_token(lm)?],
            mask,
            mask_penalty: -99.0,
            tool: None,
        })
    }

    /// Training stories with their middles, as the policy reads them:
    /// "Beginning: X\n End: Y\n Middle: Z\n".
    fn demonstrations(&self) -> Vec<Demonstration> {
        self.train.iter().map(|s| Demonstration { prompt: s.policy_prompt(), text: format!("{}{}\n", s.policy_prompt(), s.middle_z()) }).collect()
    }

    /// Against each test story's reference middle, over `eval_samples` middles
    /// per story at temperature 0.8: `bleu4` (corpus BLEU-4, sacrebleu's corpus
    /// preset, whitespace tokens), `gleu4` (corpus GLEU-4), and `loglik`, the
    /// mean log p_LM(Z Y | X) with the base model (not the reward adapter).
    /// With the embedding model present (see
    /// [`crate::embed::Embedder::load_default`]), the paper's Table 2 similarity
    /// columns, each sampled middle against its story's reference middle,
    /// averaged over samples: `bertscore_p` / `_r` / `_f1` (greedy token
    /// matching of contextual token embeddings) and `sentence_cosine`.
    fn evaluate(&self, lm: &LanguageModel, lora: Option<&LoraView>, opts: &EvalOptions) -> Result<EvalReport> {
        let k = opts.samples.unwrap_or(self.opts.eval_samples);
        let n = opts.limit.unwrap_or(self.test.len()).min(self.test.len());
        let stories = &self.test[..n];
        let (min_len, max_len) = opts.lengths_or(&self.default_config());
        let prompts = stories.iter().map(|s| lm.tokenizer.encode(&opts.prompt_text(&s.policy_prompt()))).collect::<Result<Vec<_>>>()?;
        let cfg = SampleConfig {
            n: k,
            max_new_tokens: max_len,
            min_new_tokens: min_len,
            temperature: self.opts.eval_temperature,
            mask: Self::mask(lm)?,
            stop_tokens: Some(vec![Self::stop_token(lm)?]),
            seed: opts.seed,
            ..SampleConfig::default()
        };
        let cfg = opts.decode(cfg);
        // Loaded before sampling, so a broken model directory fails fast.
        let embedder = Embedder::load_default(lm.device())?;
        let drawn = draw_eval(lm, lora, &prompts, &cfg, opts, Keep::Best)?;
        let (mut hyps, mut refs, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
        let mut report = EvalReport::default();
        let mut stopped = 0usize;
        for (s, g) in stories.iter().zip(&drawn) {
            let (ctx, suffix) = s.reward_parts();
            let (ctx, suffix) = (lm.tokenizer.encode(&ctx)?, lm.tokenizer.encode(&suffix)?);
            let reference: Vec<String> = s.middle.split_whitespace().map(String::from).collect();
            for d in g {
                hyps.push(d.text.split_whitespace().map(String::from).collect::<Vec<_>>());
                refs.push(vec![reference.clone()]);
                pairs.push((ctx.clone(), [d.tokens.as_slice(), &suffix].concat()));
                stopped += usize::from(d.stopped);
            }
            if report.examples.len() < 5 {
                let middles: Vec<&str> = g.iter().map(|d| d.text.trim()).collect();
                report.examples.push(serde_json::json!({"beginning": s.beginning, "end": s.end, "reference": s.middle, "samples": middles}));
            }
        }
        let scores = decode::score(lm, &pairs, None, opts.batch)?;
        let loglik = scores.iter().map(|s| s.total as f64).sum::<f64>() / scores.len().max(1) as f64;
        use amortize_shared::metrics::{corpus_bleu, corpus_gleu, valid_rate, BleuOptions};
        let m = &mut report.metrics;
        m.insert("bleu4".into(), corpus_bleu(&hyps, &refs, BleuOptions::SACREBLEU_CORPUS));
        m.insert("gleu4".into(), corpus_gleu(&hyps, &refs));
        m.insert("loglik".into(), loglik);
        m.insert("stop_rate".into(), valid_rate(stopped, hyps.len()));
        m.insert("mean_words".into(), mean_words(drawn.iter().flatten().map(|d| d.text.as_str())));
        if let Some(e) = &embedder {
            let references: Vec<String> = stories.iter().map(|s| s.middle.trim().to_string()).collect();
            let samples: Vec<Vec<String>> = drawn.iter().map(|g| g.iter().map(|d| d.text.trim().to_string()).collect()).collect();
            let sim = middle_similarity(e, &references, &samples)?;
            m.insert("bertscore_p".into(), sim.bertscore_p);
            m.insert("bertscore_r".into(), sim.bertscore_r);
            m.insert("bertscore_f1".into(), sim.bertscore_f1);
            m.insert("sentence_cosine".into(), sim.sentence_cosine);
        }
        m.insert("stories".into(), n as f64);
        m.insert("samples_per_story".into(), drawn.iter().map(Vec::len).sum::<usize>() as f64 / n.max(1) as f64);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_stories_parse_and_split() {
        let t = Infill::from_options(&toml::Table::new()).unwrap();
        assert_eq!(t.train.len() + t.test.len(), 36);
        assert_eq!(t.test.len(), 9);
        for s in t.train.iter().chain(&t.test) {
            // Three sentences, then one, then one.
            assert!(s.beginning.matches('.').count() >= 3, "{}", s.beginning);
            assert!(s.middle.ends_with('.') && s.end.ends_with('.'));
        }
        let s = &t.test[0];
        assert!(s.policy_prompt().starts_with("Beginning: ") && s.policy_prompt().ends_with("\n Middle:"));
        assert!(s.middle_z().starts_with(' ') && s.reward_parts().1.starts_with(' '));
    }

    #[test]
    fn options_are_checked() {
        let e = |s: &str| Infill::from_options(&s.parse().unwrap()).err().unwrap().to_string();
        assert!(e("test_fraction = 1.0").contains("task.test_fraction"));
        assert!(e("eval_samples = 0").contains("task.eval_samples"));
        assert!(e("reward_adapter = \"/nonexistent\"").contains("task.reward_adapter"));
        assert!(e("reward_adapter = \"sft\"").contains("amortize compare"));
        assert!(e("middle = 1").contains("middle"));
    }

    #[test]
    fn evaluate_without_the_embedder_leaves_its_metrics_out() {
        use crate::model::tiny::write_tiny_model;
        let dir = tempfile::tempdir().unwrap();
        let lm = LanguageModel::load(&write_tiny_model(dir.path(), 7).unwrap().gguf, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let data = dir.path().join("s.jsonl");
        std::fs::write(&data, "{\"beginning\": \"Ann had a ball.\", \"middle\": \"She threw it.\", \"end\": \"Ann was happy.\"}\n{\"beginning\": \"Tim was hungry.\", \"middle\": \"He ate.\", \"end\": \"Tim felt full.\"}\n").unwrap();
        let task = Infill::from_options(&format!("data_file = {:?}\ntest_fraction = 0.5", data.display().to_string()).parse().unwrap()).unwrap();
        let m = task.evaluate(&lm, None, &EvalOptions { samples: Some(2), batch: 4, ..Default::default() }).unwrap().metrics;
        assert!(m.contains_key("bleu4"));
        // Tests run in backend/, where the default models/ path is absent unless AMORTIZE_EMBEDDER points at it.
        for k in ["bertscore_f1", "bertscore_p", "bertscore_r", "sentence_cosine"] {
            assert_eq!(m.contains_key(k), Embedder::default_dir().exists(), "{k}: {m:?}");
        }
    }

    #[test]
    fn bad_story_lines_are_named() {
        let text = "{\"beginning\": \"a\", \"middle\": \"b\", \"end\": \"c\"}\n{\"beginning\": \"a\", \"middle\": \" \", \"end\": \"c\"}\n";
        let e = parse_jsonl(text, Path::new("s.jsonl"), Story::check).unwrap_err().to_string();
        assert_eq!(e, "s.jsonl: line 2: `middle` is empty");
    }
}
