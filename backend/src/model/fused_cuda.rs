//! CUDA bodies of the fused ops (`fused.rs`, `fused_heads.rs` and
//! `fused_grad.rs` hold their CPU references and the shape checks). The kernels
//! are `backend/kernels/fused.cu`, compiled to PTX by `build.rs` and loaded once
//! per device as the module `amortize_fused` (AdamW's multi-tensor kernels,
//! launched from `gfn/optim_fused.rs`, live in the same module). Launch code
//! only: no op semantics live here.
//!
//! `kernels/emu/check.cpp` runs the kernels on the CPU with these launch
//! shapes (`elementwise`, `row_blocks`, `attend_threads`, `GEMV_WARPS`):
//! change them there too.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor, WithDType};
use half::{bf16, f16};

use super::fused::{AddRmsNorm, Attend, BlockDiag, CacheWrite};
use super::fused_grad::RmsNormBackward;
use super::fused_heads::{Dims, MergeHeadsBackward};
use super::gemv::Gemv;

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
pub(crate) const MODULE: &str = "amortize_fused";

/// Runs `$body` with `$T` bound to the element type of `$dtype` (f32, bf16, f16).
macro_rules! dispatch {
    ($dtype:expr, $name:expr, |$T:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::BF16 => {
                type $T = bf16;
                $body
            }
            DType::F16 => {
                type $T = f16;
                $body
            }
            d => bail!("{}: unsupported dtype {d:?}", $name),
        }
    };
}

/// Element-wise launch: grid-stride loops, 256 threads a block.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The kernel `{base}_{dtype}` of the module (loaded on first use).
macro_rules! kernel {
    ($dev:expr, $T:ty, $base:literal) => {
        $dev.get_or_load_custom_func(&format!(concat!($base, "_{}"), <$T as WithDType>::DTYPE.as_str()), MODULE, PTX)
    };
}

fn i32s<const N: usize>(v: [usize; N]) -> Result<[i32; N]> {
    let mut out = [0i32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = match i32::try_from(x) {
            Ok(x) => x,
            Err(_) => bail!("fused kernel: dimension {x} exceeds i32"),
        };
    }
    Ok(out)
}

