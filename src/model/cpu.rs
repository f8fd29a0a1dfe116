//! The whole ViT in f64 on the CPU: forward, loss and every parameter's gradient.
//! Independent of the kernels (plain loops in double precision), it is the reference the
//! device model is checked against, and it is itself checked against finite differences.

use super::config::{Act, Config, Head};
use super::params::HostParams;
use crate::reference::gemm::{gelu, gelu_grad};

/// Result of one forward + backward pass.
pub struct CpuResult {
    pub logits: Vec<f64>,     // [B, K]
    pub loss: f64,            // mean cross-entropy
    pub grads: Vec<Vec<f64>>, // per parameter, in `params.specs` order
}

fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b.map_or(0.0, |b| b[j]);
            for t in 0..k {
                s += x[i * k + t] * w[j * k + t];
            }
            y[i * n + j] = s;
        }
    }
    y
}

/// (dx [m,k], dw [n,k], db [n]) of y = x w^T + b
fn linear_backward(
    dy: &[f64],
    x: &[f64],
    w: &[f64],
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; m * k];
    let mut dw = vec![0.0; n * k];
    let mut db = vec![0.0; n];
    for i in 0..m {
        for j in 0..n {
            let g = dy[i * n + j];
            db[j] += g;
            for t in 0..k {
                dx[i * k + t] += g * w[j * k + t];
                dw[j * k + t] += g * x[i * k + t];
            }
        }
    }
    (dx, dw, db)
}

fn act_fwd(a: Act, x: f64) -> f64 {
    match a {
        Act::Relu => x.max(0.0),
        Act::Gelu => gelu(x),
    }
}

fn act_grad(a: Act, x: f64) -> f64 {
    match a {
        Act::Relu => (x > 0.0) as u8 as f64,
        Act::Gelu => gelu_grad(x),
    }
}

/// (y, xhat, rstd)
fn layernorm(
    x: &[f64],
    g: &[f64],
    b: &[f64],
    rows: usize,
    cols: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; rows * cols];
    let mut xhat = vec![0.0; rows * cols];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mu = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / cols as f64;
        let rs = 1.0 / (var + eps).sqrt();
        rstd[r] = rs;
        for c in 0..cols {
            let xh = (row[c] - mu) * rs;
            xhat[r * cols + c] = xh;
            y[r * cols + c] = xh * g[c] + b[c];
        }
    }
    (y, xhat, rstd)
}

/// (dx, dgamma, dbeta)
fn layernorm_backward(
    dy: &[f64],
    xhat: &[f64],
    rstd: &[f64],
    g: &[f64],
    rows: usize,
    cols: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; rows * cols];
    let mut dg = vec![0.0; cols];
    let mut db = vec![0.0; cols];
    for (r, &rs) in rstd.iter().enumerate().take(rows) {
        let i = r * cols;
        let mut mg = 0.0;
        let mut mgx = 0.0;
        for c in 0..cols {
            let gd = g[c] * dy[i + c];
            mg += gd;
            mgx += gd * xhat[i + c];
            dg[c] += dy[i + c] * xhat[i + c];
            db[c] += dy[i + c];
        }
        mg /= cols as f64;
        mgx /= cols as f64;
        for c in 0..cols {
            dx[i + c] = rs * (g[c] * dy[i + c] - mg - xhat[i + c] * mgx);
        }
    }
    (dx, dg, db)
}

struct Dims {
    b: usize,
    n: usize,
    d: usize,
    a: usize,
    hd: usize,
}

