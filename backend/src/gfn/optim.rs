//! AdamW over candle `Var`s with state that can be saved and restored exactly
//! (candle-nn's optimiser keeps its moments private), plus global-norm clipping.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    params: Vec<Var>,
    /// Moments of all parameters, flattened and concatenated in `params` order:
    /// when every parameter has a gradient the update is a dozen ops over one
    /// vector instead of a dozen per parameter (hundreds of LoRA matrices).
    m: Tensor,
    v: Tensor,
    /// Offset of each parameter in the flat vectors.
    offsets: Vec<usize>,
    pub t: usize,
    /// Clip and update in one pass each (`optim_fused.rs`) where every
    /// parameter and gradient is f32; the composed path otherwise.
    pub fused: bool,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let mut offsets = Vec::with_capacity(params.len());
        let mut total = 0;
        for p in &params {
            offsets.push(total);
            total += p.elem_count();
        }
        let dev = params.first().map(|p| p.device().clone()).unwrap_or(candle_core::Device::Cpu);
        // Separate storage: the sparse path updates them in place.
        let m = Tensor::zeros(total, candle_core::DType::F32, &dev)?;
        let v = Tensor::zeros(total, candle_core::DType::F32, &dev)?;
        Ok(AdamW { config, params, m, v, offsets, t: 0, fused: false })
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// Parameter `i`'s slice of a flat vector, in the parameter's shape.
    fn slot(&self, flat: &Tensor, i: usize) -> Result<Tensor> {
        let p = &self.params[i];
        Ok(flat.narrow(0, self.offsets[i], p.elem_count())?.reshape(p.dims())?)
    }

    /// One update with gradients aligned with `params` (`None`: no gradient,
    /// the parameter and its moments stay as they are).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if self.params.is_empty() {
            return Ok(());
        }
        if self.sparse(grads) {
            return self.step_sparse(grads, lr);
        }
        let (g, has) = self.flat_grads(grads)?;
        self.step_flat(&g, &has, lr)
    }

    /// Few parameters have a gradient (e.g. the log Z of this step's problems
    /// among hundreds): update them one by one, leave the rest alone.
    fn sparse(&self, grads: &[Option<Tensor>]) -> bool {
        grads.iter().filter(|g| g.is_some()).count() * 2 < self.params.len()
    }

    fn step_sparse(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.t += 1;
        for (i, param) in self.params.iter().enumerate() {
            let Some(g) = grads.get(i).and_then(|g| g.as_ref()) else { continue };
            let g = g.detach().to_dtype(candle_core::DType::F32)?.flatten_all()?;
            let n = param.elem_count();
            let (m0, v0) = (self.m.narrow(0, self.offsets[i], n)?, self.v.narrow(0, self.offsets[i], n)?);
            let p = param.as_tensor().detach().to_dtype(candle_core::DType::F32)?.flatten_all()?;
            let (m, v, p_new) = adamw(self.config, self.t, lr, &m0, &v0, &g, &p)?;
            param.set(&p_new.reshape(param.dims())?.to_dtype(param.dtype())?)?;
            self.m.slice_set(&m, 0, self.offsets[i])?;
            self.v.slice_set(&v, 0, self.offsets[i])?;
        }
        Ok(())
    }

    /// Clips the gradients to a global L2 norm of at most `max_norm` (when
    /// positive) and updates; returns the norm before clipping. A non-finite
    /// norm leaves everything untouched (the caller decides what to do).
    pub fn step_clipped(&mut self, grads: &[Option<Tensor>], lr: f64, max_norm: f64) -> Result<f64> {
        if self.params.is_empty() {
            return Ok(0.0);
        }
        if self.sparse(grads) {
            let mut grads = grads.to_vec();
            let norm = clip_grad_norm(&mut grads, max_norm)?;
            if norm.is_finite() {
                self.step_sparse(&grads, lr)?;
            }
            return Ok(norm);
        }
        if self.fused && grads.len() == self.params.len() && super::optim_fused::applies(&self.params, grads) {
            return super::optim_fused::step_clipped(&self.params, grads, &mut self.m, &mut self.v, &self.offsets, self.config, &mut self.t, lr, max_norm);
        }
        let (mut g, has) = self.flat_grads(grads)?;
        let norm = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?.sqrt();
        if !norm.is_finite() {
            return Ok(norm);
        }
        if max_norm > 0.0 && norm > max_norm {
            g = (g * (max_norm / (norm + 1e-6)))?;
        }
        self.step_flat(&g, &has, lr)?;
        Ok(norm)
    }

    /// Gradients as one flat f32 vector (zeros where there is none) and which
    /// parameters had one.
    fn flat_grads(&self, grads: &[Option<Tensor>]) -> Result<(Tensor, Vec<bool>)> {
        let mut has = Vec::with_capacity(self.params.len());
        let mut gs = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            let g = grads.get(i).and_then(|g| g.as_ref());
            has.push(g.is_some());
            gs.push(match g {
                Some(g) => g.detach().to_dtype(candle_core::DType::F32)?.flatten_all()?,
                None => Tensor::zeros(p.elem_count(), candle_core::DType::F32, p.device())?,
            });
        }
        Ok((Tensor::cat(&gs, 0)?, has))
    }

    fn step_flat(&mut self, g: &Tensor, has: &[bool], lr: f64) -> Result<()> {
        self.t += 1;
        let ps = self.params.iter().map(|p| p.as_tensor().detach().to_dtype(candle_core::DType::F32)?.flatten_all()).collect::<candle_core::Result<Vec<_>>>()?;
        let p = Tensor::cat(&ps, 0)?;
        let (m, v, p_new) = self.update(g, &p, lr)?;
        if has.iter().all(|&h| h) {
            self.m = m;
            self.v = v;
        } else {
            // Keep the old moments of parameters without a gradient.
            let keep = |new: &Tensor, old: &Tensor| -> Result<Tensor> {
                let parts = (0..self.params.len()).map(|i| Ok(if has[i] { self.slot(new, i)? } else { self.slot(old, i)? }.flatten_all()?)).collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?)
            };
            let (m, v) = (keep(&m, &self.m)?, keep(&v, &self.v)?);
            self.m = m;
            self.v = v;
        }
        for (i, param) in self.params.iter().enumerate() {
            if has[i] {
                param.set(&self.slot(&p_new, i)?.to_dtype(param.dtype())?.detach())?;
            }
        }
        Ok(())
    }

    /// AdamW on flat vectors: returns the new moments and parameters.
    fn update(&self, g: &Tensor, p: &Tensor, lr: f64) -> Result<(Tensor, Tensor, Tensor)> {
        adamw(self.config, self.t, lr, &self.m, &self.v, g, p)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for i in 0..self.params.len() {
            t.insert(format!("m.{i}"), self.slot(&self.m, i)?.force_contiguous()?);
            t.insert(format!("v.{i}"), self.slot(&self.v, i)?.force_contiguous()?);
        }
        t.insert("t".into(), Tensor::new(&[self.t as u32], &candle_core::Device::Cpu)?);
        let tmp = path.with_extension("tmp");
        candle_core::safetensors::save(&t, &tmp)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let dev = self.params.first().map(|p| p.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let t = candle_core::safetensors::load(path, &dev).map_err(|e| Error::file(path, e))?;
        let (mut ms, mut vs) = (Vec::new(), Vec::new());
        for i in 0..self.params.len() {
            let (Some(m), Some(v)) = (t.get(&format!("m.{i}")), t.get(&format!("v.{i}"))) else {
                return Err(Error::file(path, format!("optimizer state lacks parameter {i}")));
            };
            if m.dims() != self.params[i].dims() || v.dims() != self.params[i].dims() {
                return Err(Error::file(path, format!("optimizer state for parameter {i} has the wrong shape")));
            }
            ms.push(m.to_dtype(candle_core::DType::F32)?.flatten_all()?);
            vs.push(v.to_dtype(candle_core::DType::F32)?.flatten_all()?);
        }
        let step = t.get("t").ok_or_else(|| Error::file(path, "optimizer state lacks t"))?;
        if !ms.is_empty() {
            self.m = Tensor::cat(&ms, 0)?;
            self.v = Tensor::cat(&vs, 0)?;
        }
        self.t = step.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}

/// One AdamW update of step `t` on matching tensors: the new (m, v, p).
fn adamw(c: AdamWConfig, t: usize, lr: f64, m: &Tensor, v: &Tensor, g: &Tensor, p: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let bc1 = 1.0 - c.beta1.powi(t as i32);
    let bc2 = 1.0 - c.beta2.powi(t as i32);
    // Detached: the moments outlive the step and must not hold its graph.
    let m = ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?.detach();
    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
    // p ← p (1 − lr·wd) − lr · (m / bc1) / (√(v / bc2) + eps)
    let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, c.eps)?;
    let update = (m.affine(lr / bc1, 0.0)? / denom)?;
    let p_new = (p.affine(1.0 - lr * c.weight_decay, 0.0)? - update)?.detach();
    Ok((m, v, p_new))
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    // Squared norms stay on the device; one copy to the host for the total.
    let sq: Vec<Tensor> = grads.iter().flatten().map(|g| g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()).collect::<candle_core::Result<_>>()?;
    if sq.is_empty() {
        return Ok(0.0);
    }
    let norm = (Tensor::stack(&sq, 0)?.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?).sqrt();
    if max_norm > 0.0 && norm > max_norm && norm.is_finite() {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_first_step_moves_by_lr_and_state_round_trips() {
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let cfg = AdamWConfig { weight_decay: 0.0, ..Default::default() };
        let mut opt = AdamW::new(vec![p.clone()], cfg).unwrap();
        let g = Tensor::new(&[0.5f32, -3.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g.clone())], 0.1).unwrap();
        // First Adam step is lr · sign(g) (bias-corrected m/√v = ±1).
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] - 0.9).abs() < 1e-5 && (got[1] + 1.9).abs() < 1e-5, "{got:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path).unwrap();
        let q = Var::new(&[0.9f32, -1.9], &Device::Cpu).unwrap();
        let mut back = AdamW::new(vec![q.clone()], cfg).unwrap();
        back.load(&path).unwrap();
        assert_eq!(back.t, 1);
        opt.step(&[Some(g.clone())], 0.1).unwrap();
        back.step(&[Some(g)], 0.1).unwrap();
        assert_eq!(p.as_tensor().to_vec1::<f32>().unwrap(), q.as_tensor().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn fused_clip_and_step_equal_the_separate_ones_and_skip_missing_grads() {
        let dev = Device::Cpu;
        let make = || vec![Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev).unwrap(), Var::new(&[0.5f32], &dev).unwrap(), Var::new(&[-1.0f32, 1.0, 2.0], &dev).unwrap()];
        let (a, b) = (make(), make());
        let cfg = AdamWConfig::default();
        let (mut oa, mut ob) = (AdamW::new(a.clone(), cfg).unwrap(), AdamW::new(b.clone(), cfg).unwrap());
        let mut p1 = Vec::new();
        for step in 0..3 {
            let g = vec![
                Some(Tensor::new(&[[3.0f32, -1.0], [0.5, 2.0]], &dev).unwrap()),
                (step != 1).then(|| Tensor::new(&[4.0f32], &dev).unwrap()),
                Some(Tensor::new(&[0.1f32, 0.2, -0.3], &dev).unwrap()),
            ];
            let mut gb = g.clone();
            let na = oa.step_clipped(&g, 0.01, 1.0).unwrap();
            let nb = clip_grad_norm(&mut gb, 1.0).unwrap();
            ob.step(&gb, 0.01).unwrap();
            assert!((na - nb).abs() < 1e-6);
            for (x, y) in a.iter().zip(&b) {
                let (x, y) = (x.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), y.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap());
                assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-6), "{x:?} vs {y:?}");
            }
            p1.push(a[1].as_tensor().to_vec1::<f32>().unwrap()[0]);
        }
        // The parameter without a gradient at step 1 stayed put there, and moved at steps 0 and 2.
        assert!(p1[0] < 0.5 && p1[1] == p1[0] && p1[2] < p1[1], "{p1:?}");
        // One gradient of three: the sparse path moves only that parameter, the
        // same way in both optimisers, and its moments feed the next dense step.
        let before: Vec<Vec<f32>> = a.iter().map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        let g = vec![None, Some(Tensor::new(&[-2.0f32], &dev).unwrap()), None];
        oa.step_clipped(&g, 0.01, 1.0).unwrap();
        let mut gb = g.clone();
        clip_grad_norm(&mut gb, 1.0).unwrap();
        ob.step(&gb, 0.01).unwrap();
        let after: Vec<Vec<f32>> = a.iter().map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        assert_eq!((&before[0], &before[2]), (&after[0], &after[2]));
        assert_ne!(after[1], before[1]);
        assert_eq!(after[1], b[1].as_tensor().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()), None, Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap())];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let a = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-4);
    }
}
