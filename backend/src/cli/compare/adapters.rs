//! The adapters `compare` trains when they are missing — GFlowNet and PPO
//! (each from a fresh adapter or from SFT's), SFT and the EM step (SFT on
//! accepted GFlowNet samples) — each in its own
//! folder under `--out`, reused by a later call when its `adapter/` exists;
//! the first three evaluated at their last step and, with `--eval-every`,
//! along the way ([`Along`]).
//! Each writes its folder's `run.json` ([`Source`]), so `amortize import`
//! can bring it into the app.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use amortize::baselines::{train_gfn_sft, train_sft_observed, EmConfig, Ppo, PpoConfig, SftConfig};
use amortize::gfn::{starting_adapter, TrainConfig, Trainer};
use amortize::jobs::import::RunFile;
use amortize::model::{LanguageModel, LoraAdapter};
use amortize::tasks::{EvalReport, Task};
use amortize_shared::api::Method;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::along::{self, Along};

/// What the comparison's trainings share in their `run.json`.
#[derive(Clone)]
pub struct Source {
    pub task: String,
    pub model: PathBuf,
    pub task_options: serde_json::Map<String, serde_json::Value>,
    pub eval_every: Option<usize>,
    pub eval_samples: Option<usize>,
}

impl Source {
    fn write(&self, dir: &Path, method: Method, cfg: &TrainConfig, settings: Option<serde_json::Value>, along: bool, start: Option<&Path>) -> anyhow::Result<()> {
        let (eval_every, eval_samples) = if along { (self.eval_every, self.eval_samples) } else { (None, None) };
        let init_adapter = start.map(Path::to_path_buf);
        let file = RunFile { task: self.task.clone(), method, model: self.model.clone(), config: cfg.clone(), task_options: Some(self.task_options.clone()), settings, eval_every, eval_samples, init_adapter };
        Ok(file.write(dir)?)
    }
}

