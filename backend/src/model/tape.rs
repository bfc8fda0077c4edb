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
//! Owns only this pass; the layers' weights are `llama.rs`'s, the adapter's
//! pairs `lora.rs`'s. The adapter comes as an inference view (detached, q/k/v
//! and gate/up fused) or, with dropout, a `Mode::Tape` view: each projection
//! then gets its own mask, drawn in the same order as candle's path draws them.
//! `tests/engine.rs` checks the gradients against candle's autograd.

use candle_core::{DType, Tensor, D};

use super::llama::{Layer, Linear, Llama};
use super::lora::{LoraGrads, LoraView, Proj};
use crate::{Error, Result};

const QKV: &[Proj] = &[Proj::Q, Proj::K, Proj::V];
const GATE_UP: &[Proj] = &[Proj::Gate, Proj::Up];
const O: &[Proj] = &[Proj::O];
const DOWN: &[Proj] = &[Proj::Down];

/// A projection group's adapter activations: x Aᵀ [N, Σr] (per projection
/// side by side) and, with dropout, each projection's mask [N, in].
struct LoraTape {
    u: Tensor,
    masks: Option<Vec<Tensor>>,
}

/// What the backward of one block reads (N = B·T rows).
struct BlockTape {
    /// Block input [N, H] and its attention-normed copy.
    x: Tensor,
    h1: Tensor,
    /// The adapter's activations of q/k/v, o, gate/up and down.
    u_qkv: Option<LoraTape>,
    /// Rotated, pre-scaled queries grouped by kv head [B, KV, rep·T, hd];
    /// rotated keys and values [B, KV, T, hd].
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// Attention probabilities [B, KV, rep·T, T], f32.
    probs: Tensor,
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
    dims: (usize, usize),
    blocks: Vec<BlockTape>,
    /// The final norm's input [N, H].
    last: Tensor,
    /// Rotary tables [B, T, hd/2]: cos, −sin, and the query's scaled cos, −sin
    /// (rotation by −θ is the transpose of rotation by θ).
    cos: Tensor,
    neg_sin: Tensor,
    cos_q: Tensor,
    neg_sin_q: Tensor,
}

impl Tape {
    /// (batch, padded length) of the pass.
    pub fn dims(&self) -> (usize, usize) {
        self.dims
    }
}

