//! Many short continuations of each cached row in one pass, without copying
//! the cache: the branches of a row sit side by side in that row, each one
//! attending only to the row's cached positions before its own start and to its
//! own earlier tokens, with positions that continue from its start. The
//! prefix-shared reward scores Y after every prefix of Z this way.
//!
//! Attention is split so that no query scores another branch's keys: the
//! cached part [T, S0] with a mask, and each branch's own block [m, m] with a
//! causal mask, under one softmax ([`attend_branches`]). A row of n branches
//! thus costs T·(S0 + m) scores instead of T·(S0 + T).
//!
//! Owns only this masking and that attention; the layers are `Llama`'s.

use candle_core::{DType, Tensor};

use super::cache::KvCache;
use super::llama::{Attn, Ctx, Llama, MASKED};
use super::lora::LoraView;
use crate::{Error, Result};

impl Llama {
    /// Runs `feeds[b]` after each start in `starts[b]` (a cache length of row
    /// `b`: the branch sees that row's valid cached positions `< start`). Every
    /// row's feed has the same length m (pad a shorter one at its end: a branch
    /// is causal, so what follows a token does not change its output). Branch `i`
    /// of row `b` occupies positions `i·m..(i+1)·m` of the output [B, T, hidden],
    /// T = m × (most branches of a row); rows with fewer branches are padded at
    /// the end. The new positions enter the cache as invalid, so later calls do
    /// not see the branches.
    pub fn forward_branches(&self, starts: &[Vec<usize>], feeds: &[&[u32]], cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let b = starts.len();
        let m = feeds.first().map_or(0, |f| f.len());
        if b == 0 || m == 0 {
            return Err(Error::invalid("branches", "need at least one row and one token"));
        }
        if feeds.len() != b || feeds.iter().any(|f| f.len() != m) {
            return Err(Error::invalid("branches", format!("{b} rows need {b} feeds of one length")));
        }
        if cache.batch_size() != b {
            return Err(Error::invalid("batch", format!("{b} rows of branches for a cache of {}", cache.batch_size())));
        }
        let s0 = cache.len();
        if let Some(&bad) = starts.iter().flatten().find(|&&e| e > s0) {
            return Err(Error::invalid("branches", format!("start {bad} is past the cache's {s0} positions")));
        }
        let vocab = self.config.vocab_size as u32;
        if let Some(&tok) = feeds.iter().flat_map(|f| f.iter()).find(|&&t| t >= vocab) {
            return Err(Error::invalid("token", format!("id {tok} outside the vocabulary of {vocab}")));
        }
        let n = starts.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let t = n * m;
        let mut ids = Vec::with_capacity(b * t);
        let mut pos = Vec::with_capacity(b * t);
        // Additive mask of the cached positions [B, T, S0]; padding branches see none.
        let mut mask = vec![MASKED; b * t * s0];
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
                for (k, &tok) in feeds[r].iter().enumerate() {
                    let q = i * m + k;
                    ids.push(tok);
                    pos.push((start.map_or(0, |e| before[e]) + k) as u32);
                    if let Some(e) = start {
                        let row = &mut mask[(r * t + q) * s0..(r * t + q + 1) * s0];
                        for (key, x) in row.iter_mut().enumerate().take(e) {
                            if valid[key] {
                                *x = 0.0;
                            }
                        }
                    }
                }
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), self.device())?;
        let hidden = self.run_branches(ids, pos, mask, (n, m), cache, lora)?;
        for v in cache.valid.iter_mut() {
            v.extend(std::iter::repeat_n(false, t));
        }
        Ok(hidden)
    }

    /// The layers over a pass of branches: `ids` [B, T], `pos` row-major [B, T],
    /// `mask` [B, T, S0] over the cached positions. Returns [B, T, hidden].
    fn run_branches(&self, ids: Tensor, pos: Vec<u32>, mask: Vec<f32>, (n, m): (usize, usize), cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let grad = lora.is_some_and(|l| l.tracked);
        let fused = self.fused() && !grad;
        let (rope, mask) = self.composed_inputs(pos, mask, (b, t, cache.len()), grad, fused)?;
        self.layers_over(ids, &Ctx { lora, grad, attn: Attn::Branches { rope, mask, n, m }, fused }, (b, t), cache)
    }
}

