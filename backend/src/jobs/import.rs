//! A run trained outside the server — by `amortize train --out DIR` or by
//! `amortize compare` (its `gfn-…`, `ppo-…`, `sft-…` folders) — brought into
//! a data dir as a completed run: its config and task from `run.json`, its
//! steps from `metrics.jsonl`, its evaluations along training from
//! `evals.jsonl` (the last, at the last step, is its final evaluation) and
//! its adapter, so the browser app shows, compares and samples it like its
//! own runs. Everything is read and checked before anything is written; the
//! store takes the run in one transaction. Loads no model.

use std::path::{Path, PathBuf};

use amortize_shared::api::{EvalPoint, MetricPoint, Method, Run};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::points;
use crate::baselines::{PpoConfig, PpoMetrics, SftConfig, SftMetrics};
use crate::gfn::{StepMetrics, TrainConfig};
use crate::store::{NewRun, Store};
use crate::{tasks, Error, Result};

/// `run.json`: what a run folder was trained as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFile {
    pub task: String,
    /// Absent in the files of older `train` calls: a GFlowNet run.
    #[serde(default = "gfn")]
    pub method: Method,
    /// The base model it was trained on, as given.
    pub model: PathBuf,
    /// The GFlowNet's config, or the baseline's shape (lengths, LoRA, seed).
    pub config: TrainConfig,
    /// The `[task]` table; absent in the files of older `train` calls.
    #[serde(default)]
    pub task_options: Option<Map<String, Value>>,
    /// PPO's or SFT's own settings (their learning rate, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Value>,
    /// Evaluations along training: every so many steps, with so many samples.
    #[serde(default)]
    pub eval_every: Option<usize>,
    #[serde(default)]
    pub eval_samples: Option<usize>,
    /// The adapter the training started from (`train --adapter`, compare's
    /// `sft+gfn`), as given; absent: a fresh adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_adapter: Option<PathBuf>,
}

fn gfn() -> Method {
    Method::Gfn
}

pub const RUN_FILE: &str = "run.json";

impl RunFile {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RUN_FILE);
        crate::util::write_atomic(&path, serde_json::to_string_pretty(self)?.as_bytes()).map_err(|e| Error::file(&path, e))
    }

    fn read(dir: &Path) -> Result<RunFile> {
        let path = dir.join(RUN_FILE);
        if !dir.is_dir() {
            return Err(Error::invalid("run", format!("{}: no such folder", dir.display())));
        }
        if !path.exists() {
            return Err(Error::invalid("run", format!("{} has no {RUN_FILE}: not a run folder of `amortize train --out` or `amortize compare`", dir.display())));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(&path, e))
    }
}

/// A run folder read and checked, ready to enter a store.
pub struct Prepared {
    pub dir: PathBuf,
    pub name: String,
    file: RunFile,
    points: Vec<MetricPoint>,
    evals: Vec<EvalPoint>,
}

/// Reads `dir` (named `name`, else after the folder) as a finished run.
pub fn prepare(dir: &Path, name: Option<&str>) -> Result<Prepared> {
    let file = RunFile::read(dir)?;
    if !tasks::NAMES.contains(&file.task.as_str()) {
        return Err(Error::invalid("run", format!("{}: unknown task `{}`", dir.display(), file.task)));
    }
    if file.method == Method::Base {
        return Err(Error::invalid("run", format!("{}: a base-model run has no adapter to import", dir.display())));
    }
    if !dir.join("adapter").join("adapter_config.json").exists() {
        return Err(Error::invalid("run", format!("{}: no adapter/ — the run did not finish (`amortize train --resume` finishes it)", dir.display())));
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => dir.canonicalize().map_err(|e| Error::file(dir, e))?.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    amortize_shared::api::valid_name(&name).map_err(|m| Error::invalid("name", format!("run name `{name}` {m} (give one with --name)")))?;
    let lr = |default: f64| file.settings.as_ref().and_then(|s| s.get("lr")).and_then(Value::as_f64).unwrap_or(default);
    let points = match file.method {
        Method::Ppo => lines::<PpoMetrics>(&dir.join("metrics.jsonl"))?.iter().map(|m| points::ppo(m, lr(PpoConfig::default().lr))).collect(),
        Method::Sft => lines::<SftMetrics>(&dir.join("metrics.jsonl"))?.iter().map(|m| points::sft(m, lr(SftConfig::default().lr))).collect(),
        _ => lines::<StepMetrics>(&dir.join("metrics.jsonl"))?.iter().map(points::gfn).collect::<Vec<_>>(),
    };
    if points.is_empty() {
        return Err(Error::invalid("run", format!("{}: metrics.jsonl holds no step", dir.display())));
    }
    let evals_path = dir.join("evals.jsonl");
    let evals = if evals_path.exists() { lines::<EvalPoint>(&evals_path)? } else { Vec::new() };
    Ok(Prepared { dir: dir.to_path_buf(), name, file, points, evals })
}

/// The lines of a JSONL file, each a `T` (a bad line is an error naming it).
fn lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        out.push(serde_json::from_str(line).map_err(|e| Error::invalid("run", format!("{} line {}: {e}", path.display(), i + 1)))?);
    }
    Ok(out)
}

