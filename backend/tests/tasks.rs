//! Task presets on the tiny random model: each builds problems whose rewards are
//! finite, trains for a few steps, and evaluates to its documented metrics;
//! data and option errors name the file, the line or the key.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use amortize::cancel;
use amortize::gfn::{TrainConfig, Trainer, Trajectory};
use amortize::Error;
use amortize::model::tiny::write_tiny_model;
use amortize::model::{LanguageModel, Mode};
use amortize::tasks::{self, EvalOptions, Task};
use candle_core::{DType, Device};

fn tiny(dir: &Path) -> LanguageModel {
    let paths = write_tiny_model(dir, 7).unwrap();
    LanguageModel::load(&paths.gguf, &Device::Cpu, DType::F32).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn table(s: &str) -> toml::Table {
    s.parse().unwrap()
}

/// A TOML string value for a path.
fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Rewards of `zs` are finite for every state; 3 training steps give finite
/// losses; `evaluate` (base model and trained adapter) reports `metrics`.
fn exercise(lm: &LanguageModel, task: &dyn Task, zs: &[&str], metrics: &[&str]) {
    let tt = task.train_task(lm).unwrap();
    assert!(!tt.problems.is_empty());
    assert!(tt.problems.iter().all(|p| !p.reward_context.is_empty() && !p.policy_prompt.is_empty()));
    let trajs: Vec<Trajectory> = zs.iter().map(|z| Trajectory::from_actions(lm.tokenizer.encode(z).unwrap())).collect();
    for p in tt.problems.iter().take(2) {
        let r = tt.reward.log_rewards(lm, p, &trajs).unwrap();
        assert_eq!(r.len(), trajs.len());
        for (row, t) in r.iter().zip(&trajs) {
            assert_eq!(row.len(), t.num_actions() + 1);
            assert!(row.iter().all(|v| v.is_finite()), "{} {row:?}", task.name());
        }
    }
    let cfg = TrainConfig { steps: 3, batch_size: 4, lora_r: 2, lora_alpha: 4.0, checkpoint_every: 0, warmup_steps: 1, grad_accum: 1, ..task.default_config() };
    let mut trainer = Trainer::new(lm, tt, cfg, None).unwrap();
    let mut losses = Vec::new();
    trainer
        .run(|m| {
            losses.push(m.loss);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(losses.len(), 3);
    assert!(losses.iter().all(|l| l.is_finite()), "{} {losses:?}", task.name());
    let view = trainer.adapter.view(Mode::Infer, DType::F32).unwrap();
    let opts = EvalOptions { samples: Some(2), batch: 8, seed: 0, limit: Some(2), ..Default::default() };
    for lora in [None, Some(&view)] {
        let report = task.evaluate(lm, lora, &opts).unwrap();
        for m in metrics {
            let v = report.metrics.get(*m).unwrap_or_else(|| panic!("{}: no metric `{m}` in {:?}", task.name(), report.metrics));
            assert!(v.is_finite(), "{}: {m} = {v}", task.name());
        }
        assert!(!report.examples.is_empty());
    }
}

const STORIES: &str = r#"{"beginning": "Ann had a red ball. She threw it far.", "middle": "The dog ran after it.", "end": "Ann was happy."}
{"beginning": "Tim was hungry. He saw a pie.", "middle": "He ate a slice.", "end": "Tim felt full."}
{"beginning": "It rained all day. Joe stayed in.", "middle": "He read a book.", "end": "Joe liked the story."}
{"beginning": "Sue lost her hat. She looked outside.", "middle": "It was on a bush.", "end": "Sue put it on."}
"#;

const REVIEWS: &str = r#"{"text": "the film follows two brothers on a farm .", "label": 0, "label_text": "objective"}
{"text": "a dull and silly mess .", "label": 1, "label_text": "subjective"}
{"text": "she moves to paris in 1920 .", "label": 0, "label_text": "objective"}
{"text": "the best film of the year .", "label": 1, "label_text": "subjective"}
{"text": "a man finds a map .", "label": 0, "label_text": "objective"}
{"text": "i loved every minute .", "label": 1, "label_text": "subjective"}
"#;

#[test]
fn continuation_trains_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(dir.path());
    let prompts = write(dir.path(), "prompts.txt", "The cat sat on the mat.\n\nIt was a cold day.\nThe bus was late.\nWe went home.\nShe sang a song.\n");
    let task = tasks::load("continuation", &table(&format!("prompts_file = {}\ntrain_prompts = 3\ntest_prompts = 2", q(&prompts)))).unwrap();
    assert_eq!(task.name(), "continuation");
    assert_eq!((task.default_config().reward_temp_end, task.default_config().max_len), (0.875, 25));
    exercise(&lm, task.as_ref(), &["", " The dog", " It rained"], &["max_loglik", "mean_loglik", "diversity_jaccard", "mean_words"]);
    // With no file the shared data's prompts or the built-in list are used.
    assert!(tasks::load("continuation", &toml::Table::new()).is_ok());
}

#[test]
fn infill_trains_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(dir.path());
    let data = write(dir.path(), "stories.jsonl", STORIES);
    let task = tasks::load("infill", &table(&format!("data_file = {}\ntest_fraction = 0.5", q(&data)))).unwrap();
    let tt = task.train_task(&lm).unwrap();
    // Seeded with the reference middles.
    assert_eq!(tt.problems.len(), 2);
    assert_eq!(tt.problems[0].seeds[0].tokens, lm.tokenizer.encode(" The dog ran after it.").unwrap());
    assert_eq!(lm.tokenizer.decode(&tt.problems[0].reward_suffix, false).unwrap(), " Ann was happy.");
    exercise(&lm, task.as_ref(), &["", " He ran.", " The dog ran after it."], &["bleu4", "gleu4", "loglik", "mean_words"]);
    // The built-in stories load.
    assert!(tasks::load("infill", &toml::Table::new()).is_ok());
}

/// With the thread's stop flag raised (`amortize::cancel`, as the job
/// runner sets it), seeding the buffer, the training loop and evaluation end
/// with `Cancelled`; a step already started runs to its end; lowered, all
/// go on.
#[test]
fn a_stop_request_ends_seeding_training_and_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(dir.path());
    let data = write(dir.path(), "stories.jsonl", STORIES);
    let task = tasks::load("infill", &table(&format!("data_file = {}\ntest_fraction = 0.5", q(&data)))).unwrap();
    let cfg = TrainConfig { steps: 2, batch_size: 2, lora_r: 2, lora_alpha: 4.0, checkpoint_every: 0, warmup_steps: 1, grad_accum: 1, ..task.default_config() };
    let opts = EvalOptions { samples: Some(1), batch: 2, seed: 0, limit: Some(1), ..Default::default() };
    let flag = Arc::new(AtomicU8::new(0));
    let _scope = cancel::scope(flag.clone());
    let mut trainer = Trainer::new(&lm, task.train_task(&lm).unwrap(), cfg.clone(), None).unwrap();
    assert!(!trainer.buffer.is_empty(), "seeded");
    let tt = task.train_task(&lm).unwrap();

    flag.store(1, Ordering::SeqCst);
    assert!(matches!(Trainer::new(&lm, tt, cfg, None), Err(Error::Cancelled)), "seeding stops");
    let mut seen = 0;
    let stopped = trainer.run(|_| {
        seen += 1;
        ControlFlow::Continue(())
    });
    assert!(matches!(stopped, Err(Error::Cancelled)) && trainer.step == 0 && seen == 0, "no step starts");
    assert!(matches!(task.evaluate(&lm, None, &opts), Err(Error::Cancelled)), "evaluation stops");
    let m = cancel::shielded(|| trainer.train_step()).unwrap();
    assert_eq!((m.step, trainer.step), (1, 1), "a shielded step is whole");

    flag.store(0, Ordering::SeqCst);
    trainer.run(|_| ControlFlow::Continue(())).unwrap();
    assert_eq!(trainer.step, 2);
    assert!(task.evaluate(&lm, None, &opts).is_ok());
}

