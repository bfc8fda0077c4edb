//! How far the engine's long stages have come, for whoever watches the thread
//! they run on: the job runner streams it to the browser, the CLI draws a bar.
//! A stage (drawing samples, scoring, seeding the replay buffer, …) calls
//! [`report`] with its units done and in all as it goes; with no watcher
//! installed ([`watch`]) a report costs a thread-local read.
//!
//! Owns only the thread-local watcher; knows nothing of jobs, HTTP or
//! terminals. Its sibling [`crate::cancel`] carries stop requests the other way.

use std::cell::RefCell;
use std::sync::Arc;

/// Receives `(stage, done, total)`; `done` grows to `total` within a stage.
pub type Watcher = Arc<dyn Fn(&str, usize, usize) + Send + Sync>;

thread_local! {
    static WATCHER: RefCell<Option<Watcher>> = const { RefCell::new(None) };
}

/// Until dropped, this thread's reports go to the watcher given to [`watch`].
#[must_use = "the watch ends when the guard is dropped"]
pub struct Watch {
    previous: Option<Watcher>,
}

/// Sends this thread's reports to `watcher` (the previous one comes back when
/// the guard drops).
pub fn watch(watcher: Watcher) -> Watch {
    Watch { previous: WATCHER.with(|w| w.replace(Some(watcher))) }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let previous = self.previous.take();
        WATCHER.with(|w| *w.borrow_mut() = previous);
    }
}

/// `done` of `total` units of `stage` are finished (a stage of no units is
/// not reported).
pub fn report(stage: &str, done: usize, total: usize) {
    if total == 0 {
        return;
    }
    // The watcher is cloned out first: it may itself report or install one.
    let watcher = WATCHER.with(|w| w.borrow().clone());
    if let Some(w) = watcher {
        w(stage, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn reports_reach_the_innermost_watcher_of_their_thread() {
        report("nobody", 1, 2); // no watcher: nothing happens
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = |tag: &'static str| {
            let seen = seen.clone();
            Arc::new(move |s: &str, d, t| seen.lock().unwrap().push(format!("{tag} {s} {d}/{t}"))) as Watcher
        };
        {
            let _outer = watch(log("a"));
            report("x", 0, 3);
            report("empty", 0, 0);
            {
                let _inner = watch(log("b"));
                report("y", 1, 1);
            }
            report("x", 3, 3);
            std::thread::spawn(|| report("elsewhere", 1, 1)).join().unwrap();
        }
        report("after", 1, 1);
        assert_eq!(*seen.lock().unwrap(), ["a x 0/3", "b y 1/1", "a x 3/3"]);
    }
}
