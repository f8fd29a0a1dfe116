//! Resampling the learned position embeddings to another patch grid, exactly as timm's
//! `resample_abs_pos_embed` does by default: the CLS position kept, the grid interpolated
//! with PyTorch's antialiased bicubic (`F.interpolate(mode='bicubic', align_corners=False,
//! antialias=True)`: the PIL-style cubic with a = -0.5, weights renormalised at the borders).
//! Pure math on arrays: loading a checkpoint with it is `checkpoint::load_params_resampling`.

/// PyTorch's antialiased cubic filter (a = -0.5).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: the first input index and the normalised weights.
fn weights(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(input);
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|j| cubic((j as f64 - center + 0.5) * invscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// Resample pos [1 + gh*gw, D] (CLS first) to [1 + nh*nw, D].
pub fn resample(pos: &[f32], dim: usize, old: (usize, usize), new: (usize, usize)) -> Vec<f32> {
    resample_with_prefix(pos, dim, 1, old, new)
}

/// Resample pos [prefix + gh*gw, D] to [prefix + nh*nw, D], the first `prefix` rows (the
/// class and other prefix tokens' positions; none with `no_embed_class`) kept as they are.
pub fn resample_with_prefix(
    pos: &[f32],
    dim: usize,
    prefix: usize,
    old: (usize, usize),
    new: (usize, usize),
) -> Vec<f32> {
    let (gh, gw) = old;
    let (nh, nw) = new;
    assert_eq!(
        pos.len(),
        (prefix + gh * gw) * dim,
        "pos_embed length does not match its grid"
    );
    if old == new {
        return pos.to_vec();
    }
    let grid = &pos[prefix * dim..];
    // Along the width first, then the height (separable, in f64).
    let ww = weights(gw, nw);
    let mut tmp = vec![0.0f64; gh * nw * dim];
    for y in 0..gh {
        for (x, (x0, w)) in ww.iter().enumerate() {
            for (t, wt) in w.iter().enumerate() {
                let src = &grid[(y * gw + x0 + t) * dim..(y * gw + x0 + t + 1) * dim];
                let dst = &mut tmp[(y * nw + x) * dim..(y * nw + x + 1) * dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += wt * *s as f64;
                }
            }
        }
    }
    let wh = weights(gh, nh);
    let mut out = vec![0.0f64; nh * nw * dim];
    for (y, (y0, w)) in wh.iter().enumerate() {
        for (t, wt) in w.iter().enumerate() {
            for x in 0..nw {
                let src = &tmp[((y0 + t) * nw + x) * dim..((y0 + t) * nw + x + 1) * dim];
                let dst = &mut out[(y * nw + x) * dim..(y * nw + x + 1) * dim];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += wt * s;
                }
            }
        }
    }
    let mut result = pos[..prefix * dim].to_vec();
    result.extend(out.iter().map(|&v| v as f32));
    result
}
