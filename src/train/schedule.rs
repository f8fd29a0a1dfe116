//! Learning-rate schedule: linear warmup, then cosine decay to zero.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub lr: f32,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub cosine: bool,
}

impl Schedule {
    /// The learning rate of optimiser step `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f32 {
        if self.warmup_steps > 0 && step <= self.warmup_steps {
            return self.lr * step as f32 / self.warmup_steps as f32;
        }
        if !self.cosine || self.total_steps <= self.warmup_steps {
            return self.lr;
        }
        let progress =
            (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        let progress = progress.clamp(0.0, 1.0);
        (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_then_cosine_falls_to_zero() {
        let s = Schedule {
            lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            cosine: true,
        };
        assert!((s.lr_at(1) - 0.1).abs() < 1e-6);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-6);
        assert!((s.lr_at(60) - 0.5).abs() < 1e-6);
        assert!(s.lr_at(110).abs() < 1e-6);
        let c = Schedule { cosine: false, ..s };
        assert_eq!(c.lr_at(100), 1.0);
    }
}
