//! A job's stop request as the engine's long loops see it. The job runner
//! installs its stop flag on the thread that runs the job ([`scope`]); the
//! loops that can run for seconds to minutes — decode steps, scoring
//! batches, reward calls, training steps — call [`check`] between their units
//! of work and return [`Error::Cancelled`] once the flag is raised. Outside a
//! scope (the CLI, the sampler endpoint, tests) [`check`] never fails.
//!
//! A training step is one unit: [`shielded`] runs it with checks off, so a
//! run stops between steps and its checkpoint is that of a finished step.
//! Owns only the thread-local flag; knows nothing of jobs or HTTP.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicU8>>> = const { RefCell::new(None) };
}

/// Until dropped, [`check`] on this thread fails once `flag` is non-zero.
#[must_use = "the scope ends when the guard is dropped"]
pub struct Scope {
    previous: Option<Arc<AtomicU8>>,
}

/// Makes `flag` (0: go on; anything else: stop) the current thread's stop request.
pub fn scope(flag: Arc<AtomicU8>) -> Scope {
    Scope { previous: FLAG.with(|f| f.replace(Some(flag))) }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        FLAG.with(|f| *f.borrow_mut() = previous);
    }
}

/// `Err(Error::Cancelled)` when the thread's job has been asked to stop.
pub fn check() -> Result<()> {
    let raised = FLAG.with(|f| f.borrow().as_ref().is_some_and(|a| a.load(Ordering::SeqCst) != 0));
    if raised {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// Runs `f` with [`check`] off (restored afterwards, also on error).
pub fn shielded<T>(f: impl FnOnce() -> T) -> T {
    let _outer = Scope { previous: FLAG.with(|f| f.replace(None)) };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_follows_the_innermost_scope_and_shielding() {
        assert!(check().is_ok(), "no scope: never cancelled");
        let flag = Arc::new(AtomicU8::new(0));
        {
            let _s = scope(flag.clone());
            assert!(check().is_ok());
            flag.store(1, Ordering::SeqCst);
            assert!(matches!(check(), Err(Error::Cancelled)));
            assert!(shielded(|| check().is_ok()), "a shielded unit runs to its end");
            assert!(matches!(check(), Err(Error::Cancelled)), "the shield ends with its unit");
            {
                let _inner = scope(Arc::new(AtomicU8::new(0)));
                assert!(check().is_ok(), "the innermost scope decides");
            }
            assert!(check().is_err(), "the outer scope is back");
        }
        assert!(check().is_ok(), "the scope ended with its guard");
        // Another thread does not see this thread's flag.
        let _s = scope(flag);
        assert!(std::thread::spawn(|| check().is_ok()).join().unwrap());
    }
}
