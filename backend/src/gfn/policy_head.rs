//! The policy's two action log-probabilities per state, from the states'
//! logits in one op with its own backward:
//!
//!   x_j      = logit_j + bias_j + pen · [j ∈ stop]
//!   log q(a) = x_a − lse(x)                        (the next token a)
//!   log q(⊤) = lse(x over stop) − lse(x)           (the stop action)
//!
//! and, from their gradients (g_a, g_⊤),
//!
//!   ∂/∂logit_j = g_a·[j = a] + g_⊤·softmax_stop(x)_j − (g_a + g_⊤)·softmax(x)_j.
//!
//! The composed ops (`Plan::head`'s other path) build about ten [N, V]
//! tensors forward and as many backward; this op reads each row a few times
//! and writes only the gradient. CPU body only (rows in parallel, f32, e^x
//! in SIMD lanes by `amortize_cpu_kernels::exp`): the CUDA path keeps the
//! composed ops. Owns this arithmetic; what the rows are
//! (states, masks, the minimum length) is `policy.rs`'s.

use std::ops::Range;

use amortize_cpu_kernels::exp;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// `[N, 2]` f32: (log q(next_r), log q(⊤)) for each row r of `logits` [N, V]
/// (f32, CPU). `bias`: V additive values (f32) or none; `stop`: the stop
/// tokens, distinct and below V; `stop_penalty`: per row, added to its stop
/// tokens' logits; `next`: per row, a token below V. Differentiable in
/// `logits` (the op's own backward).
pub fn action_logprobs(logits: &Tensor, bias: Option<&Tensor>, stop: &[u32], stop_penalty: &[f32], next: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let invalid = |what: String| crate::Error::invalid("policy head", what);
    if logits.dtype() != DType::F32 || !logits.device().is_cpu() {
        return Err(invalid(format!("logits {:?} on {:?} (want f32 on the CPU)", logits.dtype(), logits.device())));
    }
    if stop_penalty.len() != n || next.len() != n {
        return Err(invalid(format!("{} penalties and {} next tokens for {n} rows", stop_penalty.len(), next.len())));
    }
    let mut sorted = stop.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if stop.is_empty() || sorted.len() != stop.len() {
        return Err(invalid(format!("stop tokens {stop:?} (want at least one, each once)")));
    }
    if let Some(&bad) = stop.iter().chain(next).find(|&&t| t as usize >= v) {
        return Err(invalid(format!("token {bad} outside the vocabulary of {v}")));
    }
    let bias = match bias {
        Some(b) if b.elem_count() == v && b.dtype() == DType::F32 => Some(b.flatten_all()?.to_vec1::<f32>()?),
        Some(b) => return Err(invalid(format!("bias {:?} {:?} for {v} logits", b.dims(), b.dtype()))),
        None => None,
    };
    let op = ActionLogprobs { bias, stop: stop.iter().map(|&t| t as usize).collect(), sorted: sorted.iter().map(|&t| t as usize).collect(), pen: stop_penalty.to_vec(), next: next.iter().map(|&t| t as usize).collect() };
    // Columns 2 and 3 (lse over all tokens, over the stop tokens) are for the
    // backward only; the narrow gives them zero gradient.
    Ok(logits.contiguous()?.apply_op1(op)?.narrow(1, 0, 2)?)
}

struct ActionLogprobs {
    bias: Option<Vec<f32>>,
    stop: Vec<usize>,
    /// The stop tokens in increasing order.
    sorted: Vec<usize>,
    pen: Vec<f32>,
    next: Vec<usize>,
}

impl ActionLogprobs {
    /// Row r's x into `x`: the logits, the bias, the stop tokens' penalty.
    fn fill_x(&self, r: usize, row: &[f32], x: &mut [f32]) {
        match &self.bias {
            Some(b) => x.iter_mut().zip(row.iter().zip(b)).for_each(|(x, (l, b))| *x = l + b),
            None => x.copy_from_slice(row),
        }
        for &j in &self.stop {
            x[j] += self.pen[r];
        }
    }

