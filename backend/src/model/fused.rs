//! Fused inference ops: one kernel where the composed path launches several
//! (the decode step is bound by launches on a GPU).
//!
//! - [`silu_mul`]: SwiGLU's `silu(gate) · up` from the fused gate/up product.
//! - [`add_rms_norm`]: the residual add and the next RMSNorm.
//! - [`cache_write`]: the keys (rotated) and values of the fused q/k/v product
//!   written into a KV cache's reserved room (replaces the transpose, the split
//!   copies, RoPE and two `slice_set`s).
//! - [`attend`]: a few queries (rotated on the fly) against the cache: scores,
//!   mask, softmax and the weighted values in one kernel, output already in
//!   [B, T, heads·hd] (replaces two matrix products, the mask add, the softmax
//!   and the transpose copy).
//! - [`block_diag`]: a fused adapter group's block-diagonal scale·B, built once
//!   per inference view.
//!
//! The head split is in `fused_heads.rs`, the taped training pass's fused
//! backward steps in `fused_grad.rs`.
//!
//! Each op is a candle custom op with a CPU body (the reference, in this file) and
//! a CUDA body (`fused_cuda.rs`, kernels in `backend/kernels/fused.cu`). Both
//! compute in f32 and round once to the model dtype. Inference only: no op here
//! has a backward. Which pass uses them is `llama.rs`'s choice
//! (`Llama::set_fused`), not this module's.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, InplaceOp3, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::Result;

/// `attend` runs for passes of at most this many new tokens (decode steps and
/// short appends); longer ones are matrix products' work.
pub const ATTEND_MAX_T: usize = 4;
/// ... and at most this many cached positions (its scores live in shared memory).
pub const ATTEND_MAX_S: usize = 8192;

/// `silu(x[.., :I]) · x[.., I:]` for x: [.., 2I] → [.., I].
pub fn silu_mul(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&SiluMul)?)
}

/// `(x + a, rms_norm(x + a) · w)` (the sum rounded to the model dtype before the
/// norm, as the composed ops do); x, a: [.., hidden], w: [hidden].
pub fn add_rms_norm(x: &Tensor, a: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let hidden = x.dim(candle_core::D::Minus1)?;
    if a.dims() != x.dims() || w.dims() != [hidden] || a.dtype() != x.dtype() || w.dtype() != x.dtype() {
        return Err(crate::Error::invalid("add_rms_norm", format!("x {:?}, a {:?}, w {:?}", x.dims(), a.dims(), w.dims())));
    }
    let out = x.contiguous()?.apply_op3_no_bwd(&a.contiguous()?, &w.contiguous()?, &AddRmsNorm { eps: eps as f32 })?;
    Ok((out.get(0)?, out.get(1)?))
}

/// Writes the keys of `qkv` [B, T, width] (heads `width/hd − 2·KV ..`, rotated
/// by `cs` [B, T, hd]: cos | sin) and its values (the last KV heads) into `kv`
/// [2, B, KV, cap, hd] at positions `at..at + T`, in place.
pub fn cache_write(kv: &Tensor, qkv: &Tensor, cs: &Tensor, at: usize) -> Result<()> {
    write_kv(kv, qkv, cs, at, None)
}

/// [`cache_write`] at the position held by `at` ([1] u32, on the device): what
/// a replayed CUDA graph reads (`model::graph`). A position where the T new
/// tokens do not fit writes nothing.
pub fn cache_write_at(kv: &Tensor, qkv: &Tensor, cs: &Tensor, at: &Tensor) -> Result<()> {
    if at.dims() != [1] || at.dtype() != candle_core::DType::U32 || !at.is_contiguous() {
        return Err(crate::Error::invalid("cache_write", format!("position {:?} {:?} (want [1] u32)", at.dims(), at.dtype())));
    }
    write_kv(kv, qkv, cs, 0, Some(at.clone()))
}

