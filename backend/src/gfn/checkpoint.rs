//! Checkpoints of a training run under its output directory:
//!
//! ```text
//! OUT/checkpoints/step-000050/  adapter/ (PEFT), optimizer.safetensors,
//!                               logz.safetensors + logz_optimizer.safetensors (TB),
//!                               buffer.json, state.json {step}
//! OUT/checkpoints/latest        name of the newest complete checkpoint
//! OUT/metrics.jsonl             one StepMetrics per line
//! OUT/evals.jsonl               `train --eval-every`: {step, metrics} per evaluation
//! ```
//! A checkpoint is written in a temp directory and renamed into place before
//! `latest` is switched (atomically), so a crash never leaves a half checkpoint
//! behind `latest`. The two newest checkpoints are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};

use super::buffer::ReplayBuffer;
use super::optim::AdamW;
use crate::model::LoraAdapter;
use crate::util::write_atomic;
use crate::{Error, Result};

const KEEP: usize = 2;

#[allow(clippy::too_many_arguments)]
pub fn save(
    out: &Path,
    step: usize,
    adapter: &LoraAdapter,
    base_model: &str,
    opt: &AdamW,
    log_z: &[Var],
    logz_opt: Option<&AdamW>,
    buffer: &ReplayBuffer,
) -> Result<PathBuf> {
    let root = out.join("checkpoints");
    std::fs::create_dir_all(&root)?;
    let name = format!("step-{step:06}");
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    adapter.save_peft(&tmp.join("adapter"), base_model)?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    if let Some(zo) = logz_opt {
        let t: HashMap<String, Tensor> = log_z.iter().enumerate().map(|(i, v)| (format!("log_z.{i}"), v.as_tensor().clone())).collect();
        candle_core::safetensors::save(&t, tmp.join("logz.safetensors"))?;
        zo.save(&tmp.join("logz_optimizer.safetensors"))?;
    }
    buffer.save(&tmp.join("buffer.json"))?;
    write_atomic(&tmp.join("state.json"), serde_json::json!({ "step": step }).to_string().as_bytes())?;
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    // Drop older checkpoints.
    let mut all: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
        .collect();
    all.sort();
    if all.len() > KEEP {
        for old in &all[..all.len() - KEEP] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dir)
}

/// The newest complete checkpoint, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let p = out.join("checkpoints").join("latest");
    if !p.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&p)?;
    let dir = out.join("checkpoints").join(name.trim());
    if !dir.join("state.json").exists() {
        return Err(Error::file(&dir, "checkpoint named by `latest` is incomplete"));
    }
    Ok(Some(dir))
}

/// Restores optimiser, log Z, buffer and step from `dir` (the adapter is loaded by the caller).
pub fn load(dir: &Path, opt: &mut AdamW, log_z: &[Var], logz_opt: Option<&mut AdamW>, buffer: &mut ReplayBuffer, step: &mut usize) -> Result<()> {
    opt.load(&dir.join("optimizer.safetensors"))?;
    if let Some(zo) = logz_opt {
        let path = dir.join("logz.safetensors");
        let t = candle_core::safetensors::load(&path, log_z.first().map(|v| v.device().clone()).as_ref().unwrap_or(&candle_core::Device::Cpu))
            .map_err(|e| Error::file(&path, e))?;
        for (i, v) in log_z.iter().enumerate() {
            let x = t.get(&format!("log_z.{i}")).ok_or_else(|| Error::file(&path, format!("missing log_z.{i}")))?;
            v.set(x)?;
        }
        zo.load(&dir.join("logz_optimizer.safetensors"))?;
    }
    *buffer = ReplayBuffer::load(&dir.join("buffer.json"))?;
    let state_path = dir.join("state.json");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_path)?).map_err(|e| Error::file(&state_path, e))?;
    *step = state["step"].as_u64().ok_or_else(|| Error::file(&state_path, "no step"))? as usize;
    Ok(())
}

/// Drops the lines past `step` of the run's step-keyed streams
/// (`metrics.jsonl`, and `evals.jsonl` of `amortize train --eval-every`):
/// they were written after the checkpoint we resume from.
pub fn truncate_metrics(out: &Path, step: usize) -> Result<()> {
    for file in ["metrics.jsonl", "evals.jsonl"] {
        truncate_steps(&out.join(file), step)?;
    }
    Ok(())
}

fn truncate_steps(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step))
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    write_atomic(path, body.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_cuts_both_streams_at_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (1..=4).map(|s| format!("{{\"step\": {s}}}\n")).collect();
        for file in ["metrics.jsonl", "evals.jsonl"] {
            std::fs::write(dir.path().join(file), &lines).unwrap();
        }
        truncate_metrics(dir.path(), 2).unwrap();
        for file in ["metrics.jsonl", "evals.jsonl"] {
            assert_eq!(std::fs::read_to_string(dir.path().join(file)).unwrap(), "{\"step\": 1}\n{\"step\": 2}\n", "{file}");
        }
        // A run without evaluations has no evals.jsonl, and gets none.
        std::fs::remove_file(dir.path().join("evals.jsonl")).unwrap();
        truncate_metrics(dir.path(), 1).unwrap();
        assert!(!dir.path().join("evals.jsonl").exists());
    }
}
