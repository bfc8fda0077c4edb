//! The Llama-family decoder (Llama, SmolLM2, Mistral, Qwen2): RMSNorm, rotary
//! embeddings (HF half-split layout), grouped-query attention, SwiGLU MLP, tied or
//! untied output head.
//!
//! Written for both sampling and training: rows of different lengths are
//! left-padded into one batch, each position carries its own validity and
//! position id, and a LoRA view (or none: the base model) is chosen per call.
//! Base weights are plain tensors; only the adapter carries gradients.
//! Inference passes can run the fused ops of `fused.rs` (residual add + norm,
//! SwiGLU, cache write and decode attention; [`Llama::set_fused`]), and decode
//! steps of a few rows the five-kernel blocks of `gemv_layers.rs`
//! ([`Llama::set_gemv`]); training passes never do here (the taped pass in
//! `tape.rs` has its own).
//! Loading weights from files lives in `loader.rs`, not here.

use candle_core::{DType, Device, Tensor, D};

use super::cache::KvCache;
use super::config::LlamaConfig;
use super::fused;
use super::linear::matmul_t;
pub use super::linear::Linear;
use super::lora::{LoraView, Proj};
use crate::{Error, Result};

/// Additive bias for masked attention scores (finite: a fully masked row stays NaN-free).
pub(super) const MASKED: f32 = -1e9;

/// One decoder block's weights.
#[derive(Clone)]
pub struct Block {
    pub attn_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// All weights of the base model, in HF layout.
pub struct Weights {
    pub embed: Tensor,
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    /// `None` when tied to the embeddings.
    pub lm_head: Option<Tensor>,
}

/// A block as the forward pass uses it: q/k/v and gate/up fused into one
/// projection each (one matrix product instead of three / two).
pub(super) struct Layer {
    pub attn_norm: Tensor,
    /// [q · k · v, hidden]
    pub qkv: Linear,
    pub o: Linear,
    pub mlp_norm: Tensor,
    /// [gate · up, hidden]
    pub gate_up: Linear,
    pub down: Linear,
}

impl Layer {
    fn fuse(b: Block) -> Result<Self> {
        Ok(Layer {
            attn_norm: b.attn_norm,
            qkv: Linear::cat(&[&b.q, &b.k, &b.v])?,
            o: b.o,
            mlp_norm: b.mlp_norm,
            gate_up: Linear::cat(&[&b.gate, &b.up])?,
            down: b.down,
        })
    }
}

pub struct Llama {
    pub config: LlamaConfig,
    pub(super) embed: Tensor,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Tensor,
    pub(super) lm_head: Option<Tensor>,
    /// Rotary tables [max_positions, head_dim / 2] in the model dtype: cos, sin,
    /// and the query's cos, sin scaled by 1/√hd (see `Ctx`).
    rope: [Tensor; 4],
    /// The same as [P, hd] tables `cos | sin`, for the fused ops.
    rope_cs: [Tensor; 2],
    /// Inference passes use the fused ops of `fused.rs` (see [`Llama::set_fused`]).
    fused: bool,
    /// Decode steps of at most this many rows run through `gemv.rs` (0: none;
    /// see [`Llama::set_gemv_rows`]).
    pub(super) gemv_rows: usize,
    dtype: DType,
    device: Device,
}

/// Per-call context shared by the blocks.
pub(super) struct Ctx<'a> {
    pub lora: Option<&'a LoraView>,
    /// Differentiable ops are needed (an adapter is being trained).
    pub grad: bool,
    /// What attention reads: rotary tables and the mask.
    pub attn: Attn,
    /// Residual adds with their RMSNorm and SwiGLU through `fused.rs`.
    pub fused: bool,
}