fn write_kv(kv: &Tensor, qkv: &Tensor, cs: &Tensor, at: usize, at_dev: Option<Tensor>) -> Result<()> {
    let dims = kv.dims();
    let (qb, t, width) = qkv.dims3()?;
    let ok = dims.len() == 5 && dims[0] == 2 && dims[1] == qb && cs.dims() == [qb, t, dims[4]] && at + t <= dims[3] && kv.is_contiguous();
    if !ok || width % dims[4] != 0 || width / dims[4] < 2 * dims[2] {
        return Err(crate::Error::invalid("cache_write", format!("buffer {:?}, qkv {:?}, tables {:?}, at {at}", kv.dims(), qkv.dims(), cs.dims())));
    }
    let op = CacheWrite { first: width / dims[4] - 2 * dims[2], at, at_dev };
    Ok(kv.inplace_op3(&qkv.contiguous()?, &cs.contiguous()?, &op)?)
}

/// Attention of the queries in heads `0..nh` of `qkv` [B, T, width], rotated by
/// `csq` [B, T, hd] (already scaled by 1/√hd), over the first `len` positions of
/// the keys and values in `kv` [2, B, KV, cap, hd] (a cache's room, see
/// [`cache_write`]) with the additive f32 `mask` [B, T, len]. Returns
/// [B, T, nh·hd].
pub fn attend(qkv: &Tensor, csq: &Tensor, kv: &Tensor, len: usize, mask: &Tensor, nh: usize) -> Result<Tensor> {
    let (b, t, width) = qkv.dims3()?;
    let dims = kv.dims();
    let ok = dims.len() == 5
        && dims[0] == 2
        && dims[1] == b
        && kv.is_contiguous()
        && len <= dims[3]
        && csq.dims() == [b, t, dims[4]]
        && mask.dims() == [b, t, len]
        && mask.dtype() == candle_core::DType::F32
        && dims[2] > 0
        && nh.is_multiple_of(dims[2])
        && nh * dims[4] <= width
        && len <= ATTEND_MAX_S;
    if !ok {
        return Err(crate::Error::invalid("attend", format!("qkv {:?}, kv {:?}, len {len}, mask {:?}", qkv.dims(), kv.dims(), mask.dims())));
    }
    let op = Attend { csq: csq.contiguous()?, kv: kv.clone(), len, mask: mask.contiguous()?, nh };
    Ok(qkv.contiguous()?.apply_op1_no_bwd(&op)?)
}

/// `scale · blockdiag(parts)` [Σ out, Σ rank] for the (at most 3) members of a
/// projection group: member m has `outs[m]` output rows and, when present, a
/// `B` [outs[m], r_m] on the diagonal; an absent member's rows are zero. One op
/// (the composed version takes a zeros, a cat or two per member and a cat).
pub fn block_diag(parts: &[Option<&Tensor>], outs: &[usize], scale: f64) -> Result<Tensor> {
    let first = parts.iter().flatten().next();
    let (Some(first), true) = (first, parts.len() == outs.len() && parts.len() <= 3) else {
        return Err(crate::Error::invalid("block_diag", format!("{} parts for {} outputs (1 to 3, one present)", parts.len(), outs.len())));
    };
    let mut m = Members { rs: [0; 3], o: [0; 3], cs: [0; 3], k: [0; 3] };
    let (mut rows, mut cols) = (0, 0);
    for (i, (p, &o)) in parts.iter().zip(outs).enumerate() {
        let k = match p {
            Some(b) if b.dims() == [o, b.dim(1)?] && b.dtype() == first.dtype() => b.dim(1)?,
            Some(b) => return Err(crate::Error::invalid("block_diag", format!("member {i}: {:?} for {o} outputs", b.dims()))),
            None => 0,
        };
        (m.rs[i], m.o[i], m.cs[i], m.k[i]) = (rows, o, cols, k);
        rows += o;
        cols += k;
    }
    // The first present member is the op's input; the others are locked in the op.
    let lead = parts.iter().position(|p| p.is_some()).unwrap_or(0);
    let others = parts.iter().enumerate().map(|(i, p)| p.filter(|_| i != lead).map(|t| t.contiguous()).transpose()).collect::<candle_core::Result<_>>()?;
    let op = BlockDiag { rows, cols, m, scale: scale as f32, lead, others };
    Ok(first.contiguous()?.apply_op1_no_bwd(&op)?)
}

/// Row starts, row counts, column starts and ranks of `block_diag`'s members.
pub(super) struct Members {
    pub rs: [usize; 3],
    pub o: [usize; 3],
    pub cs: [usize; 3],
    pub k: [usize; 3],
}