impl Llama {
    /// The final hidden states [B, T, hidden] of `rows` (left-padded as in
    /// `forward`, on a fresh cache) under the adapter `lora`, with the tape for
    /// [`Llama::backward_tape`]. `lora` must be an inference view.
    pub fn forward_tape(&self, rows: &[Vec<u32>], lora: &LoraView) -> Result<(Tensor, Tape)> {
        if lora.tracked || lora.is_folded() {
            return Err(Error::invalid("lora", "the taped pass takes an unfolded inference or tape view (it builds no autograd graph)"));
        }
        let mut cache = self.new_cache();
        let p = self.prepare(rows, &mut cache)?;
        let (b, t) = p.dims;
        let c = &self.config;
        let (nkv, rep) = (c.num_key_value_heads, c.num_attention_heads / c.num_key_value_heads);
        let mask = Tensor::from_vec(p.mask, (b, 1, 1, t, t), self.device())?.broadcast_as((b, nkv, rep, t, t))?.contiguous()?;
        let [cos, sin, cos_q, sin_q] = self.rope_at(p.pos, p.dims)?;
        let ids = Tensor::from_vec(p.ids, b * t, self.device())?;
        let mut x = self.embed.embedding(&ids)?; // [N, H]
        let mut blocks = Vec::with_capacity(self.layers.len());
        for (l, w) in self.layers.iter().enumerate() {
            let (next, tape) = self.block_tape(l, w, x, lora, (b, t), &mask, [&cos, &sin, &cos_q, &sin_q])?;
            blocks.push(tape);
            x = next;
        }
        let hidden = candle_nn::ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps as f32)?.reshape((b, t, c.hidden_size))?;
        let tape = Tape { dims: (b, t), blocks, last: x, cos, neg_sin: sin.neg()?, cos_q, neg_sin_q: sin_q.neg()? };
        Ok((hidden, tape))
    }

    #[allow(clippy::too_many_arguments)]
    fn block_tape(&self, l: usize, w: &Layer, x: Tensor, lora: &LoraView, (b, t): (usize, usize), mask: &Tensor, [cos, sin, cos_q, sin_q]: [&Tensor; 4]) -> Result<(Tensor, BlockTape)> {
        let c = &self.config;
        let (nh, nkv, hd, i) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let rep = nh / nkv;
        let eps = c.rms_norm_eps as f32;

        let h1 = candle_nn::ops::rms_norm(&x, &w.attn_norm, eps)?;
        let (qkv, u_qkv) = proj(l, QKV, &w.qkv, &h1, lora)?; // [N, (H + 2·KV)·hd]
        let heads = qkv.reshape((b, t, nh + 2 * nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope(&heads.narrow(1, 0, nh)?.contiguous()?, cos_q, sin_q)?;
        let k = candle_nn::rotary_emb::rope(&heads.narrow(1, nh, nkv)?.contiguous()?, cos, sin)?;
        let v = heads.narrow(1, nh + nkv, nkv)?.contiguous()?;
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?.reshape((b, nkv, rep, t, t))?;
        let probs = candle_nn::ops::softmax_last_dim(&(scores + mask)?)?.reshape((b, nkv, rep * t, t))?;
        let y = probs.to_dtype(self.dtype())?.matmul(&v)?; // [B, KV, rep·T, hd]
        let y = y.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        let (o, u_o) = proj(l, O, &w.o, &y, lora)?;
        let x1 = (&x + o)?;

        let h2 = candle_nn::ops::rms_norm(&x1, &w.mlp_norm, eps)?;
        let (gu, u_gu) = proj(l, GATE_UP, &w.gate_up, &h2, lora)?; // [N, 2I]
        let act = (gu.narrow(1, 0, i)?.silu()? * gu.narrow(1, i, i)?)?;
        let (down, u_down) = proj(l, DOWN, &w.down, &act, lora)?;
        let out = (&x1 + down)?;
        Ok((out, BlockTape { x, h1, u_qkv, q, k, v, probs, y, u_o, x1, h2, gu, act, u_gu, u_down }))
    }

    /// The adapter's gradients given `d_hidden`, the loss's gradient with
    /// respect to [`Llama::forward_tape`]'s output [B, T, hidden].
    pub fn backward_tape(&self, tape: &Tape, d_hidden: &Tensor, lora: &LoraView) -> Result<LoraGrads> {
        let (b, t) = tape.dims;
        let h = self.config.hidden_size;
        if d_hidden.dims() != [b, t, h] {
            return Err(Error::invalid("d_hidden", format!("shape {:?}, the pass made [{b}, {t}, {h}]", d_hidden.dims())));
        }
        let eps = self.config.rms_norm_eps;
        let mut grads = LoraGrads::new(self.layers.len());
        let d = d_hidden.to_dtype(self.dtype())?.reshape((b * t, h))?;
        let mut dx = rms_norm_backward(&tape.last, &self.norm, &d, eps)?;
        for (l, (w, s)) in self.layers.iter().zip(&tape.blocks).enumerate().rev() {
            // MLP: x2 = x1 + down(swiglu(gate_up(norm(x1)))).
            let d_act = proj_backward(l, DOWN, &w.down, &s.act, s.u_down.as_ref(), &dx, lora, &mut grads)?;
            let d_gu = swiglu_backward(&s.gu, &d_act)?;
            let d_h2 = proj_backward(l, GATE_UP, &w.gate_up, &s.h2, s.u_gu.as_ref(), &d_gu, lora, &mut grads)?;
            dx = (dx + rms_norm_backward(&s.x1, &w.mlp_norm, &d_h2, eps)?)?;
            // Attention: x1 = x + o(attn(qkv(norm(x)))).
            let d_y = proj_backward(l, O, &w.o, &s.y, s.u_o.as_ref(), &dx, lora, &mut grads)?;
            let d_qkv = self.attention_backward(s, tape, &d_y)?;
            if l == 0 {
                // The first block's input is the frozen embedding: no input gradient.
                lora_backward(l, QKV, &s.h1, s.u_qkv.as_ref(), &d_qkv.contiguous()?, false, lora, &mut grads)?;
            } else {
                let d_h1 = proj_backward(l, QKV, &w.qkv, &s.h1, s.u_qkv.as_ref(), &d_qkv, lora, &mut grads)?;
                dx = (dx + rms_norm_backward(&s.x, &w.attn_norm, &d_h1, eps)?)?;
            }
        }
        Ok(grads)
    }

    /// d(q·k·v) [N, (H + 2·KV)·hd] from d(attention output) [N, H·hd].
    fn attention_backward(&self, s: &BlockTape, tape: &Tape, d_y: &Tensor) -> Result<Tensor> {
        let (b, t) = tape.dims;
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = nh / nkv;
        let d_y = d_y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?.reshape((b, nkv, rep * t, hd))?;
        let probs = s.probs.to_dtype(self.dtype())?;
        let dv = probs.t()?.matmul(&d_y)?; // [B, KV, T, hd]
        // Softmax: d scores = p ⊙ (d p − Σ_j p_j d p_j), in f32.
        let d_probs = d_y.matmul(&s.v.t()?)?.to_dtype(DType::F32)?; // [B, KV, rep·T, T]
        let dot = (&d_probs * &s.probs)?.sum_keepdim(D::Minus1)?;
        let d_scores = (&s.probs * d_probs.broadcast_sub(&dot)?)?.to_dtype(self.dtype())?;
        let dq = d_scores.matmul(&s.k)?.reshape((b, nh, t, hd))?;
        let dk = d_scores.t()?.matmul(&s.q)?; // [B, KV, T, hd]
        let dq = candle_nn::rotary_emb::rope(&dq, &tape.cos_q, &tape.neg_sin_q)?;
        let dk = candle_nn::rotary_emb::rope(&dk, &tape.cos, &tape.neg_sin)?;
        let d_heads = Tensor::cat(&[&dq, &dk, &dv], 1)?; // [B, H + 2·KV, T, hd]
        Ok(d_heads.transpose(1, 2)?.reshape((b * t, (nh + 2 * nkv) * hd))?)
    }
}

/// A projection plus its adapter's delta: (x Wᵀ + b + (x Aᵀ)(sB)ᵀ, what the
/// backward needs). x: [N, in]. With dropout, projection p of the group reads x ⊙ m_p.
fn proj(l: usize, group: &[Proj], lin: &Linear, x: &Tensor, lora: &LoraView) -> Result<(Tensor, Option<LoraTape>)> {
    let y = lin.forward(x)?;
    let Some((a, sb)) = lora.group_pair(l, group) else {
        return Ok((y, None));
    };
    let masks = lora.dropout_masks(l, group, x)?;
    let u = match &masks {
        None => x.matmul(&a.t()?)?,
        Some(ms) => {
            let r = a.dim(0)? / ms.len().max(1);
            let parts = ms.iter().enumerate().map(|(k, m)| Ok((x * m)?.matmul(&a.narrow(0, k * r, r)?.t()?)?)).collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 1)?
        }
    };
    Ok(((y + u.matmul(&sb.t()?)?)?, Some(LoraTape { u, masks })))
}