pub(super) fn silu_mul(s: &CudaStorage, l: &Layout, rows: usize, inter: usize) -> Result<CudaStorage> {
    dispatch!(s.dtype(), "silu-mul", |T| {
        let dev = s.device();
        let x = s.as_cuda_slice::<T>()?.slice(l.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let y: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * inter)? };
        let func = kernel!(dev, T, "silu_mul")?;
        let (r, i) = (rows as i64, inter as i64);
        let mut b = func.builder();
        b.arg(&x).arg(&y).arg(&r).arg(&i);
        // SAFETY: argument types and order match `silu_mul_*` in fused.cu.
        unsafe { b.launch(elementwise(rows * inter)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

pub(super) fn cache_write(op: &CacheWrite, (dst, dl): (&mut CudaStorage, &Layout), (q, ql): (&CudaStorage, &Layout), (c, cl): (&CudaStorage, &Layout)) -> Result<()> {
    let (b_n, heads, cap, hd) = (dl.dims()[1], dl.dims()[2], dl.dims()[3], dl.dims()[4]);
    let (_, t_n, width) = ql.shape().dims3()?;
    let [b_n, t_n, heads, hd, width, first, cap, at] = i32s([b_n, t_n, heads, hd, width, op.first, cap, op.at])?;
    let n = 2 * (b_n * t_n * heads * hd) as usize;
    let dev = dst.device().clone();
    dispatch!(dst.dtype(), "cache-write", |T| {
        let x = q.as_cuda_slice::<T>()?.slice(ql.start_offset()..);
        let cs = c.as_cuda_slice::<T>()?.slice(cl.start_offset()..);
        let mut out = dst.as_cuda_slice_mut::<T>()?.slice_mut(dl.start_offset()..);
        let at_dev = op.at_dev.as_ref().map(|t| device_address::<u32>(t, &dev)).transpose()?.unwrap_or(0);
        let func = kernel!(dev, T, "cache_write")?;
        let mut b = func.builder();
        b.arg(&mut out).arg(&x).arg(&cs);
        for v in [&b_n, &t_n, &heads, &hd, &width, &first, &cap, &at] {
            b.arg(v);
        }
        b.arg(&at_dev);
        // SAFETY: argument types and order match `cache_write_*` in fused.cu;
        // `fused::cache_write` checked that every write lands inside `dst`.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok(())
    })
}

pub(super) fn add_rms_norm(op: &AddRmsNorm, (x, xl): (&CudaStorage, &Layout), (a, al): (&CudaStorage, &Layout), (w, wl): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let hidden = *xl.dims().last().unwrap_or(&0);
    let rows = xl.shape().elem_count() / hidden.max(1);
    let [hidden_i] = i32s([hidden])?;
    let rows_i = rows as i64;
    let cfg = row_blocks(rows, hidden)?;
    let dev = x.device();
    dispatch!(x.dtype(), "add-rms-norm", |T| {
        let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
        let as_ = a.as_cuda_slice::<T>()?.slice(al.start_offset()..);
        let ws = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(2 * rows * hidden)? };
        let func = kernel!(dev, T, "add_rms_norm")?;
        let mut b = func.builder();
        b.arg(&xs).arg(&as_).arg(&ws).arg(&out).arg(&rows_i).arg(&hidden_i).arg(&op.eps);
        // SAFETY: argument types and order match `add_rms_norm_*` in fused.cu.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from([&[2], xl.dims()].concat())))
    })
}

/// The device address of a CUDA tensor's first element, of element type `T`,
/// for kernels that take raw pointers (optional inputs, pointer tables); the
/// caller holds the tensor, which keeps the memory alive.
pub(crate) fn device_address<T: CudaDType>(t: &Tensor, dev: &CudaDevice) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(s) = &*s else { bail!("fused kernel: inputs on different devices") };
    let stream = dev.cuda_stream();
    let (ptr, _sync) = s.as_cuda_slice::<T>()?.device_ptr(&stream);
    Ok(ptr + (std::mem::size_of::<T>() * l.start_offset()) as u64)
}

/// Warps per `gemv` block (`GEMV_WARPS` in gemv.cuh): one output feature a warp.
const GEMV_WARPS: usize = 4;

pub(super) fn gemv(op: &Gemv, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let (m, k) = l.shape().dims2()?;
    let [m_i, n_i, k_i] = i32s([m, op.n, k])?;
    let blocks = u32::try_from(op.n.div_ceil(GEMV_WARPS)).map_err(|_| candle_core::Error::Msg("gemv: too many outputs".into()))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32 * GEMV_WARPS as u32, 1, 1), shared_mem_bytes: 0 };
    let dev = s.device();
    dispatch!(s.dtype(), "gemv", |T| {
        let x = s.as_cuda_slice::<T>()?.slice(l.start_offset()..);
        let w = device_address::<T>(&op.w, dev)?;
        // Absent operands: null pointers the kernel's mode never reads.
        let nw = op.norm.as_ref().map(|t| device_address::<T>(t, dev)).transpose()?.unwrap_or(0);
        let res = op.residual.as_ref().map(|t| device_address::<T>(t, dev)).transpose()?.unwrap_or(0);
        // SAFETY: every element is written by the kernel below.
        let y: CudaSlice<T> = unsafe { dev.alloc::<T>(m * op.n)? };
        let func = kernel!(dev, T, "gemv")?;
        let mut b = func.builder();
        b.arg(&x).arg(&w).arg(&nw).arg(&res).arg(&y).arg(&m_i).arg(&n_i).arg(&k_i).arg(&op.eps).arg(&op.mode);
        // SAFETY: argument types and order match `gemv_*` in fused.cu; `gemv::gemv`
        // checked the shapes, k % 8 and the 16-byte aligned starts.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from((m, op.n))))
    })
}

