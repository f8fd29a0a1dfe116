//! Patch embedding helpers and the CLS rows.

use super::Real;

/// patches [B*Np, C*P*P] from img [B,C,H,W], flatten order (c, ky, kx)
pub fn patchify<T: Real>(
    patches: &mut [T],
    img: &[T],
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    p: usize,
) {
    let (gh, gw) = (h / p, w / p);
    let row_len = c * p * p;
    for bi in 0..b {
        for gy in 0..gh {
            for gx in 0..gw {
                let row = bi * gh * gw + gy * gw + gx;
                for ci in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            patches[row * row_len + (ci * p + ky) * p + kx] =
                                img[((bi * c + ci) * h + gy * p + ky) * w + gx * p + kx];
                        }
                    }
                }
            }
        }
    }
}

/// x0 [B*N, D] = [cls ; pe] + pos, with pe [B*(N-1), D]
pub fn assemble_tokens<T: Real>(
    x0: &mut [T],
    pe: &[T],
    cls: &[T],
    pos: &[T],
    b: usize,
    n: usize,
    d: usize,
) {
    for bi in 0..b {
        for t in 0..n {
            for j in 0..d {
                let v = if t == 0 {
                    cls[j]
                } else {
                    pe[(bi * (n - 1) + t - 1) * d + j]
                };
                x0[(bi * n + t) * d + j] = T::from_f64(v.to_f64() + pos[t * d + j].to_f64());
            }
        }
    }
}

/// dpe =, dpos =, dcls = from dx0
#[allow(clippy::too_many_arguments)]
pub fn assemble_tokens_backward<T: Real>(
    dpe: &mut [T],
    dpos: &mut [T],
    dcls: &mut [T],
    dx0: &[T],
    b: usize,
    n: usize,
    d: usize,
) {
    let mut acc = vec![0.0f64; n * d];
    for bi in 0..b {
        for t in 0..n {
            for j in 0..d {
                let g = dx0[(bi * n + t) * d + j];
                acc[t * d + j] += g.to_f64();
                if t > 0 {
                    dpe[(bi * (n - 1) + t - 1) * d + j] = g;
                }
            }
        }
    }
    for (o, a) in dpos.iter_mut().zip(&acc) {
        *o = T::from_f64(*a);
    }
    dcls.copy_from_slice(&dpos[..d]);
}

/// out [B, D] = the CLS rows of full [B*N, D]
pub fn gather_cls<T: Real>(out: &mut [T], full: &[T], b: usize, n: usize, d: usize) {
    for bi in 0..b {
        out[bi * d..(bi + 1) * d].copy_from_slice(&full[bi * n * d..bi * n * d + d]);
    }
}

/// dfull [B*N, D] = zeros except the CLS rows = dcls_rows
pub fn scatter_cls<T: Real>(dfull: &mut [T], dcls_rows: &[T], b: usize, n: usize, d: usize) {
    dfull.iter_mut().for_each(|v| *v = T::default());
    for bi in 0..b {
        dfull[bi * n * d..bi * n * d + d].copy_from_slice(&dcls_rows[bi * d..(bi + 1) * d]);
    }
}
