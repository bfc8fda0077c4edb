//! Beam search and diverse beam search (Vijayakumar et al. 2018): beams are
//! split into groups; each group, in turn, picks its continuations with a
//! Hamming penalty on tokens that earlier groups chose at the same step.
//! Plain beam search is one group; greedy is one beam.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::logits::{log_softmax_in_place, TokenMask};
use crate::model::{LanguageModel, LoraView};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BeamConfig {
    /// Total beams (a multiple of `groups`).
    pub beams: usize,
    pub groups: usize,
    /// Hamming diversity strength λ (only with more than one group).
    pub diversity_penalty: f32,
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    /// Ranking score is `logprob / len^length_penalty`.
    pub length_penalty: f32,
    pub mask: TokenMask,
    pub mask_penalty: f32,
    /// `None`: the tokenizer's EOS-like tokens.
    pub stop_tokens: Option<Vec<u32>>,
}

impl Default for BeamConfig {
    fn default() -> Self {
        BeamConfig {
            beams: 4,
            groups: 1,
            diversity_penalty: 0.0,
            max_new_tokens: 32,
            min_new_tokens: 0,
            length_penalty: 0.0,
            mask: TokenMask::None,
            mask_penalty: -99.0,
            stop_tokens: None,
        }
    }
}

impl BeamConfig {
    pub fn validate(&self) -> Result<()> {
        if self.beams == 0 || self.groups == 0 || !self.beams.is_multiple_of(self.groups) {
            return Err(Error::invalid("beams", "beams must be a positive multiple of groups"));
        }
        if self.max_new_tokens == 0 || self.min_new_tokens > self.max_new_tokens {
            return Err(Error::invalid("max_new_tokens", "need 0 ≤ min_new_tokens ≤ max_new_tokens, max ≥ 1"));
        }
        if !self.diversity_penalty.is_finite() || self.diversity_penalty < 0.0 {
            return Err(Error::invalid("diversity_penalty", "must be ≥ 0"));
        }
        Ok(())
    }
}

/// One finished (or length-capped) beam.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    pub text: String,
    /// Sum of log-probabilities (masks applied), without diversity penalties.
    pub logprob: f32,
    pub group: usize,
    pub finished: bool,
}

#[derive(Clone)]
struct Beam {
    tokens: Vec<u32>,
    logprob: f32,
    /// Row of the cache (and of the last logits) holding this beam's state.
    row: usize,
}

