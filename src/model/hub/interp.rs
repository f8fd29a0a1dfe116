//! Position embeddings resized as transformers' DeiT and Dinov2 do it for another input
//! size: `F.interpolate(mode='bicubic', align_corners=False)` without antialiasing
//! (PyTorch's cubic convolution with A = -0.75, source index scale * (i + 0.5) - 0.5,
//! neighbours clamped at the borders), the prefix rows kept. timm's resampling, with
//! antialiasing, is `model::pos_embed`.

const A: f64 = -0.75;

fn near(x: f64) -> f64 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn far(x: f64) -> f64 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// For each output index, four (input index, weight) taps.
fn taps(input: usize, output: usize) -> Vec<[(usize, f64); 4]> {
    let scale = input as f64 / output as f64;
    let last = input as i64 - 1;
    (0..output)
        .map(|i| {
            let src = scale * (i as f64 + 0.5) - 0.5;
            let x0 = src.floor();
            let t = src - x0;
            let w = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            std::array::from_fn(|k| {
                let j = (x0 as i64 - 1 + k as i64).clamp(0, last) as usize;
                (j, w[k])
            })
        })
        .collect()
}

/// pos [prefix + gh*gw, D] to [prefix + nh*nw, D]; the first `prefix` rows unchanged.
pub fn bicubic_with_prefix(
    pos: &[f32],
    dim: usize,
    prefix: usize,
    old: (usize, usize),
    new: (usize, usize),
) -> Vec<f32> {
    let ((gh, gw), (nh, nw)) = (old, new);
    let grid = &pos[prefix * dim..];
    let (ty, tx) = (taps(gh, nh), taps(gw, nw));
    let mut out = pos[..prefix * dim].to_vec();
    for y in &ty {
        for x in &tx {
            for d in 0..dim {
                let mut s = 0.0;
                for &(iy, wy) in y {
                    for &(ix, wx) in x {
                        s += wy * wx * grid[(iy * gw + ix) * dim + d] as f64;
                    }
                }
                out.push(s as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_grid_is_the_identity_and_weights_sum_to_one() {
        let pos: Vec<f32> = (0..(1 + 9) * 2).map(|i| i as f32 * 0.37).collect();
        let same = bicubic_with_prefix(&pos, 2, 1, (3, 3), (3, 3));
        for (a, b) in same.iter().zip(&pos) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        for (i, o) in [(37, 16), (3, 2), (2, 5)] {
            for t in taps(i, o) {
                let s: f64 = t.iter().map(|(_, w)| w).sum();
                assert!((s - 1.0).abs() < 1e-12);
            }
        }
    }
}
