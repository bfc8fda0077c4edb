//! The decoder's blocks for a decode step of a few rows as five kernels each,
//! through `gemv.rs` (used by `Llama::layers_over` when [`Llama::set_gemv`]
//! is on and the pass qualifies, [`Llama::gemv_fits`]):
//!
//! 1. q/k/v = rms_norm(x) · Wqkvᵀ            (`gemv`, norm fused)
//! 2. keys and values into the cache's room  (`fused::cache_write`)
//! 3. y = attention over the room            (`fused::attend`)
//! 4. x = x + y · Woᵀ                        (`gemv`, residual fused)
//! 5. a = silu(g) · u, [g, u] = rms_norm(x) · Wguᵀ (`gemv`, norm and SwiGLU fused)
//! 6. x = x + a · Wdownᵀ                     (`gemv`, residual fused)
//!
//! (2 and 3 are the fused path's own.) The output head of such a pass goes
//! through the same op ([`Llama::logits_gemv`]). The same values as the fused path up
//! to rounding: every intermediate is rounded to the model dtype where that
//! path rounds it. Reads the model's weights (or a folded adapter's); owns no
//! state.

use candle_core::Tensor;

use super::cache::KvCache;
use super::gemv::{self, Fuse};
use super::llama::{Attn, Ctx, Layer, Linear, Llama};
use super::lora::Proj;
use crate::Result;

impl Llama {
    /// Whether the kernel takes every projection of `layers` (no biases;
    /// widths a multiple of 8): checked once, when the blocks are turned on.
    pub(super) fn gemv_takes(layers: &[Layer]) -> bool {
        layers.iter().all(|l| [&l.qkv, &l.o, &l.gate_up, &l.down].iter().all(|p| p.bias.is_none() && p.weight.dim(1).is_ok_and(|k| k % 8 == 0)))
    }

    /// Whether a pass of `rows` new tokens (batch × length) runs through
    /// [`Llama::layers_gemv`]: an inference pass with the fused ops and a
    /// cache with room, at most [`Llama::gemv_rows`] rows (0 for a model whose
    /// projections the kernel does not take, [`Llama::gemv_takes`]), no
    /// adapter or a folded one.
    pub(super) fn gemv_fits(&self, ctx: &Ctx, rows: usize) -> bool {
        ctx.fused
            && !ctx.grad
            && matches!(ctx.attn, Attn::Fused { .. })
            && (1..=self.gemv_rows()).contains(&rows)
            && ctx.lora.is_none_or(|v| v.is_folded())
    }

    /// [`Llama::logits`] of a few rows through the gemv op (the head read
    /// once for all of them), when the blocks are on and the rows qualify.
    pub(super) fn logits_gemv(&self, hidden: &Tensor, head: &Tensor) -> Result<Option<Tensor>> {
        let rows = hidden.elem_count() / self.config.hidden_size.max(1);
        // The op has no backward: autograd passes keep the plain product.
        if rows == 0 || rows > self.gemv_rows() || hidden.track_op() || !gemv::fits(hidden, head) {
            return Ok(None);
        }
        Ok(Some(gemv::gemv(hidden, head, Fuse::default())?.to_dtype(candle_core::DType::F32)?))
    }

    /// The blocks over the embeddings `x` [B, T, hidden] and the final norm.
    /// Returns [B, T, hidden].
    pub(super) fn layers_gemv(&self, mut x: Tensor, ctx: &Ctx, cache: &mut KvCache) -> Result<Tensor> {
        gemv::PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let eps = self.config.rms_norm_eps;
        for (l, w) in self.layers.iter().enumerate() {
            // A folded adapter's weights replace the base ones group by group.
            let pick = |group: &[Proj], base: &'_ Linear| -> Tensor { ctx.lora.and_then(|v| v.folded(l, group)).unwrap_or(base).weight.clone() };
            let qkv = gemv::gemv(&x, &pick(&[Proj::Q, Proj::K, Proj::V], &w.qkv), Fuse { norm: Some((&w.attn_norm, eps)), ..Fuse::default() })?;
            let y = self.attend_fused(l, &qkv, cache, ctx)?; // [B, T, H·hd]
            x = gemv::gemv(&y, &pick(&[Proj::O], &w.o), Fuse { residual: Some(&x), ..Fuse::default() })?;
            let act = gemv::gemv(&x, &pick(&[Proj::Gate, Proj::Up], &w.gate_up), Fuse { norm: Some((&w.mlp_norm, eps)), swiglu: true, ..Fuse::default() })?;
            x = gemv::gemv(&act, &pick(&[Proj::Down], &w.down), Fuse { residual: Some(&x), ..Fuse::default() })?;
        }
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps as f32)?)
    }
}
