//! `amortize train` and `amortize eval`: a task preset, its config overrides,
//! a progress bar, checkpoints and metrics under `--out`, and with
//! `--eval-every` the task's evaluation along the way (`OUT/evals.jsonl`).

use std::ops::ControlFlow;
use std::path::PathBuf;

use amortize::gfn::Trainer;
use amortize::jobs::import::{RunFile, RUN_FILE};
use amortize::tasks::{self, EvalOptions};
use amortize_shared::api::Method;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{EvalSize, StageBar};
use super::interrupt::{on_signals, Interrupted};
use super::ModelArgs;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Task preset: rng, arithmetic, continuation, infill, subj, custom.
    #[arg(long)]
    pub task: String,
    /// TOML overrides of the preset (top-level keys) and task options ([task]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory (checkpoints, metrics.jsonl, adapter/); default runs/TASK.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar (log lines instead).
    #[arg(long)]
    pub quiet: bool,
    /// Also run the task's evaluation every N steps and at the last, each
    /// the same (`--eval-samples`, the run's seed), into OUT/evals.jsonl.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Samples of each `--eval-every` evaluation (samples or samples per
    /// question); the task's default otherwise.
    #[arg(long)]
    pub eval_samples: Option<usize>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub task: String,
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub size: EvalSize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object with the metric names as keys.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn task_and_config(name: &str, file: Option<&std::path::Path>) -> anyhow::Result<(Box<dyn tasks::Task>, amortize::gfn::TrainConfig)> {
    task_and_config_from(name, &task_options(file)?, file)
}

/// A `[task]` table as the JSON object a run stores.
pub(super) fn json_table(t: &toml::Table) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::to_value(t)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => anyhow::bail!("a [task] table is not an object"),
    }
}

/// The config file's `[task]` table (empty without a file).
pub(super) fn task_options(file: Option<&std::path::Path>) -> anyhow::Result<toml::Table> {
    Ok(tasks::config::load(&amortize::gfn::TrainConfig::default(), file)?.1)
}