    /// The tokens other than the stop tokens, as ranges of a row of `v`.
    fn plain_ranges(&self, v: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let starts = std::iter::once(0).chain(self.sorted.iter().map(|&s| s + 1));
        let ends = self.sorted.iter().copied().chain(std::iter::once(v));
        starts.zip(ends).filter(|(a, b)| a < b).map(|(a, b)| a..b)
    }

    /// (x_next, lse(x), lse(x over stop)) of row r, read in place.
    fn sums(&self, r: usize, row: &[f32]) -> (f32, f32, f32) {
        let bias = self.bias.as_deref();
        let x = |j: usize| row[j] + bias.map_or(0.0, |b| b[j]);
        let stop_x: Vec<f32> = self.stop.iter().map(|&j| x(j) + self.pen[r]).collect();
        let ms = stop_x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let part = |rg: Range<usize>| (&row[rg.clone()], bias.map(|b| &b[rg]));
        let m = self.plain_ranges(row.len()).map(part).fold(ms, |m, (x, b)| m.max(exp::max(x, b)));
        let plain: f32 = self.plain_ranges(row.len()).map(part).map(|(x, b)| exp::exp_sum(x, b, m)).sum();
        let lse = m + (plain + stop_x.iter().map(|&s| (s - m).exp()).sum::<f32>()).ln();
        let lse_stop = ms + stop_x.iter().map(|&s| (s - ms).exp()).sum::<f32>().ln();
        let a = self.next[r];
        let x_next = self.stop.iter().position(|&j| j == a).map_or_else(|| x(a), |i| stop_x[i]);
        (x_next, lse, lse_stop)
    }
}

/// Row-major f32 rows of a contiguous CPU tensor.
fn rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (n, v) = l.shape().dims2()?;
    let CpuStorage::F32(all) = s else { bail!("policy head: {what} must be f32") };
    if !l.is_contiguous() {
        bail!("policy head: {what} must be contiguous");
    }
    Ok((&all[l.start_offset()..l.start_offset() + n * v], n, v))
}

impl CustomOp1 for ActionLogprobs {
    fn name(&self) -> &'static str {
        "action-logprobs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, n, v) = rows(s, l, "logits")?;
        let mut out = vec![0f32; n * 4];
        out.par_chunks_mut(4).enumerate().for_each(|(r, o)| {
            let (x_next, lse, lse_stop) = self.sums(r, &logits[r * v..(r + 1) * v]);
            o.copy_from_slice(&[x_next - lse, lse_stop - lse, lse, lse_stop]);
        });
        Ok((CpuStorage::F32(out), Shape::from((n, 4))))
    }

    fn bwd(&self, logits: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.narrow(1, 0, 2)?.contiguous()?;
        let sums = res.narrow(1, 2, 2)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let op = ActionGrad { fwd: self, sums };
        Ok(Some(logits.apply_op2_no_bwd(&grad, &op)?))
    }
}

/// d logits [N, V] from the gradients of the two columns, [N, 2].
struct ActionGrad<'a> {
    fwd: &'a ActionLogprobs,
    /// Per row (lse, lse_stop), from the forward.
    sums: Vec<f32>,
}

