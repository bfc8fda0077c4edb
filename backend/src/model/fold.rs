//! An adapter folded into the base weights, W' = W + (s·B) A for each fused
//! projection, as a view that reads like the base model: a decode step then
//! runs no adapter products at all (four products and four adds fewer per
//! block, the same count as the base). Folding costs one [out, r] × [r, in]
//! product per projection, paid once per adapter state; it pays where passes
//! are bound by launches (GPU) or when the folded view serves many tokens.
//! PEFT's `merge_and_unload` computes the same weights.
//!
//! Owns only the folding; the forward pass picks folded weights in
//! `Llama::proj`, and a folded view has no pairs left for training passes.

use super::llama::{Linear, Llama};
use super::lora::{LoraView, Proj, GROUPS};
use crate::{Error, Result};

/// How many times slower per multiply-add the unfolded adapter's small
/// products run on the CPU than the fold's large ones (see [`Llama::fold_pays`]).
const CPU_ADAPTER_SLOWDOWN: f64 = 3.0;

impl Llama {
    /// Whether folding `view` pays for a job that decodes about `tokens`
    /// tokens: always off the CPU, where passes are bound by kernel launches
    /// (folding removes four products and four adds per block and step); on the
    /// CPU when the adapter's products over those tokens cost more time than
    /// the fold. Their small products run at about a third of the fold's
    /// multiply-add rate there: by multiply-add counts folding SmolLM2-135M
    /// with r = 64 on every projection pays from 348 tokens, measured from
    /// about 115 (a training step at batch 16; 14 at batch 1, where this stays
    /// conservative; docs/results/cpu-2026-11-28c), so the counts' threshold is
    /// divided by [`CPU_ADAPTER_SLOWDOWN`].
    pub fn fold_pays(&self, view: &LoraView, tokens: usize) -> bool {
        if !self.device().is_cpu() {
            return true;
        }
        let (per_token, fold) = view.fold_macs(&self.config);
        tokens as f64 * per_token * CPU_ADAPTER_SLOWDOWN >= fold
    }

    /// `view` (an inference view) folded into this model's weights.
    pub fn fold(&self, view: &LoraView) -> Result<LoraView> {
        if view.tracked {
            return Err(Error::invalid("lora", "only an inference view can be folded (a folded view has no gradients)"));
        }
        if view.is_folded() {
            return Err(Error::invalid("lora", "this view is already folded"));
        }
        let mut folded = Vec::with_capacity(self.layers.len());
        for (l, w) in self.layers.iter().enumerate() {
            let mut slots: [Option<Linear>; 4] = Default::default();
            for (slot, group) in GROUPS.iter().enumerate() {
                let Some((a, sb)) = view.group_pair(l, group) else { continue };
                let lin = match slot {
                    0 => &w.qkv,
                    1 => &w.o,
                    2 => &w.gate_up,
                    _ => &w.down,
                };
                let delta = sb.matmul(a)?.to_dtype(lin.weight.dtype())?; // [out, in]
                slots[slot] = Some(Linear { weight: (&lin.weight + delta)?, bias: lin.bias.clone() });
            }
            folded.push(slots);
        }
        Ok(view.with_folded(folded))
    }
}

/// The slot of a projection group in a folded view.
pub(super) fn slot(group: &[Proj]) -> Option<usize> {
    GROUPS.iter().position(|g| *g == group)
}
