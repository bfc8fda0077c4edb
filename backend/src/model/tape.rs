//! A training pass with a hand-written backward: the forward keeps what its
//! backward needs (a [`Tape`]) and builds no autograd graph; the backward
//! returns only the adapter's gradients.
//!
//! Why not candle's autograd: it computes the gradient of every argument of
//! every tracked op, so each frozen projection also gets its full weight
//! gradient (x^T dy, a product as large as the forward's, then a zero tensor and
//! an add the size of the weight), and every first gradient of a node is a
//! `zeros + add`. Here a frozen projection costs one product (dy W), the LoRA
//! factors four small ones, and the first layer skips the input gradient
//! (embeddings are frozen). The forward uses the fused inference kernels (RMSNorm,
//! RoPE, last-dim softmax); attention probabilities and the softmax stay in f32.
//!
//! The batch shares its prompt: the prompt runs once (one row), and the B rows
//! that continue it attend to its keys and values, whose gradients are summed
//! over the rows. The pass thus costs P + B·T tokens, not B·(P + T). The
//! token-wise ops (projections and their adapters, norms, SwiGLU) run over the
//! prompt's and the rows' tokens as one [P + B·T, H] stream, so each is one op
//! per layer; only attention runs per segment.
//!
//! Owns only this pass; the layers' weights are `llama.rs`'s, the adapter's
//! pairs `lora.rs`'s, the per-op backward steps `tape_ops.rs`'s. The adapter
//! comes as an inference view (detached, q/k/v and gate/up fused) or, with
//! dropout, a `Mode::Tape` view: each projection then gets its own mask, and
//! the shared prompt one mask for the whole batch (each row's gradient stays
//! unbiased; the rows' noise is correlated on the prompt). `tests/engine.rs`
//! checks the gradients against candle's autograd, and with dropout against
//! finite differences.

use candle_core::{DType, Tensor, D};

use super::cache::KvCache;
use super::llama::{Layer, Llama};
use super::lora::{LoraGrads, LoraView, Proj};
use super::{fused, fused_heads, fused_softmax};
use super::tape_ops::{lora_backward, proj, proj_backward, rms_norm_backward_add, swiglu_backward, LoraTape};
use crate::{Error, Result};

const QKV: &[Proj] = &[Proj::Q, Proj::K, Proj::V];
const GATE_UP: &[Proj] = &[Proj::Gate, Proj::Up];
const O: &[Proj] = &[Proj::O];
const DOWN: &[Proj] = &[Proj::Down];

/// One segment of the pass: the prompt (1 row) or the rows after it.
struct Segment {
    /// Rows and (padded) length.
    b: usize,
    t: usize,
    /// Additive mask (S = keys seen: the prompt's, then own), f32: [B, T, S] for
    /// the fused softmax, [B, KV, rep, T, S] (broadcast over the heads) otherwise.
    mask: Tensor,
    rope: SegRope,
}

/// A segment's rotary tables, as the composed or the fused ops read them.
enum SegRope {
    /// [B, T, hd/2]: cos, sin, the query's scaled cos, sin, and the two −sin
    /// (rotation by −θ is the transpose of rotation by θ).
    Halves { cos: Tensor, sin: Tensor, cos_q: Tensor, sin_q: Tensor, neg_sin: Tensor, neg_sin_q: Tensor },
    /// `cos | sin` [B, T, hd], plain and the query's (`fused_heads`).
    Joined { cs: Tensor, cs_q: Tensor },
}

/// What the backward of one block's attention reads for one segment.
struct AttnTape {
    /// Rotated, pre-scaled queries grouped by kv head [B, KV, rep·T, hd]; the
    /// keys and values attended to [B, KV, S, hd] (rotated keys).
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention probabilities [B, KV, rep·T, S], f32.
    probs: Tensor,
}

