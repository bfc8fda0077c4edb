//! What one forward pass reads of a LoRA adapter: a [`LoraView`] (detached
//! for inference, tracked for candle's autograd, or for the taped pass; q/k/v
//! and gate/up fused where no gradient is tracked; or folded into the weights),
//! its dropout masks, and the gradients a hand-written backward returns
//! ([`LoraGrads`]).
//!
//! Owns no parameters: the adapter (`lora.rs`) builds views from its `Var`s.

use candle_core::{DType, Tensor};

use super::linear::{matmul_t, Linear};
use super::lora::{LoraAdapter, Proj};
use crate::{Error, Result};

/// How a forward pass uses an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No gradients, no dropout (sampling, scoring, evaluation).
    Infer,
    /// Gradients flow to the adapter; dropout is applied.
    Train,
    /// For the taped pass (`model::tape`): detached and fused like `Infer`,
    /// with dropout masks from the view's seeded generator like `Train`.
    Tape,
}

/// The tensors of an adapter for one forward pass (detached in `Infer` mode).
pub struct LoraView {
    pub(super) dropout: f32,
    pub(crate) tracked: bool,
    /// Per layer and projection: (A [r, in], scale · B [out, r]).
    pub(super) layers: Vec<[Option<(Tensor, Tensor)>; 7]>,
    /// Inference views: per layer, the q/k/v and gate/up adapters as one pair
    /// each, (A stacked [Σr, in], block-diagonal scale · B [Σout, Σr]).
    pub(super) fused: Vec<[Option<(Tensor, Tensor)>; 2]>,
    /// Per layer: which projections carry an adapter.
    pub(super) present: Vec<[bool; 7]>,
    /// Folded views (`model::fold`): per layer and group (`GROUPS` order), the
    /// base weights plus the adapter; the pairs above are then empty.
    pub(super) folded: Option<Vec<[Option<Linear>; 4]>>,
    pub(super) outs: [usize; 7],
    pub(super) r: usize,
    pub(super) scale: f64,
    pub(super) rng: std::sync::Mutex<u64>,
}