pub fn bar(len: usize, label: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(ProgressStyle::with_template("{prefix:>10} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    b.set_prefix(label.to_string());
    b
}

/// Whether `dir` holds the finished adapter of an earlier call.
pub fn trained(dir: &Path) -> bool {
    dir.join("adapter").join("adapter_config.json").exists()
}

fn load(lm: &LanguageModel, dir: &Path) -> anyhow::Result<LoraAdapter> {
    Ok(LoraAdapter::load_peft(&dir.join("adapter"), lm.config(), lm.device())?)
}

/// A training's adapter, and (trained by this call with `--eval-every`)
/// its final adapter's evaluation, which is the comparison's plain row.
pub type Trained = (LoraAdapter, Option<EvalReport>);

/// What the evaluations along one training left: the first failure (it
/// stops the training) and the newest report with its step.
#[derive(Default)]
struct Watch {
    failed: Option<anyhow::Error>,
    latest: Option<(usize, EvalReport)>,
}

/// Evaluates `adapter` at `step` along the training when due (`along`).
fn evaluate_along(lm: &LanguageModel, along: Option<&Along>, adapter: &LoraAdapter, step: usize, dir: &Path, b: &ProgressBar, w: &mut Watch) -> ControlFlow<()> {
    let Some(a) = along.filter(|a| a.due(step)) else { return ControlFlow::Continue(()) };
    b.set_message(format!("evaluating at step {step}…"));
    match a.record(lm, adapter, step, dir) {
        Ok(r) => {
            w.latest = Some((step, r));
            ControlFlow::Continue(())
        }
        Err(e) => {
            w.failed = Some(e.context(format!("evaluating at step {step} of {}", dir.display())));
            ControlFlow::Break(())
        }
    }
}

/// A training's outcome: an evaluation's error first (it stopped the
/// training), else the training's own.
fn ended<T>(ran: amortize::Result<T>, w: &mut Watch, b: &ProgressBar) -> anyhow::Result<T> {
    if let Some(e) = w.failed.take() {
        b.abandon();
        return Err(e);
    }
    let v = ran?;
    b.finish();
    Ok(v)
}

/// The final adapter of a training that ended at `last`, evaluated there
/// too: the evaluation along training made at `last`, or one made now.
fn evaluate_last(lm: &LanguageModel, along: Option<&Along>, adapter: &LoraAdapter, last: usize, dir: &Path, w: Watch) -> anyhow::Result<Option<EvalReport>> {
    match (along, w.latest) {
        (None, _) => Ok(None),
        (Some(_), Some((step, r))) if step == last => Ok(Some(r)),
        (Some(_), _) if last == 0 => Ok(None),
        (Some(a), _) => Ok(Some(a.record(lm, adapter, last, dir)?)),
    }
}

/// GFlowNet fine-tuning with the task preset — its adapter fresh, or
/// starting from the PEFT adapter in `start` — or the adapter of an earlier call.
pub fn gfn(lm: &LanguageModel, task: &dyn Task, cfg: &TrainConfig, dir: &Path, along: Option<&Along>, src: &Source, start: Option<&Path>) -> anyhow::Result<Trained> {
    let mut last_eval = None;
    if !trained(dir) {
        if dir.join("checkpoints").exists() {
            std::fs::remove_dir_all(dir.join("checkpoints"))?;
        }
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        along::clear(dir);
        let mut t = match start {
            Some(from) => {
                let adapter = starting_adapter(from, cfg, lm.config(), lm.device()).with_context(|| format!("starting from {}", from.display()))?;
                Trainer::starting_from(lm, task.train_task(lm)?, cfg.clone(), Some(dir), adapter)?
            }
            None => Trainer::new(lm, task.train_task(lm)?, cfg.clone(), Some(dir))?,
        };
        let b = bar(cfg.steps, if start.is_some() { "sft+gfn" } else { "gfn" });
        let mut w = Watch::default();
        let ran = t.run_observed(|t, m| {
            b.set_position(m.step as u64);
            b.set_message(format!("loss {:.3}  log R {:.2}", m.loss, m.mean_log_r));
            evaluate_along(lm, along, &t.adapter, m.step, dir, &b, &mut w)
        });
        ended(ran, &mut w, &b)?;
        last_eval = evaluate_last(lm, along, &t.adapter, t.step, dir, w)?;
        src.write(dir, Method::Gfn, cfg, None, along.is_some(), start)?;
        t.adapter.save_peft(&dir.join("adapter"), &lm.name)?;
    } else {
        eprintln!("{}: reusing {}", if start.is_some() { "sft+gfn" } else { "gfn" }, dir.join("adapter").display());
    }
    Ok((load(lm, dir)?, last_eval))
}

/// PPO against the task's reward — from a fresh adapter kept close to the
/// base model, or from the adapter in `start` kept close to it — or the
/// adapter of an earlier call.
pub fn ppo(lm: &LanguageModel, task: &dyn Task, (shape, cfg): (&TrainConfig, &PpoConfig), dir: &Path, along: Option<&Along>, src: &Source, start: Option<&Path>) -> anyhow::Result<Trained> {
    let mut last_eval = None;
    if !trained(dir) {
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        along::clear(dir);
        let mut p = match start {
            Some(from) => Ppo::starting_from(lm, task.train_task(lm)?, shape.clone(), cfg.clone(), from).with_context(|| format!("starting from {}", from.display()))?,
            None => Ppo::new(lm, task.train_task(lm)?, shape.clone(), cfg.clone())?,
        };
        let label = if start.is_some() { "sft+ppo" } else { "ppo" };
        let b = bar(cfg.steps, label);
        let mut w = Watch::default();
        let ran = p.run_observed(Some(dir), |p, m| {
            b.set_position(m.step as u64);
            b.set_message(format!("log R {:.2}  KL {:.2}", m.mean_log_r, m.kl));
            evaluate_along(lm, along, &p.adapter, m.step, dir, &b, &mut w)
        });
        ended(ran, &mut w, &b)?;
        last_eval = evaluate_last(lm, along, &p.adapter, p.step, dir, w)?;
        // As the server stores a PPO run: its steps, batch and seed in the config.
        src.write(dir, Method::Ppo, &TrainConfig { seed: cfg.seed, steps: cfg.steps, batch_size: cfg.batch_size, ..shape.clone() }, Some(serde_json::to_value(cfg)?), along.is_some(), start)?;
    } else {
        eprintln!("{}: reusing {}", if start.is_some() { "sft+ppo" } else { "ppo" }, dir.join("adapter").display());
    }
    Ok((load(lm, dir)?, last_eval))
}

/// Supervised fine-tuning on the task's reference Z's, or the adapter of an earlier call.
pub fn sft(lm: &LanguageModel, task: &dyn Task, shape: &TrainConfig, cfg: &SftConfig, dir: &Path, along: Option<&Along>, src: &Source) -> anyhow::Result<Trained> {
    let mut last_eval = None;
    if !trained(dir) {
        along::clear(dir);
        let b = bar(0, "sft");
        let (mut w, mut last) = (Watch::default(), 0);
        let ran = train_sft_observed(lm, &task.train_task(lm)?, shape, cfg, Some(dir), |a, m| {
            b.set_position(m.step as u64);
            b.set_message(format!("epoch {}  loss {:.3}", m.epoch, m.loss));
            last = m.step;
            evaluate_along(lm, along, a, m.step, dir, &b, &mut w)
        });
        let adapter = ended(ran, &mut w, &b)?;
        last_eval = evaluate_last(lm, along, &adapter, last, dir, w)?;
        src.write(dir, Method::Sft, &TrainConfig { seed: cfg.seed, ..shape.clone() }, Some(serde_json::to_value(cfg)?), along.is_some(), None)?;
    } else {
        eprintln!("sft: reusing {}", dir.join("adapter").display());
    }
    Ok((load(lm, dir)?, last_eval))
}

/// The EM step on the GFlowNet adapter `gfn_adapter`: SFT on its accepted
/// samples, or the adapter of an earlier call.
pub fn gfn_sft(lm: &LanguageModel, task: &dyn Task, gfn_adapter: &LoraAdapter, shape: &TrainConfig, (em, cfg): (&EmConfig, &SftConfig), dir: &Path, src: &Source) -> anyhow::Result<LoraAdapter> {
    if !trained(dir) {
        // Folded into the weights: the E-step samples thousands of tokens.
        let view = lm.folded(gfn_adapter)?;
        eprintln!("gfn+sft: sampling {} Z's per training problem from the GFlowNet adapter…", em.samples);
        let b = bar(0, "gfn+sft");
        let (_, stats) = train_gfn_sft(lm, task, &view, shape, em, cfg, Some(dir), |m| {
            b.set_position(m.step as u64);
            b.set_message(format!("epoch {}  loss {:.3}", m.epoch, m.loss));
            ControlFlow::Continue(())
        })?;
        b.finish();
        eprintln!("gfn+sft: {} of {} sampled Z's accepted ({} of {} problems)", stats.accepted, stats.sampled, stats.problems_covered, stats.problems);
        src.write(dir, Method::Sft, &TrainConfig { seed: cfg.seed, ..shape.clone() }, Some(serde_json::json!({"sft": cfg, "em": em, "lr": cfg.lr})), false, None)?;
    } else {
        eprintln!("gfn+sft: reusing {}", dir.join("adapter").display());
    }
    load(lm, dir)
}
