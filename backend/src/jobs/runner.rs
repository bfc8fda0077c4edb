//! One training run on the worker's blocking thread: build the task, start
//! or resume the trainer in the run's directory, record every step in the
//! store (and broadcast it) before the next one starts, stop when asked, and
//! evaluate the adapter at the end (and every `eval_every` steps, when set).
//! GFlowNet runs resume from checkpoints; the PPO and SFT baselines restart
//! from scratch when their job restarts; a base-model run is only the
//! evaluation, without an adapter.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amortize_shared::api::{EvalPoint, MetricPoint, Method, Progress, Run, RunEvent, RunStatus, StepSample};

use super::throttle::Throttle;
use super::{lock, points, spec, Jobs, Stop};
use crate::gfn::{checkpoint, StepMetrics, Trainer};
use crate::baselines::{train_sft_observed, FewShot, Ppo, PpoConfig, SftConfig};
use crate::model::LoraAdapter;
use crate::store::Store;
use crate::tasks::{self, EvalOptions};
use crate::Error;

pub(super) struct Context {
    pub jobs: Jobs,
    pub handle: tokio::runtime::Handle,
    pub stop: Arc<AtomicU8>,
}

/// How a run ended other than by completing.
pub(super) enum Ended {
    Stopped(Stop),
    Failed(Error),
}

impl From<Error> for Ended {
    fn from(e: Error) -> Self {
        Ended::Failed(e)
    }
}

