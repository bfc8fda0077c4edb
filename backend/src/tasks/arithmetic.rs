//! Integer arithmetic with a calculator (paper §4.4, Table E.2): X is
//! "Question: 6 - 0 - 4 = ? Answer:", Z a chain of two-term steps whose results
//! the calculator writes ("6 - 0 = 6, 6 - 4 = 2"), Y ". The answer is 2.". The
//! policy may emit digits, + - = , . and spaces; "." ends Z. The reward is
//! p_LM(Z Y | demos X) with k = 3 worked demonstrations as a fixed prefix; the
//! buffer is seeded with the demonstrations' rationales. Test accuracy: majority
//! vote over samples at low temperature, in distribution (3–4 operands) and out
//! of distribution (5 operands).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{data_root, options, Demonstration, EvalOptions, EvalReport, Task};
use crate::decode::{self, Calculator, SampleConfig, TokenMask, ToolHook};
use crate::gfn::{LmReward, Problem, TrainConfig, TrainTask, Trajectory};
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArithmeticOptions {
    /// Worked examples (paper JSON: str_query, str_rationale, str_sol, num_sol);
    /// default: the paper's 50 from the shared data, else generated.
    pub demos_file: Option<PathBuf>,
    /// Extra generated training questions (3–4 operands) without rationales.
    pub generated: usize,
    /// Demonstrations in the reward's prompt.
    pub k_shot: usize,
    /// Test sets (paper JSON); default: the shared data's, else generated.
    pub test_id_files: Vec<PathBuf>,
    pub test_ood_files: Vec<PathBuf>,
    /// Questions per test set (all when 0).
    pub eval_limit: usize,
    pub eval_samples: usize,
    pub eval_temperature: f32,
    pub seed: u64,
}

impl Default for ArithmeticOptions {
    fn default() -> Self {
        ArithmeticOptions {
            demos_file: None,
            generated: 200,
            k_shot: 3,
            test_id_files: vec![],
            test_ood_files: vec![],
            eval_limit: 100,
            eval_samples: 10,
            eval_temperature: 0.1,
            seed: 0,
        }
    }
}

/// One question: the query, its answer and (for demonstrations) a rationale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub str_query: String,
    pub num_sol: i64,
    #[serde(default)]
    pub str_rationale: Option<String>,
}

impl Item {
    /// Y: what follows Z (its first token, ".", is the stop action).
    pub fn answer_text(&self) -> String {
        format!(". The answer is {}.", self.num_sol)
    }
}

/// A question with `n` one-digit operands and its rationale, as in the paper's data.
pub fn generate(n: usize, rng: &mut impl Rng) -> Item {
    let nums: Vec<i64> = (0..n).map(|_| rng.random_range(0..10)).collect();
    let ops: Vec<char> = (1..n).map(|_| if rng.random() { '+' } else { '-' }).collect();
    let mut query = format!("Question: {}", nums[0]);
    let mut steps = Vec::new();
    let mut acc = nums[0];
    for (op, &x) in ops.iter().zip(&nums[1..]) {
        query.push_str(&format!(" {op} {x}"));
        steps.push(format!("{acc} {op} {x} ="));
        acc = if *op == '+' { acc + x } else { acc - x };
    }
    query.push_str(" = ? Answer:");
    Item { str_query: query, num_sol: acc, str_rationale: Some(steps.join(", ")) }
}

pub fn read_items(path: &Path) -> Result<Vec<Item>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let items: Vec<Item> = serde_json::from_str(&text).map_err(|e| Error::file(path, format!("expected a JSON list of questions: {e}")))?;
    if items.is_empty() {
        return Err(Error::file(path, "no questions"));
    }
    Ok(items)
}

/// The rationale with the calculator's results filled in: "6 - 0 = 6, 6 - 4 = 2".
pub fn worked(rationale: &str) -> String {
    let mut out = String::new();
    for part in rationale.split_inclusive('=') {
        out.push_str(part);
        if part.ends_with('=') {
            if let Some(v) = Calculator::evaluate(out.trim()) {
                out.push_str(&format!(" {v}"));
            }
        }
    }
    out
}