/// SplitMix64: a tiny, fast, seedable generator for dropout masks.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl LoraView {
    /// The adapter's contribution `scale · dropout(x) Aᵀ Bᵀ` for `x` [.., in], if any.
    fn delta(&self, layer: usize, proj: Proj, x: &Tensor) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.layers.get(layer).and_then(|l| l[proj.index()].as_ref()) else {
            return Ok(None);
        };
        let x = if self.dropout > 0.0 { self.dropout(x)? } else { x.clone() };
        let x = x.to_dtype(a.dtype())?;
        Ok(Some(matmul_t(&matmul_t(&x, a)?, b)?))
    }

    /// The delta of projections fused into one output (their outputs side by
    /// side, in `group` order); `None` when none of them carries an adapter.
    pub fn delta_group(&self, layer: usize, group: &[Proj], x: &Tensor) -> Result<Option<Tensor>> {
        if let [p] = group {
            return self.delta(layer, *p, x);
        }
        let slot = match group {
            [Proj::Q, Proj::K, Proj::V] => Some(0),
            [Proj::Gate, Proj::Up] => Some(1),
            _ => None,
        };
        if let Some((a, b)) = slot.and_then(|i| self.fused.get(layer).and_then(|f| f[i].as_ref())) {
            let x = x.to_dtype(a.dtype())?;
            return Ok(Some(matmul_t(&matmul_t(&x, a)?, b)?));
        }
        let deltas = group.iter().map(|&p| self.delta(layer, p, x)).collect::<Result<Vec<_>>>()?;
        let Some(like) = deltas.iter().flatten().next().cloned() else {
            return Ok(None);
        };
        let parts = group
            .iter()
            .zip(deltas)
            .map(|(&p, d)| match d {
                Some(d) => Ok(d),
                None => {
                    let mut shape = like.dims().to_vec();
                    *shape.last_mut().unwrap_or(&mut 0) = self.outs[p.index()];
                    Ok(Tensor::zeros(shape, like.dtype(), like.device())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Tensor::cat(&parts, candle_core::D::Minus1)?))
    }
}

/// Gradients of an adapter's `A` [r, in] and `B` [out, r] (f32), per layer and
/// projection, from a hand-written backward pass (`model::tape`).
pub struct LoraGrads {
    pub layers: Vec<[Option<(Tensor, Tensor)>; 7]>,
    /// Per layer, the q/k/v and gate/up groups' gradients as the fused pairs
    /// have them (d A stacked [Σr, in], d(sB) block-diagonal [Σout, Σr], f32),
    /// summed over passes and split once, in [`LoraGrads::in_var_order`].
    groups: Vec<[Option<(Tensor, Tensor)>; 2]>,
}

use super::lora::FUSED as FUSED_GROUPS;

impl LoraGrads {
    /// No gradients yet, for an adapter of `layers` layers.
    pub fn new(layers: usize) -> Self {
        LoraGrads { layers: (0..layers).map(|_| Default::default()).collect(), groups: (0..layers).map(|_| Default::default()).collect() }
    }

    /// In the order of [`LoraAdapter::vars`] (layer, projection, A then B);
    /// `None` where the pass produced no gradient.
    pub fn in_var_order(mut self, adapter: &LoraAdapter) -> Result<Vec<Option<Tensor>>> {
        let (r, scale) = (adapter.config.r, adapter.config.scale());
        for l in 0..self.groups.len() {
            let present: [bool; 7] = match adapter.layers.get(l) {
                Some(slots) => std::array::from_fn(|i| slots[i].is_some()),
                None => continue,
            };
            for (g, group) in FUSED_GROUPS.iter().enumerate() {
                if let Some((da, dsb)) = self.groups[l][g].take() {
                    split_into(&mut self.layers[l], group, &present, &adapter.outs, (r, scale), &da, &dsb)?;
                }
            }
        }
        let mut out = Vec::new();
        for (l, slots) in adapter.layers.iter().enumerate() {
            for (i, pair) in slots.iter().enumerate() {
                if pair.is_some() {
                    let g = self.layers.get(l).and_then(|g| g[i].clone());
                    out.push(g.as_ref().map(|g| g.0.clone()));
                    out.push(g.map(|g| g.1));
                }
            }
        }
        Ok(out)
    }
}

/// Adds a group pair's gradients (`da` [Σr, in], `dsb` [Σout, Σr]) to each
/// present projection's `A` and `B` gradients in `slots` (f32).
fn split_into(slots: &mut [Option<(Tensor, Tensor)>; 7], group: &[Proj], present: &[bool; 7], outs: &[usize; 7], (r, scale): (usize, f64), da: &Tensor, dsb: &Tensor) -> Result<()> {
    let (mut row, mut k) = (0, 0);
    for &p in group {
        let out = outs[p.index()];
        if present[p.index()] {
            let ga = da.narrow(0, k * r, r)?.to_dtype(DType::F32)?;
            let gb = (dsb.narrow(0, row, out)?.narrow(1, k * r, r)?.to_dtype(DType::F32)? * scale)?;
            slots[p.index()] = Some(match slots[p.index()].take() {
                Some((a0, b0)) => ((a0 + ga)?, (b0 + gb)?),
                None => (ga, gb),
            });
            k += 1;
        }
        row += out;
    }
    Ok(())
}

impl LoraView {
    pub fn is_folded(&self) -> bool {
        self.folded.is_some()
    }

    /// The folded weights of a projection group, in a folded view.
    pub(crate) fn folded(&self, layer: usize, group: &[Proj]) -> Option<&Linear> {
        self.folded.as_ref()?.get(layer)?[super::fold::slot(group)?].as_ref()
    }

    /// Multiply-adds of this view's adapter per decoded token, r·(in + out) per
    /// projection, and of folding it, r·in·out per projection.
    pub(crate) fn fold_macs(&self, cfg: &super::config::LlamaConfig) -> (f64, f64) {
        let (mut per_token, mut fold) = (0.0, 0.0);
        for present in &self.present {
            for p in Proj::ALL.into_iter().filter(|p| present[p.index()]) {
                let (i, o) = p.dims(cfg);
                per_token += (self.r * (i + o)) as f64;
                fold += (self.r * i * o) as f64;
            }
        }
        (per_token, fold)
    }

    /// An unfolded, untracked view's tensors (shared, not copied) with dropout
    /// `rate` drawn from `seed`: a `Mode::Tape` view without rebuilding the
    /// pairs (no device work).
    pub fn with_dropout(&self, rate: f32, seed: u64) -> Result<LoraView> {
        if self.tracked || self.is_folded() {
            return Err(Error::invalid("lora", "only an unfolded inference view can take dropout this way"));
        }
        Ok(LoraView {
            dropout: rate,
            tracked: false,
            layers: self.layers.clone(),
            fused: self.fused.clone(),
            present: self.present.clone(),
            folded: None,
            outs: self.outs,
            r: self.r,
            scale: self.scale,
            rng: std::sync::Mutex::new(seed),
        })
    }

    /// This view's adapter as folded weights (and no pairs).
    pub(super) fn with_folded(&self, folded: Vec<[Option<Linear>; 4]>) -> LoraView {
        let n = self.layers.len();
        LoraView {
            dropout: 0.0,
            tracked: false,
            layers: (0..n).map(|_| Default::default()).collect(),
            fused: (0..n).map(|_| Default::default()).collect(),
            present: self.present.clone(),
            folded: Some(folded),
            outs: self.outs,
            r: self.r,
            scale: self.scale,
            rng: std::sync::Mutex::new(0),
        }
    }

    /// The one (A, scale · B) pair of a projection group in an inference view:
    /// a single projection's own pair, or q/k/v and gate/up fused (A stacked
    /// [Σr, in], B block-diagonal [Σout, Σr]); `None` without an adapter there.
    pub(crate) fn group_pair(&self, layer: usize, group: &[Proj]) -> Option<&(Tensor, Tensor)> {
        match group {
            [p] => self.layers.get(layer)?[p.index()].as_ref(),
            [Proj::Q, Proj::K, Proj::V] => self.fused.get(layer)?[0].as_ref(),
            [Proj::Gate, Proj::Up] => self.fused.get(layer)?[1].as_ref(),
            _ => None,
        }
    }

    /// Adds the gradients of a [`LoraView::group_pair`] (`da` [Σr, in], `dsb`
    /// [Σout, Σr], model dtype) to what `into` holds: a fused group's as they
    /// are (split per projection once, by [`LoraGrads::in_var_order`]), a single
    /// projection's as its `A` and `B` gradients.
    pub(crate) fn split_group_grads(&self, layer: usize, group: &[Proj], da: &Tensor, dsb: &Tensor, into: &mut LoraGrads) -> Result<()> {
        let (Some(present), Some(slots), Some(groups)) = (self.present.get(layer), into.layers.get_mut(layer), into.groups.get_mut(layer)) else {
            return Err(Error::invalid("lora", format!("no layer {layer} in the adapter")));
        };
        if let Some(g) = FUSED_GROUPS.iter().position(|f| *f == group) {
            // A pass over several segments (and micro-batches) adds each one's
            // share, in f32 (a no-op cast for f32 models).
            let (da, dsb) = (da.to_dtype(DType::F32)?, dsb.to_dtype(DType::F32)?);
            groups[g] = Some(match groups[g].take() {
                Some((a0, b0)) => ((a0 + da)?, (b0 + dsb)?),
                None => (da, dsb),
            });
            return Ok(());
        }
        split_into(slots, group, present, &self.outs, (self.r, self.scale), da, dsb)
    }
}

impl LoraView {
    /// Inverted dropout with a mask drawn from the view's seeded generator (CPU)
    /// or the device's seeded generator (CUDA).
    fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        Ok((x * self.dropout_mask(x)?)?)
    }

    /// The taped pass's dropout: one mask per projection of `group` that
    /// carries an adapter (in group order, as `delta_group` draws them); `None`
    /// without dropout.
    pub(crate) fn dropout_masks(&self, layer: usize, group: &[Proj], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        if self.dropout == 0.0 {
            return Ok(None);
        }
        let present = self.present.get(layer).ok_or_else(|| Error::invalid("lora", format!("no layer {layer} in the adapter")))?;
        let masks = group.iter().filter(|p| present[p.index()]).map(|_| self.dropout_mask(x)).collect::<Result<Vec<_>>>()?;
        Ok(Some(masks))
    }

    /// An inverted-dropout mask for `x` (0 or 1/keep, in x's dtype).
    fn dropout_mask(&self, x: &Tensor) -> Result<Tensor> {
        let keep = 1.0 - self.dropout as f64;
        let mask = if x.device().is_cpu() {
            let mut st = self.rng.lock().map_err(|_| Error::invalid("dropout", "rng poisoned"))?;
            let threshold = (self.dropout as f64 * u64::MAX as f64) as u64;
            let m: Vec<f32> = (0..x.elem_count()).map(|_| if splitmix(&mut st) >= threshold { 1.0 } else { 0.0 }).collect();
            Tensor::from_vec(m, x.dims(), x.device())?.to_dtype(x.dtype())?
        } else {
            x.rand_like(0.0, 1.0)?.ge(self.dropout as f64)?.to_dtype(x.dtype())?
        };
        Ok((mask / keep)?)
    }
}

