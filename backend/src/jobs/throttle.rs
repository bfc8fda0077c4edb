//! How a run's progress reports become `Progress` events: at most one each
//! `every` within a stage, always a stage's first and last report, and a
//! report held back goes out once `every` has passed since the last event
//! (the trailing edge), so a stage that goes quiet still shows where it is.
//! Pure logic over given instants; the runner feeds it and ticks it.

use std::time::{Duration, Instant};

use amortize_shared::api::Progress;

pub struct Throttle {
    every: Duration,
    /// The stage and time of the last event sent.
    last: Option<(String, Instant)>,
    /// The newest report not sent yet.
    held: Option<Progress>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle { every, last: None, held: None }
    }

    /// A report: `Some` is the event to send now; `None` holds it back.
    pub fn offer(&mut self, p: Progress, now: Instant) -> Option<Progress> {
        let due = match &self.last {
            Some((stage, at)) => *stage != p.stage || p.done >= p.total || now.duration_since(*at) >= self.every,
            None => true,
        };
        if due {
            self.last = Some((p.stage.clone(), now));
            self.held = None;
            Some(p)
        } else {
            self.held = Some(p);
            None
        }
    }

    /// The held report once `every` has passed since the last event.
    pub fn tick(&mut self, now: Instant) -> Option<Progress> {
        let (_, at) = self.last.as_ref()?;
        if now.duration_since(*at) < self.every {
            return None;
        }
        let p = self.held.take()?;
        self.last = Some((p.stage.clone(), now));
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(stage: &str, done: usize, total: usize) -> Progress {
        Progress { stage: stage.into(), done, total }
    }

    #[test]
    fn first_last_and_new_stages_go_at_once_the_rest_at_most_every_period() {
        let (t0, ms) = (Instant::now(), Duration::from_millis);
        let mut t = Throttle::new(ms(250));
        assert_eq!(t.offer(p("a", 1, 10), t0), Some(p("a", 1, 10)));
        assert_eq!(t.offer(p("a", 2, 10), t0 + ms(100)), None);
        assert_eq!(t.offer(p("a", 3, 10), t0 + ms(200)), None);
        assert_eq!(t.offer(p("a", 4, 10), t0 + ms(260)), Some(p("a", 4, 10)));
        assert_eq!(t.offer(p("a", 10, 10), t0 + ms(270)), Some(p("a", 10, 10)), "the last one");
        assert_eq!(t.offer(p("b", 1, 5), t0 + ms(280)), Some(p("b", 1, 5)), "a new stage");
    }

    #[test]
    fn a_held_report_goes_out_when_the_period_is_up() {
        let (t0, ms) = (Instant::now(), Duration::from_millis);
        let mut t = Throttle::new(ms(250));
        t.offer(p("a", 1, 10), t0);
        assert_eq!(t.offer(p("a", 2, 10), t0 + ms(50)), None);
        assert_eq!(t.offer(p("a", 3, 10), t0 + ms(60)), None);
        assert_eq!(t.tick(t0 + ms(200)), None, "too soon");
        assert_eq!(t.tick(t0 + ms(250)), Some(p("a", 3, 10)), "the newest held");
        assert_eq!(t.tick(t0 + ms(900)), None, "sent once");
        // The period counts from that event.
        assert_eq!(t.offer(p("a", 4, 10), t0 + ms(400)), None);
        assert_eq!(t.tick(t0 + ms(499)), None);
        assert_eq!(t.tick(t0 + ms(500)), Some(p("a", 4, 10)));
        // An event sent at once drops what was held.
        assert_eq!(t.offer(p("a", 5, 10), t0 + ms(600)), None);
        assert_eq!(t.offer(p("b", 1, 10), t0 + ms(610)), Some(p("b", 1, 10)));
        assert_eq!(t.tick(t0 + ms(2000)), None);
    }
}