/// The task built from `options`, and its preset with the file's top-level
/// overrides (the preset needs the task, whose options live in the same file).
pub(super) fn task_and_config_from(name: &str, options: &toml::Table, file: Option<&std::path::Path>) -> anyhow::Result<(Box<dyn tasks::Task>, amortize::gfn::TrainConfig)> {
    let task = tasks::load(name, options)?;
    let (cfg, _) = tasks::config::load(&task.default_config(), file)?;
    Ok((task, cfg))
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    let (task, mut cfg) = task_and_config(&a.task, a.config.as_deref())?;
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    cfg.validate()?;
    match (a.eval_every, a.eval_samples) {
        (Some(0), _) => anyhow::bail!("invalid --eval-every: must be at least 1"),
        (Some(n), _) if n > cfg.steps => anyhow::bail!("invalid --eval-every: {n} is more than the run's {} steps", cfg.steps),
        (_, Some(0)) => anyhow::bail!("invalid --eval-samples: must be at least 1"),
        (None, Some(_)) => anyhow::bail!("invalid --eval-samples: it sizes the evaluations of --eval-every, which is not set"),
        _ => {}
    }
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&a.task));
    if !a.resume && out.join("checkpoints").exists() {
        anyhow::bail!("{} already holds a run: pass --resume to continue it, or choose another --out", out.display());
    }
    if a.resume && a.model.adapter.is_some() {
        anyhow::bail!("invalid --adapter: a resumed run goes on from its checkpoint's adapter (--adapter starts a new run from an adapter)");
    }
    // The adapter is the run's starting point, not a view over the model.
    let (lm, _) = ModelArgs { adapter: None, ..a.model.clone() }.load()?;
    let start = match &a.model.adapter {
        Some(dir) => Some(amortize::gfn::starting_adapter(dir, &cfg, lm.config(), lm.device()).with_context(|| format!("starting from {}", dir.display()))?),
        None => None,
    };
    // Ctrl-C or SIGTERM: the step in flight ends, a checkpoint is written, `--resume` continues.
    let signalled = on_signals()?;
    let _scope = amortize::cancel::scope(signalled.clone());
    let stages = StageBar::new(a.quiet);
    let train_task = task.train_task(&lm)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // What `amortize import` reads to bring the run into the app, written
    // when the run starts (a resume keeps it, and so the run's date).
    if !a.resume || !out.join(RUN_FILE).exists() {
        RunFile { task: a.task.clone(), method: Method::Gfn, model: a.model.model.clone(), config: cfg.clone(), task_options: Some(json_table(&task_options(a.config.as_deref())?)?), settings: None, eval_every: a.eval_every, eval_samples: a.eval_samples, init_adapter: a.model.adapter.clone() }.write(&out)?;
    }
    let started = match start {
        _ if a.resume => Trainer::resume(&lm, train_task, cfg.clone(), &out),
        Some(adapter) => Trainer::starting_from(&lm, train_task, cfg.clone(), Some(&out), adapter),
        None => Trainer::new(&lm, train_task, cfg.clone(), Some(&out)),
    };
    let mut trainer = match started {
        Err(amortize::Error::Cancelled) => return Err(Interrupted::by(&signalled, "during set-up: no step was trained").into()),
        t => t?,
    };
    drop(stages);
    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(cfg.steps as u64) };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_position(trainer.step as u64);
    let started = std::time::Instant::now();
    // The sampler's fit comes with steps that drew from the untempered policy: the latest is shown.
    let mut ess: Option<f64> = None;
    let mut failure: Option<amortize::Error> = None;
    let trained = trainer.run_observed(|t, m| {
        ess = m.sampler_ess.or(ess);
        let fit = ess.map(|e| format!("  ESS {e:.2}")).unwrap_or_default();
        bar.set_position(m.step as u64);
        bar.set_message(format!("loss {:.3}  log R {:.2}  len {:.1}  T {:.2}{fit}", m.loss, m.mean_log_r, m.mean_len, m.reward_temp));
        if a.quiet && (m.step % 10 == 0 || m.step == cfg.steps) {
            eprintln!("step {} loss {:.4} mean_log_r {:.3} len {:.2}{fit}", m.step, m.loss, m.mean_log_r, m.mean_len);
        }
        if a.eval_every.is_some_and(|n| m.step.is_multiple_of(n) || m.step == cfg.steps) {
            bar.set_message(format!("evaluating at step {}…", m.step));
            let opts = EvalOptions { samples: a.eval_samples, batch: 64, seed: cfg.seed, lengths: Some((cfg.min_len, cfg.max_len)), ..Default::default() };
            let point = lm.folded(&t.adapter).and_then(|v| task.evaluate(&lm, Some(&v), &opts)).map(|r| serde_json::json!({"step": m.step, "metrics": r.metrics}));
            match point.and_then(|p| amortize::util::append_jsonl(&out.join("evals.jsonl"), &p).map(|()| p)) {
                Ok(p) if a.quiet => eprintln!("step {} evaluation: {}", m.step, p["metrics"]),
                Ok(p) => bar.println(format!("step {} evaluation: {}", m.step, p["metrics"])),
                Err(e) => {
                    // A Ctrl-C inside the evaluation is the signal's stop, not a failure.
                    failure = Some(e).filter(|e| !matches!(e, amortize::Error::Cancelled));
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    if let Some(e) = failure {
        bar.abandon();
        // The step itself is done: keep it, so that --resume goes on from it.
        let ck = trainer.save_checkpoint()?.map(|p| format!(" (checkpoint {}; continue with --resume)", p.display())).unwrap_or_default();
        return Err(anyhow::Error::new(e).context(format!("evaluating at step {}{ck}", trainer.step)));
    }
    if let Err(amortize::Error::Cancelled) = trained {
        bar.abandon();
        if trainer.step == 0 {
            return Err(Interrupted::by(&signalled, "before the first step: nothing was saved").into());
        }
        let ck = trainer.save_checkpoint()?.map(|p| p.display().to_string()).unwrap_or_default();
        return Err(Interrupted::by(&signalled, format!("at step {}: checkpoint {ck}; continue with --resume", trainer.step)).into());
    }
    trained?;
    bar.finish();
    let adapter = out.join("adapter");
    trainer.adapter.save_peft(&adapter, &lm.name)?;
    eprintln!("trained {} steps in {:.1} s (`amortize import {}` shows the run in the app)", cfg.steps, started.elapsed().as_secs_f64(), out.display());
    println!("{}", adapter.display());
    Ok(())
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    if a.size.samples == Some(0) || a.size.batch == 0 {
        anyhow::bail!("invalid --samples/--batch: must be at least 1");
    }
    let (task, cfg) = task_and_config(&a.task, a.config.as_deref())?;
    let (lm, lora) = a.model.load()?;
    // Folded into the weights: evaluation decodes thousands of tokens.
    let lora = lora.map(|v| lm.llama.fold(&v)).transpose()?;
    let opts = EvalOptions { samples: a.size.samples, batch: a.size.batch, seed: a.seed, limit: a.size.limit, lengths: Some((cfg.min_len, cfg.max_len)), ..Default::default() };
    let stages = StageBar::new(false);
    let report = task.evaluate(&lm, lora.as_ref(), &opts)?;
    drop(stages);
    if a.json {
        println!("{}", serde_json::to_string(&report.metrics)?);
    } else {
        for (k, v) in &report.metrics {
            println!("{k:>16} {v:.6}");
        }
        for e in report.examples.iter().take(5) {
            println!("  e.g. {e}");
        }
    }
    Ok(())
}
