//! Scoring: `log p(continuation | context)` per token, for a batch of pairs,
//! with an adapter or with the base model. One teacher-forced pass per chunk of
//! rows; logits are computed only where a continuation token is predicted.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::logits::log_softmax_in_place;
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

/// Per-token log-probabilities of one continuation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scored {
    pub logprobs: Vec<f32>,
    pub total: f32,
}

/// Scores each `(context, continuation)`; the context must not be empty (use the
/// first token of a text as its context to score the rest). Rows are run in
/// chunks of `batch_size`.
pub fn score(
    lm: &LanguageModel,
    pairs: &[(Vec<u32>, Vec<u32>)],
    lora: Option<&LoraView>,
    batch_size: usize,
) -> Result<Vec<Scored>> {
    let ctx = lm.config().max_position_embeddings;
    for (i, (c, x)) in pairs.iter().enumerate() {
        if c.is_empty() {
            return Err(Error::invalid("context", format!("item {i}: context is empty")));
        }
        if c.len() + x.len() > ctx {
            return Err(Error::TooLong { len: c.len() + x.len(), max: ctx });
        }
    }
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        crate::cancel::check()?;
        crate::progress::report("scoring", out.len(), pairs.len());
        let rows: Vec<Vec<u32>> = chunk.iter().map(|(c, x)| [c.as_slice(), x.as_slice()].concat()).collect();
        let mut cache = lm.llama.new_cache();
        let hidden = lm.llama.forward(&rows, &mut cache, lora)?; // [B, T, H]
        let (b, t, h) = hidden.dims3()?;
        // Row r's continuation token j sits at T - len(x) + j, predicted from one before.
        let mut idx = Vec::new();
        for (r, (_, x)) in chunk.iter().enumerate() {
            for j in 0..x.len() {
                idx.push((r * t + t - x.len() + j - 1) as u32);
            }
        }
        if idx.is_empty() {
            out.extend(chunk.iter().map(|_| Scored { logprobs: vec![], total: 0.0 }));
            continue;
        }
        let picked = hidden.reshape((b * t, h))?.index_select(&Tensor::new(idx, lm.device())?, 0)?;
        let logits: Vec<Vec<f32>> = lm.llama.logits(&picked)?.to_vec2()?;
        let mut logits = logits.into_iter();
        for (_, x) in chunk {
            let mut lp = Vec::with_capacity(x.len());
            for &tok in x {
                let mut l = logits.next().ok_or_else(|| Error::invalid("score", "internal: logits count"))?;
                log_softmax_in_place(&mut l);
                lp.push(l[tok as usize]);
            }
            let total = lp.iter().sum();
            out.push(Scored { logprobs: lp, total });
        }
    }
    crate::progress::report("scoring", out.len(), pairs.len());
    Ok(out)
}