/// Threads per attention block: a multiple of both 32 and hd, at least 128.
fn attend_threads(hd: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let unit = hd / gcd(hd, 32) * 32;
    unit * 128usize.div_ceil(unit)
}

pub(super) fn attend(op: &Attend, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let (b_n, t_n, width) = l.shape().dims3()?;
    let (kv_n, s_n, hd, sb, sh, v_off) = op.geometry();
    let threads = attend_threads(hd);
    if threads > 1024 {
        bail!("attend: head size {hd} needs {threads} threads a block");
    }
    let (sb, sh) = (sb as i64, sh as i64);
    let [t_i, h_i, kv_i, hd_i, width_i, s_i] = i32s([t_n, op.nh, kv_n, hd, width, s_n])?;
    let blocks = u32::try_from(b_n * t_n * op.nh).map_err(|_| candle_core::Error::Msg("attend: too many queries".into()))?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads as u32, 1, 1), shared_mem_bytes: ((hd + s_n + threads) * 4) as u32 };
    let (csq, csl) = op.csq.storage_and_layout();
    let (kv, kvl) = op.kv.storage_and_layout();
    let (m, ml) = op.mask.storage_and_layout();
    let (Storage::Cuda(csq), Storage::Cuda(kv), Storage::Cuda(m)) = (&*csq, &*kv, &*m) else {
        bail!("attend: inputs on different devices");
    };
    let mask = m.as_cuda_slice::<f32>()?.slice(ml.start_offset()..);
    let dev = s.device();
    dispatch!(s.dtype(), "attend", |T| {
        let x = s.as_cuda_slice::<T>()?.slice(l.start_offset()..);
        let cs = csq.as_cuda_slice::<T>()?.slice(csl.start_offset()..);
        let kvs = kv.as_cuda_slice::<T>()?;
        let (kx, vx) = (kvs.slice(kvl.start_offset()..), kvs.slice(kvl.start_offset() + v_off..));
        // SAFETY: every element is written by the kernel below.
        let y: CudaSlice<T> = unsafe { dev.alloc::<T>(b_n * t_n * op.nh * hd)? };
        let func = kernel!(dev, T, "attend")?;
        let mut b = func.builder();
        b.arg(&x).arg(&cs).arg(&kx).arg(&vx).arg(&mask).arg(&y);
        for v in [&t_i, &h_i, &kv_i, &hd_i, &width_i, &s_i] {
            b.arg(v);
        }
        b.arg(&sb).arg(&sh);
        // SAFETY: argument types and order match `attend_*` in fused.cu; shapes
        // and strides were checked by `fused::attend`.
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from((b_n, t_n, op.nh * hd))))
    })
}

/// One block per row of `hidden` values: 32·k threads, up to 1024.
pub(crate) fn row_blocks(rows: usize, hidden: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(rows.max(1)).map_err(|_| candle_core::Error::Msg("fused kernel: too many rows".into()))?;
    let threads = hidden.div_ceil(32).clamp(1, 32) as u32 * 32;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

pub(super) fn rms_norm_backward(op: &RmsNormBackward, (x, xl): (&CudaStorage, &Layout), (w, wl): (&CudaStorage, &Layout), (dy, dl): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let hidden = *xl.dims().last().unwrap_or(&1);
    let rows = xl.shape().elem_count() / hidden.max(1);
    let [hidden_i] = i32s([hidden])?;
    let has_acc = op.acc.is_some() as i32;
    let acc = op.acc.as_ref().map(|a| a.storage_and_layout());
    let dev = x.device();
    dispatch!(x.dtype(), "rms-norm-backward", |T| {
        let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
        let ws = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
        let ds = dy.as_cuda_slice::<T>()?.slice(dl.start_offset()..);
        let acc = match &acc {
            Some((s, l)) => match &**s {
                Storage::Cuda(s) => s.as_cuda_slice::<T>()?.slice(l.start_offset()..),
                _ => bail!("rms-norm-backward: inputs on different devices"),
            },
            None => x.as_cuda_slice::<T>()?.slice(xl.start_offset()..), // not read
        };
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * hidden)? };
        let func = kernel!(dev, T, "rms_norm_backward")?;
        let mut b = func.builder();
        b.arg(&xs).arg(&ws).arg(&ds).arg(&acc).arg(&out).arg(&hidden_i).arg(&op.eps).arg(&has_acc);
        // SAFETY: argument types and order match `rms_norm_backward_*` in fused.cu.
        unsafe { b.launch(row_blocks(rows, hidden)?) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
    })
}

