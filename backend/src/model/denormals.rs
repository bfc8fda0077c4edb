//! Subnormal floats flushed to zero in the CPU's arithmetic (FTZ and DAZ).
//!
//! An x86 multiply-add that reads or makes a subnormal float (|x| < 1.2e-38
//! in f32) takes a microcode assist and runs about 100× slower. Training makes
//! such numbers: the log-softmax gradient of a token masked with a large
//! negative bias is about e^-99, so the output head's backward read them. On
//! this project's 2-core CPU a [64, 49152] · [49152, 576] product took 4.7 s
//! with its left side scaled to ~1e-40 and 0.042 s with FTZ and DAZ set
//! (`cargo bench -p amortize --bench cpu_matmul`; a `bench step` at batch 16
//! ran 1.74× faster). Setting them treats subnormals as zero: as
//! TensorFlow does for its compute threads, and as `torch.set_flush_denormal`
//! offers.
//!
//! The setting is per thread and new threads inherit it from the thread that
//! creates them (POSIX), so it is set on the binary's main thread first thing,
//! and by [`Llama::new`](super::Llama::new) on a CPU model for the calling
//! thread and, once, for every thread of rayon's global pool (where candle's
//! matrix products run). `AMORTIZE_FLUSH_DENORMALS=0` keeps IEEE subnormals.
//! Other architectures: nothing is changed (ARM cores handle subnormals at
//! full speed or flush them by default).
//!
//! Owns the thread's float control register bits FTZ and DAZ; touches nothing else.

use std::sync::Once;

/// Whether subnormals are flushed unless told otherwise: on, except with
/// `AMORTIZE_FLUSH_DENORMALS=0`.
pub fn default_on() -> bool {
    std::env::var("AMORTIZE_FLUSH_DENORMALS").as_deref() != Ok("0")
}

static POOL: Once = Once::new();

/// Flushes subnormals on this thread and (once per process) on rayon's
/// global pool, unless `AMORTIZE_FLUSH_DENORMALS=0`. Returns whether this
/// thread now flushes them.
pub fn flush() -> bool {
    if !default_on() {
        return false;
    }
    set_this_thread(true); // two instructions: cheaper than remembering
    POOL.call_once(|| {
        rayon::broadcast(|_| set_this_thread(true));
    });
    this_thread_flushes()
}

/// MXCSR: flush-to-zero (bit 15) and denormals-are-zero (bit 6).
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
const FTZ_DAZ: u32 = 0x8040;

#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
fn read_mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stmxcsr stores the 32-bit control register into `csr`, which is
    // a valid, aligned, writable u32; SSE is part of every x86-64 CPU.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
    csr
}

/// Sets (or clears) flushing on this thread only (benchmarks compare both).
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
pub fn set_this_thread(on: bool) {
    let csr = if on { read_mxcsr() | FTZ_DAZ } else { read_mxcsr() & !FTZ_DAZ };
    // SAFETY: ldmxcsr loads a valid control word (the current one with two
    // mode bits set or cleared; no reserved bit is touched) from a readable u32.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
}

/// Whether this thread flushes subnormals to zero (both bits set).
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
pub fn this_thread_flushes() -> bool {
    read_mxcsr() & FTZ_DAZ == FTZ_DAZ
}

/// Sets (or clears) flushing on this thread only: nothing to do here.
#[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
pub fn set_this_thread(_on: bool) {}

/// Whether this thread flushes subnormals to zero (always false here: the
/// setting is only made on x86).
#[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
pub fn this_thread_flushes() -> bool {
    false
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "x86")))]
mod tests {
    use super::*;

    /// Off by default (a fresh thread keeps IEEE subnormals); once set on
    /// this thread, a product that would be subnormal is zero, and threads
    /// spawned from here and rayon's pool flush too.
    #[test]
    fn flushes_here_and_in_new_threads() {
        if !default_on() {
            return;
        }
        let tiny = || std::hint::black_box(1e-20f32) * std::hint::black_box(1e-20f32);
        let (flushed, product) = std::thread::spawn(move || (this_thread_flushes(), tiny())).join().unwrap_or((true, 0.0));
        assert!(!flushed && product > 0.0, "a thread of the test harness keeps subnormals: {product}");
        assert!(flush());
        assert!(this_thread_flushes());
        assert_eq!(tiny(), 0.0, "1e-40 is subnormal in f32: flushed to zero");
        assert!(std::thread::spawn(this_thread_flushes).join().unwrap_or(false), "a new thread inherits the setting");
        let pool: Vec<bool> = rayon::broadcast(|_| this_thread_flushes());
        assert!(pool.iter().all(|&f| f), "every thread of rayon's pool flushes");
    }
}