#[test]
fn infill_reward_adapter_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(dir.path());
    let data = write(dir.path(), "stories.jsonl", STORIES);
    let adapter = amortize::model::LoraAdapter::new(lm.config(), amortize::gfn::config::lora_config(&TrainConfig { lora_r: 2, ..TrainConfig::default() }).unwrap(), &Device::Cpu, 3).unwrap();
    adapter.save_peft(&dir.path().join("sft"), &lm.name).unwrap();
    let task = tasks::load("infill", &table(&format!("data_file = {}\nreward_adapter = {}", q(&data), q(&dir.path().join("sft"))))).unwrap();
    let tt = task.train_task(&lm).unwrap();
    let z = vec![Trajectory::from_actions(lm.tokenizer.encode(" He ran.").unwrap())];
    assert!(tt.reward.log_rewards(&lm, &tt.problems[0], &z).unwrap()[0].iter().all(|v| v.is_finite()));
}

#[test]
fn subj_trains_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(dir.path());
    let data = write(dir.path(), "subj.jsonl", REVIEWS);
    let task = tasks::load("subj", &table(&format!("data_file = {}\ntrain_examples = 3\ntest_examples = 3\nseed_rationales = 2", q(&data)))).unwrap();
    let tt = task.train_task(&lm).unwrap();
    assert_eq!(tt.problems.len(), 3);
    // Seeded by prompting the base model; Y starts with the stop token ",".
    assert!(tt.problems.iter().any(|p| !p.seeds.is_empty()));
    assert!(tt.problems.iter().flat_map(|p| &p.seeds).all(|s| (1..=5).contains(&s.tokens.len())));
    assert_eq!(tt.problems[0].reward_suffix[0], tt.stop_tokens[0]);
    assert_eq!(task.default_config().max_len, 5);
    exercise(&lm, task.as_ref(), &["", " a plot summary", " an opinion"], &["accuracy", "accuracy_calibrated"]);
}

