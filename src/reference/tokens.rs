//! The token sequence of timm's ViT descendants around the patch embedding, and pooling:
//! [cls?, extra tokens (distillation or registers)..., patches], with the position
//! embedding on every token or on the patches alone (`no_embed_class`).

use super::Real;

/// Where each kind of token sits in the sequence of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLayout {
    pub batch: usize,
    pub patches: usize,
    pub dim: usize,
    /// A class token at position 0.
    pub cls: bool,
    /// Tokens after it from one tensor [extra, D] (a distillation token or the registers).
    pub extra: usize,
    /// The first token the position embedding covers: 0, or the first patch.
    pub pos_start: usize,
}

impl TokenLayout {
    pub fn prefix(&self) -> usize {
        self.cls as usize + self.extra
    }
    pub fn tokens(&self) -> usize {
        self.prefix() + self.patches
    }
    pub fn pos_tokens(&self) -> usize {
        self.tokens() - self.pos_start
    }
}

/// x0 [B*N, D] = [cls ; extra ; pe] (+ pos from token `pos_start` on), pe [B*Np, D]
pub fn assemble<T: Real>(
    x0: &mut [T],
    pe: &[T],
    cls: &[T],   // [D] when l.cls
    extra: &[T], // [extra, D]
    pos: &[T],   // [N - pos_start, D]
    l: &TokenLayout,
) {
    let (n, d, c) = (l.tokens(), l.dim, l.cls as usize);
    for b in 0..l.batch {
        for t in 0..n {
            for j in 0..d {
                let v = if t < c {
                    cls[j]
                } else if t < l.prefix() {
                    extra[(t - c) * d + j]
                } else {
                    pe[(b * l.patches + t - l.prefix()) * d + j]
                };
                let p = if t >= l.pos_start {
                    pos[(t - l.pos_start) * d + j].to_f64()
                } else {
                    0.0
                };
                x0[(b * n + t) * d + j] = T::from_f64(v.to_f64() + p);
            }
        }
    }
}

/// dpe =, dpos =, dcls =, dextra = from dx0
pub fn assemble_backward<T: Real>(
    dpe: &mut [T],
    dpos: &mut [T],
    dcls: &mut [T],
    dextra: &mut [T],
    dx0: &[T],
    l: &TokenLayout,
) {
    let (n, d, c) = (l.tokens(), l.dim, l.cls as usize);
    let mut acc = vec![0.0f64; n * d];
    for b in 0..l.batch {
        for t in 0..n {
            for j in 0..d {
                let g = dx0[(b * n + t) * d + j];
                acc[t * d + j] += g.to_f64();
                if t >= l.prefix() {
                    dpe[(b * l.patches + t - l.prefix()) * d + j] = g;
                }
            }
        }
    }
    for (t, row) in acc.chunks(d).enumerate() {
        for (j, &s) in row.iter().enumerate() {
            if t >= l.pos_start {
                dpos[(t - l.pos_start) * d + j] = T::from_f64(s);
            }
            if t < c {
                dcls[j] = T::from_f64(s);
            } else if t < l.prefix() {
                dextra[(t - c) * d + j] = T::from_f64(s);
            }
        }
    }
}

/// out [B, D] = scale * sum of tokens [start, start+count) of x [B*N, D]
#[allow(clippy::too_many_arguments)]
pub fn pool<T: Real>(
    out: &mut [T],
    x: &[T],
    b: usize,
    n: usize,
    d: usize,
    start: usize,
    count: usize,
    scale: f64,
) {
    for bi in 0..b {
        for j in 0..d {
            let s: f64 = (start..start + count)
                .map(|t| x[(bi * n + t) * d + j].to_f64())
                .sum();
            out[bi * d + j] = T::from_f64(scale * s);
        }
    }
}

/// dx [B*N, D] = scale * dout on tokens [start, start+count), 0 elsewhere; with
/// `accumulate`, added to dx (which is left as is elsewhere)
#[allow(clippy::too_many_arguments)]
pub fn pool_backward<T: Real>(
    dx: &mut [T],
    dout: &[T],
    b: usize,
    n: usize,
    d: usize,
    start: usize,
    count: usize,
    scale: f64,
    accumulate: bool,
) {
    for bi in 0..b {
        for t in 0..n {
            for j in 0..d {
                let i = (bi * n + t) * d + j;
                let v = if (start..start + count).contains(&t) {
                    scale * dout[bi * d + j].to_f64()
                } else {
                    0.0
                };
                dx[i] = T::from_f64(if accumulate { dx[i].to_f64() + v } else { v });
            }
        }
    }
}