pub(super) struct BlockDiag {
    pub rows: usize,
    pub cols: usize,
    pub m: Members,
    pub scale: f32,
    /// Which member is the op's input; the other present members' B.
    pub lead: usize,
    pub others: Vec<Option<Tensor>>,
}

impl CustomOp1 for BlockDiag {
    fn name(&self) -> &'static str {
        "block-diag"
    }

    fn cpu_fwd(&self, s: &CpuStorage, sl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let guards: Vec<_> = self.others.iter().map(|p| p.as_ref().map(|p| p.storage_and_layout())).collect();
        float_dispatch!(s, self.name(), |T| {
            let mut out = vec![T::from_f64(0.0); self.rows * self.cols];
            for (i, g) in guards.iter().enumerate() {
                let b = match g {
                    _ if i == self.lead => cpu_slice::<T>(s, sl)?,
                    Some((g, l)) => match &**g {
                        Storage::Cpu(b) => cpu_slice::<T>(b, l)?,
                        _ => bail!("block-diag: inputs on different devices"),
                    },
                    None => continue,
                };
                let m = &self.m;
                for r in 0..m.o[i] {
                    for c in 0..m.k[i] {
                        out[(m.rs[i] + r) * self.cols + m.cs[i] + c] = T::from_f64((f(b[r * m.k[i] + c]) * self.scale) as f64);
                    }
                }
            }
            Ok((T::to_cpu_storage_owned(out), Shape::from((self.rows, self.cols))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, sl: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::block_diag(self, s, sl)
    }
}

pub(super) struct SiluMul;
pub(super) struct AddRmsNorm {
    pub eps: f32,
}
/// `first`: qkv's first key head.
pub(super) struct CacheWrite {
    pub first: usize,
    pub at: usize,
    /// [1] u32 holding the position instead of `at` (see [`cache_write_at`]).
    pub at_dev: Option<Tensor>,
}
/// (`kv` is one tensor, so one storage lock: keys and values share it.)
pub(super) struct Attend {
    pub csq: Tensor,
    pub kv: Tensor,
    pub len: usize,
    pub mask: Tensor,
    pub nh: usize,
}

impl Attend {
    /// (KV heads, positions attended, head size, batch stride, head stride,
    /// offset of the values after the keys) in elements.
    pub(super) fn geometry(&self) -> (usize, usize, usize, usize, usize, usize) {
        let d = self.kv.dims();
        let (b, kv_n, cap, hd) = (d[1], d[2], d[3], d[4]);
        (kv_n, self.len, hd, kv_n * cap * hd, cap * hd, b * kv_n * cap * hd)
    }
}

/// Runs `$body` with `$T` bound to the storage's element type (f32, bf16, f16).
macro_rules! float_dispatch {
    ($storage:expr, $name:expr, |$T:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32(_) => {
                type $T = f32;
                $body
            }
            CpuStorage::BF16(_) => {
                type $T = half::bf16;
                $body
            }
            CpuStorage::F16(_) => {
                type $T = half::f16;
                $body
            }
            s => bail!("{}: unsupported dtype {:?}", $name, s.dtype()),
        }
    };
}
pub(super) use float_dispatch;

pub(super) fn f<T: WithDType>(x: T) -> f32 {
    x.to_f64() as f32
}

pub(super) fn cpu_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    Ok(&s.as_slice::<T>()?[l.start_offset()..])
}

/// Element `d` of one head's rotated values (see `rotated` in fused.cu).
pub(super) fn rotated<T: WithDType>(x: &[T], cs: &[T], d: usize) -> f32 {
    let half = cs.len() / 2;
    if d < half {
        f(x[d]) * f(cs[d]) - f(x[d + half]) * f(cs[half + d])
    } else {
        let i = d - half;
        f(x[d]) * f(cs[i]) + f(x[i]) * f(cs[half + i])
    }
}

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (shape, rows, inter) = silu_mul_dims(l)?;
        float_dispatch!(s, self.name(), |T| {
            let x = cpu_slice::<T>(s, l)?;
            let mut y = Vec::with_capacity(rows * inter);
            for r in 0..rows {
                let (g, u) = x[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
                y.extend(g.iter().zip(u).map(|(&g, &u)| {
                    let g = f(g);
                    T::from_f64((g / (1.0 + (-g).exp()) * f(u)) as f64)
                }));
            }
            Ok((T::to_cpu_storage_owned(y), shape))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (shape, rows, inter) = silu_mul_dims(l)?;
        Ok((super::fused_cuda::silu_mul(s, l, rows, inter)?, shape))
    }
}

/// Output shape, rows and half-width of a contiguous [.., 2I] input.
pub(super) fn silu_mul_dims(l: &Layout) -> candle_core::Result<(Shape, usize, usize)> {
    let dims = l.dims();
    let last = *dims.last().unwrap_or(&0);
    if !l.is_contiguous() || !last.is_multiple_of(2) || last == 0 {
        bail!("silu-mul: wants a contiguous [.., 2I] input, got {dims:?}");
    }
    let mut out = dims.to_vec();
    *out.last_mut().expect("non-empty") = last / 2;
    Ok((Shape::from(out), l.shape().elem_count() / last, last / 2))
}

impl InplaceOp3 for CacheWrite {
    fn name(&self) -> &'static str {
        "cache-write"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dl: &Layout, qkv: &CpuStorage, ql: &Layout, cs: &CpuStorage, cl: &Layout) -> candle_core::Result<()> {
        let o = dl.start_offset();
        match dst {
            CpuStorage::F32(out) => self.cpu(&mut out[o..], dl, cpu_slice(qkv, ql)?, ql, cpu_slice(cs, cl)?),
            CpuStorage::BF16(out) => self.cpu(&mut out[o..], dl, cpu_slice(qkv, ql)?, ql, cpu_slice(cs, cl)?),
            CpuStorage::F16(out) => self.cpu(&mut out[o..], dl, cpu_slice(qkv, ql)?, ql, cpu_slice(cs, cl)?),
            s => bail!("cache-write: unsupported dtype {:?}", s.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dl: &Layout,
        qkv: &candle_core::CudaStorage,
        ql: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
    ) -> candle_core::Result<()> {
        super::fused_cuda::cache_write(self, (dst, dl), (qkv, ql), (cs, cl))
    }
}

impl CacheWrite {
    /// The CPU body: `out` starts at the buffer's first element.
    fn cpu<T: WithDType>(&self, out: &mut [T], dl: &Layout, x: &[T], ql: &Layout, c: &[T]) -> candle_core::Result<()> {
        let (b_n, heads, cap, hd) = (dl.dims()[1], dl.dims()[2], dl.dims()[3], dl.dims()[4]);
        let (_, t_n, width) = ql.shape().dims3()?;
        let at = match &self.at_dev {
            Some(a) => a.to_vec1::<u32>()?[0] as usize,
            None => self.at,
        };
        if at + t_n > cap {
            return Ok(()); // as the kernel: no room, no write
        }
        for which in 0..2 {
            for b in 0..b_n {
                for t in 0..t_n {
                    let row = (b * t_n + t) * width;
                    let c = &c[(b * t_n + t) * hd..(b * t_n + t + 1) * hd];
                    for h in 0..heads {
                        let head = self.first + which * heads + h;
                        let x = &x[row + head * hd..row + (head + 1) * hd];
                        let o = (((which * b_n + b) * heads + h) * cap + at + t) * hd;
                        for (d, out) in out[o..o + hd].iter_mut().enumerate() {
                            let v = if which == 0 { rotated(x, c, d) } else { f(x[d]) };
                            *out = T::from_f64(v as f64);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl candle_core::CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, a: &CpuStorage, al: &Layout, w: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let hidden = *xl.dims().last().unwrap_or(&0);
        let rows = xl.shape().elem_count() / hidden.max(1);
        let shape = Shape::from([&[2], xl.dims()].concat());
        float_dispatch!(x, self.name(), |T| {
            let (x, a, w) = (cpu_slice::<T>(x, xl)?, cpu_slice::<T>(a, al)?, cpu_slice::<T>(w, wl)?);
            let mut out = vec![T::from_f64(0.0); 2 * rows * hidden];
            let (sums, norms) = out.split_at_mut(rows * hidden);
            for r in 0..rows {
                let (s, n) = (&mut sums[r * hidden..(r + 1) * hidden], &mut norms[r * hidden..(r + 1) * hidden]);
                let mut sq = 0f32;
                for (i, s) in s.iter_mut().enumerate() {
                    *s = T::from_f64((f(x[r * hidden + i]) + f(a[r * hidden + i])) as f64);
                    sq += f(*s) * f(*s);
                }
                let scale = 1.0 / (sq / hidden as f32 + self.eps).sqrt();
                for ((n, &s), &w) in n.iter_mut().zip(s.iter()).zip(&w[..hidden]) {
                    *n = T::from_f64((f(s) * scale * f(w)) as f64);
                }
            }
            Ok((T::to_cpu_storage_owned(out), shape))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        a: &candle_core::CudaStorage,
        al: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::add_rms_norm(self, (x, xl), (a, al), (w, wl))
    }
}

impl CustomOp1 for Attend {
    fn name(&self) -> &'static str {
        "attend"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b_n, t_n, width) = l.shape().dims3()?;
        let (kv_n, s_n, hd, sb, sh, v_off) = self.geometry();
        let (nh, rep) = (self.nh, self.nh / kv_n);
        let (csq, csl) = self.csq.storage_and_layout();
        let (kv, kvl) = self.kv.storage_and_layout();
        let (m, ml) = self.mask.storage_and_layout();
        let (Storage::Cpu(csq), Storage::Cpu(kv), Storage::Cpu(m)) = (&*csq, &*kv, &*m) else {
            bail!("attend: inputs on different devices");
        };
        let m = cpu_slice::<f32>(m, ml)?;
        float_dispatch!(s, self.name(), |T| {
            let (x, c, k) = (cpu_slice::<T>(s, l)?, cpu_slice::<T>(csq, csl)?, cpu_slice::<T>(kv, kvl)?);
            let v = &k[v_off..];
            let mut y = vec![T::from_f64(0.0); b_n * t_n * nh * hd];
            // One task per (row, new token); each head's query, scores and sums in f32.
            y.par_chunks_mut(nh * hd).enumerate().for_each(|(row, out)| {
                let b = row / t_n;
                let c = &c[row * hd..(row + 1) * hd];
                let (mut q, mut p, mut acc) = (vec![0f32; hd], vec![0f32; s_n], vec![0f32; hd]);
                for (h, out) in out.chunks_mut(hd).enumerate() {
                    let xh = &x[row * width + h * hd..row * width + (h + 1) * hd];
                    for (d, q) in q.iter_mut().enumerate() {
                        *q = rotated(xh, c, d);
                    }
                    let base = b * sb + (h / rep) * sh;
                    for (si, p) in p.iter_mut().enumerate() {
                        let kr = &k[base + si * hd..base + (si + 1) * hd];
                        *p = q.iter().zip(kr).map(|(&q, &k)| q * f(k)).sum::<f32>() + m[row * s_n + si];
                    }
                    let mx = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for p in p.iter_mut() {
                        *p = (*p - mx).exp();
                        sum += *p;
                    }
                    acc.fill(0.0);
                    for (si, &p) in p.iter().enumerate() {
                        for (a, &v) in acc.iter_mut().zip(&v[base + si * hd..base + (si + 1) * hd]) {
                            *a += p * f(v);
                        }
                    }
                    for (o, &a) in out.iter_mut().zip(&acc) {
                        *o = T::from_f64((a / sum) as f64);
                    }
                }
            });
            Ok((T::to_cpu_storage_owned(y), Shape::from((b_n, t_n, nh * hd))))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::attend(self, s, l)
    }
}

/// Whether a model on `device` uses the fused ops unless told otherwise:
/// `AMORTIZE_FUSED=1` or `0` decides; else on for the CPU and for CUDA (their
/// device tests passed on an H100, where they made decode 2.0-2.5x and a b64
/// training step 1.22x faster: docs/results/h100-2026-11-27b), off elsewhere.
pub fn default_on(device: &candle_core::Device) -> bool {
    match std::env::var("AMORTIZE_FUSED").ok().as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => device.is_cpu() || device.is_cuda(),
    }
}
