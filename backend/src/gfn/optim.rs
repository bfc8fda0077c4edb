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
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates done so far.
    pub t: usize,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let m = params.iter().map(|p| p.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW { config, params, m, v, t: 0 })
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// One update with gradients aligned with `params` (`None`: no gradient).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        let c = self.config;
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            // Detached: the moments outlive the step and must not hold its graph.
            let g = g.detach();
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            // p ← p (1 − lr·wd) − lr · (m / bc1) / (√(v / bc2) + eps), the scalar
            // factors folded into affine ops (fewer kernels per parameter).
            let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, c.eps)?;
            let update = (m.affine(lr / bc1, 0.0)? / denom)?;
            let decayed = p.as_tensor().detach().affine(1.0 - lr * c.weight_decay, 0.0)?;
            p.set(&(decayed - update)?.detach())?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Writes the moments (`m.i`, `v.i`) and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for i in 0..self.params.len() {
            t.insert(format!("m.{i}"), self.m[i].clone());
            t.insert(format!("v.{i}"), self.v[i].clone());
        }
        t.insert("t".into(), Tensor::new(&[self.t as u32], &candle_core::Device::Cpu)?);
        let tmp = path.with_extension("tmp");
        candle_core::safetensors::save(&t, &tmp)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote, for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let dev = self.params.first().map(|p| p.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let t = candle_core::safetensors::load(path, &dev).map_err(|e| Error::file(path, e))?;
        for i in 0..self.params.len() {
            let (Some(m), Some(v)) = (t.get(&format!("m.{i}")), t.get(&format!("v.{i}"))) else {
                return Err(Error::file(path, format!("optimizer state lacks parameter {i}")));
            };
            if m.dims() != self.params[i].dims() {
                return Err(Error::file(path, format!("optimizer state for parameter {i} has the wrong shape")));
            }
            self.m[i] = m.clone();
            self.v[i] = v.clone();
        }
        let step = t.get("t").ok_or_else(|| Error::file(path, "optimizer state lacks t"))?;
        self.t = step.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
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
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![Some(Tensor::new(&[3.0f32], &Device::Cpu).unwrap()), None, Some(Tensor::new(&[4.0f32], &Device::Cpu).unwrap())];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let a = g[0].as_ref().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-4);
    }
}