/// What the attention of one pass reads.
pub(super) enum Attn {
    /// Matrix products. The mask is [B, KV, rep, T, S] additive (the same for
    /// every head): f32 when training, else the model dtype.
    Composed { rope: Rope, mask: Tensor },
    /// `fused::cache_write` + `fused::attend` (a few new tokens, every layer's
    /// cache has room): `cs`, `cs_q` [B, T, hd] (cos | sin), mask [B, T, S] f32.
    /// With `at` ([1] u32 on the device, `model::graph`'s fixed-shape step) the
    /// write position is read on the device and attention spans the whole
    /// room (S = its capacity; the mask hides what is not filled).
    Fused { cs: Tensor, cs_q: Tensor, mask: Tensor, at: Option<Tensor> },
    /// Branches of cached rows (`branch.rs`): T = n·m new tokens a row, n
    /// branches of m. Each query reads the cache's S0 positions through `mask`
    /// [B, KV, rep, T, S0] (as `Composed`'s) and its own branch's tokens up to
    /// itself, never the other branches: no scores for those.
    Branches { rope: Rope, mask: Tensor, n: usize, m: usize },
}

/// Rotary tables of a pass's positions in the model dtype; the query's are
/// scaled by 1/√hd (rotation is linear, so this scales q·k).
pub(super) enum Rope {
    /// cos, sin, the query's cos, sin: [B, T, hd/2] each (candle's RoPE, or the
    /// differentiable one when training).
    Halves([Tensor; 4]),
    /// `cos | sin` [B, T, hd], plain and the query's, for
    /// `fused_heads::split_heads` (inference with the fused ops on).
    Joined([Tensor; 2]),
}

/// One pass's inputs, row-major: token and position ids [B, T], the additive
/// mask [B, T, S] (S = cached + T), and which new positions are real tokens.
pub(super) struct Prepared {
    pub ids: Vec<u32>,
    pub pos: Vec<u32>,
    pub mask: Vec<f32>,
    pub dims: (usize, usize),
    pub step_valid: Vec<Vec<bool>>,
}

impl Llama {
    pub fn new(config: LlamaConfig, w: Weights, device: &Device) -> Result<Self> {
        config.validate()?;
        if device.is_cpu() {
            super::denormals::flush(); // subnormal gradients cost ~100x on x86
        }
        let dtype = w.embed.dtype();
        let (cos, sin) = rope_tables(&config, device)?;
        let scale = 1.0 / (config.head_dim as f64).sqrt();
        let rope = [cos.to_dtype(dtype)?, sin.to_dtype(dtype)?, (&cos * scale)?.to_dtype(dtype)?, (&sin * scale)?.to_dtype(dtype)?];
        let rope_cs = [Tensor::cat(&[&rope[0], &rope[1]], 1)?, Tensor::cat(&[&rope[2], &rope[3]], 1)?];
        let Weights { embed, blocks, norm, lm_head } = w;
        let layers = blocks.into_iter().map(Layer::fuse).collect::<Result<Vec<_>>>()?;
        let fused = fused::default_on(device);
        let gemv_rows = if Self::gemv_takes(&layers) { super::gemv::default_rows(device) } else { 0 };
        Ok(Llama { config, embed, layers, norm, lm_head, rope, rope_cs, fused, gemv_rows, dtype, device: device.clone() })
    }

    /// Whether passes use the fused ops: in inference (`fused.rs`,
    /// `fused_heads.rs`) the residual add with its norm, SwiGLU and the head
    /// split, each one kernel, and for decode steps into a cache with reserved
    /// room the cache write and attention; in the taped training pass also its
    /// fused backward steps (`fused_grad.rs`); and the trainers' AdamW. Autograd
    /// passes never do. The default is [`fused::default_on`].
    pub fn set_fused(&mut self, on: bool) {
        self.fused = on;
    }

    pub fn fused(&self) -> bool {
        self.fused
    }

    /// Inference passes of at most `rows` new tokens (batch × length; capped
    /// at [`super::gemv::MAX_ROWS`], 0 for none), with the fused ops on and a
    /// cache with room, run each block as five kernels (`gemv_layers.rs`): the
    /// projections as `gemv.rs`'s kernels with the norms, residual adds and
    /// SwiGLU fused in; their output head goes through the same op. Applies
    /// without an adapter or with a folded one, and to models without
    /// projection biases (for others this stays 0). The default is
    /// [`super::gemv::default_rows`].
    pub fn set_gemv_rows(&mut self, rows: usize) {
        self.gemv_rows = if Self::gemv_takes(&self.layers) { rows.min(super::gemv::MAX_ROWS) } else { 0 };
    }

