//! Inverted dropout whose mask is a hash of (seed, step, index), written here from the
//! definition (PCG's output permutation, chained three times) rather than shared with the
//! kernel, so a wrong mask in either one fails the tests.

use super::Real;

fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The factor element `i` is multiplied by: 0 when its hash, read as a uniform number in
/// [0, 1), falls below p; else 1/(1-p).
pub fn keep_scale(seed: u32, step: u32, i: u32, p: f32) -> f32 {
    let u = pcg(i ^ pcg(step ^ pcg(seed))) as f64 / 4294967296.0;
    if u < p as f64 {
        0.0
    } else {
        1.0 / (1.0 - p)
    }
}

/// y (+)= x * mask / (1-p), element i masked as position `offset + i` (a rank's shard of the
/// global batch starts at its offset).
pub fn forward<T: Real>(
    y: &mut [T],
    x: &[T],
    p: f32,
    (seed, step, offset): (u32, u32, u32),
    accumulate: bool,
) {
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        let r = v.to_f64() * keep_scale(seed, step, offset + i as u32, p) as f64;
        *o = T::from_f64(if accumulate { o.to_f64() + r } else { r });
    }
}

/// dx = dy * mask / (1-p)
pub fn backward<T: Real>(dx: &mut [T], dy: &[T], p: f32, site: (u32, u32, u32)) {
    forward(dx, dy, p, site, false)
}
