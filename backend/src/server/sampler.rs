//! Generation for the API: from the base model or any run's adapter (its final
//! adapter, or its newest checkpoint while it trains), beside the training
//! worker. Owns the adapter cache, the request limits and the bounded queue
//! (a full queue is a 503, never a hang). Work runs on blocking threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use amortize_shared::api::{Decoding, Generation, Run, RunStatus, SampleResponse};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::decode::{self, SampleConfig};
use crate::gfn::checkpoint;
use crate::model::{LanguageModel, LoraAdapter, LoraView, Mode};
use crate::store::Store;
use crate::{Error, Result};

/// Bounds on one request.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_n: usize,
    pub max_tokens: usize,
    pub max_prompts: usize,
    /// Requests waiting or running at once; more get 503.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_n: 256, max_tokens: 512, max_prompts: 32, max_pending: 8 }
    }
}

/// A model to sample from: the base, or a run's adapter at some step.
#[derive(Clone)]
pub struct Source {
    pub id: String,
    pub label: String,
    pub run: Option<Run>,
    pub adapter: Option<Arc<LoraAdapter>>,
    pub step: Option<usize>,
}

impl Source {
    /// The adapter's view for a job of about `tokens` decoded tokens, folded
    /// into the weights where that pays (`Llama::fold_pays`).
    pub fn view(&self, lm: &LanguageModel, tokens: usize) -> Result<Option<LoraView>> {
        let Some(a) = &self.adapter else { return Ok(None) };
        let view = a.view(Mode::Infer, lm.llama.dtype())?;
        Ok(Some(if lm.llama.fold_pays(&view, tokens) { lm.llama.fold(&view)? } else { view }))
    }
}

pub struct Sampler {
    pub lm: Arc<LanguageModel>,
    store: Store,
    pub limits: Limits,
    pending: Arc<Semaphore>,
    /// Two generations at a time beside training.
    running: Arc<Semaphore>,
    cache: Mutex<HashMap<PathBuf, Arc<LoraAdapter>>>,
}

/// Raises its flag when dropped: with the request's future, if the client
/// goes away before the work ends.
struct RaiseOnDrop(Arc<AtomicU8>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.store(1, Ordering::SeqCst);
    }
}

impl Sampler {
    pub fn new(lm: Arc<LanguageModel>, store: Store, limits: Limits) -> Self {
        let pending = Arc::new(Semaphore::new(limits.max_pending.max(1)));
        Sampler { lm, store, limits, pending, running: Arc::new(Semaphore::new(2)), cache: Mutex::new(HashMap::new()) }
    }

    /// Runs `f` on a blocking thread once a slot is free; 503 when the queue is
    /// full. A request dropped on the way (its client went away) stops `f` at
    /// its next decode step (`crate::cancel`), and its slots stay taken until
    /// `f` has returned.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce(&LanguageModel) -> Result<T> + Send + 'static) -> Result<T> {
        let queued: OwnedSemaphorePermit =
            self.pending.clone().try_acquire_owned().map_err(|_| Error::Busy("too many generation requests in flight; try again shortly".into()))?;
        let slot = self.running.clone().acquire_owned().await.map_err(|_| Error::Busy("shutting down".into()))?;
        let lm = self.lm.clone();
        let abandoned = RaiseOnDrop(Arc::new(AtomicU8::new(0)));
        let flag = abandoned.0.clone();
        tokio::task::spawn_blocking(move || {
            let _permits = (queued, slot);
            let _scope = crate::cancel::scope(flag);
            f(&lm)
        })
        .await
        .map_err(|e| Error::Conflict(format!("generation crashed: {e}")))?
    }

    /// "base" (or nothing) or a run id with an adapter to sample from.
    pub async fn source(&self, id: Option<&str>) -> Result<Source> {
        let id = id.unwrap_or("base");
        if id == "base" {
            return Ok(Source { id: "base".into(), label: format!("base ({})", self.lm.name), run: None, adapter: None, step: None });
        }
        amortize_shared::api::valid_name(id).map_err(|m| Error::invalid("run", format!("invalid run id `{id}`: {m}")))?;
        let run = self.store.run(id).await?;
        if !run.method.trains() {
            // A base-model run samples as the base model does.
            return Ok(Source { id: id.into(), label: format!("{} (base model)", run.name), run: Some(run), adapter: None, step: None });
        }
        let dir = self.store.run_dir(id);
        let (path, step) = if run.status == RunStatus::Completed && dir.join("adapter").join("adapter_config.json").exists() {
            (dir.join("adapter"), run.step)
        } else {
            match (checkpoint::latest(&dir)?, run.checkpoint_step) {
                (Some(ck), Some(step)) => (ck.join("adapter"), step),
                (Some(ck), None) => (ck.join("adapter"), run.step),
                (None, _) => return Err(Error::Conflict(format!("run `{id}` has no checkpoint yet; try again after its first one"))),
            }
        };
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&path).cloned();
        let adapter = match cached {
            Some(a) => a,
            None => {
                let (lm, p) = (self.lm.clone(), path.clone());
                let a = Arc::new(tokio::task::spawn_blocking(move || LoraAdapter::load_peft(&p, lm.config(), lm.device())).await.map_err(|e| Error::Conflict(e.to_string()))??);
                let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if c.len() >= 16 {
                    c.clear();
                }
                c.insert(path, a.clone());
                a
            }
        };
        Ok(Source { id: id.into(), label: format!("{} ({} @ step {step})", run.name, run.method.as_str()), run: Some(run), adapter: Some(adapter), step: Some(step) })
    }

    /// Checks decoding settings against the limits; the engine's sampling config.
    /// Drops the cached adapters under `dir` (a deleted run's folder).
    pub fn forget(&self, dir: &std::path::Path) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|path, _| !path.starts_with(dir));
    }

    pub fn sample_config(&self, d: &Decoding) -> Result<SampleConfig> {
        if d.n == 0 || d.n > self.limits.max_n {
            return Err(Error::invalid("decoding.n", format!("must be 1 to {}", self.limits.max_n)));
        }
        if d.max_tokens == 0 || d.max_tokens > self.limits.max_tokens {
            return Err(Error::invalid("decoding.max_tokens", format!("must be 1 to {}", self.limits.max_tokens)));
        }
        if !(d.temperature > 0.0 && d.temperature.is_finite() && d.temperature <= 100.0) {
            return Err(Error::invalid("decoding.temperature", "must be in (0, 100]"));
        }
        if !(d.top_p > 0.0 && d.top_p <= 1.0) {
            return Err(Error::invalid("decoding.top_p", "must be in (0, 1]"));
        }
        if d.stop.iter().any(|s| s.is_empty()) || d.stop.len() > 16 {
            return Err(Error::invalid("decoding.stop", "at most 16 stop strings, none empty"));
        }
        Ok(SampleConfig {
            n: d.n,
            max_new_tokens: d.max_tokens,
            temperature: d.temperature as f32,
            top_k: (d.top_k > 0).then_some(d.top_k),
            top_p: (d.top_p < 1.0).then_some(d.top_p as f32),
            stop_strings: d.stop.clone(),
            seed: d.seed,
            ..SampleConfig::default()
        })
    }

    /// `n` generations for `prompt` from `source`.
    pub async fn generate(&self, prompt: String, source: Source, d: &Decoding) -> Result<SampleResponse> {
        let cfg = self.sample_config(d)?;
        let (run, step) = (source.run.as_ref().map(|r| r.id.clone()), source.step);
        let samples = self.run(move |lm| generate_blocking(lm, &prompt, &source, &cfg)).await?;
        Ok(SampleResponse { run, adapter_step: step, samples })
    }
}

