//! Dropout with the same counter-based hash as shaders/dropout.wgsl.

fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The factor element `i` is multiplied by: 0 or 1/(1-p).
pub fn keep_scale(seed: u32, step: u32, i: u32, p: f32) -> f32 {
    let h = pcg(i ^ pcg(step ^ pcg(seed)));
    if h >= crate::kernels::dropout::threshold(p) {
        1.0 / (1.0 - p)
    } else {
        0.0
    }
}

/// y (+)= x * mask / (1-p)
pub fn forward(y: &mut [f32], x: &[f32], p: f32, seed: u32, step: u32, accumulate: bool) {
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        let r = v * keep_scale(seed, step, i as u32, p);
        *o = if accumulate { *o + r } else { r };
    }
}

/// dx = dy * mask / (1-p)
pub fn backward(dx: &mut [f32], dy: &[f32], p: f32, seed: u32, step: u32) {
    forward(dx, dy, p, seed, step, false)
}
