//! The job queue: training runs wait in a FIFO queue and one worker trains
//! them one at a time on a blocking thread (the model is shared; sampling
//! requests run beside it). Owns cancel/resume, crash recovery (runs that were
//! active when the server died are resumed from their last checkpoint) and the
//! per-run event channels the server streams as SSE. Knows nothing of HTTP.

pub mod import;
pub mod points;
mod runner;
pub mod spec;
pub mod start;
mod throttle;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use amortize_shared::api::{Job, Progress, Run, RunEvent, RunStatus};
use tokio::sync::{broadcast, Notify};

use crate::model::LanguageModel;
use crate::store::Store;
use crate::{Error, Result};

/// Why a running job should stop (at the end of its current training step;
/// at once in set-up and evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stop {
    No = 0,
    /// The user cancelled: status `cancelled`.
    Cancel = 1,
    /// The server is shutting down: status `interrupted`, resumed on restart.
    Shutdown = 2,
}

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Runs allowed to wait in the queue (beyond the running one).
    pub max_queue: usize,
}

struct Current {
    run: String,
    stop: Arc<AtomicU8>,
    /// Its stage in flight (set-up, seeding, evaluation); `None` between.
    progress: Option<Progress>,
}

struct Inner {
    store: Store,
    lm: Arc<LanguageModel>,
    cfg: JobsConfig,
    queue: Mutex<VecDeque<String>>,
    current: Mutex<Option<Current>>,
    wake: Notify,
    events: Mutex<HashMap<String, broadcast::Sender<RunEvent>>>,
}