impl CustomOp2 for ActionGrad<'_> {
    fn name(&self) -> &'static str {
        "action-logprobs-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (logits, n, v) = rows(s, l, "logits")?;
        let (g, _, _) = rows(gs, gl, "gradient")?;
        let op = self.fwd;
        let mut out = vec![0f32; n * v];
        out.par_chunks_mut(v).enumerate().for_each(|(r, d)| {
            // x in place, then each entry's gradient from its own x.
            op.fill_x(r, &logits[r * v..(r + 1) * v], d);
            let (g_next, g_stop) = (g[2 * r], g[2 * r + 1]);
            let (lse, lse_stop) = (self.sums[2 * r], self.sums[2 * r + 1]);
            let stop_x: Vec<f32> = op.stop.iter().map(|&j| d[j]).collect();
            let both = g_next + g_stop;
            exp::exp_scale(d, lse, -both);
            for (&j, xs) in op.stop.iter().zip(stop_x) {
                d[j] += g_stop * (xs - lse_stop).exp();
            }
            d[op.next[r]] += g_next;
        });
        Ok((CpuStorage::F32(out), Shape::from((n, v))))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;

    /// The composed ops this op replaces (as `Plan::head` builds them).
    fn composed(logits: &Tensor, bias: &Tensor, stop: &[u32], pen: &[f32], next: &[u32]) -> Result<Tensor> {
        let (n, v) = logits.dims2()?;
        let dev = logits.device();
        let mut onehot = vec![0f32; v];
        for &t in stop {
            onehot[t as usize] = 1.0;
        }
        let pen = Tensor::from_slice(pen, (n, 1), dev)?.broadcast_mul(&Tensor::from_vec(onehot, (1, v), dev)?)?;
        let x = (logits.broadcast_add(bias)? + pen)?;
        let logp = candle_nn::ops::log_softmax(&x, D::Minus1)?;
        let a = logp.gather(&Tensor::new(next, dev)?.unsqueeze(1)?, 1)?;
        let stops = Tensor::new(stop, dev)?.unsqueeze(0)?.broadcast_as((n, stop.len()))?.contiguous()?;
        let t = logp.gather(&stops, 1)?.log_sum_exp(1)?.unsqueeze(1)?;
        Ok(Tensor::cat(&[a, t], 1)?)
    }

    #[test]
    fn values_and_gradients_match_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (n, v) = (7, 300);
        let logits = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (n, v), &dev)?))?;
        // A masked block (the tasks' −99 penalty) and plain tokens.
        let bias: Vec<f32> = (0..v).map(|j| if (40..140).contains(&j) { -99.0 } else { 0.0 }).collect();
        let bias = Tensor::from_vec(bias, v, &dev)?;
        let stop = [5u32, 77, 299];
        let pen = [-30.0f32, -30.0, 0.0, 0.0, 2.5, 0.0, -30.0];
        // Next tokens: plain, masked, and a stop token (row 3).
        let next = [0u32, 50, 12, 77, 299, 1, 200];
        // Weights on the outputs, so that both gradients are exercised unevenly.
        let w = Tensor::randn(0f32, 1.0, (n, 2), &dev)?;

        let fused = action_logprobs(logits.as_tensor(), Some(&bias), &stop, &pen, &next)?;
        let plain = composed(logits.as_tensor(), &bias, &stop, &pen, &next)?;
        let diff = (&fused - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "values differ by {diff}: {fused} vs {plain}");

        let g_fused = (fused * &w)?.sum_all()?.backward()?;
        let g_plain = (plain * &w)?.sum_all()?.backward()?;
        let (a, b) = (g_fused.get(logits.as_tensor()).expect("fused gradient"), g_plain.get(logits.as_tensor()).expect("composed gradient"));
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(scale > 0.1 && diff < 1e-5 * scale.max(1.0), "gradients differ by {diff} (largest {scale})");
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 10), DType::F32, &dev)?;
        let pen = [0f32; 2];
        assert!(action_logprobs(&logits, None, &[], &pen, &[0, 1]).is_err(), "no stop token");
        assert!(action_logprobs(&logits, None, &[3, 3], &pen, &[0, 1]).is_err(), "a repeated stop token");
        assert!(action_logprobs(&logits, None, &[10], &pen, &[0, 1]).is_err(), "a stop token outside the vocabulary");
        assert!(action_logprobs(&logits, None, &[3], &pen, &[0, 10]).is_err(), "a next token outside the vocabulary");
        assert!(action_logprobs(&logits, None, &[3], &pen[..1], &[0, 1]).is_err(), "too few penalties");
        let bias = Tensor::zeros(9, DType::F32, &dev)?;
        assert!(action_logprobs(&logits, Some(&bias), &[3], &pen, &[0, 1]).is_err(), "a bias of the wrong size");
        assert!(action_logprobs(&logits.to_dtype(DType::BF16)?, None, &[3], &pen, &[0, 1]).is_err(), "bf16 logits");
        // Uniform logits: log q(a) = −ln V, log q(⊤) = −ln V for one stop token.
        let out = action_logprobs(&logits, None, &[3], &pen, &[0, 1])?.to_vec2::<f32>()?;
        assert!(out.iter().flatten().all(|&x| (x + 10f32.ln()).abs() < 1e-6), "{out:?}");
        Ok(())
    }
}