/// The engine's progress reports as the run's `Progress` events, throttled
/// to one each [`PROGRESS_EVERY`] within a stage (`throttle`): the watcher
/// sends what is due at once, and a ticker on the runtime sends a report held
/// back once its time is up, while it is still the run's stage in flight.
/// The ticker stops when the returned guard drops.
fn progress_events(jobs: Jobs, id: String, handle: &tokio::runtime::Handle) -> (crate::progress::Watcher, AbortOnDrop) {
    let throttle = Arc::new(Mutex::new(Throttle::new(PROGRESS_EVERY)));
    let send = |jobs: &Jobs, id: &str, p: Progress| jobs.publish(id, RunEvent::Progress { stage: p.stage, done: p.done, total: p.total });
    let (t, j, i) = (throttle.clone(), jobs.clone(), id.clone());
    let ticker = handle.spawn(async move {
        let mut every = tokio::time::interval(PROGRESS_EVERY / 2);
        loop {
            every.tick().await;
            // Sent under the lock, as the watcher sends, so events keep the
            // order of the reports. A step or the run's end has cleared the
            // stage when it is no longer the run's: nothing to show then.
            let mut t = lock(&t);
            if let Some(p) = t.tick(Instant::now()).filter(|p| j.progress(&i).as_ref() == Some(p)) {
                send(&j, &i, p);
            }
        }
    });
    let watcher: crate::progress::Watcher = Arc::new(move |stage: &str, done: usize, total: usize| {
        let p = Progress { stage: stage.to_string(), done, total };
        jobs.set_progress(&id, Some(p.clone()));
        let mut t = lock(&throttle);
        if let Some(p) = t.offer(p, Instant::now()) {
            send(&jobs, &id, p);
        }
    });
    (watcher, AbortOnDrop(ticker))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The least time between two progress events of a stage.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

fn stop_requested(ctx: &Context) -> Option<Stop> {
    match ctx.stop.load(Ordering::SeqCst) {
        1 => Some(Stop::Cancel),
        2 => Some(Stop::Shutdown),
        _ => None,
    }
}

/// Trains run `run` to its last step (or until stopped), then evaluates it.
/// A stop request is seen between training steps and inside the long parts
/// around them (the task's set-up, seeding the replay buffer, evaluation),
/// which end early with nothing recorded (`crate::cancel`).
pub(super) fn train(ctx: &Context, run: Run) -> Result<(), Ended> {
    let _scope = crate::cancel::scope(ctx.stop.clone());
    let (watcher, _ticker) = progress_events(ctx.jobs.clone(), run.id.clone(), &ctx.handle);
    let _watch = crate::progress::watch(watcher);
    match train_in_scope(ctx, run) {
        Err(Ended::Failed(Error::Cancelled)) => Err(Ended::Stopped(stop_requested(ctx).unwrap_or(Stop::Cancel))),
        other => other,
    }
}

fn train_in_scope(ctx: &Context, run: Run) -> Result<(), Ended> {
    let jobs = &ctx.jobs;
    let (store, lm) = (jobs.store().clone(), jobs.inner.lm.clone());
    let mut options = spec::options_table(&run.task_options)?;
    if let Some(d) = &run.dataset {
        let (key, _) = tasks::dataset_spec(&run.task).ok_or_else(|| Error::invalid("dataset", "task takes no dataset"))?;
        options.insert(key.into(), toml::Value::String(store.dataset_path(d).display().to_string()));
    }
    let task = tasks::load(&run.task, &options)?;
    if !run.method.trains() {
        return evaluate(ctx, &run, task.as_ref(), None, 0);
    }
    let train_task = task.train_task(&lm)?;
    let dir = store.run_dir(&run.id);
    if run.method != Method::Gfn {
        let (adapter, last) = baseline(ctx, &run, task.as_ref(), train_task, &dir)?;
        return evaluate(ctx, &run, task.as_ref(), Some(&adapter), last);
    }
    let mut trainer = match checkpoint::latest(&dir)? {
        Some(_) => Trainer::resume(&lm, train_task, run.config.clone(), &dir)?,
        None => {
            // A fresh start (again, when it stopped before its first
            // checkpoint): nothing of an earlier try stays but the adapter it starts from.
            super::start::clear(&dir)?;
            match super::start::load(&lm, &dir, &run.config)? {
                Some(adapter) => Trainer::starting_from(&lm, train_task, run.config.clone(), Some(&dir), adapter)?,
                None => Trainer::new(&lm, train_task, run.config.clone(), Some(&dir))?,
            }
        }
    };
    ctx.handle.block_on(catch_up(&store, &run.id, &dir, trainer.step))?;

    let every = run.config.checkpoint_every;
    let mut failure: Option<Error> = None;
    let result = trainer.run_observed(|t, m| {
        let samples: Vec<StepSample> = t
            .recent
            .iter()
            .map(|s| StepSample {
                step: m.step,
                prompt: lm.tokenizer.decode(&s.prompt, false).unwrap_or_else(|_| s.problem.clone()),
                text: lm.tokenizer.decode(&s.tokens, false).unwrap_or_default(),
                log_reward: s.log_reward,
            })
            .collect();
        let p = points::gfn(m);
        let checkpointed = (every > 0 && m.step % every == 0) || m.step == t.cfg.steps;
        let recorded = ctx.handle.block_on(async {
            store.record_step(&run.id, &p, &samples).await?;
            if checkpointed {
                store.set_checkpoint(&run.id, m.step).await?;
            }
            crate::Result::Ok(())
        });
        if let Err(e) = recorded {
            failure = Some(e);
            return ControlFlow::Break(());
        }
        jobs.set_progress(&run.id, None);
        jobs.publish(&run.id, RunEvent::Metrics { point: p });
        jobs.publish(&run.id, RunEvent::Samples { samples });
        if m.step < t.cfg.steps {
            if let Err(e) = evaluate_along(ctx, &run, task.as_ref(), &t.adapter, m.step) {
                failure = e;
                return ControlFlow::Break(());
            }
        }
        if stop_requested(ctx).is_some() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match result {
        Ok(()) => {}
        Err(Error::Cancelled) => {
            if let Some(e) = failure {
                return Err(Ended::Failed(e));
            }
            // Keep everything trained so far: a checkpoint at the step we stopped.
            if trainer.step > 0 && trainer.save_checkpoint()?.is_some() {
                ctx.handle.block_on(store.set_checkpoint(&run.id, trainer.step))?;
            }
            return Err(Ended::Stopped(stop_requested(ctx).unwrap_or(Stop::Cancel)));
        }
        Err(e) => return Err(Ended::Failed(e)),
    }
    let adapter_dir = dir.join("adapter");
    trainer.adapter.save_peft(&adapter_dir, &lm.name)?;
    evaluate(ctx, &run, task.as_ref(), Some(&trainer.adapter), trainer.step)
}

/// The task's metrics for the trained adapter (at its last step, `last`),
/// or the base model without one (unless `eval_samples` is 0); with
/// `eval_every` also the series' last evaluation.
fn evaluate(ctx: &Context, run: &Run, task: &dyn tasks::Task, adapter: Option<&LoraAdapter>, last: usize) -> Result<(), Ended> {
    if run.eval_samples == Some(0) {
        return Ok(());
    }
    let store = ctx.jobs.store();
    let r = ctx.handle.block_on(store.set_status(&run.id, RunStatus::Evaluating, None))?;
    ctx.jobs.publish(&run.id, RunEvent::Status { run: r });
    // SFT's last step may already have had its evaluation along the way.
    let along = match run.eval_every {
        Some(_) => ctx.handle.block_on(store.evals(&run.id))?.into_iter().find(|p| p.step == last),
        None => None,
    };
    let metrics = match along {
        Some(p) => p.metrics,
        None => {
            let metrics = metrics_of(ctx, run, task, adapter)?;
            if run.eval_every.is_some() {
                record_eval(ctx, run, EvalPoint { step: last, metrics: metrics.clone() })?;
            }
            metrics
        }
    };
    ctx.handle.block_on(store.set_final_metrics(&run.id, &metrics))?;
    Ok(())
}

/// After step `step` of a run with `eval_every`, when it is due: the task's
/// evaluation of the adapter so far, recorded and broadcast; the run stays
/// `running`. Its error stops the training (`None`: a stop request seen
/// inside it, which the caller's next check reports).
fn evaluate_along(ctx: &Context, run: &Run, task: &dyn tasks::Task, adapter: &LoraAdapter, step: usize) -> Result<(), Option<Error>> {
    if run.eval_every.is_none_or(|n| !step.is_multiple_of(n)) {
        return Ok(());
    }
    let done = metrics_of(ctx, run, task, Some(adapter)).and_then(|metrics| record_eval(ctx, run, EvalPoint { step, metrics }));
    ctx.jobs.set_progress(&run.id, None);
    match done {
        Ok(()) => Ok(()),
        Err(Error::Cancelled) => Err(None),
        Err(e) => Err(Some(e)),
    }
}

fn record_eval(ctx: &Context, run: &Run, point: EvalPoint) -> crate::Result<()> {
    ctx.handle.block_on(ctx.jobs.store().record_eval(&run.id, &point))?;
    ctx.jobs.publish(&run.id, RunEvent::Eval { point });
    Ok(())
}

/// The task's evaluation of `adapter` (the base model without one) with the
/// run's settings: its samples, seed, lengths and few-shot prompt.
fn metrics_of(ctx: &Context, run: &Run, task: &dyn tasks::Task, adapter: Option<&LoraAdapter>) -> crate::Result<BTreeMap<String, f64>> {
    let lm = &ctx.jobs.inner.lm;
    let view = adapter.map(|a| lm.folded(a)).transpose()?;
    let prompt: Option<Arc<dyn tasks::PromptTransform>> = match run.shots {
        Some(k) => Some(Arc::new(FewShot::new(task.demonstrations(), k, run.config.seed)?)),
        None => None,
    };
    let opts = EvalOptions { samples: run.eval_samples, batch: 64, seed: run.config.seed, limit: None, lengths: Some((run.config.min_len, run.config.max_len)), decoding: None, prompt };
    Ok(task.evaluate(lm, view.as_ref(), &opts)?.metrics)
}

/// PPO or SFT: trained from scratch each time the job starts (no mid-run
/// checkpoints), every step recorded and broadcast like GFlowNet's, and
/// evaluated along the way with `eval_every`. Returns the adapter and its
/// last step.
fn baseline(ctx: &Context, run: &Run, task: &dyn tasks::Task, train: crate::gfn::TrainTask, dir: &Path) -> Result<(LoraAdapter, usize), Ended> {
    let (store, lm) = (ctx.jobs.store().clone(), ctx.jobs.inner.lm.clone());
    super::start::clear(dir)?;
    ctx.handle.block_on(store.rewind(&run.id, 0))?;
    let cfg = &run.config;
    let mut failure = None;
    let mut last = 0;
    // PPO's last step is its config's; SFT's (epochs × batches) shows when it ends.
    let final_step = (run.method == Method::Ppo).then_some(cfg.steps);
    let mut record = |adapter: &LoraAdapter, p: MetricPoint| {
        let step = p.step;
        if let Err(e) = ctx.handle.block_on(store.record_step(&run.id, &p, &[])) {
            failure = Some(e);
            return ControlFlow::Break(());
        }
        last = step;
        ctx.jobs.publish(&run.id, RunEvent::Metrics { point: p });
        if final_step != Some(step) {
            if let Err(e) = evaluate_along(ctx, run, task, adapter, step) {
                failure = e;
                return ControlFlow::Break(());
            }
        }
        if stop_requested(ctx).is_some() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    let result = match run.method {
        Method::Ppo => {
            let pc = PpoConfig { steps: cfg.steps, batch_size: cfg.batch_size, seed: cfg.seed, ..PpoConfig::default() };
            // From the adapter it was created from (and kept close to it), else fresh.
            let lr = pc.lr;
            let mut ppo = match super::start::path(dir) {
                Some(start) => Ppo::starting_from(&lm, train, cfg.clone(), pc, &start),
                None => Ppo::new(&lm, train, cfg.clone(), pc),
            }?;
            ppo.run_observed(Some(dir), |p, m| record(&p.adapter, points::ppo(m, lr))).map(|()| ppo.adapter)
        }
        _ => {
            let sc = SftConfig { batch_size: cfg.batch_size, seed: cfg.seed, ..SftConfig::default() };
            let lr = sc.lr;
            train_sft_observed(&lm, &train, cfg, &sc, Some(dir), |a, m| record(a, points::sft(m, lr)))
        }
    };
    match result {
        Ok(adapter) => Ok((adapter, last)),
        Err(Error::Cancelled) => match failure {
            Some(e) => Err(Ended::Failed(e)),
            None => Err(Ended::Stopped(stop_requested(ctx).unwrap_or(Stop::Cancel))),
        },
        Err(e) => Err(Ended::Failed(e)),
    }
}

/// Makes the store agree with the run directory at `step` (the checkpoint the
/// trainer starts from): steps up to it come from the directory's
/// `metrics.jsonl` (already cut at `step` by the trainer), later ones are
/// dropped. A crash between writing a checkpoint and recording its step thus
/// leaves no gap.
async fn catch_up(store: &Store, id: &str, dir: &Path, step: usize) -> crate::Result<()> {
    let path = dir.join("metrics.jsonl");
    if step > 0 && path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        let stored: std::collections::HashSet<usize> = store.metrics(id, None).await?.iter().map(|p| p.step).collect();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let m: StepMetrics = serde_json::from_str(line).map_err(|e| Error::file(&path, e))?;
            if m.step <= step && !stored.contains(&m.step) {
                store.record_step(id, &points::gfn(&m), &[]).await?;
            }
        }
        store.set_checkpoint(id, step).await?;
    }
    store.rewind(id, step).await
}