/// o [B*N, D] and the probabilities P [B, A, N, N]
fn attention(qkv: &[f64], s: &Dims) -> (Vec<f64>, Vec<f64>) {
    let (b, n, d, a, hd) = (s.b, s.n, s.d, s.a, s.hd);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut o = vec![0.0; b * n * d];
    let mut probs = vec![0.0; b * a * n * n];
    for bi in 0..b {
        for h in 0..a {
            let q = |i: usize, t: usize| qkv[(bi * n + i) * 3 * d + h * hd + t];
            let k = |j: usize, t: usize| qkv[(bi * n + j) * 3 * d + d + h * hd + t];
            let v = |j: usize, t: usize| qkv[(bi * n + j) * 3 * d + 2 * d + h * hd + t];
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| (0..hd).map(|t| q(i, t) * k(j, t)).sum::<f64>() * scale)
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                let p = &mut probs[((bi * a + h) * n + i) * n..((bi * a + h) * n + i + 1) * n];
                for j in 0..n {
                    p[j] = e[j] / z;
                }
                for t in 0..hd {
                    o[(bi * n + i) * d + h * hd + t] = (0..n).map(|j| p[j] * v(j, t)).sum();
                }
            }
        }
    }
    (o, probs)
}

fn attention_backward(d_o: &[f64], qkv: &[f64], probs: &[f64], s: &Dims) -> Vec<f64> {
    let (b, n, d, a, hd) = (s.b, s.n, s.d, s.a, s.hd);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut dqkv = vec![0.0; b * n * 3 * d];
    for bi in 0..b {
        for h in 0..a {
            let at = |i: usize, part: usize, t: usize| (bi * n + i) * 3 * d + part * d + h * hd + t;
            let p = |i: usize, j: usize| probs[((bi * a + h) * n + i) * n + j];
            let dout = |i: usize, t: usize| d_o[(bi * n + i) * d + h * hd + t];
            for i in 0..n {
                // dP_ij = dO_i . V_j ; dS = P (dP - sum_j P dP)
                let dp: Vec<f64> = (0..n)
                    .map(|j| (0..hd).map(|t| dout(i, t) * qkv[at(j, 2, t)]).sum())
                    .collect();
                let dsum: f64 = (0..n).map(|j| p(i, j) * dp[j]).sum();
                for j in 0..n {
                    let ds = p(i, j) * (dp[j] - dsum) * scale;
                    for t in 0..hd {
                        dqkv[at(i, 0, t)] += ds * qkv[at(j, 1, t)];
                        dqkv[at(j, 1, t)] += ds * qkv[at(i, 0, t)];
                        dqkv[at(j, 2, t)] += p(i, j) * dout(i, t);
                    }
                }
            }
        }
    }
    dqkv
}

