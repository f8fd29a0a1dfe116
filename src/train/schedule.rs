//! Learning-rate schedule: linear warmup, then cosine decay towards zero.
//!
//! Step s (1-based) of T with W warmup steps: lr*s/W while s <= W, then
//! 0.5*lr*(1 + cos(pi*(s-1-W)/(T-W))): the first step after warmup runs at the full rate and
//! the last step's rate is still above zero (it would be wasted at exactly zero).

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub cosine: bool,
}

impl Schedule {
    /// A run of `total_steps` at peak `lr`: `warmup` steps of warmup, by default 5% of the
    /// run (the CLI's and the page's training share this, so their losses agree).
    pub fn for_run(lr: f32, warmup: Option<u64>, total_steps: u64, cosine: bool) -> Schedule {
        Schedule {
            lr,
            warmup_steps: warmup.unwrap_or(total_steps / 20),
            total_steps,
            cosine,
        }
    }

    /// The learning rate of optimiser step `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f32 {
        if self.warmup_steps > 0 && step <= self.warmup_steps {
            return self.lr * step as f32 / self.warmup_steps as f32;
        }
        if !self.cosine || self.total_steps <= self.warmup_steps {
            return self.lr;
        }
        let progress =
            (step - 1 - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        let progress = progress.clamp(0.0, 1.0);
        (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_then_cosine_falls_towards_zero() {
        let s = Schedule {
            lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            cosine: true,
        };
        assert!((s.lr_at(1) - 0.1).abs() < 1e-6);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-6);
        assert!((s.lr_at(11) - 1.0).abs() < 1e-6);
        assert!((s.lr_at(61) - 0.5).abs() < 1e-6);
        // The last step still learns: 0.5 * (1 + cos(pi * 99/100)).
        let last = 0.5 * (1.0 + (std::f64::consts::PI * 0.99).cos());
        assert!((s.lr_at(110) as f64 - last).abs() < 1e-7 && s.lr_at(110) > 0.0);
        let c = Schedule { cosine: false, ..s };
        assert_eq!(c.lr_at(100), 1.0);
    }
}
