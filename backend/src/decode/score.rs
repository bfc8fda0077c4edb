//! Scoring: `log p(continuation | context)` per token, for a batch of pairs,
//! with an adapter or with the base model. One teacher-forced pass per chunk of
//! rows; logits are computed only where a continuation token is predicted.
//!
//! Contexts that all begin with the same long run of tokens run it once
//! ([`super::prefix`]): every chunk's rows start from a copy of its cached keys
//! and values. Chunks are sized so their cache stays under a byte budget.

use std::ops::Range;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::logits::log_softmax_in_place;
use super::prefix::{shared_cache, shared_len, MIN_SHARED};
use crate::model::{KvCache, LanguageModel, LoraView};
use crate::{Error, Result};

/// Per-token log-probabilities of one continuation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scored {
    pub logprobs: Vec<f32>,
    pub total: f32,
}

/// Scores each `(context, continuation)`; the context must not be empty (use the
/// first token of a text as its context to score the rest). Rows are run in
/// chunks of at most `batch_size` (fewer when long rows would make the chunk's
/// cache larger than a GiB on the CPU, two on a GPU).
pub fn score(lm: &LanguageModel, pairs: &[(Vec<u32>, Vec<u32>)], lora: Option<&LoraView>, batch_size: usize) -> Result<Vec<Scored>> {
    score_sharing(lm, pairs, lora, batch_size, MIN_SHARED)
}

/// [`score`], sharing a common context prefix of at least `min_shared` tokens.
fn score_sharing(lm: &LanguageModel, pairs: &[(Vec<u32>, Vec<u32>)], lora: Option<&LoraView>, batch_size: usize, min_shared: usize) -> Result<Vec<Scored>> {
    let ctx = lm.config().max_position_embeddings;
    for (i, (c, x)) in pairs.iter().enumerate() {
        if c.is_empty() {
            return Err(Error::invalid("context", format!("item {i}: context is empty")));
        }
        if c.len() + x.len() > ctx {
            return Err(Error::TooLong { len: c.len() + x.len(), max: ctx });
        }
    }
    let budget = if lm.device().is_cpu() { 1usize << 30 } else { 2usize << 30 };
    let per_position = cache_bytes_per_position(lm);
    let contexts: Vec<&[u32]> = pairs.iter().map(|(c, _)| c.as_slice()).collect();
    let mut out = Vec::with_capacity(pairs.len());
    for (run, shared) in runs(&contexts, min_shared.max(1)) {
        let run = &pairs[run];
        let base = shared_cache(lm, &run[0].0, shared, run.len(), min_shared, lora)?;
        let shared = if base.is_some() { shared } else { 0 };
        let mut done = 0;
        while done < run.len() {
            crate::cancel::check()?;
            crate::progress::report("scoring", out.len(), pairs.len());
            let chunk = &run[done..done + rows_that_fit(&run[done..], shared, batch_size, per_position, budget)];
            done += chunk.len();
            let cache = match &base {
                Some(b) => b.select(&vec![0; chunk.len()])?,
                None => lm.llama.new_cache(),
            };
            out.extend(score_chunk(lm, chunk, shared, cache, lora)?);
        }
    }
    crate::progress::report("scoring", out.len(), pairs.len());
    Ok(out)
}

/// Scores `chunk` after `cache` (empty, or holding the `shared` leading
/// tokens of every context as rows of their own).
fn score_chunk(lm: &LanguageModel, chunk: &[(Vec<u32>, Vec<u32>)], shared: usize, mut cache: KvCache, lora: Option<&LoraView>) -> Result<Vec<Scored>> {
    let rows: Vec<Vec<u32>> = chunk.iter().map(|(c, x)| [&c[shared..], x.as_slice()].concat()).collect();
    let hidden = lm.llama.forward(&rows, &mut cache, lora)?; // [B, T, H]
    drop(cache);
    let (b, t, h) = hidden.dims3()?;
    // Row r's continuation token j sits at T - len(x) + j, predicted from one before.
    let mut idx = Vec::new();
    for (r, (_, x)) in chunk.iter().enumerate() {
        for j in 0..x.len() {
            idx.push((r * t + t - x.len() + j - 1) as u32);
        }
    }
    if idx.is_empty() {
        return Ok(chunk.iter().map(|_| Scored { logprobs: vec![], total: 0.0 }).collect());
    }
    let picked = hidden.reshape((b * t, h))?.index_select(&Tensor::new(idx, lm.device())?, 0)?;
    let logits: Vec<Vec<f32>> = lm.llama.logits(&picked)?.to_vec2()?;
    let mut logits = logits.into_iter();
    let mut out = Vec::with_capacity(chunk.len());
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
    Ok(out)
}

/// Splits consecutive contexts into runs scored together, each with the
/// leading tokens all of its contexts share (0: run whole). A shared run
/// starts where two neighbours share at least `min_shared` tokens and takes
/// the next context while the run still shares that many and at least half
/// of what its first two share (a few-shot prompt's many continuations, not
/// the few words every prompt starts with). The contexts between shared runs
/// form unshared runs.
fn runs(contexts: &[&[u32]], min_shared: usize) -> Vec<(Range<usize>, usize)> {
    let pair = |i: usize, j: usize| shared_len([contexts[i], contexts[j]]);
    let starts_shared = |i: usize| i + 1 < contexts.len() && pair(i, i + 1) >= min_shared;
    let mut out = Vec::new();
    let mut i = 0;
    while i < contexts.len() {
        let mut j = i + 1;
        if starts_shared(i) {
            let first = pair(i, i + 1);
            let mut shared = first;
            while j < contexts.len() {
                let s = shared.min(pair(i, j));
                if s < min_shared || s < first / 2 {
                    break;
                }
                shared = s;
                j += 1;
            }
            out.push((i..j, shared));
        } else {
            while j < contexts.len() && !starts_shared(j) {
                j += 1;
            }
            out.push((i..j, 0));
        }
        i = j;
    }
    out
}