/// Adds a prepared run to `store` as completed, in `experiment` if given:
/// its adapter and series files are copied into the run's own folder first.
pub async fn import(store: &Store, p: Prepared, experiment: Option<&str>) -> Result<Run> {
    let id = loop {
        let id = format!("run-{:08x}", rand::rng().random::<u32>());
        if !store.run_dir(&id).exists() && store.run(&id).await.is_err() {
            break id;
        }
    };
    let last = p.points.last().map_or(0, |m| m.step);
    // The final evaluation: the one at the last step, as a server run's.
    let final_metrics = p.evals.last().filter(|e| e.step == last).map(|e| e.metrics.clone());
    // Created when its run.json was written (a run's start for `train`, its
    // end for `compare`), so imported runs keep the order they were trained in.
    let created = std::fs::metadata(p.dir.join(RUN_FILE)).and_then(|m| m.modified()).ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let created_at = created.map_or_else(crate::util::now_rfc3339, |d| crate::util::rfc3339(d.as_secs()));
    let source = p.dir.canonicalize().unwrap_or(p.dir.clone());
    let run = NewRun {
        id: id.clone(),
        name: p.name,
        experiment: experiment.map(str::to_string),
        task: p.file.task,
        method: p.file.method,
        config: p.file.config,
        task_options: p.file.task_options.unwrap_or_default(),
        dataset: None,
        eval_samples: p.file.eval_samples,
        notes: match &p.file.init_adapter {
            Some(a) => format!("imported from {}; its adapter started from {}", source.display(), a.display()),
            None => format!("imported from {}", source.display()),
        },
        shots: None,
        eval_every: p.file.eval_every,
        init_from: None,
    };
    let to = store.run_dir(&id);
    let added = match copy_run(&p.dir, &to) {
        Ok(()) => store.insert_finished_run(run, &created_at, &p.points, &p.evals, final_metrics.as_ref()).await,
        Err(e) => Err(e),
    };
    if added.is_err() {
        // Nothing of a run that did not enter the store stays behind.
        let _ = std::fs::remove_dir_all(&to);
    }
    added
}

/// The adapter and the series files of `from` into the new run folder `to`.
fn copy_run(from: &Path, to: &Path) -> Result<()> {
    let adapter = to.join("adapter");
    std::fs::create_dir_all(&adapter).map_err(|e| Error::file(&adapter, e))?;
    for entry in std::fs::read_dir(from.join("adapter")).map_err(|e| Error::file(from, e))? {
        let entry = entry.map_err(|e| Error::file(from, e))?;
        if entry.file_type().map_err(|e| Error::file(entry.path(), e))?.is_file() {
            std::fs::copy(entry.path(), adapter.join(entry.file_name())).map_err(|e| Error::file(entry.path(), e))?;
        }
    }
    for f in ["metrics.jsonl", "evals.jsonl", RUN_FILE] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).map_err(|e| Error::file(from.join(f), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder as an older `train` left it: run.json without method or task options.
    #[test]
    fn an_older_run_file_reads_as_a_gfn_run_without_task_options() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("old-run");
        std::fs::create_dir_all(run.join("adapter")).unwrap();
        std::fs::write(run.join("adapter/adapter_config.json"), "{}").unwrap();
        let cfg = serde_json::to_value(TrainConfig { steps: 2, ..TrainConfig::default() }).unwrap();
        std::fs::write(run.join(RUN_FILE), serde_json::json!({"task": "rng", "model": "m.gguf", "config": cfg}).to_string()).unwrap();
        let step = |s: usize| {
            let m = StepMetrics { step: s, loss: s as f64, log_z: None, mean_log_r: -1.0, max_log_r: 0.0, mean_len: 3.0, sampler_ess: None, log_w_std: None, lr: 1e-3, reward_temp: 1.0, grad_norm: 0.5, tokens_per_s: 1.0, traj_per_s: 1.0, sources: [1, 0, 0], buffer_size: 0, seconds: 0.1, phases: None };
            serde_json::to_string(&m).unwrap()
        };
        std::fs::write(run.join("metrics.jsonl"), format!("{}\n{}\n", step(1), step(2))).unwrap();
        let p = prepare(&run, None).unwrap();
        assert_eq!((p.name.as_str(), p.file.method, p.file.task_options.is_none()), ("old-run", Method::Gfn, true));
        assert_eq!(p.points.iter().map(|m| (m.step, m.loss)).collect::<Vec<_>>(), [(1, 1.0), (2, 2.0)]);
        assert!(p.evals.is_empty());
        // A task it does not know, and a folder without a step, are refused.
        std::fs::write(run.join(RUN_FILE), serde_json::json!({"task": "chess", "model": "m.gguf", "config": cfg}).to_string()).unwrap();
        assert!(prepare(&run, None).err().unwrap().to_string().contains("unknown task `chess`"));
        std::fs::write(run.join(RUN_FILE), serde_json::json!({"task": "rng", "model": "m.gguf", "config": cfg}).to_string()).unwrap();
        std::fs::write(run.join("metrics.jsonl"), "\n").unwrap();
        assert!(prepare(&run, None).err().unwrap().to_string().contains("holds no step"));
    }
}