    /// [`Llama::set_gemv_rows`] with every pass the kernel takes (on) or none (off).
    pub fn set_gemv(&mut self, on: bool) {
        self.set_gemv_rows(if on { super::gemv::MAX_ROWS } else { 0 });
    }

    /// Whether any pass runs through the gemv blocks.
    pub fn gemv(&self) -> bool {
        self.gemv_rows > 0
    }

    /// The most rows a pass may have for the gemv blocks and head (0: off).
    pub fn gemv_rows(&self) -> usize {
        self.gemv_rows
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The weights per HF module (q/k/v and gate/up copied out of the fused projections).
    pub fn weights(&self) -> Result<Weights> {
        let c = &self.config;
        let (nq, nkv, i) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size);
        let blocks = self
            .layers
            .iter()
            .map(|l| {
                Ok(Block {
                    attn_norm: l.attn_norm.clone(),
                    q: l.qkv.rows(0, nq)?,
                    k: l.qkv.rows(nq, nkv)?,
                    v: l.qkv.rows(nq + nkv, nkv)?,
                    o: l.o.clone(),
                    mlp_norm: l.mlp_norm.clone(),
                    gate: l.gate_up.rows(0, i)?,
                    up: l.gate_up.rows(i, i)?,
                    down: l.down.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights { embed: self.embed.clone(), blocks, norm: self.norm.clone(), lm_head: self.lm_head.clone() })
    }

    /// Bytes of weights one decode step reads: every block, the final norm and
    /// the output head (the embeddings, when tied, are read once, as the head).
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &Linear| l.weight.elem_count() + l.bias.as_ref().map_or(0, |b| b.elem_count());
        let blocks: usize = self.layers.iter().map(|l| l.attn_norm.elem_count() + lin(&l.qkv) + lin(&l.o) + l.mlp_norm.elem_count() + lin(&l.gate_up) + lin(&l.down)).sum();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed).elem_count();
        (blocks + self.norm.elem_count() + head) * self.dtype.size_in_bytes()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    /// Runs the new tokens of each row after what `cache` holds and appends them
    /// to it. Rows may differ in length (even be empty): they are left-padded to
    /// the longest, padding is masked out. Returns the final hidden states
    /// [B, T, hidden] (T = longest row); row `b`'s last real token is at T-1.
    pub fn forward(&self, rows: &[Vec<u32>], cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let p = self.prepare(rows, cache)?;
        let ids = Tensor::from_vec(p.ids, p.dims, &self.device)?;
        let hidden = self.run(ids, p.pos, p.mask, p.dims, cache, lora)?;
        p.step_valid.into_iter().zip(&mut cache.valid).for_each(|(v, row)| row.extend(v));
        Ok(hidden)
    }

    /// One decode step whose tokens are already on the device: `ids` [B] (u32),
    /// one real token per row, e.g. the previous step's draw. Nothing is read
    /// back, so the host can queue the next steps while the device runs this
    /// one. Returns [B, 1, hidden].
    pub fn forward_ids(&self, ids: &Tensor, cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let b = ids.dim(0)?;
        // Positions and mask depend only on the cache and the row count.
        let p = self.prepare(&vec![vec![0u32]; b], cache)?;
        let ids = ids.to_dtype(DType::U32)?.reshape((b, 1))?;
        let hidden = self.run(ids, p.pos, p.mask, p.dims, cache, lora)?;
        p.step_valid.into_iter().zip(&mut cache.valid).for_each(|(v, row)| row.extend(v));
        Ok(hidden)
    }

    /// Left-pads `rows` after what `cache` holds: token ids, position ids and the
    /// additive mask of one forward pass (see [`Prepared`]).
    pub(super) fn prepare(&self, rows: &[Vec<u32>], cache: &mut KvCache) -> Result<Prepared> {
        let b = rows.len();
        if b == 0 {
            return Err(Error::invalid("batch", "empty batch"));
        }
        if cache.batch_size() == 0 && cache.is_empty() {
            cache.valid = vec![Vec::new(); b];
        } else if cache.batch_size() != b {
            return Err(Error::invalid("batch", format!("{b} rows for a cache of {}", cache.batch_size())));
        }
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let s0 = cache.len();
        let vocab = self.config.vocab_size as u32;

        // Left-pad; positions continue each row's count of real tokens.
        let mut ids = Vec::with_capacity(b * t);
        let mut pos = Vec::with_capacity(b * t);
        let mut step_valid = vec![vec![false; t]; b];
        let next = cache.next_positions();
        for (i, r) in rows.iter().enumerate() {
            let pad = t - r.len();
            for j in 0..t {
                if j < pad {
                    ids.push(0u32);
                    pos.push(next[i] as u32);
                } else {
                    let tok = r[j - pad];
                    if tok >= vocab {
                        return Err(Error::invalid("token", format!("id {tok} outside the vocabulary of {vocab}")));
                    }
                    ids.push(tok);
                    pos.push((next[i] + j - pad) as u32);
                    step_valid[i][j] = true;
                }
            }
        }
        // Mask [B, 1, 1, T, S]: a query sees valid keys up to itself, and always itself.
        let s = s0 + t;
        let mut mask = vec![MASKED; b * t * s];
        for i in 0..b {
            for q in 0..t {
                let row = &mut mask[(i * t + q) * s..(i * t + q + 1) * s];
                for (k, m) in row.iter_mut().enumerate().take(s0) {
                    if cache.valid[i][k] {
                        *m = 0.0;
                    }
                }
                for k in 0..=q {
                    if step_valid[i][k] {
                        row[s0 + k] = 0.0;
                    }
                }
                row[s0 + q] = 0.0;
            }
        }
        Ok(Prepared { ids, pos, mask, dims: (b, t), step_valid })
    }

    /// The layers over prepared inputs: `ids` [B, T] (u32, on the device),
    /// `pos` row-major [B, T], `mask` additive [B, T, S] (S = cached + T).
    /// Appends the keys/values to `cache` (its validity is the caller's to
    /// extend). Returns [B, T, hidden].
    pub(super) fn run(&self, ids: Tensor, pos: Vec<u32>, mask: Vec<f32>, (b, t): (usize, usize), cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let s = cache.len() + t;
        let dev = &self.device;
        let grad = lora.is_some_and(|l| l.tracked);
        let fused = self.fused && !grad;
        let room = (0..self.layers.len()).all(|l| cache.room(l, t).is_some());
        let attn = if fused && room && t <= fused::ATTEND_MAX_T && s <= fused::ATTEND_MAX_S {
            let [cs, cs_q] = self.rope_cs_at(pos, (b, t))?;
            Attn::Fused { cs, cs_q, mask: Tensor::from_vec(mask, (b, t, s), dev)?, at: None }
        } else {
            let (rope, mask) = self.composed_inputs(pos, mask, (b, t, s), grad, fused)?;
            Attn::Composed { rope, mask }
        };
        self.layers_over(ids, &Ctx { lora, grad, attn, fused }, (b, t), cache)
    }

    /// The rotary tables and the additive mask [B, T, S] (row-major `mask`) of
    /// composed attention: the mask in f32 when training, else in the model
    /// dtype, broadcast over the heads as [B, KV, rep, T, S].
    pub(super) fn composed_inputs(&self, pos: Vec<u32>, mask: Vec<f32>, (b, t, s): (usize, usize, usize), grad: bool, fused: bool) -> Result<(Rope, Tensor)> {
        let mask = Tensor::from_vec(mask, (b, 1, 1, t, s), &self.device)?;
        // Inference in bf16/f16 adds the mask and takes the softmax in the model
        // dtype (the softmax kernel accumulates in f32); training keeps f32.
        let mask = if grad { mask } else { mask.to_dtype(self.dtype)? };
        // Broadcast over the heads once here, not in every layer: a contiguous
        // add is one kernel, a broadcast one also uploads its strides.
        let c = &self.config;
        let (nkv, rep) = (c.num_key_value_heads, c.num_attention_heads / c.num_key_value_heads);
        let mask = mask.broadcast_as((b, nkv, rep, t, s))?.contiguous()?;
        let rope = if fused { Rope::Joined(self.rope_cs_at(pos, (b, t))?) } else { Rope::Halves(self.rope_at(pos, (b, t))?) };
        Ok((rope, mask))
    }

    /// One decode step in fixed shapes (`model::graph`): `ids`, `pos` [B] u32,
    /// `mask` [B, 1, cap] f32 over the cache's whole room, `at` [1] u32 the
    /// write position, all on the device. Returns [B, 1, hidden].
    pub(super) fn run_static(&self, ids: &Tensor, pos: &Tensor, mask: &Tensor, at: &Tensor, cache: &mut KvCache, lora: Option<&LoraView>) -> Result<Tensor> {
        let b = ids.dim(0)?;
        let hd = self.config.head_dim;
        let [cs, cs_q] = self.rope_cs.clone().map(|table| table.index_select(pos, 0)?.reshape((b, 1, hd)));
        let attn = Attn::Fused { cs: cs?, cs_q: cs_q?, mask: mask.clone(), at: Some(at.clone()) };
        self.layers_over(ids.reshape((b, 1))?, &Ctx { lora, grad: false, attn, fused: true }, (b, 1), cache)
    }

    /// Embedding, the blocks and the final norm: [B, T] ids → [B, T, hidden].
    pub(super) fn layers_over(&self, ids: Tensor, ctx: &Ctx, (b, t): (usize, usize), cache: &mut KvCache) -> Result<Tensor> {
        let mut x = self.embed.embedding(&ids.flatten_all()?)?.reshape((b, t, self.config.hidden_size))?;
        if self.gemv_fits(ctx, b * t) {
            return self.layers_gemv(x, ctx, cache);
        }
        // Each block ends with its residual add and the next norm (the final one last).
        let mut h = self.rms_norm(&x, self.layers.first().map_or(&self.norm, |l| &l.attn_norm), ctx.grad)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let next_norm = self.layers.get(l + 1).map_or(&self.norm, |n| &n.attn_norm);
            (x, h) = self.block(l, layer, (&x, &h), next_norm, cache, ctx)?;
        }
        Ok(h)
    }

    /// The rotary tables at position ids `pos` (row-major [B, T]): cos, sin and
    /// the query's scaled cos, sin, each [B, T, hd/2] in the model dtype.
    pub(super) fn rope_at(&self, pos: Vec<u32>, (b, t): (usize, usize)) -> Result<[Tensor; 4]> {
        let max_pos = pos.iter().copied().max().unwrap_or(0) as usize;
        if max_pos >= self.config.max_position_embeddings {
            return Err(Error::TooLong { len: max_pos + 1, max: self.config.max_position_embeddings });
        }
        let pos = Tensor::from_vec(pos, b * t, &self.device)?;
        let half = self.config.head_dim / 2;
        let [cos, sin, cos_q, sin_q] = self.rope.clone().map(|table| table.index_select(&pos, 0)?.reshape((b, t, half)));
        Ok([cos?, sin?, cos_q?, sin_q?])
    }

    /// [`Llama::rope_at`]'s tables as `cos | sin`, [B, T, hd]: plain and the query's.
    pub(super) fn rope_cs_at(&self, pos: Vec<u32>, (b, t): (usize, usize)) -> Result<[Tensor; 2]> {
        if pos.iter().any(|&p| p as usize >= self.config.max_position_embeddings) {
            let len = pos.iter().copied().max().unwrap_or(0) as usize + 1;
            return Err(Error::TooLong { len, max: self.config.max_position_embeddings });
        }
        let pos = Tensor::from_vec(pos, b * t, &self.device)?;
        let hd = self.config.head_dim;
        let [cs, cs_q] = self.rope_cs.clone().map(|table| table.index_select(&pos, 0)?.reshape((b, t, hd)));
        Ok([cs?, cs_q?])
    }

    /// Output logits (f32) for hidden states [.., hidden] → [.., vocab].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        if let Some(logits) = self.logits_gemv(hidden, head)? {
            return Ok(logits);
        }
        // cuBLAS wants a dense left operand (callers often pass a narrowed slice).
        Ok(matmul_t(&hidden.contiguous()?, head)?.to_dtype(DType::F32)?)
    }

    /// The hidden states' gradient [.., hidden] (model dtype) from the logits'
    /// [.., vocab]: the backward of [`Llama::logits`] with the head frozen.
    pub fn logits_backward(&self, d_logits: &Tensor) -> Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(d_logits.to_dtype(self.dtype)?.contiguous()?.broadcast_matmul(head)?)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, grad: bool) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        if grad {
            // Differentiable composition (candle's fused op has no backward).
            let x32 = x.to_dtype(DType::F32)?;
            let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
            let y = x32.broadcast_div(&(var + eps as f64)?.sqrt()?)?.to_dtype(self.dtype)?;
            Ok(y.broadcast_mul(w)?)
        } else {
            Ok(candle_nn::ops::rms_norm(x, w, eps)?)
        }
    }

    /// A (fused) projection plus the adapter's delta for its parts.
    fn proj(&self, l: usize, group: &[Proj], lin: &Linear, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if let Some(folded) = ctx.lora.and_then(|v| v.folded(l, group)) {
            return folded.forward(x);
        }
        let y = lin.forward(x)?;
        match ctx.lora.map(|v| v.delta_group(l, group, x)).transpose()?.flatten() {
            Some(d) => Ok((y + d.to_dtype(self.dtype)?)?),
            None => Ok(y),
        }
    }

    /// One block on the residual stream `x` and its normed `h`: returns the new
    /// stream and its norm by `next_norm` (the next block's, or the final one).
    fn block(&self, l: usize, w: &Layer, (x, h): (&Tensor, &Tensor), next_norm: &Tensor, cache: &mut KvCache, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        let attn = self.attention(l, w, h, cache, ctx)?;
        let (x, h) = self.add_norm(x, &attn, &w.mlp_norm, ctx)?;
        let gu = self.proj(l, &[Proj::Gate, Proj::Up], &w.gate_up, &h, ctx)?; // [B, T, 2I]
        let i = self.config.intermediate_size;
        let act = if ctx.fused { fused::silu_mul(&gu)? } else { (gu.narrow(D::Minus1, 0, i)?.silu()? * gu.narrow(D::Minus1, i, i)?)? };
        let mlp = self.proj(l, &[Proj::Down], &w.down, &act, ctx)?;
        self.add_norm(&x, &mlp, next_norm, ctx)
    }

    /// `(x + a, rms_norm(x + a) · w)`.
    fn add_norm(&self, x: &Tensor, a: &Tensor, w: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor)> {
        if ctx.fused {
            return fused::add_rms_norm(x, a, w, self.config.rms_norm_eps);
        }
        let x = (x + a)?;
        let h = self.rms_norm(&x, w, ctx.grad)?;
        Ok((x, h))
    }

    /// With [`Attn::Fused`]: writes the keys and values of `qkv` [B, T, width]
    /// into layer `l`'s room (`fused::cache_write`) and attends to it
    /// (`fused::attend`). Returns [B, T, H·hd], before the output projection.
    pub(super) fn attend_fused(&self, l: usize, qkv: &Tensor, cache: &mut KvCache, ctx: &Ctx) -> Result<Tensor> {
        let Attn::Fused { cs, cs_q, mask, at } = &ctx.attn else {
            return Err(Error::invalid("attend", "not a fused pass"));
        };
        let t = qkv.dim(1)?;
        let kv = cache.room(l, t).ok_or_else(|| Error::invalid("cache", "no reserved room for a fused pass"))?.clone();
        let len = cache.len();
        let s = match at {
            Some(at) => {
                fused::cache_write_at(&kv, qkv, cs, at)?;
                kv.dim(3)?
            }
            None => {
                fused::cache_write(&kv, qkv, cs, len)?; // [2, B, KV, cap, hd]
                len + t
            }
        };
        fused::attend(qkv, cs_q, &kv, s, mask, self.config.num_attention_heads)
    }

    fn attention(&self, l: usize, w: &Layer, x: &Tensor, cache: &mut KvCache, ctx: &Ctx) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = nh / nkv;
        let qkv = self.proj(l, &[Proj::Q, Proj::K, Proj::V], &w.qkv, x, ctx)?; // [B, T, (H + 2·KV)·hd]
        let (rope, mask) = match &ctx.attn {
            Attn::Composed { rope, mask } | Attn::Branches { rope, mask, .. } => (rope, mask),
            Attn::Fused { .. } => {
                let y = self.attend_fused(l, &qkv, cache, ctx)?; // [B, T, H·hd]
                return self.proj(l, &[Proj::O], &w.o, &y, ctx);
            }
        };
        // q comes out scaled by 1/√hd (see `Ctx`): [B, H, T, hd]; k, v [B, KV, T, hd].
        let (q, k, v) = match rope {
            Rope::Joined([cs, cs_q]) => super::fused_heads::split_heads(&qkv, cs, cs_q, (b, t), (nh, nkv))?,
            Rope::Halves([cos, sin, cos_q, sin_q]) => {
                let heads = qkv.reshape((b, t, nh + 2 * nkv, hd))?.transpose(1, 2)?.contiguous()?; // [B, H + 2·KV, T, hd]
                let q = heads.narrow(1, 0, nh)?.contiguous()?;
                let k = heads.narrow(1, nh, nkv)?.contiguous()?;
                let v = heads.narrow(1, nh + nkv, nkv)?.contiguous()?;
                let (q, k) = if ctx.grad {
                    // Differentiable composition (candle's fused rope has no backward).
                    (apply_rope(&q, cos_q, sin_q)?, apply_rope(&k, cos, sin)?)
                } else {
                    (candle_nn::rotary_emb::rope(&q, cos_q, sin_q)?, candle_nn::rotary_emb::rope(&k, cos, sin)?)
                };
                (q, k, v)
            }
        };
        let (k, v) = cache.append(l, k, v)?; // [B, KV, S, hd]
        if let Attn::Branches { n, m, .. } = ctx.attn {
            let y = super::branch::attend_branches(&q, &k, &v, mask, (n, m), self.dtype, ctx.grad)?; // [B, T, H·hd]
            return self.proj(l, &[Proj::O], &w.o, &y, ctx);
        }
        let s = k.dim(2)?;

        // Group the query heads that share a kv head: no copy of K/V.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scores = q.matmul(&k.t()?)?; // [B, KV, rep·T, S]
        let probs = if ctx.grad {
            let scores = (scores.to_dtype(DType::F32)?.reshape((b, nkv, rep, t, s))? + mask)?;
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            let scores = (scores.reshape((b, nkv, rep, t, s))? + mask)?;
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let probs = probs.to_dtype(self.dtype)?.reshape((b, nkv, rep * t, s))?;
        let y = probs.matmul(&v)?; // [B, KV, rep·T, hd]
        let y = y.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        self.proj(l, &[Proj::O], &w.o, &y, ctx)
    }
}

/// cos/sin of position × inverse frequency: [P, hd / 2].
fn rope_tables(c: &LlamaConfig, dev: &Device) -> Result<(Tensor, Tensor)> {
    let hd = c.head_dim;
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / (c.rope_theta as f32).powf(2.0 * i as f32 / hd as f32)).collect();
    let p = c.max_position_embeddings;
    let mut cos = Vec::with_capacity(p * hd);
    let mut sin = Vec::with_capacity(p * hd);
    for pos in 0..p {
        for &f in &inv {
            let a = pos as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((Tensor::from_vec(cos, (p, hd / 2), dev)?, Tensor::from_vec(sin, (p, hd / 2), dev)?))
}

/// `x·cos + rotate_half(x)·sin` with rotate_half([a, b]) = [-b, a]; x: [B, H, T, hd],
/// cos/sin: [B, T, hd/2] (the same for both halves). Differentiable.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let (cos, sin) = (Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?, Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?);
    let a = x.narrow(D::Minus1, 0, hd / 2)?;
    let b = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&b.neg()?, &a], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
}