/// The backward of [`proj`] for its output gradient `dy` [N, out]: stores the
/// adapter's gradients and returns dx [N, in].
#[allow(clippy::too_many_arguments)]
fn proj_backward(l: usize, group: &[Proj], lin: &Linear, x: &Tensor, t: Option<&LoraTape>, dy: &Tensor, lora: &LoraView, grads: &mut LoraGrads) -> Result<Tensor> {
    let dy = dy.contiguous()?;
    let dx = dy.matmul(&lin.weight)?;
    Ok(match lora_backward(l, group, x, t, &dy, true, lora, grads)? {
        Some(d) => (dx + d)?,
        None => dx,
    })
}

/// The adapter's part of [`proj_backward`]: with du = dy (sB), dA = duᵀ x and
/// d(sB) = dyᵀ u go to `grads`; returns the adapter's share of dx, du A (when
/// `need_dx`). With dropout, projection p's rows use x ⊙ m_p and mask its share.
#[allow(clippy::too_many_arguments)]
fn lora_backward(l: usize, group: &[Proj], x: &Tensor, t: Option<&LoraTape>, dy: &Tensor, need_dx: bool, lora: &LoraView, grads: &mut LoraGrads) -> Result<Option<Tensor>> {
    let (Some(t), Some((a, sb))) = (t, lora.group_pair(l, group)) else {
        return Ok(None);
    };
    let du = dy.matmul(sb)?; // [N, Σr]
    let dsb = dy.t()?.matmul(&t.u)?;
    let Some(masks) = &t.masks else {
        lora.split_group_grads(l, group, &du.t()?.matmul(x)?, &dsb, grads)?;
        return Ok(if need_dx { Some(du.matmul(a)?) } else { None });
    };
    let r = a.dim(0)? / masks.len().max(1);
    let (mut da, mut dx) = (Vec::with_capacity(masks.len()), None::<Tensor>);
    for (k, m) in masks.iter().enumerate() {
        let du_k = du.narrow(1, k * r, r)?.contiguous()?;
        da.push(du_k.t()?.matmul(&(x * m)?)?);
        if need_dx {
            let d = (du_k.matmul(&a.narrow(0, k * r, r)?)? * m)?;
            dx = Some(match dx {
                Some(acc) => (acc + d)?,
                None => d,
            });
        }
    }
    lora.split_group_grads(l, group, &Tensor::cat(&da, 0)?, &dsb, grads)?;
    Ok(dx)
}

/// RMSNorm y = w ⊙ x·r, r = (mean x² + ε)^(−½): dx = r·g − x·r³·mean(g ⊙ x), g = w ⊙ dy (f32).
fn rms_norm_backward(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> Result<Tensor> {
    let x32 = x.to_dtype(DType::F32)?;
    let g = dy.to_dtype(DType::F32)?.broadcast_mul(&w.to_dtype(DType::F32)?)?;
    let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?; // [N, 1]
    let dot = (&g * &x32)?.mean_keepdim(D::Minus1)?;
    let dx = (g.broadcast_mul(&r)? - x32.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
    Ok(dx.to_dtype(x.dtype())?)
}

/// act = silu(g) ⊙ u over gu = [g · u]: d gu = [d act ⊙ u ⊙ silu'(g) · d act ⊙ silu(g)],
/// silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
fn swiglu_backward(gu: &Tensor, d_act: &Tensor) -> Result<Tensor> {
    let i = d_act.dim(1)?;
    let (g, u) = (gu.narrow(1, 0, i)?, gu.narrow(1, i, i)?);
    let sig = candle_nn::ops::sigmoid(&g)?;
    let silu = (&g * &sig)?;
    let d_silu = (&sig + (&silu * sig.affine(-1.0, 1.0)?)?)?;
    let d_g = ((d_act * u)? * d_silu)?;
    let d_u = (d_act * silu)?;
    Ok(Tensor::cat(&[&d_g, &d_u], 1)?)
}
