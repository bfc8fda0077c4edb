//! The CUDA kernels of `backend/kernels/fused.cu` run on the CPU, so that they are
//! checked on every machine, GPU or not: `kernels/emu/check.cpp` compiles them
//! against a small emulator of the CUDA features they use (`kernels/emu/cuda_emu.h`:
//! one OS thread per CUDA thread, barriers for `__syncthreads`, a per-warp exchange
//! for shuffles) and compares every kernel, at the launch shapes of
//! `model/fused_cuda.rs`, with double-precision references.
//!
//! Two builds: AddressSanitizer + UBSan over every dtype (out-of-bounds reads
//! and writes fail the run), and ThreadSanitizer over f32 (a missing barrier
//! around shared memory fails the run even when the numbers come out right).
//! Needs a C++20 compiler (`$CXX`, else `g++`), which the Rust toolchain's
//! C/C++ dependencies (tokenizers) need too.

use std::path::Path;
use std::process::Command;

fn build_and_run(sanitizer: &str, args: &[&str]) {
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let emu = kernels.join("emu");
    let dir = tempfile::tempdir().expect("temporary directory");
    let exe = dir.path().join("check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-g", "-pthread", &format!("-fsanitize={sanitizer}"), "-fno-sanitize-recover=all", "-I"])
        .arg(&emu)
        .arg(emu.join("check.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cxx} (a C++20 compiler; set CXX): {e}"));
    assert!(out.status.success(), "{cxx} failed on kernels/emu/check.cpp:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).args(args).env("TSAN_OPTIONS", "halt_on_error=1").output().expect("run the kernel checks");
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    println!("{stdout}");
    assert!(run.status.success(), "kernel checks failed ({}):\n{stdout}\n{}", run.status, &stderr[..stderr.len().min(8000)]);
    assert!(["ok   gemv", "ok   attend", "ok   adamw_multi", "ok   draw_rows", "ok   logprobs_at"].iter().all(|c| stdout.contains(c)), "the checks did not run:\n{stdout}");
}

#[test]
fn cuda_kernels_match_their_references_under_address_sanitizer() {
    build_and_run("address,undefined", &[]);
}

#[test]
fn cuda_kernels_synchronise_shared_memory_under_thread_sanitizer() {
    build_and_run("thread", &["f32"]);
}
