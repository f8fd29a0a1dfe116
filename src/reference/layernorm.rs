//! LayerNorm over rows of x [rows, cols].

/// y, mean, rstd = LN(x; gamma, beta)
#[allow(clippy::too_many_arguments)]
pub fn forward(
    y: &mut [f32],    // [rows, cols]
    mean: &mut [f32], // [rows]
    rstd: &mut [f32], // [rows]
    x: &[f32],        // [rows, cols]
    gamma: &[f32],    // [cols]
    beta: &[f32],     // [cols]
    rows: usize,
    cols: usize,
    eps: f32,
) {
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mu = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
        let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / cols as f64;
        let rs = 1.0 / (var + eps as f64).sqrt();
        for c in 0..cols {
            y[r * cols + c] = ((row[c] as f64 - mu) * rs * gamma[c] as f64 + beta[c] as f64) as f32;
        }
        mean[r] = mu as f32;
        rstd[r] = rs as f32;
    }
}

/// dx (=, or += when `accumulate`), dgamma =, dbeta =
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut dg = vec![0.0f64; cols];
    let mut db = vec![0.0f64; cols];
    for r in 0..rows {
        let (mu, rs) = (mean[r] as f64, rstd[r] as f64);
        let xhat = |c: usize| (x[r * cols + c] as f64 - mu) * rs;
        let g = |c: usize| gamma[c] as f64 * dy[r * cols + c] as f64;
        let mean_g = (0..cols).map(g).sum::<f64>() / cols as f64;
        let mean_gx = (0..cols).map(|c| g(c) * xhat(c)).sum::<f64>() / cols as f64;
        for c in 0..cols {
            let v = (rs * (g(c) - mean_g - xhat(c) * mean_gx)) as f32;
            let i = r * cols + c;
            dx[i] = if accumulate { dx[i] + v } else { v };
            dg[c] += dy[i] as f64 * xhat(c);
            db[c] += dy[i] as f64;
        }
    }
    for c in 0..cols {
        dgamma[c] = dg[c] as f32;
        dbeta[c] = db[c] as f32;
    }
}
