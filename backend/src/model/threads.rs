//! How many threads the CPU's matrix products use, decided once per process.
//!
//! candle's CPU matmul asks `candle_core::utils::get_num_threads()` on every
//! call, and unless `RAYON_NUM_THREADS` is set that counts the physical cores
//! by opening and parsing `/proc/cpuinfo` again. A GFlowNet training step on
//! SmolLM2 (arithmetic, batch 16) makes about 15,000 such products, so the
//! step read the file 15,000 times (counted with `strace -e openat`), on the
//! thread that waits for the products. [`pin`] asks candle once and writes its
//! answer to `RAYON_NUM_THREADS`, which candle and rayon's global pool then
//! read instead: the products keep the thread count candle chose, and rayon's
//! pool (the engine's own CPU kernels) gets the same count.
//!
//! Owns that one environment variable, and only when the user has not set it;
//! touches nothing else.

use std::ffi::OsStr;

/// The value to write to `RAYON_NUM_THREADS`, or `None` to leave it: a
/// user's own setting (`existing`) always wins.
pub fn pinned_value(existing: Option<&OsStr>, candle_count: usize) -> Option<String> {
    match existing {
        Some(_) => None,
        None => Some(candle_count.max(1).to_string()),
    }
}

/// Fixes the thread count for the process. Call it first thing in `main`,
/// before any thread exists (the environment is not safe to write while
/// other threads may read it) and before rayon's global pool is built.
pub fn pin() {
    let existing = std::env::var_os("RAYON_NUM_THREADS");
    if let Some(value) = pinned_value(existing.as_deref(), candle_core::utils::get_num_threads()) {
        std::env::set_var("RAYON_NUM_THREADS", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_setting_is_kept_and_otherwise_candles_count_is_written() {
        assert_eq!(pinned_value(Some(OsStr::new("3")), 8), None);
        assert_eq!(pinned_value(Some(OsStr::new("")), 8), None);
        assert_eq!(pinned_value(None, 8).as_deref(), Some("8"));
        assert_eq!(pinned_value(None, 0).as_deref(), Some("1"));
    }
}
