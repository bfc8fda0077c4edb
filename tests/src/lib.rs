//! Helpers for the end-to-end tests in `tests/tests/`: finding (or building) the
//! real `amortize` binary and running it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `amortize` binary of this workspace's current profile, built if missing.
pub fn amortize_bin() -> PathBuf {
    // target/<profile>/deps/<test-binary> → target/<profile>/amortize
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    let bin = dir.join(format!("amortize{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "amortize", "--bin", "amortize"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the amortize binary failed");
    }
    bin
}

/// Runs `amortize ARGS…` and returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(amortize_bin()).args(args).env("AMORTIZE_LOG", "error").output().expect("spawn amortize")
}