/// What the backward of one block reads. The token-wise parts cover both
/// segments at once: N = P + B·T rows, the prompt's first.
struct BlockTape {
    /// Block input [N, H] and its attention-normed copy.
    x: Tensor,
    h1: Tensor,
    /// The adapter's activations of q/k/v, o, gate/up and down.
    u_qkv: Option<LoraTape>,
    /// The prompt's attention and the rows'.
    att: [AttnTape; 2],
    /// Attention output [N, heads·hd] (the o projection's input).
    y: Tensor,
    u_o: Option<LoraTape>,
    /// Residual after attention [N, H] and its MLP-normed copy.
    x1: Tensor,
    h2: Tensor,
    /// gate · up [N, 2I], its SwiGLU product [N, I].
    gu: Tensor,
    act: Tensor,
    u_gu: Option<LoraTape>,
    u_down: Option<LoraTape>,
}

/// Everything a training pass's backward needs.
pub struct Tape {
    /// The prompt and the rows after it.
    segs: [Segment; 2],
    /// Per block.
    blocks: Vec<BlockTape>,
    /// The final norm's input [P + B·T, H].
    last: Tensor,
}

impl Tape {
    /// (prompt length, rows, padded row length) of the pass.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.segs[0].t, self.segs[1].b, self.segs[1].t)
    }
}

