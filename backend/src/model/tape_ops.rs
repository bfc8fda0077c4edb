//! The taped pass's building blocks with their backward: a projection with
//! its adapter (the LoRA factors' gradients go to a [`LoraGrads`]), RMSNorm and
//! SwiGLU. Plain functions over [N, features] tensors; `tape.rs` composes them.
//! RMSNorm's and SwiGLU's backward run composed here or as one fused op each
//! (`fused_grad.rs`), as the caller says.

use candle_core::{DType, Tensor, D};

use super::fused_grad;
use super::llama::Linear;
use super::lora::{LoraGrads, LoraView, Proj};
use crate::Result;

/// A projection group's adapter activations: x Aᵀ [N, Σr] (per projection
/// side by side) and, with dropout, each projection's mask [N, in].
pub(super) struct LoraTape {
    u: Tensor,
    masks: Option<Vec<Tensor>>,
}

/// A projection plus its adapter's delta: (x Wᵀ + b + (x Aᵀ)(sB)ᵀ, what the
/// backward needs). x: [N, in]. With dropout, projection p of the group reads x ⊙ m_p.
pub(super) fn proj(l: usize, group: &[Proj], lin: &Linear, x: &Tensor, lora: &LoraView) -> Result<(Tensor, Option<LoraTape>)> {
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
pub(super) fn proj_backward(l: usize, group: &[Proj], lin: &Linear, x: &Tensor, t: Option<&LoraTape>, dy: &Tensor, lora: &LoraView, grads: &mut LoraGrads) -> Result<Tensor> {
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
pub(super) fn lora_backward(l: usize, group: &[Proj], x: &Tensor, t: Option<&LoraTape>, dy: &Tensor, need_dx: bool, lora: &LoraView, grads: &mut LoraGrads) -> Result<Option<Tensor>> {
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

/// `acc + dx` (or dx) for RMSNorm's backward below: one fused op or composed.
pub(super) fn rms_norm_backward_add(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64, acc: Option<&Tensor>, fused: bool) -> Result<Tensor> {
    if fused {
        return fused_grad::rms_norm_backward(x, w, dy, eps, acc);
    }
    let dx = rms_norm_backward(x, w, dy, eps)?;
    Ok(match acc {
        Some(a) => (a + dx)?,
        None => dx,
    })
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
pub(super) fn swiglu_backward(gu: &Tensor, d_act: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        return fused_grad::swiglu_backward(gu, d_act);
    }
    let i = d_act.dim(1)?;
    let (g, u) = (gu.narrow(1, 0, i)?, gu.narrow(1, i, i)?);
    let sig = candle_nn::ops::sigmoid(&g)?;
    let silu = (&g * &sig)?;
    let d_silu = (&sig + (&silu * sig.affine(-1.0, 1.0)?)?)?;
    let d_g = ((d_act * u)? * d_silu)?;
    let d_u = (d_act * silu)?;
    Ok(Tensor::cat(&[&d_g, &d_u], 1)?)
}