/// Attention of a pass of branches. `q` [B, H, T, hd] (scaled by 1/√hd), `k`,
/// `v` [B, KV, S0 + T, hd] (the cache, then this pass's T = n·m tokens),
/// `mask` [B, KV, rep, T, S0] additive over the cached part. Query k of branch
/// i reads the cached keys `mask` lets through and keys i·m..=i·m + k of the
/// pass, under one softmax (in the mask's dtype; `grad` keeps autograd's
/// softmax). Returns [B, T, H·hd] in `dtype`.
pub(super) fn attend_branches(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, (n, m): (usize, usize), dtype: DType, grad: bool) -> Result<Tensor> {
    let (b, nh, t, hd) = q.dims4()?;
    let (_, nkv, s, _) = k.dims4()?;
    let rep = nh / nkv;
    if t != n * m || s < t || nkv * rep != nh {
        return Err(Error::invalid("branches", format!("q {:?}, k {:?}, {n} branches of {m}", q.dims(), k.dims())));
    }
    let s0 = s - t;
    let q = q.reshape((b, nkv, rep * t, hd))?; // query heads grouped by their kv head
    // Own block: [B·KV·rep·n, m, m] (rep·T = rep·n·m rows, so the blocks line up).
    let blocks = |x: &Tensor| -> Result<Tensor> {
        let x = x.narrow(2, s0, t)?.reshape((b, nkv, 1, n, m, hd))?.broadcast_as((b, nkv, rep, n, m, hd))?;
        Ok(x.contiguous()?.reshape((b * nkv * rep * n, m, hd))?)
    };
    // On the CPU in f32 one op per product (candle's batched matmul runs one
    // gemm per matrix, and these are m × m); elsewhere batched matmuls.
    let cpu = q.device().is_cpu() && q.dtype() == DType::F32 && !grad;
    let own_keys = |x: &Tensor| -> Result<Tensor> { Ok(x.narrow(2, s0, t)?.contiguous()?.reshape((b * nkv, t, hd))?) };
    let causal: Vec<f32> = (0..m * m).map(|i| if i % m <= i / m { 0.0 } else { MASKED }).collect();
    let causal = Tensor::from_vec(causal, (m, m), q.device())?.to_dtype(mask.dtype())?;
    let own = if cpu {
        let q = q.contiguous()?.reshape((b * nkv, rep * t, hd))?;
        q.apply_op2_no_bwd(&own_keys(k)?, &BlockProduct { n, m, scores: true })?.reshape((b * nkv * rep * n, m, m))?
    } else {
        q.reshape((b * nkv * rep * n, m, hd))?.matmul(&blocks(k)?.t()?)?
    };
    let own = own.to_dtype(mask.dtype())?.broadcast_add(&causal)?.reshape((b, nkv, rep * t, m))?;
    let scores = if s0 == 0 {
        own
    } else {
        let cached = q.matmul(&k.narrow(2, 0, s0)?.t()?)?.to_dtype(mask.dtype())?; // [B, KV, rep·T, S0]
        let cached = (cached.reshape((b, nkv, rep, t, s0))? + mask)?.reshape((b, nkv, rep * t, s0))?;
        Tensor::cat(&[&cached, &own], 3)?
    };
    let probs = if grad { candle_nn::ops::softmax(&scores, candle_core::D::Minus1)? } else { candle_nn::ops::softmax_last_dim(&scores)? };
    let probs = probs.to_dtype(dtype)?;
    let p_own = probs.narrow(3, s0, m)?.contiguous()?;
    let mut y = if cpu {
        p_own.reshape((b * nkv, rep * t, m))?.apply_op2_no_bwd(&own_keys(v)?, &BlockProduct { n, m, scores: false })?
    } else {
        p_own.reshape((b * nkv * rep * n, m, m))?.matmul(&blocks(v)?)?
    };
    y = y.reshape((b, nkv, rep * t, hd))?;
    if s0 > 0 {
        y = (y + probs.narrow(3, 0, s0)?.contiguous()?.matmul(&v.narrow(2, 0, s0)?)?)?;
    }
    Ok(y.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?)
}

/// The products of each branch with its own block of the pass's keys or values,
/// on the CPU in f32. Left [G, rep·n·m, ·] (row (r, i, j): query j of branch i
/// of repeat r), right [G, n·m, hd] (block i = rows i·m..(i+1)·m):
/// - `scores`: left = queries [.., hd] → [G, rep·n·m, m], q · k of its block;
/// - else: left = probabilities [.., m] → [G, rep·n·m, hd], Σ p · v of its block.
struct BlockProduct {
    n: usize,
    m: usize,
    scores: bool,
}