#[test]
fn custom_task_from_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(dir.path());
    let text = r#"
steps = 3
lr = 0.001
[task]
policy_template = "Q: {X}\nA:{Z}"
reward_template = "{X} ={Z}. The answer is {Y}."
stop = "."
allowed_chars = "0123456789 +-="
min_len = 1
max_len = 6
reward_temperature = 0.9
examples = [{ x = "2 + 3", y = "5" }, { x = "4 - 1", y = "3" }]
"#;
    let (_, options) = tasks::config::merge(&TrainConfig::default(), table(text)).unwrap();
    let task = tasks::load("custom", &options).unwrap();
    let (cfg, _) = tasks::config::merge(&task.default_config(), table(text)).unwrap();
    assert_eq!((cfg.steps, cfg.lr, cfg.min_len, cfg.max_len, cfg.reward_temp_end), (3, 0.001, 1, 6, 0.9));
    let tt = task.train_task(&lm).unwrap();
    assert_eq!(lm.tokenizer.decode(&tt.problems[0].policy_prompt, false).unwrap(), "Q: 2 + 3\nA:");
    assert_eq!(lm.tokenizer.decode(&tt.problems[0].reward_context, false).unwrap(), "2 + 3 =");
    assert_eq!(lm.tokenizer.decode(&tt.problems[0].reward_suffix, false).unwrap(), ". The answer is 5.");
    assert_eq!(tt.stop_tokens, lm.tokenizer.encode(".").unwrap());
    exercise(&lm, task.as_ref(), &["", " 5", " 2 + 3 = 5"], &["mean_loglik", "valid_rate"]);

    // JSONL data with forbidden strings; a multi-token stop is refused.
    let data = write(dir.path(), "xy.jsonl", "{\"x\": \"red\", \"y\": \"warm\"}\n{\"x\": \"blue\", \"y\": \"cold\"}\n");
    let task = tasks::load("custom", &table(&format!("data_file = {}\nreward_template = \"The color {{X}} is{{Z}}, so it feels {{Y}}.\"\nforbidden_strings = [\"http\"]", q(&data)))).unwrap();
    exercise(&lm, task.as_ref(), &["", " nice"], &["mean_loglik", "valid_rate"]);
    let task = tasks::load("custom", &table(&format!("data_file = {}\nstop = \"END\"", q(&data)))).unwrap();
    let e = task.train_task(&lm).err().unwrap().to_string();
    assert!(e.contains("task.stop"), "{e}");
}

#[test]
fn malformed_jsonl_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<&str> = STORIES.lines().collect();
    let cases = [
        ("infill", format!("{}\n{}\n{{\"beginning\": \"x\",\n{}\n", lines[0], lines[1], lines[2])),
        ("subj", format!("{}\n{}\n{{\"text\": 3, \"label_text\": \"objective\"}}\n", REVIEWS.lines().next().unwrap(), REVIEWS.lines().nth(1).unwrap())),
        ("custom", "{\"x\": \"a\"}\n{\"x\": \"b\"}\nnot json\n".to_string()),
    ];
    for (name, text) in cases {
        let p = write(dir.path(), &format!("{name}-bad.jsonl"), &text);
        let e = tasks::load(name, &table(&format!("data_file = {}", q(&p)))).err().unwrap().to_string();
        assert!(e.contains(&format!("{name}-bad.jsonl")) && e.contains("line 3"), "{name}: {e}");
    }
    // A missing field is reported the same way.
    let p = write(dir.path(), "missing.jsonl", &format!("{}\n{}\n{{\"beginning\": \"a\", \"end\": \"b\"}}\n", lines[0], lines[1]));
    let e = tasks::load("infill", &table(&format!("data_file = {}", q(&p)))).err().unwrap().to_string();
    assert!(e.contains("line 3") && e.contains("middle"), "{e}");
}

#[test]
fn unknown_options_are_named() {
    for name in ["continuation", "infill", "subj", "custom"] {
        let e = tasks::load(name, &table("bogus_key = 1")).err().unwrap().to_string();
        assert!(e.contains("bogus_key"), "{name}: {e}");
    }
    let e = tasks::load("subj", &table("train_examples = \"many\"")).err().unwrap().to_string();
    assert!(e.contains("task.subj"), "{e}");
    let e = tasks::load("nope", &toml::Table::new()).err().unwrap().to_string();
    assert!(e.contains("custom") && e.contains("infill"), "{e}");
    assert_eq!(tasks::NAMES.len(), 6);
}
