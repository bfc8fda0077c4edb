//! `cargo bench -p amortize --bench cpu_matmul`: the two CPU facts the engine
//! relies on, timed in one process (ratios, not absolute times, are the result).
//!
//! 1. x Wᵀ with a few rows of x against (W xᵀ)ᵀ, the form `model::linear::matmul_t`
//!    takes on the CPU for 2–16 rows, and `matmul_t` itself, on the 135M model's
//!    projection and output-head shapes.
//! 2. x Wᵀ with more rows (32–4096): plain, flipped, and with x handed to gemm
//!    column-major (its transpose included), with the best form's GFLOP/s.
//! 3. A product whose left side is subnormal (~1e-40) with IEEE subnormals and with
//!    them flushed to zero (`model::denormals`).

use std::time::Instant;

use amortize::model::{denormals, few_rows, linear::matmul_t};
use candle_core::{Device, Tensor};

/// Mean seconds of `f` over at least `n` calls and 0.2 s after one warm-up call
/// (sub-millisecond products need many calls to rise above this machine's noise).
fn time(n: usize, f: impl Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<f64> {
    f()?;
    let start = Instant::now();
    let mut calls = 0;
    while calls < n || start.elapsed().as_secs_f64() < 0.2 {
        f()?;
        calls += 1;
    }
    Ok(start.elapsed().as_secs_f64() / calls as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    println!("x Wt vs (W xt)t, f32, {} rayon threads", rayon::current_num_threads());
    println!("{:>14} {:>5} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7}", "W [out, in]", "rows", "x·Wt ms", "(W·xt)t ms", "few_rows", "matmul_t", "ratio", "few/best");
    for (out, inp) in [(960usize, 576usize), (3072, 576), (576, 1536), (49152, 576)] {
        let w = Tensor::randn(0f32, 1., (out, inp), &dev)?;
        for rows in [1usize, 2, 4, 8, 16, 32, 64, 128] {
            let x = Tensor::randn(0f32, 1., (rows, inp), &dev)?;
            let plain = time(5, || x.matmul(&w.t()?))?;
            let flipped = time(5, || w.matmul(&x.t()?)?.t()?.contiguous())?;
            let msg = |e: amortize::Error| candle_core::Error::Msg(e.to_string());
            let few = if rows <= few_rows::MAX_ROWS { time(5, || few_rows::x_wt(&x, &w).map_err(msg))? } else { f64::NAN };
            let ours = time(5, || matmul_t(&x, &w).map_err(msg))?;
            println!(
                "{:>14} {rows:>5} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>7.2} {:>7.2}",
                format!("[{out}, {inp}]"),
                plain * 1e3,
                flipped * 1e3,
                few * 1e3,
                ours * 1e3,
                plain / flipped,
                plain.min(flipped) / few
            );
        }
    }
    println!("x Wt, more rows: plain vs (W xt)t vs x column-major (transpose included)");
    println!("{:>14} {:>5} {:>10} {:>10} {:>10} {:>7} {:>7} {:>8}", "W [out, in]", "rows", "plain ms", "flip ms", "col ms", "p/flip", "p/col", "GF/s");
    for (out, inp) in [(960usize, 576usize), (3072, 576), (576, 1536), (49152, 576), (64, 576), (64, 1536)] {
        let w = Tensor::randn(0f32, 1., (out, inp), &dev)?;
        for rows in [32usize, 64, 128, 256, 512, 1024, 2048, 4096] {
            let x = Tensor::randn(0f32, 1., (rows, inp), &dev)?;
            let plain = time(3, || x.matmul(&w.t()?))?;
            let flipped = time(3, || w.matmul(&x.t()?)?.t()?.contiguous())?;
            let col = time(3, || x.t()?.contiguous()?.t()?.matmul(&w.t()?))?;
            let best = plain.min(flipped).min(col);
            println!(
                "{:>14} {rows:>5} {:>10.3} {:>10.3} {:>10.3} {:>7.2} {:>7.2} {:>8.1}",
                format!("[{out}, {inp}]"),
                plain * 1e3,
                flipped * 1e3,
                col * 1e3,
                plain / flipped,
                plain / col,
                2.0 * (rows * out * inp) as f64 / best / 1e9
            );
        }
    }
    // The output head's backward: d_logits [N, V] · E [V, H].
    let (n, v, h) = (64usize, 49152usize, 576usize);
    let e = Tensor::randn(0f32, 1., (v, h), &dev)?;
    let tiny = (Tensor::randn(0f32, 1., (n, v), &dev)? * 1e-40)?;
    let rayon_flushes = |on: bool| rayon::broadcast(|_| denormals::set_this_thread(on));
    rayon_flushes(false);
    denormals::set_this_thread(false);
    let ieee = time(1, || tiny.matmul(&e))?;
    rayon_flushes(true);
    denormals::set_this_thread(true);
    let flushed = time(1, || tiny.matmul(&e))?;
    println!("subnormal [{n}, {v}] · [{v}, {h}]: IEEE {:.3} s, flushed {:.3} s, ratio {:.1}", ieee, flushed, ieee / flushed);
    Ok(())
}
