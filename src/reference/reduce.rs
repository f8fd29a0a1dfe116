//! Column sums (bias gradients).

use super::Real;

/// sums[c] (+)= sum_r x[r, c]
pub fn column_sum<T: Real>(sums: &mut [T], x: &[T], rows: usize, cols: usize, accumulate: bool) {
    for c in 0..cols {
        let s: f64 = (0..rows).map(|r| x[r * cols + c].to_f64()).sum();
        sums[c] = if accumulate {
            T::from_f64(sums[c].to_f64() + s)
        } else {
            T::from_f64(s)
        };
    }
}