impl candle_core::CustomOp2 for BlockProduct {
    fn name(&self) -> &'static str {
        "branch-block-product"
    }

    fn cpu_fwd(&self, ls: &candle_core::CpuStorage, ll: &candle_core::Layout, rs: &candle_core::CpuStorage, rl: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let ((g, rows, width), (rg, keys, hd)) = (ll.shape().dims3()?, rl.shape().dims3()?);
        let (n, m) = (self.n, self.m);
        let t = n * m;
        if g != rg || keys != t || t == 0 || rows % t != 0 || width != if self.scores { hd } else { m } || !ll.is_contiguous() || !rl.is_contiguous() {
            candle_core::bail!("branch block product: {:?} and {:?} for {n} branches of {m}", ll.shape(), rl.shape());
        }
        let left = &ls.as_slice::<f32>()?[ll.start_offset()..][..g * rows * width];
        let right = &rs.as_slice::<f32>()?[rl.start_offset()..][..g * t * hd];
        let out_w = if self.scores { m } else { hd };
        let mut out = vec![0f32; g * rows * out_w];
        out.par_chunks_mut(out_w).enumerate().for_each(|(row, o)| {
            let gi = row / rows;
            let i = (row % rows) % t / m; // the row's branch
            let l = &left[row * width..(row + 1) * width];
            let block = &right[(gi * t + i * m) * hd..(gi * t + (i + 1) * m) * hd];
            if self.scores {
                for (jj, x) in o.iter_mut().enumerate() {
                    *x = amortize_cpu_kernels::dot(l, &block[jj * hd..(jj + 1) * hd]);
                }
            } else {
                for (jj, &p) in l.iter().enumerate() {
                    for (x, &v) in o.iter_mut().zip(&block[jj * hd..(jj + 1) * hd]) {
                        *x += p * v;
                    }
                }
            }
        });
        Ok((candle_core::CpuStorage::F32(out), candle_core::Shape::from((g, rows, out_w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Dense attention with the full [T, S0 + T] mask (the form this replaces).
    fn dense(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
        let (b, nh, t, hd) = q.dims4().unwrap();
        let nkv = k.dim(1).unwrap();
        let rep = nh / nkv;
        let k = k.unsqueeze(2).unwrap().broadcast_as((b, nkv, rep, k.dim(2).unwrap(), hd)).unwrap().reshape((b, nh, (), hd)).unwrap();
        let v = v.unsqueeze(2).unwrap().broadcast_as((b, nkv, rep, v.dim(2).unwrap(), hd)).unwrap().reshape((b, nh, (), hd)).unwrap();
        let scores = q.matmul(&k.t().unwrap()).unwrap().broadcast_add(&mask.unsqueeze(1).unwrap()).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        p.matmul(&v.contiguous().unwrap()).unwrap().transpose(1, 2).unwrap().reshape((b, t, nh * hd)).unwrap()
    }

    /// Against dense attention: 2 rows, 3 branches of 2 tokens, 4 query heads
    /// over 2 kv heads, with and without cached positions (some masked).
    #[test]
    fn branch_attention_equals_dense_masked_attention() {
        let dev = Device::Cpu;
        let (b, nh, nkv, hd, n, m) = (2, 4, 2, 20, 3, 2);
        let t = n * m;
        for s0 in [0, 5] {
            let s = s0 + t;
            let q = Tensor::randn(0f32, 1.0, (b, nh, t, hd), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, nkv, s, hd), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, nkv, s, hd), &dev).unwrap();
            // Query (i, j) of row r sees cached keys < 1 + i + r (key 2 of row 1 masked) and its branch up to itself.
            let mut full = vec![MASKED; b * t * s];
            let mut cached = vec![MASKED; b * t * s0];
            for r in 0..b {
                for qi in 0..t {
                    let (i, j) = (qi / m, qi % m);
                    for key in 0..s0.min(1 + i + r) {
                        if !(r == 1 && key == 2) {
                            full[(r * t + qi) * s + key] = 0.0;
                            cached[(r * t + qi) * s0 + key] = 0.0;
                        }
                    }
                    for jj in 0..=j {
                        full[(r * t + qi) * s + s0 + i * m + jj] = 0.0;
                    }
                }
            }
            let full = Tensor::from_vec(full, (b, t, s), &dev).unwrap();
            let rep = nh / nkv;
            let cached = Tensor::from_vec(cached, (b, 1, 1, t, s0), &dev).unwrap().broadcast_as((b, nkv, rep, t, s0)).unwrap().contiguous().unwrap();
            let want = dense(&q, &k, &v, &full);
            // grad: the batched matmuls (as off the CPU), else the CPU block op.
            for grad in [false, true] {
                let got = attend_branches(&q, &k, &v, &cached, (n, m), DType::F32, grad).unwrap();
                let diff = (&want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "S0 {s0}, grad {grad}: max |Δ| {diff}");
            }
        }
        // Shapes that do not match are errors.
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 1, 6, 8), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((1, 1, 2, 4, 2), DType::F32, &dev).unwrap();
        assert!(attend_branches(&q, &k, &k, &mask, (3, 2), DType::F32, false).is_err());
    }
}