/// Samples and scores under the base model (adapter off).
pub fn generate_blocking(lm: &LanguageModel, prompt: &str, source: &Source, cfg: &SampleConfig) -> Result<Vec<Generation>> {
    if prompt.is_empty() {
        return Err(Error::invalid("prompt", "must not be empty"));
    }
    let ids = lm.tokenizer.encode(prompt)?;
    if ids.is_empty() {
        return Err(Error::invalid("prompt", "encodes to no tokens"));
    }
    let ctx = lm.config().max_position_embeddings;
    if ids.len() + cfg.max_new_tokens > ctx {
        return Err(Error::TooLong { len: ids.len() + cfg.max_new_tokens, max: ctx });
    }
    let view = source.view(lm, cfg.n * cfg.max_new_tokens)?;
    let samples = decode::sample(lm, std::slice::from_ref(&ids), cfg, view.as_ref(), None)?;
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = samples.iter().filter(|s| !s.tokens.is_empty()).map(|s| (ids.clone(), s.tokens.clone())).collect();
    let mut scores = decode::score(lm, &pairs, None, 16)?.into_iter();
    Ok(samples
        .iter()
        .map(|s| Generation {
            text: s.text.clone(),
            tokens: s.tokens.len(),
            logprob: s.logprob() as f64,
            base_logprob: if s.tokens.is_empty() { 0.0 } else { scores.next().map_or(0.0, |x| x.total as f64) },
            log_reward: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// A request dropped before its work ends stops that work (at its next
    /// `cancel::check`) and holds its slots until then; the next request runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_request_stops_its_work_and_frees_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::model::tiny::write_tiny_model(&dir.path().join("model"), 7).unwrap();
        let lm = Arc::new(LanguageModel::load(&paths.gguf, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap());
        let store = Store::open(&dir.path().join("data")).await.unwrap();
        let sampler = Sampler::new(lm, store, Limits { max_n: 4, max_tokens: 8, max_prompts: 1, max_pending: 1 });
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        // Work that runs until it is asked to stop.
        let work = sampler.run(move |_| {
            while crate::cancel::check().is_ok() {
                std::thread::sleep(Duration::from_millis(1));
            }
            e.store(true, Ordering::SeqCst);
            crate::cancel::check()
        });
        assert!(tokio::time::timeout(Duration::from_millis(200), work).await.is_err(), "the work runs until stopped");
        let t0 = std::time::Instant::now();
        let next = loop {
            match sampler.run(|_| Ok(7)).await {
                Err(Error::Busy(_)) if t0.elapsed() < Duration::from_secs(30) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => break other,
            }
        };
        assert!(ended.load(Ordering::SeqCst), "the abandoned work stopped before its slot was given again");
        assert_eq!(next.unwrap(), 7);
    }
}