/// Forward, mean cross-entropy and all gradients (no dropout) of the model at `params`.
pub fn forward_backward(
    cfg: &Config,
    params: &[Vec<f64>],
    names: &HostParams,
    images: &[f32],
    labels: &[u32],
) -> CpuResult {
    let p = |name: &str| -> &[f64] {
        let i = names
            .index(name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        &params[i]
    };
    let b = labels.len();
    let (n, d, f, k) = (cfg.tokens(), cfg.dim, cfg.mlp_hidden, cfg.classes);
    let (np, pl) = (cfg.patches(), cfg.patch_len());
    let m = b * n;
    let eps = cfg.ln_eps as f64;
    let dims = Dims {
        b,
        n,
        d,
        a: cfg.heads,
        hd: cfg.head_dim(),
    };

    // patches, (c, ky, kx) order
    let img: Vec<f32> = images.to_vec();
    let mut patches32 = vec![0.0f32; b * np * pl];
    crate::reference::embed::patchify(
        &mut patches32,
        &img,
        b,
        cfg.channels,
        cfg.image_h,
        cfg.image_w,
        cfg.patch,
    );
    let patches: Vec<f64> = patches32.iter().map(|&v| v as f64).collect();
    let pe = linear(
        &patches,
        p("patch_embed.proj.weight"),
        Some(p("patch_embed.proj.bias")),
        b * np,
        d,
        pl,
    );
    let mut x = vec![0.0; m * d];
    for bi in 0..b {
        for t in 0..n {
            for j in 0..d {
                let v = if t == 0 {
                    p("cls_token")[j]
                } else {
                    pe[(bi * np + t - 1) * d + j]
                };
                x[(bi * n + t) * d + j] = v + p("pos_embed")[t * d + j];
            }
        }
    }

    struct Saved {
        x: Vec<f64>,
        xhat1: Vec<f64>,
        rstd1: Vec<f64>,
        h1: Vec<f64>,
        qkv: Vec<f64>,
        probs: Vec<f64>,
        o: Vec<f64>,
        xhat2: Vec<f64>,
        rstd2: Vec<f64>,
        h2: Vec<f64>,
        pre: Vec<f64>,
        act: Vec<f64>,
    }
    let mut saved = Vec::new();
    for l in 0..cfg.depth {
        let q = |s: &str| format!("blocks.{l}.{s}");
        let (h1, xhat1, rstd1) =
            layernorm(&x, p(&q("norm1.weight")), p(&q("norm1.bias")), m, d, eps);
        let qkv = linear(
            &h1,
            p(&q("attn.qkv.weight")),
            Some(p(&q("attn.qkv.bias"))),
            m,
            3 * d,
            d,
        );
        let (o, probs) = attention(&qkv, &dims);
        let proj = linear(
            &o,
            p(&q("attn.proj.weight")),
            Some(p(&q("attn.proj.bias"))),
            m,
            d,
            d,
        );
        let mid: Vec<f64> = x.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let (h2, xhat2, rstd2) =
            layernorm(&mid, p(&q("norm2.weight")), p(&q("norm2.bias")), m, d, eps);
        let pre = linear(
            &h2,
            p(&q("mlp.fc1.weight")),
            Some(p(&q("mlp.fc1.bias"))),
            m,
            f,
            d,
        );
        let act: Vec<f64> = pre.iter().map(|&v| act_fwd(cfg.act, v)).collect();
        let out = linear(
            &act,
            p(&q("mlp.fc2.weight")),
            Some(p(&q("mlp.fc2.bias"))),
            m,
            d,
            f,
        );
        let next: Vec<f64> = mid.iter().zip(&out).map(|(a, b)| a + b).collect();
        saved.push(Saved {
            x,
            xhat1,
            rstd1,
            h1,
            qkv,
            probs,
            o,
            xhat2,
            rstd2,
            h2,
            pre,
            act,
        });
        x = next;
    }
    let cls: Vec<f64> = (0..b)
        .flat_map(|bi| x[bi * n * d..bi * n * d + d].to_vec())
        .collect();
    let (cn, xhatf, rstdf) = layernorm(&cls, p("norm.weight"), p("norm.bias"), b, d, eps);
    let (logits, head_pre, head_act) = match cfg.head {
        Head::Linear => (
            linear(&cn, p("head.weight"), Some(p("head.bias")), b, k, d),
            vec![],
            vec![],
        ),
        Head::Mlp { hidden } => {
            let pre = linear(
                &cn,
                p("head.fc1.weight"),
                Some(p("head.fc1.bias")),
                b,
                hidden,
                d,
            );
            let act: Vec<f64> = pre.iter().map(|v| v.max(0.0)).collect();
            (
                linear(
                    &act,
                    p("head.fc2.weight"),
                    Some(p("head.fc2.bias")),
                    b,
                    k,
                    hidden,
                ),
                pre,
                act,
            )
        }
    };
    let mut loss = 0.0;
    let mut dlogits = vec![0.0; b * k];
    for bi in 0..b {
        let z = &logits[bi * k..(bi + 1) * k];
        let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        loss += lse - z[labels[bi] as usize];
        for j in 0..k {
            let onehot = (j == labels[bi] as usize) as u8 as f64;
            dlogits[bi * k + j] = ((z[j] - lse).exp() - onehot) / b as f64;
        }
    }
    loss /= b as f64;

    // backward
    let mut grads: Vec<Vec<f64>> = params.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut put = |name: &str, g: Vec<f64>| {
        let i = names
            .index(name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        grads[i] = g;
    };
    let dcn = match cfg.head {
        Head::Linear => {
            let (dx, dw, db) = linear_backward(&dlogits, &cn, p("head.weight"), b, k, d);
            put("head.weight", dw);
            put("head.bias", db);
            dx
        }
        Head::Mlp { hidden } => {
            let (dact, dw2, db2) =
                linear_backward(&dlogits, &head_act, p("head.fc2.weight"), b, k, hidden);
            put("head.fc2.weight", dw2);
            put("head.fc2.bias", db2);
            let dpre: Vec<f64> = dact
                .iter()
                .zip(&head_pre)
                .map(|(g, x)| if *x > 0.0 { *g } else { 0.0 })
                .collect();
            let (dx, dw1, db1) = linear_backward(&dpre, &cn, p("head.fc1.weight"), b, hidden, d);
            put("head.fc1.weight", dw1);
            put("head.fc1.bias", db1);
            dx
        }
    };
    let (dcls, dgf, dbf) = layernorm_backward(&dcn, &xhatf, &rstdf, p("norm.weight"), b, d);
    put("norm.weight", dgf);
    put("norm.bias", dbf);
    let mut dx = vec![0.0; m * d];
    for bi in 0..b {
        dx[bi * n * d..bi * n * d + d].copy_from_slice(&dcls[bi * d..(bi + 1) * d]);
    }
    for l in (0..cfg.depth).rev() {
        let s = &saved[l];
        let q = |s: &str| format!("blocks.{l}.{s}");
        let (dact, dw2, db2) = linear_backward(&dx, &s.act, p(&q("mlp.fc2.weight")), m, d, f);
        put(&q("mlp.fc2.weight"), dw2);
        put(&q("mlp.fc2.bias"), db2);
        let dpre: Vec<f64> = dact
            .iter()
            .zip(&s.pre)
            .map(|(g, &x)| g * act_grad(cfg.act, x))
            .collect();
        let (dh2, dw1, db1) = linear_backward(&dpre, &s.h2, p(&q("mlp.fc1.weight")), m, f, d);
        put(&q("mlp.fc1.weight"), dw1);
        put(&q("mlp.fc1.bias"), db1);
        let (dmid_ln, dg2, db2n) =
            layernorm_backward(&dh2, &s.xhat2, &s.rstd2, p(&q("norm2.weight")), m, d);
        put(&q("norm2.weight"), dg2);
        put(&q("norm2.bias"), db2n);
        let dmid: Vec<f64> = dx.iter().zip(&dmid_ln).map(|(a, b)| a + b).collect();
        let (d_o, dwo, dbo) = linear_backward(&dmid, &s.o, p(&q("attn.proj.weight")), m, d, d);
        put(&q("attn.proj.weight"), dwo);
        put(&q("attn.proj.bias"), dbo);
        let dqkv = attention_backward(&d_o, &s.qkv, &s.probs, &dims);
        let (dh1, dwq, dbq) = linear_backward(&dqkv, &s.h1, p(&q("attn.qkv.weight")), m, 3 * d, d);
        put(&q("attn.qkv.weight"), dwq);
        put(&q("attn.qkv.bias"), dbq);
        let (dx_ln, dg1, db1n) =
            layernorm_backward(&dh1, &s.xhat1, &s.rstd1, p(&q("norm1.weight")), m, d);
        put(&q("norm1.weight"), dg1);
        put(&q("norm1.bias"), db1n);
        let _ = &s.x;
        dx = dmid.iter().zip(&dx_ln).map(|(a, b)| a + b).collect();
    }
    let mut dpos = vec![0.0; n * d];
    let mut dpe = vec![0.0; b * np * d];
    for bi in 0..b {
        for t in 0..n {
            for j in 0..d {
                let g = dx[(bi * n + t) * d + j];
                dpos[t * d + j] += g;
                if t > 0 {
                    dpe[(bi * np + t - 1) * d + j] = g;
                }
            }
        }
    }
    put("cls_token", dpos[..d].to_vec());
    put("pos_embed", dpos);
    let (_, dwp, dbp) =
        linear_backward(&dpe, &patches, p("patch_embed.proj.weight"), b * np, d, pl);
    put("patch_embed.proj.weight", dwp);
    put("patch_embed.proj.bias", dbp);
    CpuResult {
        logits,
        loss,
        grads,
    }
}

/// Convenience: the f32 host parameters widened to f64.
pub fn widen(params: &HostParams) -> Vec<Vec<f64>> {
    params
        .values
        .iter()
        .map(|v| v.iter().map(|&x| x as f64).collect())
        .collect()
}
