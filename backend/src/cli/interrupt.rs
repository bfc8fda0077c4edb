//! Ctrl-C for the long commands: the first one asks the work to stop where it
//! can keep what it has done (`amortize::cancel`: `train` finishes its step
//! and writes a checkpoint), a second one quits at once. Owns the signal
//! thread and the exit status of an interrupted command (130, as a shell
//! gives a process killed by SIGINT).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// A command stopped by Ctrl-C; `main` prints it and exits with 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted {0}")]
pub struct Interrupted(pub String);

/// A flag the first Ctrl-C (SIGINT) raises; the second ends the process.
pub fn on_ctrl_c() -> anyhow::Result<Arc<AtomicU8>> {
    let flag = Arc::new(AtomicU8::new(0));
    let raised = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Installed before the thread starts, so a Ctrl-C right after this
    // returns is already ours.
    let mut signals = rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) })?;
    std::thread::Builder::new().name("ctrl-c".into()).spawn(move || {
        rt.block_on(async move {
            while signals.recv().await.is_some() {
                if raised.swap(1, Ordering::SeqCst) != 0 {
                    eprintln!("\ninterrupted again: quitting now");
                    std::process::exit(130);
                }
                eprintln!("\ninterrupted: stopping at the end of the step in flight (Ctrl-C again to quit now)");
            }
        })
    })?;
    Ok(flag)
}
