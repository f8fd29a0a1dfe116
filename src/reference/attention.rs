//! Multi-head self-attention over qkv [B*N, 3D] (head a's q, k, v: columns [a*d, (a+1)*d)
//! of the thirds at offsets 0, D, 2D), D = A*d, scale = 1/sqrt(d). The naive form: the
//! full N x N scores per (batch, head), in f64.

use super::Real;

/// Column offsets of head `a`'s q, k and v in a qkv row.
fn columns(a: usize, heads: usize, d: usize) -> (usize, usize, usize) {
    let model = heads * d;
    (a * d, model + a * d, 2 * model + a * d)
}

/// P [N, N] of one (batch, head) in f64: softmax over keys of q k^T * scale.
fn probs_f64<T: Real>(
    qkv: &[T],
    b: usize,
    a: usize,
    tokens: usize,
    heads: usize,
    d: usize,
) -> Vec<f64> {
    let row = 3 * heads * d;
    let (qc, kc, _) = columns(a, heads, d);
    let scale = 1.0 / (d as f64).sqrt();
    let x = |t: usize, c: usize| qkv[(b * tokens + t) * row + c].to_f64();
    let mut p = vec![0.0f64; tokens * tokens];
    for i in 0..tokens {
        let s = &mut p[i * tokens..(i + 1) * tokens];
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = (0..d).map(|c| x(i, qc + c) * x(j, kc + c)).sum::<f64>() * scale;
        }
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|&v| (v - max).exp()).sum();
        for sj in s.iter_mut() {
            *sj = (*sj - max).exp() / sum;
        }
    }
    p
}

/// Row log-sum-exp of the scaled scores of one (batch, head), f64.
fn lse_f64<T: Real>(
    qkv: &[T],
    b: usize,
    a: usize,
    tokens: usize,
    heads: usize,
    d: usize,
) -> Vec<f64> {
    let row = 3 * heads * d;
    let (qc, kc, _) = columns(a, heads, d);
    let scale = 1.0 / (d as f64).sqrt();
    let x = |t: usize, c: usize| qkv[(b * tokens + t) * row + c].to_f64();
    (0..tokens)
        .map(|i| {
            let s: Vec<f64> = (0..tokens)
                .map(|j| (0..d).map(|c| x(i, qc + c) * x(j, kc + c)).sum::<f64>() * scale)
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            max + s.iter().map(|&v| (v - max).exp()).sum::<f64>().ln()
        })
        .collect()
}

/// o = softmax(q k^T * scale) v per (batch, head); lse = row log-sum-exp of the scaled scores.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    o: &mut [T],   // [B*N, D]
    lse: &mut [T], // [B, A, N]
    qkv: &[T],     // [B*N, 3D]
    batch: usize,
    tokens: usize,
    heads: usize,
    d: usize,
) {
    let model = heads * d;
    let row = 3 * model;
    for b in 0..batch {
        for a in 0..heads {
            let p = probs_f64(qkv, b, a, tokens, heads, d);
            let (_, _, vc) = columns(a, heads, d);
            for i in 0..tokens {
                for c in 0..d {
                    let mut acc = 0.0f64;
                    for j in 0..tokens {
                        acc += p[i * tokens + j] * qkv[(b * tokens + j) * row + vc + c].to_f64();
                    }
                    o[(b * tokens + i) * model + a * d + c] = T::from_f64(acc);
                }
            }
            let l = lse_f64(qkv, b, a, tokens, heads, d);
            for i in 0..tokens {
                lse[(b * heads + a) * tokens + i] = T::from_f64(l[i]);
            }
        }
    }
}

