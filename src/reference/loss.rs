//! Softmax cross-entropy.

/// losses [B], dlogits [B,K] = (softmax - onehot) * grad_scale, correct [B]
pub fn cross_entropy(
    losses: &mut [f32],
    dlogits: &mut [f32],
    correct: &mut [f32],
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    grad_scale: f32,
) {
    for (b, &label) in labels.iter().enumerate() {
        let z = &logits[b * classes..(b + 1) * classes];
        let (mut best, mut zmax) = (0, z[0] as f64);
        for (k, &v) in z.iter().enumerate() {
            if (v as f64) > zmax {
                zmax = v as f64;
                best = k;
            }
        }
        let lse = zmax + z.iter().map(|&v| (v as f64 - zmax).exp()).sum::<f64>().ln();
        losses[b] = (lse - z[label as usize] as f64) as f32;
        correct[b] = if best == label as usize { 1.0 } else { 0.0 };
        for k in 0..classes {
            let p = (z[k] as f64 - lse).exp();
            let onehot = if k == label as usize { 1.0 } else { 0.0 };
            dlogits[b * classes + k] = ((p - onehot) * grad_scale as f64) as f32;
        }
    }
}
