//! `amortize score`: log p(text | context) per token; or, with `--task`, a
//! text's log-reward as a Z of one of the task's problems (`gfn::probe`).

use std::path::PathBuf;

use amortize::decode;
use amortize::gfn::probe;
use clap::Args;

use super::ModelArgs;

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score.
    #[arg(long)]
    pub text: String,
    /// Condition on this context (scored tokens are the text's).
    #[arg(long, conflicts_with = "task")]
    pub context: Option<String>,
    /// Rate the text as a Z of this task's problem (see --problem): log R,
    /// the task's reward at T = 1, with the tool's answers (arithmetic: the
    /// calculator's, after each '=') as the task would have written them.
    #[arg(long)]
    pub task: Option<String>,
    /// The task's config file (`train --config`): its options.
    #[arg(long, requires = "task")]
    pub config: Option<PathBuf>,
    /// The problem's index among the task's training problems (what
    /// `sample --task` prints as "problem K").
    #[arg(long, default_value_t = 0, requires = "task")]
    pub problem: usize,
    /// Print {"tokens", "logprobs", "total"} as JSON; with --task
    /// {"problem", "prompt", "text", "actions", "log_r"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    if let Some(task) = &a.task {
        return rate(&a, task);
    }
    let (lm, lora) = a.model.load()?;
    let text = lm.tokenizer.encode(&a.text)?;
    // Without a context, the first token is the context of the rest (no BOS is added).
    let (tokens, pair) = match &a.context {
        Some(c) => {
            let ctx = lm.tokenizer.encode(c)?;
            if ctx.is_empty() {
                anyhow::bail!("invalid context: it encodes to no tokens");
            }
            (text.clone(), (ctx, text))
        }
        None => {
            if text.len() < 2 {
                anyhow::bail!("invalid text: need at least 2 tokens to score without --context");
            }
            (text.clone(), (text[..1].to_vec(), text[1..].to_vec()))
        }
    };
    let scored = decode::score(&lm, &[pair], lora.as_ref(), 1)?.remove(0);
    if a.json {
        println!("{}", serde_json::json!({"tokens": tokens, "logprobs": scored.logprobs, "total": scored.total}));
    } else {
        let offset = tokens.len() - scored.logprobs.len();
        for (i, lp) in scored.logprobs.iter().enumerate() {
            let id = tokens[offset + i];
            println!("{id:>7} {lp:>10.4}  {:?}", lm.tokenizer.decode(&[id], false)?);
        }
        println!("total {:.4}", scored.total);
    }
    Ok(())
}

/// `--task`: the text's log-reward as a Z of the task's problem.
fn rate(a: &ScoreArgs, name: &str) -> anyhow::Result<()> {
    if a.model.adapter.is_some() {
        anyhow::bail!("invalid --adapter: with --task the text is rated by the task's reward, which has its own model");
    }
    let (task, _) = super::train::task_and_config(name, a.config.as_deref())?;
    let (lm, _) = a.model.load()?;
    let train = task.train_task(&lm)?;
    let Some(problem) = train.problems.get(a.problem) else {
        anyhow::bail!("invalid --problem: the task has {} problems (0 to {})", train.problems.len(), train.problems.len().saturating_sub(1));
    };
    let (t, log_r) = probe::rate(&lm, &train, problem, std::slice::from_ref(&a.text))?.remove(0);
    let prompt = lm.tokenizer.decode(&problem.policy_prompt, false)?;
    if a.json {
        println!("{}", serde_json::json!({"problem": a.problem, "prompt": prompt, "text": a.text, "actions": t.num_actions(), "log_r": log_r}));
    } else {
        println!("# problem {}: {prompt}", a.problem);
        println!("log R {log_r:>9.3}  {}  ({} actions)", a.text, t.num_actions());
    }
    Ok(())
}
