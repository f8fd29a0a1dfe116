//! The CPU reference: plain loops accumulating in f64, forward and backward for every op,
//! outputs first in the argument list, llm.c style. Tests check every WGSL kernel against
//! these, and these against finite differences.

pub mod adamw;
pub mod attention;
pub mod dropout;
pub mod embed;
pub mod gemm;
pub mod layernorm;
pub mod loss;

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
