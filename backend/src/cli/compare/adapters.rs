//! The adapters `compare` trains when they are missing — GFlowNet, PPO, SFT
//! and the EM step (SFT on accepted GFlowNet samples) — each in its own
//! folder under `--out`, reused by a later call when its `adapter/` exists.

use std::ops::ControlFlow;
use std::path::Path;

use amortize::baselines::{train_gfn_sft, train_sft, EmConfig, Ppo, PpoConfig, SftConfig};
use amortize::gfn::{TrainConfig, Trainer};
use amortize::model::{LanguageModel, LoraAdapter};
use amortize::tasks::Task;
use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(len: usize, label: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(ProgressStyle::with_template("{prefix:>10} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    b.set_prefix(label.to_string());
    b
}

fn trained(dir: &Path) -> bool {
    dir.join("adapter").join("adapter_config.json").exists()
}

fn load(lm: &LanguageModel, dir: &Path) -> anyhow::Result<LoraAdapter> {
    Ok(LoraAdapter::load_peft(&dir.join("adapter"), lm.config(), lm.device())?)
}

/// GFlowNet fine-tuning with the task preset, or the adapter of an earlier call.
pub fn gfn(lm: &LanguageModel, task: &dyn Task, cfg: &TrainConfig, dir: &Path) -> anyhow::Result<LoraAdapter> {
    if !trained(dir) {
        if dir.join("checkpoints").exists() {
            std::fs::remove_dir_all(dir.join("checkpoints"))?;
        }
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        let mut t = Trainer::new(lm, task.train_task(lm)?, cfg.clone(), Some(dir))?;
        let b = bar(cfg.steps, "gfn");
        t.run(|m| {
            b.set_position(m.step as u64);
            b.set_message(format!("loss {:.3}  log R {:.2}", m.loss, m.mean_log_r));
            ControlFlow::Continue(())
        })?;
        b.finish();
        t.adapter.save_peft(&dir.join("adapter"), &lm.name)?;
    } else {
        eprintln!("gfn: reusing {}", dir.join("adapter").display());
    }
    load(lm, dir)
}

/// PPO against the task's reward, or the adapter of an earlier call.
pub fn ppo(lm: &LanguageModel, task: &dyn Task, shape: &TrainConfig, cfg: &PpoConfig, dir: &Path) -> anyhow::Result<LoraAdapter> {
    if !trained(dir) {
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        let mut p = Ppo::new(lm, task.train_task(lm)?, shape.clone(), cfg.clone())?;
        let b = bar(cfg.steps, "ppo");
        p.run(Some(dir), |m| {
            b.set_position(m.step as u64);
            b.set_message(format!("log R {:.2}  KL {:.2}", m.mean_log_r, m.kl));
            ControlFlow::Continue(())
        })?;
        b.finish();
    } else {
        eprintln!("ppo: reusing {}", dir.join("adapter").display());
    }
    load(lm, dir)
}

/// Supervised fine-tuning on the task's reference Z's, or the adapter of an earlier call.
pub fn sft(lm: &LanguageModel, task: &dyn Task, shape: &TrainConfig, cfg: &SftConfig, dir: &Path) -> anyhow::Result<LoraAdapter> {
    if !trained(dir) {
        let b = bar(0, "sft");
        train_sft(lm, &task.train_task(lm)?, shape, cfg, Some(dir), |m| {
            b.set_position(m.step as u64);
            b.set_message(format!("epoch {}  loss {:.3}", m.epoch, m.loss));
            ControlFlow::Continue(())
        })?;
        b.finish();
    } else {
        eprintln!("sft: reusing {}", dir.join("adapter").display());
    }
    load(lm, dir)
}

/// The EM step on the GFlowNet adapter `gfn_adapter`: SFT on its accepted
/// samples, or the adapter of an earlier call.
pub fn gfn_sft(lm: &LanguageModel, task: &dyn Task, gfn_adapter: &LoraAdapter, shape: &TrainConfig, em: &EmConfig, cfg: &SftConfig, dir: &Path) -> anyhow::Result<LoraAdapter> {
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
    } else {
        eprintln!("gfn+sft: reusing {}", dir.join("adapter").display());
    }
    load(lm, dir)
}
