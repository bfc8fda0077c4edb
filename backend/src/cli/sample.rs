//! `amortize sample`: continuations of one prompt, as text or JSON lines.

use amortize::decode::{self, SampleConfig};
use clap::Args;

use super::ModelArgs;

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (raw text; see --chat).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat format (ChatML: <|im_start|>user …).
    #[arg(long)]
    pub chat: bool,
    /// Number of samples.
    #[arg(short = 'n', long = "num", default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub min_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Greedy decoding (most likely token each step).
    #[arg(long)]
    pub greedy: bool,
    /// Stop once the generated text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object per line: {"text", "tokens", "logprob"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
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
    let prompt = if a.chat {
        format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", a.prompt)
    } else {
        a.prompt.clone()
    };
    let ids = lm.tokenizer.encode(&prompt)?;
    // Folded into the weights where that pays for this many tokens.
    let lora = match lora {
        Some(v) if lm.llama.fold_pays(&v, cfg.n * cfg.max_new_tokens) => Some(lm.llama.fold(&v)?),
        other => other,
    };
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