pub(super) fn swiglu_backward((gu, gl): (&CudaStorage, &Layout), (d, dl): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let (rows, two_i) = gl.shape().dims2()?;
    let (r, i) = (rows as i64, (two_i / 2) as i64);
    let dev = gu.device();
    dispatch!(gu.dtype(), "swiglu-backward", |T| {
        let gs = gu.as_cuda_slice::<T>()?.slice(gl.start_offset()..);
        let ds = d.as_cuda_slice::<T>()?.slice(dl.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * two_i)? };
        let func = kernel!(dev, T, "swiglu_backward")?;
        let mut b = func.builder();
        b.arg(&gs).arg(&ds).arg(&out).arg(&r).arg(&i);
        // SAFETY: argument types and order match `swiglu_backward_*` in fused.cu.
        unsafe { b.launch(elementwise(rows * two_i / 2)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), gl.shape().clone()))
    })
}

pub(super) fn block_diag(op: &BlockDiag, s: &CudaStorage, sl: &Layout) -> Result<(CudaStorage, Shape)> {
    let m = &op.m;
    let ints = i32s([op.rows, op.cols, m.rs[0], m.rs[1], m.rs[2], m.o[0], m.o[1], m.o[2], m.cs[0], m.cs[1], m.cs[2], m.k[0], m.k[1], m.k[2]])?;
    let guards: Vec<_> = op.others.iter().map(|p| p.as_ref().map(|p| p.storage_and_layout())).collect();
    let dev = s.device();
    dispatch!(s.dtype(), "block-diag", |T| {
        // Absent members read nothing (rank 0): the input's view stands in.
        let lead = s.as_cuda_slice::<T>()?.slice(sl.start_offset()..);
        let mut views = Vec::with_capacity(3);
        for g in &guards {
            views.push(match g {
                Some((g, l)) => match &**g {
                    Storage::Cuda(b) => Some(b.as_cuda_slice::<T>()?.slice(l.start_offset()..)),
                    _ => bail!("block-diag: inputs on different devices"),
                },
                None => None,
            });
        }
        views.resize_with(3, || None);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(op.rows * op.cols)? };
        let func = kernel!(dev, T, "block_diag")?;
        let mut b = func.builder();
        for v in &views {
            b.arg(v.as_ref().unwrap_or(&lead));
        }
        b.arg(&out);
        for v in &ints {
            b.arg(v);
        }
        b.arg(&op.scale);
        // SAFETY: argument types and order match `block_diag_*` in fused.cu.
        unsafe { b.launch(elementwise(op.rows * op.cols)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((op.rows, op.cols))))
    })
}

