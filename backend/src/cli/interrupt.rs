//! Ctrl-C (and SIGTERM) for the long commands: the first one asks the work to
//! stop where it can keep what it has done (`amortize::cancel`: `train`
//! finishes its step and writes a checkpoint), a second one quits at once.
//! Owns the signal thread and the exit status of an interrupted command
//! (128 + the signal's number, as a shell reports a process it killed).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

/// A command stopped by a signal; `main` prints it and exits with `code`.
#[derive(Debug, thiserror::Error)]
#[error("interrupted {why}")]
pub struct Interrupted {
    pub why: String,
    pub code: u8,
}

impl Interrupted {
    /// Stopped by the signal `flag` holds (see [`on_signals`]): status 128 + its number.
    pub fn by(flag: &AtomicU8, why: impl Into<String>) -> Interrupted {
        Interrupted { why: why.into(), code: 128u8.saturating_add(flag.load(Ordering::SeqCst).max(2)) }
    }
}

/// A flag the first SIGINT or SIGTERM raises (to the signal's number); the
/// second ends the process.
pub fn on_signals() -> anyhow::Result<Arc<AtomicU8>> {
    let flag = Arc::new(AtomicU8::new(0));
    let raised = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Installed before the thread starts, so a signal right after this
    // returns is already ours.
    let (mut int, mut term) = rt.block_on(async { Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)) })?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async move {
            loop {
                let number = tokio::select! {
                    Some(()) = int.recv() => 2,
                    Some(()) = term.recv() => 15,
                    else => return,
                };
                if raised.swap(number, Ordering::SeqCst) != 0 {
                    eprintln!("\ninterrupted again: quitting now");
                    std::process::exit(128 + i32::from(number));
                }
                eprintln!("\ninterrupted: stopping at the end of the step in flight (Ctrl-C again to quit now)");
            }
        })
    })?;
    Ok(flag)
}
