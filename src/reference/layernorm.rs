//! LayerNorm over rows of x [rows, cols].

use super::Real;

/// y, mean, rstd = LN(x; gamma, beta)
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    y: &mut [T],    // [rows, cols]
    mean: &mut [T], // [rows]
    rstd: &mut [T], // [rows]
    x: &[T],        // [rows, cols]
    gamma: &[T],    // [cols]
    beta: &[T],     // [cols]
    rows: usize,
    cols: usize,
    eps: f32,
) {
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mu = row.iter().map(|&v| v.to_f64()).sum::<f64>() / cols as f64;
        let var = row.iter().map(|&v| (v.to_f64() - mu).powi(2)).sum::<f64>() / cols as f64;
        let rs = 1.0 / (var + eps as f64).sqrt();
        for c in 0..cols {
            y[r * cols + c] =
                T::from_f64((row[c].to_f64() - mu) * rs * gamma[c].to_f64() + beta[c].to_f64());
        }
        mean[r] = T::from_f64(mu);
        rstd[r] = T::from_f64(rs);
    }
}

/// dx (=, or += when `accumulate`), dgamma =, dbeta =
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    dy: &[T],
    x: &[T],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut dg = vec![0.0f64; cols];
    let mut db = vec![0.0f64; cols];
    for r in 0..rows {
        let (mu, rs) = (mean[r].to_f64(), rstd[r].to_f64());
        let xhat = |c: usize| (x[r * cols + c].to_f64() - mu) * rs;
        let g = |c: usize| gamma[c].to_f64() * dy[r * cols + c].to_f64();
        let mean_g = (0..cols).map(g).sum::<f64>() / cols as f64;
        let mean_gx = (0..cols).map(|c| g(c) * xhat(c)).sum::<f64>() / cols as f64;
        for c in 0..cols {
            let v = rs * (g(c) - mean_g - xhat(c) * mean_gx);
            let i = r * cols + c;
            dx[i] = T::from_f64(if accumulate { dx[i].to_f64() + v } else { v });
            dg[c] += dy[i].to_f64() * xhat(c);
            db[c] += dy[i].to_f64();
        }
    }
    for c in 0..cols {
        dgamma[c] = T::from_f64(dg[c]);
        dbeta[c] = T::from_f64(db[c]);
    }
}
