//! Rebuilds the crate when a migration is added (`sqlx::migrate!` embeds
//! them), and compiles the fused CUDA kernels (`kernels/fused.cu`) to PTX
//! when the `cuda` feature is on; CPU builds need no CUDA toolkit.
//!
//! Uses `nvcc` from `$NVCC` or the `PATH` (`../shared/gpu/build-cuda.sh` puts a
//! pip-installed one there) and the virtual architecture `compute_$CUDA_COMPUTE_CAP`
//! (default 80: bf16 arithmetic; newer GPUs JIT-compile the PTX).

use std::path::PathBuf;
use std::process::{exit, Command};

fn main() {
    // sqlx::migrate! embeds backend/migrations/: a new file there must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=kernels/fused.cu");
    println!("cargo:rerun-if-changed=kernels/gemv.cuh");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fused.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("--gpu-architecture=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("kernels/fused.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("nvcc failed on kernels/fused.cu ({s})");
            exit(1);
        }
        Err(e) => {
            eprintln!("cannot run {nvcc} to compile kernels/fused.cu: {e} (set NVCC or put nvcc on the PATH)");
            exit(1);
        }
    }
}
