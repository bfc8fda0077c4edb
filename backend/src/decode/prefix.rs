//! A run of tokens that every sequence of a batch begins with (a few-shot
//! prompt of thousands of tokens before each question) is run once: its keys
//! and values are cached as one row, which the batch's rows then start from.
//! The sampler and the scorer use it; it owns no model state.

use crate::model::{KvCache, LanguageModel, LoraView};
use crate::Result;

/// Sequences sharing fewer leading tokens than this run them each.
pub const MIN_SHARED: usize = 32;

/// Leading tokens common to every sequence, leaving each at least one of its
/// own (the pass that follows must hold each sequence's last position: the
/// next token is predicted from it). 0 for no sequences.
pub fn shared_len<'a>(seqs: impl IntoIterator<Item = &'a [u32]>) -> usize {
    let mut seqs = seqs.into_iter();
    let Some(first) = seqs.next() else { return 0 };
    seqs.fold(first.len().saturating_sub(1), |n, s| {
        let common = first.iter().zip(s).take_while(|(a, b)| a == b).count();
        n.min(common).min(s.len().saturating_sub(1))
    })
}

/// The cache of `seq[..shared]` as one row, when `shared ≥ min_shared` and
/// there are several sequences to share it (`rows > 1`); else `None` and the
/// rows run whole.
pub fn shared_cache(lm: &LanguageModel, seq: &[u32], shared: usize, rows: usize, min_shared: usize, lora: Option<&LoraView>) -> Result<Option<KvCache>> {
    if rows < 2 || shared == 0 || shared < min_shared {
        return Ok(None);
    }
    let mut cache = lm.llama.new_cache();
    lm.llama.forward(&[seq[..shared].to_vec()], &mut cache, lora)?;
    Ok(Some(cache))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_run_leaves_every_sequence_a_token() {
        let len = |s: &[&[u32]]| shared_len(s.iter().copied());
        assert_eq!(len(&[]), 0);
        assert_eq!(len(&[&[1, 2, 3]]), 2);
        assert_eq!(len(&[&[1, 2, 3, 4], &[1, 2, 3, 5]]), 3);
        assert_eq!(len(&[&[1, 2, 3, 4], &[1, 2]]), 1);
        assert_eq!(len(&[&[1, 2], &[2, 2]]), 0);
    }

    /// Prompts behind one long shared run, sampled greedily together (the run
    /// once), give each prompt's tokens and log-probabilities alone (run whole).
    #[test]
    fn sampling_after_a_shared_run_equals_each_prompt_alone() {
        use crate::decode::{sample, SampleConfig};
        use crate::model::tiny::write_tiny_model;
        use candle_core::{DType, Device};
        let dir = tempfile::tempdir().unwrap();
        let lm = LanguageModel::load(&write_tiny_model(dir.path(), 7).unwrap().gguf, &Device::Cpu, DType::F32).unwrap();
        let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
        let shots = enc(&"the cat sat on the mat. 12 + 30 = 42. ".repeat(4));
        let prompts: Vec<Vec<u32>> = ["a hat", "the dog and the cat", "1"].iter().map(|q| [shots.as_slice(), &enc(q)].concat()).collect();
        assert!(shared_len(prompts.iter().map(Vec::as_slice)) >= MIN_SHARED);
        let cfg = SampleConfig { n: 1, max_new_tokens: 8, greedy: true, ..Default::default() };
        let together = sample(&lm, &prompts, &cfg, None, None).unwrap();
        for (p, t) in prompts.iter().zip(&together) {
            let alone = sample(&lm, std::slice::from_ref(p), &cfg, None, None).unwrap().remove(0);
            assert_eq!(alone.tokens, t.tokens);
            for (x, y) in alone.logprobs.iter().zip(&t.logprobs) {
                assert!((x - y).abs() < 1e-4, "alone {x} vs after the shared run {y}");
            }
        }
    }
}
