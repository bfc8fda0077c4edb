//! `amortize score`: log p(text | context) per token.

use amortize::decode;
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
    #[arg(long)]
    pub context: Option<String>,
    /// Print {"tokens", "logprobs", "total"} as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
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
