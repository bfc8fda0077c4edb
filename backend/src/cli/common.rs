//! Arguments shared by the commands: which model, adapter, device and dtype;
//! how much an evaluation samples.

use std::path::PathBuf;

use amortize::model::{parse_device, parse_dtype, LanguageModel, LoraAdapter, LoraView, Mode};
use anyhow::Context;
use clap::Args;

/// Where `scripts/setup.sh` puts SmolLM2.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// How much an evaluation samples (`eval`, `compare`).
#[derive(Args, Debug, Clone)]
pub struct EvalSize {
    /// Samples (rng) or samples per question; the task's default otherwise.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Test questions per set (tasks with test sets).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A `.gguf` file or a Hugging Face directory (config.json + safetensors + tokenizer.json).
    #[arg(long, default_value = DEFAULT_MODEL, env = "AMORTIZE_MODEL")]
    pub model: PathBuf,
    /// A LoRA adapter directory in the PEFT layout (`train`: the new run's
    /// adapter starts from it, e.g. an SFT adapter; its rank, alpha and
    /// targets must be the config's).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto (the first GPU when the binary was built
    /// with CUDA and one is present, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<(LanguageModel, Option<LoraView>)> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype)?;
        let lm = LanguageModel::load(&self.model, &device, dtype)?;
        let view = match &self.adapter {
            Some(dir) => {
                let a = LoraAdapter::load_peft(dir, lm.config(), &device)
                    .with_context(|| format!("loading adapter {}", dir.display()))?;
                Some(a.view(Mode::Infer, lm.llama.dtype())?)
            }
            None => None,
        };
        Ok((lm, view))
    }
}

/// Draws the engine's stage reports (`amortize::progress`) as a terminal bar
/// while the guard lives: one bar per stage (seeding, drawing samples,
/// scoring, …), cleared when the next stage starts or the guard drops.
/// Nothing is drawn when stderr is not a terminal or with `hidden`.
pub struct StageBar {
    bar: indicatif::ProgressBar,
    _watch: amortize::progress::Watch,
}

impl StageBar {
    pub fn new(hidden: bool) -> StageBar {
        let bar = if hidden { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
        bar.set_style(indicatif::ProgressStyle::with_template("{msg:>32} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        let b = bar.clone();
        let watch = amortize::progress::watch(std::sync::Arc::new(move |stage: &str, done: usize, total: usize| {
            if b.message() != stage {
                b.reset();
                b.set_message(stage.to_string());
            }
            b.set_length(total as u64);
            b.set_position(done as u64);
        }));
        StageBar { bar, _watch: watch }
    }
}

impl Drop for StageBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
