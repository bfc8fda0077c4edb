//! The EM step (paper §3.2, Table 3's "GFlowNet fine-tuning + supervised
//! fine-tuning"): sample Z's for the training problems from a trained
//! GFlowNet adapter (the E-step's amortized posterior), keep those the task's
//! reward accepts ([`Task::accept`]: the right answer for arithmetic, a vote
//! for the right label for SUBJ), and fine-tune a fresh adapter on them by
//! maximum likelihood with [`train_sft`] (the M-step). Reads the GFlowNet
//! adapter, never changes it; no GFlowNet loss runs here.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::sft::{train_sft, SftConfig, SftMetrics};
use crate::gfn::trainer::sample_trajectories;
use crate::gfn::{TrainConfig, TrainTask, Trajectory};
use crate::model::{LanguageModel, LoraAdapter, LoraView};
use crate::tasks::Task;
use crate::{Error, Result};

/// The `[em]` table of a compare config file (the SFT settings are `[sft]`'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmConfig {
    /// Z's sampled per training problem.
    pub samples: usize,
    /// Sampling temperature of the GFlowNet policy (1: its learned distribution).
    pub temperature: f32,
    /// Only the first N training problems (all when absent).
    pub problems: Option<usize>,
}

impl Default for EmConfig {
    fn default() -> Self {
        EmConfig { samples: 8, temperature: 1.0, problems: None }
    }
}

impl EmConfig {
    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 || self.problems == Some(0) {
            return Err(Error::invalid("em.samples", "samples and problems must be at least 1"));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid("em.temperature", "must be > 0"));
        }
        Ok(())
    }
}

/// What the E-step kept (written to `em.json` beside the adapter).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmStats {
    pub problems: usize,
    pub sampled: usize,
    /// Accepted Z's, duplicates within a problem counted once.
    pub accepted: usize,
    /// Problems with at least one accepted Z.
    pub problems_covered: usize,
}

/// Replaces every problem's reference Z's with the distinct Z's sampled from
/// `policy` that `task` accepts; problems past `cfg.problems` are dropped.
/// Sampling uses the training task's mask, stop token, tool and `lengths`; the
/// draw for problem i uses seed `seed + i`.
pub fn accepted_samples(lm: &LanguageModel, task: &dyn Task, tt: &mut TrainTask, policy: &LoraView, lengths: (usize, usize), cfg: &EmConfig, seed: u64) -> Result<EmStats> {
    cfg.validate()?;
    if let Some(n) = cfg.problems {
        tt.problems.truncate(n);
    }
    let mut stats = EmStats { problems: tt.problems.len(), ..Default::default() };
    let mut drawn: Vec<(usize, Trajectory)> = Vec::new();
    for (i, p) in tt.problems.iter().enumerate() {
        for z in sample_trajectories(lm, tt, policy, p, cfg.samples, lengths, cfg.temperature, seed.wrapping_add(i as u64))? {
            drawn.push((i, z));
        }
    }
    stats.sampled = drawn.len();
    let ok = task.accept(lm, tt, &drawn)?;
    if ok.len() != drawn.len() {
        return Err(Error::invalid("accept", format!("task {} judged {} of {} samples", task.name(), ok.len(), drawn.len())));
    }
    for p in &mut tt.problems {
        p.seeds.clear();
    }
    let mut seen: HashSet<(usize, Vec<u32>)> = HashSet::new();
    for ((i, z), ok) in drawn.into_iter().zip(ok) {
        if ok && !z.tokens.is_empty() && seen.insert((i, z.tokens.clone())) {
            tt.problems[i].seeds.push(z);
        }
    }
    stats.accepted = seen.len();
    stats.problems_covered = tt.problems.iter().filter(|p| !p.seeds.is_empty()).count();
    Ok(stats)
}

/// The EM step end to end: [`accepted_samples`] from the GFlowNet adapter
/// `gfn`, then [`train_sft`] on them; the adapter to `out/adapter` and the
/// statistics to `out/em.json` when `out` is given. Errors when the reward
/// accepted nothing (SFT would have no data).
#[allow(clippy::too_many_arguments)]
pub fn train_gfn_sft(
    lm: &LanguageModel,
    task: &dyn Task,
    gfn: &LoraView,
    shape: &TrainConfig,
    em: &EmConfig,
    sft: &SftConfig,
    out: Option<&Path>,
    on_step: impl FnMut(&SftMetrics) -> ControlFlow<()>,
) -> Result<(LoraAdapter, EmStats)> {
    sft.validate()?;
    let mut tt = task.train_task(lm)?;
    let stats = accepted_samples(lm, task, &mut tt, gfn, (shape.min_len, shape.max_len), em, sft.seed)?;
    if let Some(o) = out {
        std::fs::create_dir_all(o)?;
        crate::util::write_atomic(&o.join("em.json"), serde_json::to_string_pretty(&stats)?.as_bytes())?;
    }
    if stats.accepted == 0 {
        return Err(Error::invalid(
            "method gfn+sft",
            format!("the task's reward accepted none of the {} Z's sampled from the GFlowNet adapter (train it longer, or raise [em] samples)", stats.sampled),
        ));
    }
    let adapter = train_sft(lm, &tt, shape, sft, out, on_step)?;
    Ok((adapter, stats))
}
