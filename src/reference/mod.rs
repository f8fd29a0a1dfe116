//! The reference: plain loops accumulating in f64, forward and backward for every op,
//! outputs first in the argument list, llm.c style, generic over f32 (to check every WGSL
//! kernel) and f64 (the whole reference model in `model::reference`, checked against finite
//! differences). It imports nothing from `kernels` or `model`: shared definitions live in
//! `crate::ops`.

pub mod adamw;
pub mod attention;
pub mod dropout;
pub mod elementwise;
pub mod embed;
pub mod gemm;
pub mod layernorm;
pub mod loss;
pub mod reduce;
pub mod tokens;

/// The scalar types the reference ops run on: f32 (to check kernels) and f64 (the whole
/// reference model, checked against finite differences). Sums always accumulate in f64.
pub trait Real: Copy + Default + std::fmt::Debug + PartialOrd + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// ||a - b|| / ||b||, and the index and values of the worst element.
pub fn relative_error(ours: &[f32], reference: &[f32]) -> (f64, usize) {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    let mut worst = (0usize, -1.0f64);
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        let d = a as f64 - b as f64;
        let d2 = if d.is_nan() { f64::INFINITY } else { d * d };
        num += d2;
        den += (b as f64) * (b as f64);
        if d2 > worst.1 {
            worst = (i, d2);
        }
    }
    let err = if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    };
    (err, worst.0)
}

/// Deterministic pseudo-random floats in [-scale, scale) for tests and benches.
pub fn random_vec(rng: &mut impl rand::Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}