pub(super) fn split_heads(d: Dims, (q, ql): (&CudaStorage, &Layout), (c, cl): (&CudaStorage, &Layout), (cq, cql): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let n = d.b * d.t * d.width();
    let [b_n, t_n, h_n, kv_n, hd] = i32s([d.b, d.t, d.nh, d.nkv, d.hd])?;
    let dev = q.device();
    dispatch!(q.dtype(), "split-heads", |T| {
        let x = q.as_cuda_slice::<T>()?.slice(ql.start_offset()..);
        let cs = c.as_cuda_slice::<T>()?.slice(cl.start_offset()..);
        let csq = cq.as_cuda_slice::<T>()?.slice(cql.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
        let func = kernel!(dev, T, "split_heads")?;
        let mut b = func.builder();
        b.arg(&x).arg(&cs).arg(&csq).arg(&out);
        for v in [&b_n, &t_n, &h_n, &kv_n, &hd] {
            b.arg(v);
        }
        // SAFETY: argument types and order match `split_heads_*` in fused.cu.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from(n)))
    })
}

pub(super) fn merge_heads_backward(op: &MergeHeadsBackward, (dq, dql): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let d = op.dims;
    let n = d.b * d.t * d.width();
    let [b_n, t_n, h_n, kv_n, hd] = i32s([d.b, d.t, d.nh, d.nkv, d.hd])?;
    let guards = [&op.dk, &op.dv, &op.cs, &op.cs_q].map(|x| x.storage_and_layout());
    let dev = dq.device();
    dispatch!(dq.dtype(), "merge-heads-backward", |T| {
        let mut src = Vec::with_capacity(4);
        for (g, l) in &guards {
            match &**g {
                Storage::Cuda(s) => src.push(s.as_cuda_slice::<T>()?.slice(l.start_offset()..)),
                _ => bail!("merge-heads-backward: inputs on different devices"),
            }
        }
        let q = dq.as_cuda_slice::<T>()?.slice(dql.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
        let func = kernel!(dev, T, "merge_heads_backward")?;
        let mut b = func.builder();
        b.arg(&q).arg(&src[0]).arg(&src[1]).arg(&src[2]).arg(&src[3]).arg(&out);
        for v in [&b_n, &t_n, &h_n, &kv_n, &hd] {
            b.arg(v);
        }
        // SAFETY: argument types and order match `merge_heads_backward_*` in fused.cu.
        unsafe { b.launch(elementwise(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((d.b * d.t, d.width()))))
    })
}

pub(super) fn masked_softmax((s, l): (&CudaStorage, &Layout), (m, ml): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let (b, kv, rows, s_n) = l.shape().dims4()?;
    let (_, t_n, _) = ml.shape().dims3()?;
    let [t_i, rows_b, s_i] = i32s([t_n, kv * rows, s_n])?;
    let n_rows = b * kv * rows;
    let cfg = row_blocks(n_rows, s_n)?;
    let dev = s.device();
    let mask = m.as_cuda_slice::<f32>()?.slice(ml.start_offset()..);
    dispatch!(s.dtype(), "masked-softmax", |T| {
        let x = s.as_cuda_slice::<T>()?.slice(l.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(n_rows * s_n)? };
        let func = kernel!(dev, T, "masked_softmax")?;
        let mut a = func.builder();
        a.arg(&x).arg(&mask).arg(&out).arg(&t_i).arg(&rows_b).arg(&s_i);
        // SAFETY: argument types and order match `masked_softmax_*` in fused.cu;
        // `fused_softmax::masked_softmax` checked the shapes.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), l.shape().clone()))
    })
}

pub(super) fn softmax_backward((d, dl): (&CudaStorage, &Layout), (p, pl): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let s_n = *dl.dims().last().unwrap_or(&1);
    let rows = dl.shape().elem_count() / s_n.max(1);
    let [s_i] = i32s([s_n])?;
    let dev = d.device();
    let probs = p.as_cuda_slice::<f32>()?.slice(pl.start_offset()..);
    dispatch!(d.dtype(), "softmax-backward", |T| {
        let dp = d.as_cuda_slice::<T>()?.slice(dl.start_offset()..);
        // SAFETY: every element is written by the kernel below.
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * s_n)? };
        let func = kernel!(dev, T, "softmax_backward")?;
        let mut a = func.builder();
        a.arg(&dp).arg(&probs).arg(&out).arg(&s_i);
        // SAFETY: argument types and order match `softmax_backward_*` in fused.cu.
        unsafe { a.launch(row_blocks(rows, s_n)?) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), dl.shape().clone()))
    })
}
