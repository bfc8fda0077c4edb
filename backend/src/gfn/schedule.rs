//! Schedules of the trainer: reward temperature annealed linearly from `start`
//! to `end` over `horizon` steps, and a linear learning-rate warm-up.

use serde::{Deserialize, Serialize};

/// Linear from `start` (step 0) to `end` (step `horizon` and after).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub start: f64,
    pub end: f64,
    pub horizon: usize,
}

impl Linear {
    pub fn at(&self, step: usize) -> f64 {
        if self.horizon == 0 || step >= self.horizon {
            return self.end;
        }
        self.start + (self.end - self.start) * step as f64 / self.horizon as f64
    }
}

/// Learning rate with linear warm-up over `warmup` steps (step 0 gets lr/warmup).
pub fn warmup_lr(lr: f64, warmup: usize, step: usize) -> f64 {
    if warmup == 0 {
        lr
    } else {
        lr * ((step + 1) as f64 / warmup as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = Linear { start: 1.1, end: 0.5, horizon: 150 };
        assert_eq!(s.at(0), 1.1);
        assert!((s.at(75) - 0.8).abs() < 1e-12);
        assert_eq!(s.at(150), 0.5);
        assert_eq!(s.at(10_000), 0.5);
        assert_eq!(warmup_lr(1e-4, 20, 0), 5e-6);
        assert_eq!(warmup_lr(1e-4, 20, 19), 1e-4);
        assert_eq!(warmup_lr(1e-4, 0, 0), 1e-4);
    }
}
