//! The fused q/k/v product split into heads, and its backward, one op each:
//! [`split_heads`] gives the rotated queries and keys and the values (replaces a
//! transpose copy, three split copies and two RoPE ops), [`merge_heads_backward`]
//! gives the product's gradient from theirs (replaces two RoPE ops with −sin, a
//! cat and a transpose copy). CPU bodies here, CUDA bodies in `fused_cuda.rs`;
//! used by inference passes that are not decode steps (prefill, the reward's
//! branch passes) and by the taped training pass, when `Llama::fused` is on.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::fused::{cpu_slice, f, float_dispatch};
use crate::Result;

/// Heads of `qkv` [B·T, (H + 2·KV)·hd] (rows b-major): q [B, H, T, hd] rotated by
/// `cs_q`, k [B, KV, T, hd] rotated by `cs`, v [B, KV, T, hd]; the tables are
/// [B, T, hd] (cos | sin). All three are contiguous.
pub fn split_heads(qkv: &Tensor, cs: &Tensor, cs_q: &Tensor, (b, t): (usize, usize), (nh, nkv): (usize, usize)) -> Result<(Tensor, Tensor, Tensor)> {
    let hd = cs.dim(candle_core::D::Minus1)?;
    let width = (nh + 2 * nkv) * hd;
    if qkv.elem_count() != b * t * width || cs.dims() != [b, t, hd] || cs_q.dims() != [b, t, hd] || cs.dtype() != qkv.dtype() || cs_q.dtype() != qkv.dtype() {
        return Err(crate::Error::invalid("split_heads", format!("qkv {:?}, tables {:?} {:?}, {b}×{t} rows, {nh} + 2·{nkv} heads", qkv.dims(), cs.dims(), cs_q.dims())));
    }
    let op = SplitHeads { dims: Dims { b, t, nh, nkv, hd } };
    let out = qkv.contiguous()?.apply_op3_no_bwd(&cs.contiguous()?, &cs_q.contiguous()?, &op)?;
    let (q_n, kv_n) = (b * nh * t * hd, b * nkv * t * hd);
    Ok((
        out.narrow(0, 0, q_n)?.reshape((b, nh, t, hd))?,
        out.narrow(0, q_n, kv_n)?.reshape((b, nkv, t, hd))?,
        out.narrow(0, q_n + kv_n, kv_n)?.reshape((b, nkv, t, hd))?,
    ))
}

/// The backward of [`split_heads`]: d qkv [B·T, (H + 2·KV)·hd] from dq
/// [B, H, T, hd], dk and dv [B, KV, T, hd] (the rotations undone).
pub fn merge_heads_backward(dq: &Tensor, dk: &Tensor, dv: &Tensor, cs: &Tensor, cs_q: &Tensor) -> Result<Tensor> {
    let (b, nh, t, hd) = dq.dims4()?;
    let nkv = dk.dim(1)?;
    let ok = dk.dims() == [b, nkv, t, hd] && dv.dims() == dk.dims() && cs.dims() == [b, t, hd] && cs_q.dims() == [b, t, hd];
    if !ok || [dk, dv, cs, cs_q].iter().any(|x| x.dtype() != dq.dtype()) {
        return Err(crate::Error::invalid("merge_heads_backward", format!("dq {:?}, dk {:?}, dv {:?}, tables {:?}", dq.dims(), dk.dims(), dv.dims(), cs.dims())));
    }
    let op = MergeHeadsBackward { dims: Dims { b, t, nh, nkv, hd }, dk: dk.contiguous()?, dv: dv.contiguous()?, cs: cs.contiguous()?, cs_q: cs_q.contiguous()? };
    Ok(dq.contiguous()?.apply_op1_no_bwd(&op)?)
}

#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

impl Dims {
    pub(super) fn width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hd
    }
}

pub(super) struct SplitHeads {
    pub dims: Dims,
}

/// (`dq` is the op's input; the rest are held here.)
pub(super) struct MergeHeadsBackward {
    pub dims: Dims,
    pub dk: Tensor,
    pub dv: Tensor,
    pub cs: Tensor,
    pub cs_q: Tensor,
}

