//! Softmax cross-entropy.

use super::Real;

/// losses [B], dlogits [B,K] = (softmax - onehot) * grad_scale, correct [B]
pub fn cross_entropy<T: Real>(
    losses: &mut [T],
    dlogits: &mut [T],
    correct: &mut [T],
    logits: &[T],
    labels: &[u32],
    classes: usize,
    grad_scale: f32,
) {
    for (b, &label) in labels.iter().enumerate() {
        let z = &logits[b * classes..(b + 1) * classes];
        let (mut best, mut zmax) = (0, z[0].to_f64());
        for (k, &v) in z.iter().enumerate() {
            if v.to_f64() > zmax {
                zmax = v.to_f64();
                best = k;
            }
        }
        let lse = zmax
            + z.iter()
                .map(|&v| (v.to_f64() - zmax).exp())
                .sum::<f64>()
                .ln();
        losses[b] = T::from_f64(lse - z[label as usize].to_f64());
        correct[b] = T::from_f64(if best == label as usize { 1.0 } else { 0.0 });
        for k in 0..classes {
            let p = (z[k].to_f64() - lse).exp();
            let onehot = if k == label as usize { 1.0 } else { 0.0 };
            dlogits[b * classes + k] = T::from_f64((p - onehot) * grad_scale as f64);
        }
    }
}
