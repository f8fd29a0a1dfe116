//! AdamW with global gradient-norm clipping, in f64.

use crate::ops::Hyper;

/// One tensor's state on the host.
pub struct HostParam {
    pub param: Vec<f32>,
    pub grad: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub decay: bool,
}

/// Updates every tensor in place; returns the gradient norm before clipping.
pub fn step(params: &mut [HostParam], h: &Hyper) -> f64 {
    let norm = params
        .iter()
        .flat_map(|p| p.grad.iter())
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let scale = if h.max_norm > 0.0 {
        (h.max_norm as f64 / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    let (b1, b2) = (h.beta1 as f64, h.beta2 as f64);
    let lr = h.lr as f64;
    for p in params.iter_mut() {
        for i in 0..p.param.len() {
            let g = p.grad[i] as f64 * scale;
            let m = b1 * p.m[i] as f64 + (1.0 - b1) * g;
            let v = b2 * p.v[i] as f64 + (1.0 - b2) * g * g;
            let mut x = p.param[i] as f64;
            if p.decay {
                x -= lr * h.weight_decay as f64 * x;
            }
            x -= lr * (m / h.bias_correction1 as f64)
                / ((v / h.bias_correction2 as f64).sqrt() + h.eps as f64);
            p.m[i] = m as f32;
            p.v[i] = v as f32;
            p.param[i] = x as f32;
        }
    }
    norm
}
