//! Many short continuations of each cached row in one pass, without copying
//! the cache: the branches of a row sit side by side in that row, each one
//! attending only to the row's cached positions before its own start and to its
//! own earlier tokens (a block mask), with positions that continue from its
//! start. The prefix-shared reward scores Y after every prefix of Z this way.
//!
//! Owns only this masking; the layers are `Llama::run`'s.

use candle_core::Tensor;

use super::cache::KvCache;
use super::llama::{Llama, MASKED};
use super::lora::LoraView;
use crate::{Error, Result};

impl Llama {
    /// Runs `feed` after each start in `starts[b]` (a cache length of row `b`:
    /// the branch sees that row's valid cached positions `< start`). Branch `i`
    /// of row `b` occupies positions `i·m..(i+1)·m` of the output [B, T, hidden],
    /// m = `feed.len()`, T = m × (most branches of a row); rows with fewer branches
    /// are padded at the end. The new positions enter the cache as invalid, so
    /// later calls do not see the branches.
    pub fn forward_branches(&self, starts: &[Vec<usize>], feed: &[u32], cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let b = starts.len();
        let m = feed.len();
        if b == 0 || m == 0 {
            return Err(Error::invalid("branches", "need at least one row and one token"));
        }
        if cache.batch_size() != b {
            return Err(Error::invalid("batch", format!("{b} rows of branches for a cache of {}", cache.batch_size())));
        }
        let s0 = cache.len();
        if let Some(&bad) = starts.iter().flatten().find(|&&e| e > s0) {
            return Err(Error::invalid("branches", format!("start {bad} is past the cache's {s0} positions")));
        }
        let vocab = self.config.vocab_size as u32;
        if let Some(&tok) = feed.iter().find(|&&t| t >= vocab) {
            return Err(Error::invalid("token", format!("id {tok} outside the vocabulary of {vocab}")));
        }
        let n = starts.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let t = n * m;
        let s = s0 + t;
        let mut ids = Vec::with_capacity(b * t);
        let mut pos = Vec::with_capacity(b * t);
        let mut mask = vec![MASKED; b * t * s];
        for (r, row_starts) in starts.iter().enumerate() {
            let valid = &cache.valid[r];
            // Real tokens before each cache position: the position id after it.
            let mut before = Vec::with_capacity(s0 + 1);
            let mut count = 0;
            before.push(0);
            for &v in valid.iter() {
                count += usize::from(v);
                before.push(count);
            }
            for i in 0..n {
                let start = row_starts.get(i).copied();
                for (k, &tok) in feed.iter().enumerate().take(m) {
                    let q = i * m + k;
                    ids.push(tok);
                    pos.push((start.map_or(0, |e| before[e]) + k) as u32);
                    let row = &mut mask[(r * t + q) * s..(r * t + q + 1) * s];
                    if let Some(e) = start {
                        for (key, x) in row.iter_mut().enumerate().take(e) {
                            if valid[key] {
                                *x = 0.0;
                            }
                        }
                        for x in &mut row[s0 + i * m..=s0 + q] {
                            *x = 0.0;
                        }
                    } else {
                        row[s0 + q] = 0.0; // padding: only itself
                    }
                }
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), self.device())?;
        let hidden = self.run(ids, pos, mask, (b, t), cache, lora)?;
        for v in cache.valid.iter_mut() {
            v.extend(std::iter::repeat_n(false, t));
        }
        Ok(hidden)
    }
}