/// Handle to the queue and its worker (cheap to clone).
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the queue down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// Starts the worker. Runs left active by a previous process are marked
    /// `interrupted`; with `resume`, they are queued again (oldest first).
    pub async fn start(store: Store, lm: Arc<LanguageModel>, cfg: JobsConfig, resume: bool) -> Result<Jobs> {
        let jobs = Jobs {
            inner: Arc::new(Inner {
                store,
                lm,
                cfg,
                queue: Mutex::new(VecDeque::new()),
                current: Mutex::new(None),
                wake: Notify::new(),
                events: Mutex::new(HashMap::new()),
            }),
        };
        for run in jobs.inner.store.runs().await? {
            if run.status.is_active() || run.status == RunStatus::Interrupted {
                let run = jobs.inner.store.set_status(&run.id, RunStatus::Interrupted, None).await?;
                if resume {
                    tracing::info!(run = %run.id, step = run.step, "resuming interrupted run");
                    jobs.inner.store.set_status(&run.id, RunStatus::Queued, None).await?;
                    lock(&jobs.inner.queue).push_back(run.id.clone());
                }
            }
        }
        let worker = jobs.clone();
        tokio::spawn(async move { worker.work().await });
        Ok(jobs)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The model the runs train.
    pub fn lm(&self) -> Arc<LanguageModel> {
        self.inner.lm.clone()
    }

    /// Queues a stored run (status `queued`); 503 when the queue is full.
    pub async fn enqueue(&self, id: &str) -> Result<()> {
        {
            let mut q = lock(&self.inner.queue);
            if q.len() >= self.inner.cfg.max_queue {
                return Err(Error::Busy(format!("the job queue is full ({} waiting); try again later", q.len())));
            }
            q.push_back(id.to_string());
        }
        let run = self.inner.store.set_status(id, RunStatus::Queued, None).await?;
        self.publish(&run.id, RunEvent::Status { run: run.clone() });
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Whether the queue can take another run.
    pub fn has_room(&self) -> bool {
        lock(&self.inner.queue).len() < self.inner.cfg.max_queue
    }

    /// Cancels a queued run at once; a running one stops at the end of its
    /// step, or at once while it sets up, seeds or evaluates (`crate::cancel`).
    pub async fn cancel(&self, id: &str) -> Result<Run> {
        let run = self.inner.store.run(id).await?;
        if !run.status.is_active() {
            return Err(Error::Conflict(format!("run `{id}` is {}, not queued or running", run.status.as_str())));
        }
        let was_queued = {
            let mut q = lock(&self.inner.queue);
            let before = q.len();
            q.retain(|r| r != id);
            q.len() != before
        };
        if was_queued {
            let run = self.inner.store.set_status(id, RunStatus::Cancelled, None).await?;
            self.publish(id, RunEvent::Status { run: run.clone() });
            return Ok(run);
        }
        if let Some(c) = lock(&self.inner.current).as_ref().filter(|c| c.run == id) {
            c.stop.store(Stop::Cancel as u8, Ordering::SeqCst);
        }
        Ok(run)
    }

    /// Queues a cancelled, failed or interrupted run again; it continues from
    /// its last checkpoint (or starts over when it has none).
    pub async fn resume(&self, id: &str) -> Result<Run> {
        let run = self.inner.store.run(id).await?;
        if !matches!(run.status, RunStatus::Cancelled | RunStatus::Failed | RunStatus::Interrupted) {
            return Err(Error::Conflict(format!("run `{id}` is {}; only cancelled, failed or interrupted runs resume", run.status.as_str())));
        }
        self.enqueue(id).await?;
        self.inner.store.run(id).await
    }

    /// Deletes a run that is neither queued nor running: its rows, then its
    /// folder (checkpoints, adapter, metrics file).
    pub async fn delete(&self, id: &str) -> Result<()> {
        let held = lock(&self.inner.queue).iter().any(|r| r == id) || lock(&self.inner.current).as_ref().is_some_and(|c| c.run == id);
        if held {
            return Err(Error::Conflict(format!("run `{id}` is queued or running; cancel it before deleting it")));
        }
        self.inner.store.delete_run(id).await?;
        let dir = self.inner.store.run_dir(id);
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir).map_err(|e| (dir, e))).await {
            Ok(Ok(())) => {}
            Ok(Err((_, e))) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err((dir, e))) => tracing::warn!("run `{id}` deleted, but not its folder {}: {e}", dir.display()),
            Err(e) => tracing::warn!("run `{id}` deleted, but not its folder: {e}"),
        }
        Ok(())
    }

    /// Asks the running job to stop as `interrupted` and waits (up to `wait`) for it.
    pub async fn shutdown(&self, wait: std::time::Duration) {
        if let Some(c) = lock(&self.inner.current).as_ref() {
            c.stop.store(Stop::Shutdown as u8, Ordering::SeqCst);
        }
        let t0 = std::time::Instant::now();
        while lock(&self.inner.current).is_some() && t0.elapsed() < wait {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The running job first, then the queue in order.
    pub async fn list(&self) -> Result<Vec<Job>> {
        let current = lock(&self.inner.current).as_ref().map(|c| c.run.clone());
        let queued: Vec<String> = lock(&self.inner.queue).iter().cloned().collect();
        let mut out = Vec::new();
        for (i, id) in current.iter().chain(queued.iter()).enumerate() {
            let run = self.inner.store.run(id).await?;
            out.push(Job { run: id.clone(), status: run.status, position: if current.is_some() { i } else { i + 1 } });
        }
        Ok(out)
    }

    /// How far the stage in flight of run `id` has come, while it is the
    /// running job and between steps (set-up, seeding, evaluation).
    pub fn progress(&self, id: &str) -> Option<Progress> {
        lock(&self.inner.current).as_ref().filter(|c| c.run == id).and_then(|c| c.progress.clone())
    }

    fn set_progress(&self, id: &str, p: Option<Progress>) {
        if let Some(c) = lock(&self.inner.current).as_mut().filter(|c| c.run == id) {
            c.progress = p;
        }
    }

    /// Live events of run `id`.
    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<RunEvent> {
        lock(&self.inner.events).entry(id.to_string()).or_insert_with(|| broadcast::channel(1024).0).subscribe()
    }

    fn publish(&self, id: &str, e: RunEvent) {
        if let Some(tx) = lock(&self.inner.events).get(id) {
            let _ = tx.send(e);
        }
    }

    async fn work(self) {
        loop {
            let next = lock(&self.inner.queue).pop_front();
            let Some(id) = next else {
                self.inner.wake.notified().await;
                continue;
            };
            let stop = Arc::new(AtomicU8::new(Stop::No as u8));
            *lock(&self.inner.current) = Some(Current { run: id.clone(), stop: stop.clone(), progress: None });
            if let Err(e) = self.run_one(&id, stop).await {
                tracing::error!(run = %id, "job bookkeeping failed: {e}");
            }
            *lock(&self.inner.current) = None;
        }
    }

    async fn run_one(&self, id: &str, stop: Arc<AtomicU8>) -> Result<()> {
        let run = self.inner.store.set_status(id, RunStatus::Running, None).await?;
        self.publish(id, RunEvent::Status { run: run.clone() });
        let ctx = runner::Context { jobs: self.clone(), handle: tokio::runtime::Handle::current(), stop };
        let outcome = tokio::task::spawn_blocking(move || runner::train(&ctx, run)).await;
        let (status, error) = match outcome {
            Ok(Ok(())) => (RunStatus::Completed, None),
            Ok(Err(runner::Ended::Stopped(Stop::Shutdown))) => (RunStatus::Interrupted, None),
            Ok(Err(runner::Ended::Stopped(_))) => (RunStatus::Cancelled, None),
            Ok(Err(runner::Ended::Failed(e))) => (RunStatus::Failed, Some(e.to_string())),
            Err(join) => (RunStatus::Failed, Some(format!("the training thread crashed: {join}"))),
        };
        if let Some(e) = &error {
            tracing::warn!(run = %id, "run failed: {e}");
        }
        let run = self.inner.store.set_status(id, status, error.as_deref()).await?;
        self.publish(id, RunEvent::Status { run });
        Ok(())
    }
}