impl Llama {
    /// The final hidden states [P + B·T, hidden] of `prompt` (its P rows first)
    /// and of each row of `rows` after it (B rows left-padded to T tokens as in
    /// `forward`), under the adapter `lora`, with the tape for
    /// [`Llama::backward_tape`]. `lora` must be an inference view or a tape view.
    pub fn forward_tape(&self, prompt: &[u32], rows: &[Vec<u32>], lora: &LoraView) -> Result<(Tensor, Tape)> {
        if lora.tracked || lora.is_folded() {
            return Err(Error::invalid("lora", "the taped pass takes an unfolded inference or tape view (it builds no autograd graph)"));
        }
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "the taped pass needs a non-empty prompt"));
        }
        let p_len = prompt.len();
        let mut cache = self.new_cache();
        let pp = self.prepare(&[prompt.to_vec()], &mut cache)?;
        // The rows see the prompt as P valid cached positions.
        let mut after = KvCache::new(self.layers.len());
        after.valid = vec![vec![true; p_len]; rows.len()];
        let pr = self.prepare(rows, &mut after)?;
        let seg_p = self.segment(pp.pos, pp.mask, pp.dims, p_len)?;
        let seg_r = self.segment(pr.pos, pr.mask, pr.dims, p_len + pr.dims.1)?;
        // The token-wise ops (projections, norms, SwiGLU) run over the prompt's
        // P rows and the B·T rows' tokens as one [P + B·T, H] stream; only
        // attention splits it by segment.
        let ids = [pp.ids, pr.ids].concat();
        let mut x = self.embed.embedding(&Tensor::new(ids, self.device())?)?; // [N, H]
        // Each block ends with its residual add and the next norm (the final one last).
        let first_norm = self.layers.first().map_or(&self.norm, |l| &l.attn_norm);
        let mut h = candle_nn::ops::rms_norm(&x, first_norm, self.config.rms_norm_eps as f32)?;
        let segs = [seg_p, seg_r];
        let mut blocks = Vec::with_capacity(self.layers.len());
        for (l, w) in self.layers.iter().enumerate() {
            let next_norm = self.layers.get(l + 1).map_or(&self.norm, |n| &n.attn_norm);
            let (nx, nh, bt) = self.block_tape(l, w, (x, h), next_norm, lora, &segs)?;
            blocks.push(bt);
            (x, h) = (nx, nh);
        }
        Ok((h, Tape { segs, blocks, last: x }))
    }

    /// `(x + a, rms_norm(x + a) · w)`: one fused op, or composed.
    fn add_norm_tape(&self, x: &Tensor, a: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.fused() {
            return fused::add_rms_norm(x, a, w, self.config.rms_norm_eps);
        }
        let sum = (x + a)?;
        let h = candle_nn::ops::rms_norm(&sum, w, self.config.rms_norm_eps as f32)?;
        Ok((sum, h))
    }

    /// Masks and rotary tables of a segment from `prepare`'s output.
    fn segment(&self, pos: Vec<u32>, mask: Vec<f32>, (b, t): (usize, usize), s: usize) -> Result<Segment> {
        let c = &self.config;
        let (nkv, rep) = (c.num_key_value_heads, c.num_attention_heads / c.num_key_value_heads);
        // The fused softmax reads the mask per query; the composed add wants it
        // broadcast over the heads.
        let mask = if self.fused() {
            Tensor::from_vec(mask, (b, t, s), self.device())?
        } else {
            Tensor::from_vec(mask, (b, 1, 1, t, s), self.device())?.broadcast_as((b, nkv, rep, t, s))?.contiguous()?
        };
        let rope = if self.fused() {
            let [cs, cs_q] = self.rope_cs_at(pos, (b, t))?;
            SegRope::Joined { cs, cs_q }
        } else {
            let [cos, sin, cos_q, sin_q] = self.rope_at(pos, (b, t))?;
            let (neg_sin, neg_sin_q) = (sin.neg()?, sin_q.neg()?);
            SegRope::Halves { cos, sin, cos_q, sin_q, neg_sin, neg_sin_q }
        };
        Ok(Segment { b, t, mask, rope })
    }

    /// One block over both segments: the residual stream `x` [P + B·T, H] and
    /// its attention-normed `h1` in; the new stream, its norm by `next_norm`
    /// and the tape out.
    fn block_tape(&self, l: usize, w: &Layer, (x, h1): (Tensor, Tensor), next_norm: &Tensor, lora: &LoraView, segs: &[Segment; 2]) -> Result<(Tensor, Tensor, BlockTape)> {
        let i = self.config.intermediate_size;
        let (qkv, u_qkv) = proj(l, QKV, &w.qkv, &h1, lora)?; // [N, (H + 2·KV)·hd]
        let p_len = segs[0].t;
        let (ap, yp) = self.attention_tape(&qkv.narrow(0, 0, p_len)?, &segs[0], None)?;
        let (ar, yr) = self.attention_tape(&qkv.narrow(0, p_len, segs[1].b * segs[1].t)?, &segs[1], Some((&ap.k, &ap.v)))?;
        let y = Tensor::cat(&[&yp, &yr], 0)?; // [N, heads·hd]
        let (o, u_o) = proj(l, O, &w.o, &y, lora)?;
        let (x1, h2) = self.add_norm_tape(&x, &o, &w.mlp_norm)?;

        let (gu, u_gu) = proj(l, GATE_UP, &w.gate_up, &h2, lora)?; // [N, 2I]
        let act = if self.fused() { fused::silu_mul(&gu)? } else { (gu.narrow(1, 0, i)?.silu()? * gu.narrow(1, i, i)?)? };
        let (down, u_down) = proj(l, DOWN, &w.down, &act, lora)?;
        let (out, h_next) = self.add_norm_tape(&x1, &down, next_norm)?;
        Ok((out, h_next, BlockTape { x, h1, u_qkv, att: [ap, ar], y, u_o, x1, h2, gu, act, u_gu, u_down }))
    }

    /// Attention of one segment from its rows of the q·k·v product
    /// [B·T, (H + 2·KV)·hd]: the tape and the output [B·T, heads·hd].
    /// `before`: the keys and values [1, KV, P, hd] of the prompt this segment
    /// continues.
    fn attention_tape(&self, qkv: &Tensor, seg: &Segment, before: Option<(&Tensor, &Tensor)>) -> Result<(AttnTape, Tensor)> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (b, t, rep) = (seg.b, seg.t, nh / nkv);
        let (q, k, v) = match &seg.rope {
            SegRope::Joined { cs, cs_q } => fused_heads::split_heads(qkv, cs, cs_q, (b, t), (nh, nkv))?,
            SegRope::Halves { cos, sin, cos_q, sin_q, .. } => {
                let heads = qkv.reshape((b, t, nh + 2 * nkv, hd))?.transpose(1, 2)?.contiguous()?;
                let q = candle_nn::rotary_emb::rope(&heads.narrow(1, 0, nh)?.contiguous()?, cos_q, sin_q)?;
                let k = candle_nn::rotary_emb::rope(&heads.narrow(1, nh, nkv)?.contiguous()?, cos, sin)?;
                (q, k, heads.narrow(1, nh + nkv, nkv)?.contiguous()?)
            }
        };
        let (k, v) = match before {
            Some((kp, vp)) => {
                let p = kp.dim(2)?;
                let widen = |x: &Tensor| x.broadcast_as((b, nkv, p, hd))?.contiguous();
                (Tensor::cat(&[&widen(kp)?, &k], 2)?, Tensor::cat(&[&widen(vp)?, &v], 2)?)
            }
            None => (k, v),
        };
        let s = k.dim(2)?;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scores = q.matmul(&k.t()?)?; // [B, KV, rep·T, S]
        let probs = if self.fused() {
            fused_softmax::masked_softmax(&scores, &seg.mask)?
        } else {
            let scores = scores.to_dtype(DType::F32)?.reshape((b, nkv, rep, t, s))?;
            candle_nn::ops::softmax_last_dim(&(scores + &seg.mask)?)?.reshape((b, nkv, rep * t, s))?
        }; // f32
        let y = probs.to_dtype(self.dtype())?.matmul(&v)?; // [B, KV, rep·T, hd]
        let y = y.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        Ok((AttnTape { q, k, v, probs }, y))
    }

    /// Adds to `grads` the adapter's gradients given the loss's gradient
    /// `d_hidden` [P + B·T, hidden] with respect to [`Llama::forward_tape`]'s output.
    pub fn backward_tape(&self, tape: &Tape, d_hidden: &Tensor, lora: &LoraView, grads: &mut LoraGrads) -> Result<()> {
        let (p_len, b, t) = tape.dims();
        let h = self.config.hidden_size;
        if d_hidden.dims() != [p_len + b * t, h] {
            return Err(Error::invalid("d_hidden", format!("shape {:?}, the pass made [{}, {h}]", d_hidden.dims(), p_len + b * t)));
        }
        let eps = self.config.rms_norm_eps;
        let fused = self.fused();
        let mut dx = rms_norm_backward_add(&tape.last, &self.norm, &d_hidden.to_dtype(self.dtype())?, eps, None, fused)?;
        let [seg_p, seg_r] = &tape.segs;
        for (l, (w, s)) in self.layers.iter().zip(&tape.blocks).enumerate().rev() {
            // MLP: x2 = x1 + down(swiglu(gate_up(norm(x1)))), all tokens at once.
            let d_act = proj_backward(l, DOWN, &w.down, &s.act, s.u_down.as_ref(), &dx, lora, grads)?;
            let d_gu = swiglu_backward(&s.gu, &d_act, fused)?;
            let d_h2 = proj_backward(l, GATE_UP, &w.gate_up, &s.h2, s.u_gu.as_ref(), &d_gu, lora, grads)?;
            dx = rms_norm_backward_add(&s.x1, &w.mlp_norm, &d_h2, eps, Some(&dx), fused)?;
            // Attention: x1 = x + o(attn(qkv(norm(x)))). The rows first: part of
            // their keys and values are the prompt's, summed over the rows.
            let d_y = proj_backward(l, O, &w.o, &s.y, s.u_o.as_ref(), &dx, lora, grads)?; // [N, heads·hd]
            let (dq_r, dk_all, dv_all) = self.attention_backward(&s.att[1], seg_r, &d_y.narrow(0, p_len, b * t)?)?;
            let (dk_r, dv_r) = (dk_all.narrow(2, p_len, t)?.contiguous()?, dv_all.narrow(2, p_len, t)?.contiguous()?);
            let (dq_p, dk_p, dv_p) = self.attention_backward(&s.att[0], seg_p, &d_y.narrow(0, 0, p_len)?)?;
            let dk_p = (dk_p + dk_all.narrow(2, 0, p_len)?.sum_keepdim(0)?)?;
            let dv_p = (dv_p + dv_all.narrow(2, 0, p_len)?.sum_keepdim(0)?)?;
            let d_qkv = Tensor::cat(&[&self.qkv_grad(seg_p, &dq_p, &dk_p, &dv_p)?, &self.qkv_grad(seg_r, &dq_r, &dk_r, &dv_r)?], 0)?;
            if l == 0 {
                // The first block's input is the frozen embedding: no input gradient.
                lora_backward(l, QKV, &s.h1, s.u_qkv.as_ref(), &d_qkv, false, lora, grads)?;
            } else {
                let d_h1 = proj_backward(l, QKV, &w.qkv, &s.h1, s.u_qkv.as_ref(), &d_qkv, lora, grads)?;
                dx = rms_norm_backward_add(&s.x, &w.attn_norm, &d_h1, eps, Some(&dx), fused)?;
            }
        }
        Ok(())
    }

    /// Gradients of the queries [B, H, T, hd] (rotated) and of the keys and
    /// values attended to [B, KV, S, hd] from d(attention output) [N, H·hd].
    fn attention_backward(&self, s: &AttnTape, seg: &Segment, d_y: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t) = (seg.b, seg.t);
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = nh / nkv;
        let d_y = d_y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?.reshape((b, nkv, rep * t, hd))?;
        let probs = s.probs.to_dtype(self.dtype())?;
        let dv = probs.t()?.matmul(&d_y)?; // [B, KV, S, hd]
        // Softmax: d scores = p ⊙ (d p − Σ_j p_j d p_j), in f32.
        let d_probs = d_y.matmul(&s.v.t()?)?; // [B, KV, rep·T, S]
        let d_scores = if self.fused() {
            fused_softmax::softmax_backward(&s.probs, &d_probs)?
        } else {
            let d_probs = d_probs.to_dtype(DType::F32)?;
            let dot = (&d_probs * &s.probs)?.sum_keepdim(D::Minus1)?;
            (&s.probs * d_probs.broadcast_sub(&dot)?)?.to_dtype(self.dtype())?
        };
        let dq = d_scores.matmul(&s.k)?.reshape((b, nh, t, hd))?;
        let dk = d_scores.t()?.matmul(&s.q)?; // [B, KV, S, hd]
        Ok((dq, dk, dv))
    }

    /// d(q·k·v) [N, (H + 2·KV)·hd] from the gradients of the rotated queries
    /// [B, H, T, hd], rotated keys and values [B, KV, T, hd].
    fn qkv_grad(&self, seg: &Segment, dq: &Tensor, dk: &Tensor, dv: &Tensor) -> Result<Tensor> {
        let (cos, cos_q, neg_sin, neg_sin_q) = match &seg.rope {
            SegRope::Joined { cs, cs_q } => return fused_heads::merge_heads_backward(dq, dk, dv, cs, cs_q),
            SegRope::Halves { cos, cos_q, neg_sin, neg_sin_q, .. } => (cos, cos_q, neg_sin, neg_sin_q),
        };
        let c = &self.config;
        let dq = candle_nn::rotary_emb::rope(dq, cos_q, neg_sin_q)?;
        let dk = candle_nn::rotary_emb::rope(dk, cos, neg_sin)?;
        let d_heads = Tensor::cat(&[&dq, &dk, dv], 1)?; // [B, H + 2·KV, T, hd]
        Ok(d_heads.transpose(1, 2)?.reshape((seg.b * seg.t, (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim))?)
    }
}