/// The last integer in a text (the final calculator result of a rationale).
pub fn last_number(text: &str) -> Option<i64> {
    let mut best = None;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let start = if i > 0 && b[i - 1] == b'-' { i - 1 } else { i };
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            best = text[start..j].parse().ok();
            i = j;
        } else {
            i += 1;
        }
    }
    best
}

pub struct Arithmetic {
    pub opts: ArithmeticOptions,
    pub demos: Vec<Item>,
}

impl Arithmetic {
    pub fn from_options(table: &toml::Table) -> Result<Self> {
        let opts: ArithmeticOptions = options("arithmetic", table)?;
        if opts.eval_samples == 0 {
            return Err(Error::invalid("task.eval_samples", "must be at least 1"));
        }
        let demos = match opts.demos_file.clone().or_else(|| data_root().map(|d| d.join("arithmetic/1digit_34_op+-_train_50.json")).filter(|p| p.is_file())) {
            Some(p) => read_items(&p)?,
            None => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
                (0..50).map(|i| generate(3 + i % 2, &mut rng)).collect()
            }
        };
        if let Some(i) = demos.iter().position(|d| d.str_rationale.is_none()) {
            return Err(Error::invalid("task.demos_file", format!("question {i} has no str_rationale")));
        }
        if opts.k_shot > demos.len() {
            return Err(Error::invalid("task.k_shot", format!("only {} demonstrations", demos.len())));
        }
        Ok(Arithmetic { opts, demos })
    }

    /// A demonstration written out: "Question: … Answer: 6 - 0 = 6, 6 - 4 = 2. The answer is 2.\n".
    fn demo_text(d: &Item) -> String {
        format!("{} {}{}\n", d.str_query, worked(d.str_rationale.as_deref().unwrap_or("")), d.answer_text())
    }

    /// The reward's few-shot prefix: k worked demonstrations.
    fn prefix(&self) -> String {
        self.demos[..self.opts.k_shot].iter().map(Self::demo_text).collect()
    }

    /// The training questions, in the order of `train_task`'s problems: the
    /// demonstrations, then the generated questions.
    fn train_items(&self) -> Vec<Item> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.opts.seed + 7);
        let mut items: Vec<Item> = self.demos.clone();
        items.extend((0..self.opts.generated).map(|i| generate(3 + i % 2, &mut rng)));
        items
    }

    fn allowed_tokens(lm: &LanguageModel) -> Vec<u32> {
        let ok = |c: char| c.is_ascii_digit() || " +-=,.".contains(c);
        (0..lm.tokenizer.vocab_size() as u32)
            .filter(|&i| lm.tokenizer.decode(&[i], false).map(|t| !t.is_empty() && t.chars().all(ok)).unwrap_or(false))
            .collect()
    }

    fn stop_token(lm: &LanguageModel) -> Result<u32> {
        match lm.tokenizer.encode(".")?.as_slice() {
            [id] => Ok(*id),
            _ => Err(Error::Unsupported("the tokenizer has no single token for \".\"".into())),
        }
    }

    /// A rationale as a trajectory: policy segments with the calculator's tokens between them.
    pub fn seed_trajectory(lm: &LanguageModel, rationale: &str) -> Result<Trajectory> {
        let mut t = Trajectory::default();
        let mut text = String::new();
        for part in rationale.split_inclusive('=') {
            let seg = format!(" {}", part.trim_start());
            let seg = if text.is_empty() { seg } else { part.to_string() };
            for id in lm.tokenizer.encode(&seg)? {
                t.tokens.push(id);
                t.tool.push(false);
            }
            text.push_str(&seg);
            if let Some(extra) = Calculator.after_token(&text) {
                for id in lm.tokenizer.encode(&extra)? {
                    t.tokens.push(id);
                    t.tool.push(true);
                }
                text.push_str(&extra);
            }
        }
        Ok(t)
    }

    fn test_sets(&self, limit: Option<usize>) -> Result<(Vec<Item>, Vec<Item>)> {
        let limit = limit.unwrap_or(self.opts.eval_limit);
        let load = |files: &[PathBuf], default: &[&str], ops: &[usize], seed: u64| -> Result<Vec<Item>> {
            let files: Vec<PathBuf> = if files.is_empty() {
                data_root().map(|d| default.iter().map(|f| d.join("arithmetic").join(f)).filter(|p| p.is_file()).collect()).unwrap_or_default()
            } else {
                files.to_vec()
            };
            let mut items = Vec::new();
            if files.is_empty() {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                items = (0..500).map(|i| generate(ops[i % ops.len()], &mut rng)).collect();
            }
            for f in files {
                items.extend(read_items(&f)?);
            }
            // Interleave files (3- and 4-operand) before limiting.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            for i in (1..items.len()).rev() {
                items.swap(i, rng.random_range(0..=i));
            }
            if limit > 0 {
                items.truncate(limit);
            }
            Ok(items)
        };
        Ok((
            load(&self.opts.test_id_files, &["1digit_3_op+-_test.json", "1digit_4_op+-_test.json"], &[3, 4], 1)?,
            load(&self.opts.test_ood_files, &["1digit_5_op+-_test.json"], &[5], 2)?,
        ))
    }

    /// How an evaluation samples `k` rationales a question: the task's mask,
    /// stop and temperature, the training's lengths — below `min_len` the
    /// policy's stop action was never trained (it is masked there), so it
    /// stays masked here — and `opts`' decoding.
    fn eval_config(&self, lm: &LanguageModel, opts: &EvalOptions, k: usize) -> Result<SampleConfig> {
        let (min_len, max_len) = opts.lengths_or(&self.default_config());
        let base = SampleConfig {
            n: k,
            max_new_tokens: max_len,
            min_new_tokens: min_len,
            temperature: self.opts.eval_temperature,
            mask: TokenMask::Allow(Self::allowed_tokens(lm)),
            stop_tokens: Some(vec![Self::stop_token(lm)?]),
            ..SampleConfig::default()
        };
        Ok(opts.decode(base))
    }

    fn accuracy(&self, lm: &LanguageModel, lora: Option<&LoraView>, items: &[Item], opts: &EvalOptions, examples: &mut Vec<serde_json::Value>, stage: &str) -> Result<f64> {
        // `xC`: C times the samples, all in the vote.
        let k = opts.samples.unwrap_or(self.opts.eval_samples) * opts.compute();
        // Built once: the allowed set scans the whole vocabulary.
        let base = self.eval_config(lm, opts, k)?;
        let cfg = |seed| SampleConfig { seed, ..base.clone() };
        let per_batch = (opts.batch / k).max(1);
        let mut answers: Vec<Vec<String>> = Vec::new();
        for (ci, chunk) in items.chunks(per_batch).enumerate() {
            crate::progress::report(stage, answers.len(), items.len());
            let prompts = chunk.iter().map(|it| lm.tokenizer.encode(&opts.prompt_text(&it.str_query))).collect::<Result<Vec<_>>>()?;
            let samples = decode::sample(lm, &prompts, &cfg(opts.seed + ci as u64), lora, Some(&Calculator))?;
            for (qi, group) in samples.chunks(k).enumerate() {
                let a: Vec<String> = group.iter().map(|s| last_number(&s.text).map(|v| v.to_string()).unwrap_or_default()).collect();
                if examples.len() < 10 {
                    examples.push(serde_json::json!({"question": chunk[qi].str_query, "rationale": group[0].text, "answer": chunk[qi].num_sol}));
                }
                answers.push(a);
            }
        }
        crate::progress::report(stage, answers.len(), items.len());
        let gold: Vec<String> = items.iter().map(|i| i.num_sol.to_string()).collect();
        Ok(amortize_shared::metrics::majority_vote_accuracy(&answers, &gold))
    }
}