/// Runs (diverse) beam search from one prompt; returns up to `beams`
/// hypotheses, best first, at most `beams / groups` from each group.
pub fn beam_search(lm: &LanguageModel, prompt: &[u32], cfg: &BeamConfig, lora: Option<&LoraView>) -> Result<Vec<Hypothesis>> {
    cfg.validate()?;
    if prompt.is_empty() {
        return Err(Error::invalid("prompt", "empty prompt"));
    }
    let ctx = lm.config().max_position_embeddings;
    if prompt.len() + cfg.max_new_tokens > ctx {
        return Err(Error::TooLong { len: prompt.len() + cfg.max_new_tokens, max: ctx });
    }
    let stop_ids = cfg.stop_tokens.clone().unwrap_or_else(|| lm.tokenizer.stop_ids.clone());
    let bias = cfg.mask.bias(lm.config().vocab_size, cfg.mask_penalty);
    let per_group = cfg.beams / cfg.groups;
    let rank = |lp: f32, len: usize| lp / (len.max(1) as f32).powf(cfg.length_penalty);

    let mut cache = lm.llama.new_cache();
    let hidden = lm.llama.forward(&[prompt.to_vec()], &mut cache, lora)?;
    let t = hidden.dim(1)?;
    let mut last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?; // [rows, H]
    // Start: one live beam per group, all on the prompt's row.
    let mut groups: Vec<Vec<Beam>> = vec![vec![Beam { tokens: vec![], logprob: 0.0, row: 0 }]; cfg.groups];
    let mut done: Vec<Vec<Hypothesis>> = vec![Vec::new(); cfg.groups];

    for step in 0..cfg.max_new_tokens {
        crate::cancel::check()?;
        let logits: Vec<Vec<f32>> = lm.llama.logits(&last)?.to_vec2()?;
        let logp: Vec<Vec<f32>> = logits
            .into_iter()
            .map(|mut l| {
                if let Some(b) = &bias {
                    l.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                }
                if step < cfg.min_new_tokens {
                    for &s in &stop_ids {
                        if let Some(x) = l.get_mut(s as usize) {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                log_softmax_in_place(&mut l);
                l
            })
            .collect();
        // How often earlier groups chose each token at this step.
        let mut used: HashMap<u32, usize> = HashMap::new();
        for (g, beams) in groups.iter_mut().enumerate() {
            // Candidates: (selection score, parent beam, token, new logprob).
            let mut cand: Vec<(f32, usize, u32, f32)> = Vec::new();
            for (bi, beam) in beams.iter().enumerate() {
                let lp = &logp[beam.row];
                let mut top: Vec<(f32, u32)> = lp
                    .iter()
                    .enumerate()
                    .map(|(tok, &l)| {
                        let pen = cfg.diversity_penalty * used.get(&(tok as u32)).copied().unwrap_or(0) as f32;
                        (beam.logprob + l - pen, tok as u32)
                    })
                    .collect();
                let k = (2 * per_group).min(top.len());
                top.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                top.truncate(k);
                cand.extend(top.into_iter().map(|(sel, tok)| (sel, bi, tok, beam.logprob + lp[tok as usize])));
            }
            cand.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut next = Vec::new();
            for (sel, bi, tok, lp) in cand {
                if next.len() >= per_group || sel == f32::NEG_INFINITY {
                    break;
                }
                let mut tokens = beams[bi].tokens.clone();
                tokens.push(tok);
                *used.entry(tok).or_default() += 1;
                if stop_ids.contains(&tok) {
                    done[g].push(hyp(lm, tokens, lp, g, true)?);
                } else {
                    next.push(Beam { tokens, logprob: lp, row: beams[bi].row });
                }
            }
            // Keep the best `per_group` finished; stop the group once no live beam beats them.
            done[g].sort_by(|a, b| rank(b.logprob, b.tokens.len()).total_cmp(&rank(a.logprob, a.tokens.len())));
            done[g].truncate(per_group);
            if done[g].len() >= per_group {
                let worst = done[g].iter().map(|h| rank(h.logprob, h.tokens.len())).fold(f32::INFINITY, f32::min);
                if next.iter().all(|b| rank(b.logprob, b.tokens.len()) <= worst) {
                    next.clear();
                }
            }
            *beams = next;
        }
        let live: Vec<&mut Beam> = groups.iter_mut().flatten().collect();
        if live.is_empty() || step + 1 == cfg.max_new_tokens {
            break;
        }
        let parent_rows: Vec<usize> = live.iter().map(|b| b.row).collect();
        let feed: Vec<Vec<u32>> = live.iter().map(|b| vec![*b.tokens.last().unwrap_or(&0)]).collect();
        for (i, b) in live.into_iter().enumerate() {
            b.row = i;
        }
        cache = cache.select(&parent_rows)?;
        let hidden = lm.llama.forward(&feed, &mut cache, lora)?;
        last = hidden.narrow(1, 0, 1)?.squeeze(1)?;
    }
    // Length-capped beams count as (unfinished) hypotheses.
    let mut out = Vec::new();
    for (g, beams) in groups.into_iter().enumerate() {
        for b in beams {
            done[g].push(hyp(lm, b.tokens, b.logprob, g, false)?);
        }
        done[g].sort_by(|a, b| rank(b.logprob, b.tokens.len()).total_cmp(&rank(a.logprob, a.tokens.len())));
        done[g].truncate(per_group);
        out.append(&mut done[g]);
    }
    out.sort_by(|a, b| rank(b.logprob, b.tokens.len()).total_cmp(&rank(a.logprob, a.tokens.len())));
    Ok(out)
}

fn hyp(lm: &LanguageModel, tokens: Vec<u32>, logprob: f32, group: usize, finished: bool) -> Result<Hypothesis> {
    Ok(Hypothesis { text: lm.tokenizer.decode(&tokens, true)?, tokens, logprob, group, finished })
}