/// One (A, B) pair for the projections of `group` of an adapter layer, in
/// `dtype`: A's stacked [Σr, in], scale · B's block-diagonal [Σout, Σr]
/// (untargeted projections get zero rows), so `x Aᵀ Bᵀ` is their deltas side by
/// side. Detached.
pub(super) fn fuse(layer: &[Option<super::lora::LoraPair>; 7], group: &[Proj], outs: &[usize; 7], scale: f64, dtype: DType) -> Result<Option<(Tensor, Tensor)>> {
    let members: Vec<Option<&super::lora::LoraPair>> = group.iter().map(|p| layer[p.index()].as_ref()).collect();
    if members.iter().all(|m| m.is_none()) {
        return Ok(None);
    }
    let a: Vec<Tensor> = members.iter().flatten().map(|m| m.a.as_tensor().detach()).collect();
    let a = Tensor::cat(&a, 0)?.to_dtype(dtype)?;
    let bs: Vec<Option<Tensor>> = members.iter().map(|m| m.map(|m| m.b.as_tensor().detach())).collect();
    let bs: Vec<Option<&Tensor>> = bs.iter().map(|b| b.as_ref()).collect();
    let group_outs: Vec<usize> = group.iter().map(|p| outs[p.index()]).collect();
    let b = super::fused::block_diag(&bs, &group_outs, scale)?.to_dtype(dtype)?;
    Ok(Some((a, b)))
}