/// dqkv = (dq, dk, dv) in qkv's layout (overwritten), from dO, recomputing P in f64 from qkv.
/// `o` and `lse` are the forward's outputs, as the kernel takes them; the reference
/// recomputes both in f64 instead (so delta_i = rowsum(dO o O) = sum_j P_ij dP_ij) and only
/// checks their lengths.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    dqkv: &mut [T], // [B*N, 3D]
    d_o: &[T],      // [B*N, D]
    qkv: &[T],      // [B*N, 3D]
    o: &[T],        // [B*N, D]
    lse: &[T],      // [B, A, N]
    batch: usize,
    tokens: usize,
    heads: usize,
    d: usize,
) {
    let model = heads * d;
    let row = 3 * model;
    assert_eq!(o.len(), batch * tokens * model);
    assert_eq!(lse.len(), batch * heads * tokens);
    let scale = 1.0 / (d as f64).sqrt();
    for b in 0..batch {
        for a in 0..heads {
            let p = probs_f64(qkv, b, a, tokens, heads, d);
            let (qc, kc, vc) = columns(a, heads, d);
            let x = |t: usize, c: usize| qkv[(b * tokens + t) * row + c].to_f64();
            let g = |t: usize, c: usize| d_o[(b * tokens + t) * model + a * d + c].to_f64();
            // dP = dO V^T, dS = P o (dP - rowsum(P o dP))
            let mut ds = vec![0.0f64; tokens * tokens];
            for i in 0..tokens {
                let dp: Vec<f64> = (0..tokens)
                    .map(|j| (0..d).map(|c| g(i, c) * x(j, vc + c)).sum())
                    .collect();
                let delta: f64 = (0..tokens).map(|j| p[i * tokens + j] * dp[j]).sum();
                for j in 0..tokens {
                    ds[i * tokens + j] = p[i * tokens + j] * (dp[j] - delta);
                }
            }
            for t in 0..tokens {
                let out = &mut dqkv[(b * tokens + t) * row..(b * tokens + t + 1) * row];
                for c in 0..d {
                    // dQ = dS K * scale, dK = dS^T Q * scale, dV = P^T dO
                    let (mut dq, mut dk, mut dv) = (0.0f64, 0.0f64, 0.0f64);
                    for u in 0..tokens {
                        dq += ds[t * tokens + u] * x(u, kc + c);
                        dk += ds[u * tokens + t] * x(u, qc + c);
                        dv += p[u * tokens + t] * g(u, c);
                    }
                    out[qc + c] = T::from_f64(dq * scale);
                    out[kc + c] = T::from_f64(dk * scale);
                    out[vc + c] = T::from_f64(dv);
                }
            }
        }
    }
}

/// The attention probabilities P [B, A, N, N].
pub fn probabilities(
    probs: &mut [f32], // [B, A, N, N]
    qkv: &[f32],       // [B*N, 3D]
    batch: usize,
    tokens: usize,
    heads: usize,
    d: usize,
) {
    let nn = tokens * tokens;
    for b in 0..batch {
        for a in 0..heads {
            let p = probs_f64(qkv, b, a, tokens, heads, d);
            let base = (b * heads + a) * nn;
            for (dst, &v) in probs[base..base + nn].iter_mut().zip(&p) {
                *dst = v as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The analytical gradient of L = sum(dO o O) matches central differences in f64.
    #[test]
    fn attention_backward_matches_finite_differences() {
        let (batch, tokens, heads, d) = (2, 5, 2, 4);
        let model = heads * d;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let qkv = crate::reference::random_vec(&mut rng, batch * tokens * 3 * model, 1.0);
        let d_o = crate::reference::random_vec(&mut rng, batch * tokens * model, 1.0);
        let mut o = vec![0.0; batch * tokens * model];
        let mut lse = vec![0.0; batch * heads * tokens];
        forward(&mut o, &mut lse, &qkv, batch, tokens, heads, d);
        let mut dqkv = vec![0.0; qkv.len()];
        backward(&mut dqkv, &d_o, &qkv, &o, &lse, batch, tokens, heads, d);

        // L in f64 straight from the naive softmax, so the differences are f64-accurate.
        let loss = |x: &[f64]| -> f64 {
            let row = 3 * model;
            let scale = 1.0 / (d as f64).sqrt();
            let mut total = 0.0;
            for b in 0..batch {
                for a in 0..heads {
                    let (qc, kc, vc) = columns(a, heads, d);
                    let at = |t: usize, c: usize| x[(b * tokens + t) * row + c];
                    for i in 0..tokens {
                        let s: Vec<f64> = (0..tokens)
                            .map(|j| (0..d).map(|c| at(i, qc + c) * at(j, kc + c)).sum::<f64>())
                            .map(|v| v * scale)
                            .collect();
                        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for c in 0..d {
                            let oc: f64 = (0..tokens).map(|j| e[j] / sum * at(j, vc + c)).sum();
                            total += d_o[(b * tokens + i) * model + a * d + c] as f64 * oc;
                        }
                    }
                }
            }
            total
        };
        let x0: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
        let h = 1e-5;
        let mut worst = 0.0f64;
        for idx in (0..qkv.len()).step_by(7) {
            let mut xp = x0.clone();
            xp[idx] += h;
            let mut xm = x0.clone();
            xm[idx] -= h;
            let numeric = (loss(&xp) - loss(&xm)) / (2.0 * h);
            let err = (numeric - dqkv[idx] as f64).abs() / (1e-3 + numeric.abs());
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "dqkv[{idx}]: analytical {} vs finite difference {numeric}",
                dqkv[idx]
            );
        }
        eprintln!("attention backward vs finite differences: worst relative error {worst:.2e}");
    }
}
