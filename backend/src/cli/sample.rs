//! `amortize sample`: continuations of one prompt, as text or JSON lines; or,
//! with `--task`, Z's for the task's first problems drawn as its training
//! draws them, each with its log-reward (`gfn::probe`).

use std::path::PathBuf;

use amortize::decode::{self, SampleConfig};
use amortize::gfn::probe::{draw_scored, ProbeConfig};
use amortize::gfn::Problem;
use amortize::model::{LanguageModel, LoraView};
use clap::Args;

use super::ModelArgs;

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (raw text; see --chat).
    #[arg(long, required_unless_present = "task", conflicts_with = "task")]
    pub prompt: Option<String>,
    /// Instead of a prompt: a task's first problems (see --problems), drawn as
    /// its training draws them — its allowed tokens, stop token, tool and the
    /// config's min_len / max_len — each Z with log R (the task's reward at
    /// T = 1) and log q.
    #[arg(long)]
    pub task: Option<String>,
    /// The task's config file (`train --config`): its options and lengths.
    #[arg(long, requires = "task")]
    pub config: Option<PathBuf>,
    /// How many of the task's problems (its training problems, in order).
    #[arg(long, default_value_t = 4, requires = "task")]
    pub problems: usize,
    /// The index of the first of them (arithmetic: 0–49 are the worked
    /// demonstrations, the first k_shot of them inside the reward's prompt;
    /// the generated questions follow).
    #[arg(long, default_value_t = 0, requires = "task")]
    pub from: usize,
    /// Wrap the prompt in the model's chat format (ChatML: <|im_start|>user …).
    #[arg(long, conflicts_with = "task")]
    pub chat: bool,
    /// Number of samples.
    #[arg(short = 'n', long = "num", default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 64, conflicts_with = "task")]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0, conflicts_with = "task")]
    pub min_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Greedy decoding (most likely token each step).
    #[arg(long, conflicts_with = "task")]
    pub greedy: bool,
    /// Stop once the generated text contains this string (repeatable).
    #[arg(long, conflicts_with = "task")]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object per line: {"text", "tokens", "logprob", "stop"}; with
    /// --task {"problem", "prompt", "text", "tokens", "stopped", "log_q", "log_r"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
    if let Some(task) = &a.task {
        return task_draws(&a, task);
    }
    let Some(prompt) = a.prompt.clone() else { anyhow::bail!("give --prompt or --task") };
    let cfg = SampleConfig {
        n: a.n,
        max_new_tokens: a.max_tokens,
        min_new_tokens: a.min_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        greedy: a.greedy,
        stop_strings: a.stop.clone(),
        seed: a.seed,
        ..SampleConfig::default()
    };
    cfg.validate()?; // before the (slow) model load
    let (lm, lora) = a.model.load()?;
    let prompt = if a.chat { format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n") } else { prompt };
    let ids = lm.tokenizer.encode(&prompt)?;
    // Folded into the weights where that pays for this many tokens.
    let lora = folded(&lm, lora, cfg.n * cfg.max_new_tokens)?;
    let samples = decode::sample(&lm, &[ids], &cfg, lora.as_ref(), None)?;
    for s in samples {
        if a.json {
            let line = serde_json::json!({"text": s.text, "tokens": s.tokens, "logprob": s.logprob(), "stop": s.stop});
            println!("{line}");
        } else {
            println!("{}", s.text);
            if cfg.n > 1 {
                println!("---");
            }
        }
    }
    Ok(())
}

/// The adapter folded into the weights where that pays for this many tokens.
fn folded(lm: &LanguageModel, lora: Option<LoraView>, tokens: usize) -> anyhow::Result<Option<LoraView>> {
    Ok(match lora {
        Some(v) if lm.llama.fold_pays(&v, tokens) => Some(lm.llama.fold(&v)?),
        other => other,
    })
}

/// `--task`: the task's first problems, drawn its way, with their rewards.
fn task_draws(a: &SampleArgs, name: &str) -> anyhow::Result<()> {
    let (task, cfg) = super::train::task_and_config(name, a.config.as_deref())?;
    if a.problems == 0 {
        anyhow::bail!("invalid --problems: must be at least 1");
    }
    let pc = ProbeConfig { n: a.n, lengths: (cfg.min_len, cfg.max_len), temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    pc.validate()?; // before the (slow) model load
    let (lm, lora) = a.model.load()?;
    let train = task.train_task(&lm)?;
    if a.from >= train.problems.len() {
        anyhow::bail!("invalid --from: the task has {} problems (0 to {})", train.problems.len(), train.problems.len().saturating_sub(1));
    }
    let problems: Vec<&Problem> = train.problems.iter().skip(a.from).take(a.problems).collect();
    let prompts: Vec<Vec<u32>> = problems.iter().map(|p| p.policy_prompt.clone()).collect();
    let lora = folded(&lm, lora, a.n * problems.len() * cfg.max_len)?;
    let drawn = draw_scored(&lm, &train, lora.as_ref(), &problems, &prompts, &pc)?;
    for (k, (p, group)) in (a.from..).zip(problems.iter().zip(drawn)) {
        let prompt = lm.tokenizer.decode(&p.policy_prompt, false)?;
        if !a.json {
            println!("# problem {k}: {prompt}");
        }
        for d in group {
            if a.json {
                let line = serde_json::json!({"problem": k, "prompt": prompt, "text": d.text, "tokens": d.trajectory.tokens, "stopped": d.stopped, "log_q": d.log_q, "log_r": d.log_r});
                println!("{line}");
            } else {
                println!("log R {:>9.3}  log q {:>9.3}  {}{}", d.log_r, d.log_q, d.text, if d.stopped { "" } else { "  (cut at max_len)" });
            }
        }
    }
    Ok(())
}