impl Task for Arithmetic {
    fn name(&self) -> &'static str {
        "arithmetic"
    }

    fn description(&self) -> &'static str {
        "Integer arithmetic with a calculator tool; Z is the chain of steps (paper §4.4, Table 4)"
    }

    fn default_config(&self) -> TrainConfig {
        // Table E.2, scaled to a small model on CPU: rank 64 → 16, 1000 steps →
        // 200, 32 accumulation steps → 1; the schedules are the paper's. The
        // lengths count policy tokens, and a tokenizer that splits digits from
        // their space (SmolLM2, Llama 2) spends 6–7 on a step (" 8 - 4 =")
        // where GPT-J's spends 4: the paper's 20 cut 42 % of the 4-operand
        // chains and every 5-operand one, so 32 (the longest 5-operand chain
        // needs 30; tested on SmolLM2's tokenizer in backend/tests/parity.rs).
        TrainConfig {
            lora_r: 16,
            lora_alpha: 16.0,
            lora_dropout: 0.1,
            lr: 5e-4,
            warmup_steps: 20,
            batch_size: 16,
            grad_accum: 1,
            steps: 200,
            p_replay: 0.5,
            p_tempered: 0.25,
            pf_temp_low: 0.5,
            pf_temp_high: 2.0,
            reward_temp_start: 1.1,
            reward_temp_end: 0.5,
            reward_temp_horizon: 150,
            buffer_capacity: 50,
            min_len: 5,
            max_len: 32,
            ..TrainConfig::default()
        }
    }

    fn train_task(&self, lm: &LanguageModel) -> Result<TrainTask> {
        let items = self.train_items();
        let problems = items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let q = lm.tokenizer.encode(&it.str_query)?;
                let seeds = match (&it.str_rationale, i < self.demos.len()) {
                    (Some(r), true) => vec![Self::seed_trajectory(lm, r)?],
                    _ => vec![],
                };
                Ok(Problem { key: format!("{i}:{}", it.str_query), policy_prompt: q.clone(), reward_context: q, reward_suffix: lm.tokenizer.encode(&it.answer_text())?, seeds })
            })
            .collect::<Result<Vec<_>>>()?;
        let mask = TokenMask::Allow(Self::allowed_tokens(lm));
        let prefix = lm.tokenizer.encode(&self.prefix())?;
        Ok(TrainTask {
            problems,
            reward: Box::new(LmReward::new(lm, prefix, &mask, -99.0, None)?),
            stop_tokens: vec![Self::stop_token(lm)?],
            mask,
            mask_penalty: -99.0,
            tool: Some(Box::new(Calculator)),
        })
    }

    fn evaluate(&self, lm: &LanguageModel, lora: Option<&LoraView>, opts: &EvalOptions) -> Result<EvalReport> {
        self.check_eval(opts)?;
        let (id, ood) = self.test_sets(opts.limit)?;
        let mut report = EvalReport::default();
        let a_id = self.accuracy(lm, lora, &id, opts, &mut report.examples, "answering in-distribution questions")?;
        let a_ood = self.accuracy(lm, lora, &ood, opts, &mut report.examples, "answering out-of-distribution questions")?;
        report.metrics.insert("accuracy_id".into(), a_id);
        report.metrics.insert("accuracy_ood".into(), a_ood);
        report.metrics.insert("questions_id".into(), id.len() as f64);
        report.metrics.insert("questions_ood".into(), ood.len() as f64);
        Ok(report)
    }

    fn check_eval(&self, opts: &EvalOptions) -> Result<()> {
        opts.refuse_beam("arithmetic", "the calculator writes into Z as it is sampled and beam search has no tool hook; use sampling (t=, k=, p=, greedy) with xC")
    }

    /// The worked demonstrations (the same that seed the buffer and train SFT),
    /// each "Question: … Answer: <worked rationale>. The answer is N.\n".
    fn demonstrations(&self) -> Vec<Demonstration> {
        self.demos.iter().map(|d| Demonstration { prompt: d.str_query.clone(), text: Self::demo_text(d) }).collect()
    }

    /// As many as the reward's prefix (`k_shot`, 3: Table 4's first k-shot row).
    fn default_shots(&self) -> usize {
        self.opts.k_shot
    }

    /// A Z is accepted when its last number — the calculator's final result —
    /// is the question's answer.
    fn accept(&self, lm: &LanguageModel, _task: &TrainTask, samples: &[(usize, Trajectory)]) -> Result<Vec<bool>> {
        let items = self.train_items();
        samples
            .iter()
            .map(|(i, z)| {
                let item = items.get(*i).ok_or_else(|| Error::invalid("problem", format!("no training problem {i}")))?;
                Ok(last_number(&lm.tokenizer.decode(&z.tokens, true)?) == Some(item.num_sol))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_questions_match_the_paper_format() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let it = generate(4, &mut rng);
        assert!(it.str_query.starts_with("Question: ") && it.str_query.ends_with(" = ? Answer:"));
        let w = worked(it.str_rationale.as_deref().unwrap());
        assert_eq!(last_number(&w), Some(it.num_sol), "{w}");
        assert_eq!(worked("6 - 0 =, 6 - 4 =, 2 - 8 ="), "6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6");
        assert_eq!(last_number("1 + 2 = 3, 3 - 9 = -6"), Some(-6));
        assert_eq!(last_number("no digits"), None);
    }

    fn tiny_task() -> (tempfile::TempDir, LanguageModel, Arithmetic) {
        let dir = tempfile::tempdir().unwrap();
        let lm = LanguageModel::load(&crate::model::tiny::write_tiny_model(dir.path(), 7).unwrap().gguf, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
        let demos = dir.path().join("demos.json");
        let items: Vec<Item> = (0..6).map(|i| generate(3 + i % 2, &mut rand_chacha::ChaCha8Rng::seed_from_u64(i as u64))).collect();
        std::fs::write(&demos, serde_json::to_string(&items).unwrap()).unwrap();
        let task = Arithmetic::from_options(&format!("demos_file = {:?}\ngenerated = 4", demos.display().to_string()).parse().unwrap()).unwrap();
        (dir, lm, task)
    }

    #[test]
    fn the_em_step_accepts_right_answers_only() {
        let (_dir, lm, task) = tiny_task();
        let tt = task.train_task(&lm).unwrap();
        let items = task.train_items();
        assert_eq!(tt.problems.len(), items.len());
        let mut samples = Vec::new();
        for (i, it) in items.iter().enumerate() {
            // The worked rationale ends at the answer; a made-up one does not.
            let right = Arithmetic::seed_trajectory(&lm, it.str_rationale.as_deref().unwrap()).unwrap();
            let wrong = Trajectory::from_actions(lm.tokenizer.encode(&format!(" {}", it.num_sol + 1)).unwrap());
            samples.push((i, right));
            samples.push((i, wrong));
        }
        let ok = task.accept(&lm, &tt, &samples).unwrap();
        assert_eq!(ok, (0..samples.len()).map(|j| j % 2 == 0).collect::<Vec<_>>());
        assert!(task.accept(&lm, &tt, &[(items.len(), Trajectory::default())]).is_err());
    }

    #[test]
    fn demonstrations_are_the_worked_examples() {
        let (_dir, _lm, task) = tiny_task();
        let d = task.demonstrations();
        assert_eq!(d.len(), task.demos.len());
        assert_eq!(d[0].prompt, task.demos[0].str_query);
        assert!(d[0].text.starts_with(&d[0].prompt) && d[0].text.ends_with(&format!("{}\n", task.demos[0].answer_text())), "{:?}", d[0]);
        // The reward's prefix is the first k_shot of them.
        assert_eq!(task.prefix(), d[..3].iter().map(|x| x.text.as_str()).collect::<String>());
        assert_eq!(task.default_shots(), 3);
        let beam = EvalOptions { decoding: Some(crate::tasks::Decoding::parse("beam").unwrap()), ..Default::default() };
        assert!(task.check_eval(&beam).unwrap_err().to_string().contains("calculator"));
    }

    #[test]
    fn evaluation_samples_with_the_training_lengths() {
        let (_dir, lm, task) = tiny_task();
        let preset = task.default_config();
        let cfg = task.eval_config(&lm, &EvalOptions::default(), 10).unwrap();
        assert_eq!((cfg.min_new_tokens, cfg.max_new_tokens, cfg.n), (preset.min_len, preset.max_len, 10));
        let cfg = task.eval_config(&lm, &EvalOptions { lengths: Some((2, 9)), ..Default::default() }, 3).unwrap();
        assert_eq!((cfg.min_new_tokens, cfg.max_new_tokens), (2, 9));
    }
}