/// Bytes of keys and values one cached position holds over all layers.
fn cache_bytes_per_position(lm: &LanguageModel) -> usize {
    let c = lm.config();
    c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * lm.llama.dtype().size_in_bytes()
}

/// How many of `pairs` (at least one) the next chunk takes: at most
/// `batch_size`, and while the chunk's cache (`shared` plus its longest row)
/// stays within `budget` bytes.
fn rows_that_fit(pairs: &[(Vec<u32>, Vec<u32>)], shared: usize, batch_size: usize, per_position: usize, budget: usize) -> usize {
    let mut longest = 0;
    for (n, (c, x)) in pairs.iter().take(batch_size.max(1)).enumerate() {
        longest = longest.max(c.len() + x.len() - shared);
        if n > 0 && (n + 1) * (shared + longest) * per_position > budget {
            return n;
        }
    }
    pairs.len().min(batch_size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(c: &[u32], x: &[u32]) -> (Vec<u32>, Vec<u32>) {
        (c.to_vec(), x.to_vec())
    }

    /// A long common prefix run once, in chunks of any size, scores as every
    /// row run whole (tiny random model through the real loader, with an adapter).
    #[test]
    fn sharing_the_prefix_and_chunking_leave_the_scores_unchanged() {
        use crate::model::{tiny::write_tiny_model, LoraAdapter, LoraConfig, Mode, Proj};
        use candle_core::{DType, Device};
        let dir = tempfile::tempdir().unwrap();
        let lm = LanguageModel::load(&write_tiny_model(dir.path(), 7).unwrap().gguf, &Device::Cpu, DType::F32).unwrap();
        let adapter = LoraAdapter::new(lm.config(), LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec![Proj::Q, Proj::V] }, &Device::Cpu, 3).unwrap();
        for v in adapter.vars().iter().filter(|v| v.dims()[1] == 2) {
            let t = (v.as_tensor().ones_like().unwrap() * 0.2).unwrap();
            v.set(&t).unwrap();
        }
        let view = adapter.view(Mode::Infer, DType::F32).unwrap();
        let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
        let shots = enc(&"the cat sat on the mat. 12 + 30 = 42. ".repeat(4));
        let other = enc(&"a dog ran to the park and back. ".repeat(4));
        let mut pairs: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
        for shots in [&shots, &other] {
            for q in ["a hat", "the dog and the cat", "1", "sat on"] {
                pairs.extend([" yes", " no, it is not"].map(|y| ([shots.as_slice(), &enc(q)].concat(), enc(y))));
            }
            pairs.push((enc("the"), enc(" end")));
        }
        let contexts: Vec<&[u32]> = pairs.iter().map(|(c, _)| c.as_slice()).collect();
        assert_eq!(runs(&contexts, MIN_SHARED), vec![(0..8, shots.len()), (8..9, 0), (9..17, other.len()), (17..18, 0)]);
        let whole = score_sharing(&lm, &pairs, Some(&view), 8, usize::MAX).unwrap();
        for batch in [1, 3, 8] {
            for (a, b) in whole.iter().zip(score_sharing(&lm, &pairs, Some(&view), batch, MIN_SHARED).unwrap()) {
                assert_eq!(a.logprobs.len(), b.logprobs.len());
                for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                    assert!((x - y).abs() < 1e-4, "batch {batch}: whole rows {x} vs shared prefix {y}");
                }
            }
        }
    }

    #[test]
    fn runs_share_a_long_prefix_and_leave_the_rest_whole() {
        let shots: Vec<u32> = (100..140).collect(); // 40 tokens
        let with = |q: &[u32]| [shots.as_slice(), q].concat();
        let other: Vec<u32> = (200..240).collect();
        let ctx: Vec<Vec<u32>> = vec![vec![1, 2], with(&[1]), with(&[2, 3]), with(&[4]), vec![5], [&other[..], &[6]].concat(), [&other[..], &[7]].concat(), vec![8]];
        let refs: Vec<&[u32]> = ctx.iter().map(Vec::as_slice).collect();
        assert_eq!(runs(&refs, 32), vec![(0..1, 0), (1..4, 40), (4..5, 0), (5..7, 40), (7..8, 0)]);
        // Nothing long enough to share: one unshared run.
        assert_eq!(runs(&refs, 41), vec![(0..8, 0)]);
        // A context that shares less than half of the run's prefix (here 15
        // of 40 tokens) ends it, and starts the next run.
        let short = [&shots[..15], &[9, 9]].concat();
        let refs2: Vec<&[u32]> = vec![&ctx[1], &ctx[2], &short, &short];
        assert_eq!(runs(&refs2, 10), vec![(0..2, 40), (2..4, 16)]);
        assert!(runs(&[], 32).is_empty());
    }

    #[test]
    fn chunks_stay_within_the_budget_and_take_at_least_one_row() {
        let pairs = vec![pair(&[1; 10], &[2; 5]); 8];
        // Each row holds 15 positions of 1 byte in the chunk's cache, shared or not.
        assert_eq!(rows_that_fit(&pairs, 0, 4, 1, 1000), 4);
        assert_eq!(rows_that_fit(&pairs, 0, 100, 1, 1000), 8);
        assert_eq!(rows_that_fit(&pairs, 0, 100, 1, 45), 3);
        assert_eq!(rows_that_fit(&pairs, 5, 100, 1, 45), 3);
        assert_eq!(rows_that_fit(&pairs, 0, 100, 1, 1), 1);
    }
}