/// Rotation by −θ of element `d` of one head's vector `x` (tables `c`: cos | sin).
fn unrotated<T: WithDType>(x: &[T], c: &[T], d: usize) -> f32 {
    let half = c.len() / 2;
    if d < half {
        f(x[d]) * f(c[d]) + f(x[d + half]) * f(c[half + d])
    } else {
        f(x[d]) * f(c[d - half]) - f(x[d - half]) * f(c[d])
    }
}

impl CustomOp3 for SplitHeads {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(&self, q: &CpuStorage, ql: &Layout, cs: &CpuStorage, cl: &Layout, csq: &CpuStorage, cql: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dims { b, t, nh, nkv, hd } = self.dims;
        let width = self.dims.width();
        float_dispatch!(q, self.name(), |T| {
            let (x, c, cq) = (cpu_slice::<T>(q, ql)?, cpu_slice::<T>(cs, cl)?, cpu_slice::<T>(csq, cql)?);
            let mut out = vec![T::from_f64(0.0); b * t * width];
            // One chunk per (part, b, head): its T rows of hd values.
            out.par_chunks_mut(t * hd).enumerate().for_each(|(i, chunk)| {
                let (part, bi, h) = if i < b * nh {
                    (0, i / nh, i % nh)
                } else if i < b * (nh + nkv) {
                    (1, (i - b * nh) / nkv, (i - b * nh) % nkv)
                } else {
                    (2, (i - b * (nh + nkv)) / nkv, (i - b * (nh + nkv)) % nkv)
                };
                let head = [h, nh + h, nh + nkv + h][part];
                for (ti, o) in chunk.chunks_mut(hd).enumerate() {
                    let row = bi * t + ti;
                    let xh = &x[row * width + head * hd..row * width + (head + 1) * hd];
                    let table = if part == 0 { &cq[row * hd..(row + 1) * hd] } else { &c[row * hd..(row + 1) * hd] };
                    for (d, o) in o.iter_mut().enumerate() {
                        let v = if part == 2 { f(xh[d]) } else { super::fused::rotated(xh, table, d) };
                        *o = T::from_f64(v as f64);
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from(b * t * width)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        ql: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
        csq: &candle_core::CudaStorage,
        cql: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::split_heads(self.dims, (q, ql), (cs, cl), (csq, cql))
    }
}

impl CustomOp1 for MergeHeadsBackward {
    fn name(&self) -> &'static str {
        "merge-heads-backward"
    }

    fn cpu_fwd(&self, dq: &CpuStorage, dql: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dims { b, t, nh, nkv, hd } = self.dims;
        let width = self.dims.width();
        let guards = [&self.dk, &self.dv, &self.cs, &self.cs_q].map(|x| x.storage_and_layout());
        float_dispatch!(dq, self.name(), |T| {
            let mut src: Vec<&[T]> = Vec::with_capacity(4);
            for (g, l) in &guards {
                match &**g {
                    Storage::Cpu(s) => src.push(cpu_slice::<T>(s, l)?),
                    _ => bail!("merge-heads-backward: inputs on different devices"),
                }
            }
            let (q, k, v, c, cq) = (cpu_slice::<T>(dq, dql)?, src[0], src[1], src[2], src[3]);
            let mut out = vec![T::from_f64(0.0); b * t * width];
            out.par_chunks_mut(width).enumerate().for_each(|(row, o)| {
                let (bi, ti) = (row / t, row % t);
                for (head, oh) in o.chunks_mut(hd).enumerate() {
                    let (x, h, n, table) = if head < nh {
                        (q, head, nh, Some(&cq[row * hd..(row + 1) * hd]))
                    } else if head < nh + nkv {
                        (k, head - nh, nkv, Some(&c[row * hd..(row + 1) * hd]))
                    } else {
                        (v, head - nh - nkv, nkv, None)
                    };
                    let base = ((bi * n + h) * t + ti) * hd;
                    let xh = &x[base..base + hd];
                    for (d, o) in oh.iter_mut().enumerate() {
                        let val = match table {
                            Some(table) => unrotated(xh, table, d),
                            None => f(xh[d]),
                        };
                        *o = T::from_f64(val as f64);
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(out), Shape::from((b * t, width))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dq: &candle_core::CudaStorage, dql: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::merge_heads_backward(self, (dq, dql))
    }
}
