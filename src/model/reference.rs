//! The reference model: the whole ViT in f64 on the CPU: forward, loss and every parameter's gradient, built from
//! the reference ops (src/reference/, run in f64). Independent of the kernels, it is the
//! reference the device model is checked against, and it is itself checked against finite
//! differences. The schedule mirrors the device's (`schedule.rs`), dropout included.

use super::config::{Act, Config, Head};
use super::params::HostParams;
use crate::ops::{ActGrad, Activation, Layout};
use crate::reference::gemm::{gemm, Epilogue};
use crate::reference::{attention, dropout, embed, layernorm, loss, reduce};

/// Result of one forward + backward pass.
pub struct ReferenceResult {
    pub logits: Vec<f64>,     // [B, K]
    pub loss: f64,            // mean cross-entropy
    pub grads: Vec<Vec<f64>>, // per parameter, in `params.specs` order
}

/// Dropout as a training step applies it: the model's seed and the step number.
#[derive(Clone, Copy, Debug)]
pub struct DropoutAt {
    pub seed: u64,
    pub step: u32,
}

/// Forward, mean cross-entropy and all gradients (no dropout) of the model at `params`.
pub fn forward_backward(
    cfg: &Config,
    params: &[Vec<f64>],
    names: &HostParams,
    images: &[f32],
    labels: &[u32],
) -> ReferenceResult {
    forward_backward_at(cfg, params, names, images, labels, None)
}

/// `forward_backward` with dropout (when `cfg.dropout > 0` and `drop` is given) drawn
/// exactly as the device draws it at that seed and step.
pub fn forward_backward_at(
    cfg: &Config,
    params: &[Vec<f64>],
    names: &HostParams,
    images: &[f32],
    labels: &[u32],
    drop: Option<DropoutAt>,
) -> ReferenceResult {
    let m = Model {
        cfg,
        params,
        names,
        batch: labels.len(),
        drop: drop.filter(|_| cfg.dropout > 0.0),
    };
    let mut grads: Vec<Vec<f64>> = params.iter().map(|v| vec![0.0; v.len()]).collect();
    let images: Vec<f64> = images.iter().map(|&v| v as f64).collect();
    let (patches, mut x) = m.embed_forward(&images);
    let mut saved = Vec::with_capacity(cfg.depth);
    for l in 0..cfg.depth {
        let (s, next) = m.block_forward(l, x);
        saved.push(s);
        x = next;
    }
    let head = m.head_forward(&x, labels);
    let mut dx = m.head_backward(&head, &mut grads);
    for l in (0..cfg.depth).rev() {
        dx = m.block_backward(l, &saved[l], dx, &mut grads);
    }
    m.embed_backward(&patches, &dx, &mut grads);
    ReferenceResult {
        loss: head.losses.iter().sum::<f64>() / m.batch as f64,
        logits: head.logits,
        grads,
    }
}

struct Model<'a> {
    cfg: &'a Config,
    params: &'a [Vec<f64>],
    names: &'a HostParams,
    batch: usize,
    drop: Option<DropoutAt>,
}

/// What one block's forward keeps for its backward.
struct BlockSaved {
    x: Vec<f64>,
    h1: Vec<f64>,
    stats1: (Vec<f64>, Vec<f64>),
    qkv: Vec<f64>,
    o: Vec<f64>,
    lse: Vec<f64>,
    mid: Vec<f64>,
    h2: Vec<f64>,
    stats2: (Vec<f64>, Vec<f64>),
    slope: Vec<f64>,
    act: Vec<f64>,
}

struct HeadSaved {
    cls_x: Vec<f64>,
    cls_n: Vec<f64>,
    stats: (Vec<f64>, Vec<f64>),
    slope: Vec<f64>,
    act: Vec<f64>,
    logits: Vec<f64>,
    losses: Vec<f64>,
    dlogits: Vec<f64>,
}

fn activation(a: Act) -> Activation {
    match a {
        Act::Relu => Activation::Relu,
        Act::Gelu => Activation::Gelu,
    }
}

impl Model<'_> {
    fn p(&self, name: &str) -> &[f64] {
        match self.names.index(name) {
            Some(i) => &self.params[i],
            None => panic!("no parameter {name}"),
        }
    }

    fn put(&self, grads: &mut [Vec<f64>], name: &str, g: Vec<f64>) {
        match self.names.index(name) {
            Some(i) => grads[i] = g,
            None => panic!("no parameter {name}"),
        }
    }

    fn rows(&self) -> usize {
        self.batch * self.cfg.tokens()
    }

    /// y [rows, out] = x W^T + b (then the activation, keeping its slope at the
    /// pre-activation for the backward).
    fn linear(&self, x: &[f64], name: &str, rows: usize, act: Activation) -> (Vec<f64>, Vec<f64>) {
        let (w, b) = (
            self.p(&format!("{name}.weight")),
            self.p(&format!("{name}.bias")),
        );
        let (out, inp) = (b.len(), w.len() / b.len());
        let mut y = vec![0.0; rows * out];
        let mut slope = vec![0.0; rows * out];
        let epilogue = Epilogue {
            bias: Some(b),
            activation: act,
            act_grad: None,
            accumulate: false,
        };
        gemm(
            &mut y,
            Some(&mut slope),
            x,
            w,
            rows,
            out,
            inp,
            Layout::NT,
            &epilogue,
            0..rows,
        );
        (y, slope)
    }

    /// dW, db into `grads`; returns dx = dy W (times act'(pre) for `act_grad`).
    fn linear_backward(
        &self,
        grads: &mut [Vec<f64>],
        dy: &[f64],
        x: &[f64],
        name: &str,
        rows: usize,
        act_grad: Option<(&[f64], ActGrad)>,
    ) -> Vec<f64> {
        let w = self.p(&format!("{name}.weight"));
        let out = self.p(&format!("{name}.bias")).len();
        let inp = w.len() / out;
        let (mut dw, mut db, mut dx) =
            (vec![0.0; out * inp], vec![0.0; out], vec![0.0; rows * inp]);
        gemm(
            &mut dw,
            None,
            dy,
            x,
            out,
            inp,
            rows,
            Layout::TN,
            &Epilogue::NONE,
            0..out,
        );
        reduce::column_sum(&mut db, dy, rows, out, false);
        let epilogue = Epilogue {
            act_grad,
            ..Epilogue::NONE
        };
        gemm(
            &mut dx,
            None,
            dy,
            w,
            rows,
            inp,
            out,
            Layout::NN,
            &epilogue,
            0..rows,
        );
        self.put(grads, &format!("{name}.weight"), dw);
        self.put(grads, &format!("{name}.bias"), db);
        dx
    }

    fn layernorm(&self, x: &[f64], name: &str, rows: usize) -> (Vec<f64>, (Vec<f64>, Vec<f64>)) {
        let d = self.cfg.dim;
        let (mut y, mut mean, mut rstd) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
        let (g, b) = (
            self.p(&format!("{name}.weight")),
            self.p(&format!("{name}.bias")),
        );
        layernorm::forward(
            &mut y,
            &mut mean,
            &mut rstd,
            x,
            g,
            b,
            rows,
            d,
            self.cfg.ln_eps,
        );
        (y, (mean, rstd))
    }

    /// dgamma, dbeta into `grads`; dx += the input gradient.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        grads: &mut [Vec<f64>],
        dx: &mut [f64],
        dy: &[f64],
        x: &[f64],
        stats: &(Vec<f64>, Vec<f64>),
        name: &str,
        rows: usize,
    ) {
        let d = self.cfg.dim;
        let (mut dg, mut db) = (vec![0.0; d], vec![0.0; d]);
        let gamma = self.p(&format!("{name}.weight"));
        let (mean, rstd) = stats;
        layernorm::backward(
            dx, &mut dg, &mut db, dy, x, gamma, mean, rstd, rows, d, true,
        );
        self.put(grads, &format!("{name}.weight"), dg);
        self.put(grads, &format!("{name}.bias"), db);
    }

    /// The dropout mask's seed at site `salt`, as `schedule.rs` derives it.
    fn site(&self, salt: u64) -> Option<(u32, u32)> {
        self.drop.map(|d| {
            let seed =
                (d.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as u32 ^ (d.seed >> 32) as u32;
            (seed, d.step)
        })
    }

    /// y = x + drop(branch)
    fn residual(&self, x: &[f64], branch: &[f64], salt: u64) -> Vec<f64> {
        let mut y = x.to_vec();
        match self.site(salt) {
            Some((seed, step)) => {
                dropout::forward(&mut y, branch, self.cfg.dropout, (seed, step, 0), true)
            }
            None => y.iter_mut().zip(branch).for_each(|(a, b)| *a += b),
        }
        y
    }

    /// The gradient of a residual branch from the stream's gradient.
    fn residual_backward(&self, dres: &[f64], salt: u64) -> Vec<f64> {
        let mut d = dres.to_vec();
        if let Some((seed, step)) = self.site(salt) {
            dropout::backward(&mut d, dres, self.cfg.dropout, (seed, step, 0));
        }
        d
    }

    fn embed_forward(&self, images: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let c = self.cfg;
        let (b, np, n, d) = (self.batch, c.patches(), c.tokens(), c.dim);
        let mut patches = vec![0.0; b * np * c.patch_len()];
        embed::patchify(
            &mut patches,
            images,
            b,
            c.channels,
            c.image_h,
            c.image_w,
            c.patch,
        );
        let (pe, _) = self.linear(&patches, "patch_embed.proj", b * np, Activation::None);
        let mut x = vec![0.0; b * n * d];
        embed::assemble_tokens(
            &mut x,
            &pe,
            self.p("cls_token"),
            self.p("pos_embed"),
            b,
            n,
            d,
        );
        (patches, x)
    }

    fn block_forward(&self, l: usize, x: Vec<f64>) -> (BlockSaved, Vec<f64>) {
        let (c, m) = (self.cfg, self.rows());
        let q = |s: &str| format!("blocks.{l}.{s}");
        let (h1, stats1) = self.layernorm(&x, &q("norm1"), m);
        let (qkv, _) = self.linear(&h1, &q("attn.qkv"), m, Activation::None);
        let (mut o, mut lse) = (vec![0.0; m * c.dim], vec![0.0; m * c.heads]);
        let n = c.tokens();
        attention::forward(&mut o, &mut lse, &qkv, self.batch, n, c.heads, c.head_dim());
        let (proj, _) = self.linear(&o, &q("attn.proj"), m, Activation::None);
        let mid = self.residual(&x, &proj, 2 * l as u64 + 1);
        let (h2, stats2) = self.layernorm(&mid, &q("norm2"), m);
        let (act, slope) = self.linear(&h2, &q("mlp.fc1"), m, activation(c.act));
        let (fc2, _) = self.linear(&act, &q("mlp.fc2"), m, Activation::None);
        let next = self.residual(&mid, &fc2, 2 * l as u64 + 2);
        let saved = BlockSaved {
            x,
            h1,
            stats1,
            qkv,
            o,
            lse,
            mid,
            h2,
            stats2,
            slope,
            act,
        };
        (saved, next)
    }

    fn block_backward(
        &self,
        l: usize,
        s: &BlockSaved,
        mut dres: Vec<f64>,
        grads: &mut [Vec<f64>],
    ) -> Vec<f64> {
        let (c, m) = (self.cfg, self.rows());
        let q = |s: &str| format!("blocks.{l}.{s}");
        let dy = self.residual_backward(&dres, 2 * l as u64 + 2);
        let act = Some((&s.slope[..], ActGrad::Slope));
        let dpre = self.linear_backward(grads, &dy, &s.act, &q("mlp.fc2"), m, act);
        let dh2 = self.linear_backward(grads, &dpre, &s.h2, &q("mlp.fc1"), m, None);
        self.layernorm_backward(grads, &mut dres, &dh2, &s.mid, &s.stats2, &q("norm2"), m);
        let dy = self.residual_backward(&dres, 2 * l as u64 + 1);
        let d_o = self.linear_backward(grads, &dy, &s.o, &q("attn.proj"), m, None);
        let mut dqkv = vec![0.0; s.qkv.len()];
        let n = c.tokens();
        let (b, a, hd) = (self.batch, c.heads, c.head_dim());
        attention::backward(&mut dqkv, &d_o, &s.qkv, &s.o, &s.lse, b, n, a, hd);
        let dh1 = self.linear_backward(grads, &dqkv, &s.h1, &q("attn.qkv"), m, None);
        self.layernorm_backward(grads, &mut dres, &dh1, &s.x, &s.stats1, &q("norm1"), m);
        dres
    }

    fn head_forward(&self, x: &[f64], labels: &[u32]) -> HeadSaved {
        let (c, b) = (self.cfg, self.batch);
        let mut cls_x = vec![0.0; b * c.dim];
        embed::gather_cls(&mut cls_x, x, b, c.tokens(), c.dim);
        let (cls_n, stats) = self.layernorm(&cls_x, "norm", b);
        let (logits, slope, act) = match c.head {
            Head::Linear => {
                let (logits, _) = self.linear(&cls_n, "head", b, Activation::None);
                (logits, Vec::new(), Vec::new())
            }
            Head::Mlp { .. } => {
                let (act, slope) = self.linear(&cls_n, "head.fc1", b, Activation::Relu);
                let (logits, _) = self.linear(&act, "head.fc2", b, Activation::None);
                (logits, slope, act)
            }
        };
        let k = c.classes;
        let (mut losses, mut dlogits, mut correct) = (vec![0.0; b], vec![0.0; b * k], vec![0.0; b]);
        let scale = 1.0 / b as f32;
        loss::cross_entropy(
            &mut losses,
            &mut dlogits,
            &mut correct,
            &logits,
            labels,
            k,
            scale,
        );
        HeadSaved {
            cls_x,
            cls_n,
            stats,
            slope,
            act,
            logits,
            losses,
            dlogits,
        }
    }

    /// Returns dL/dx_L (zero outside the CLS rows).
    fn head_backward(&self, h: &HeadSaved, grads: &mut [Vec<f64>]) -> Vec<f64> {
        let (c, b) = (self.cfg, self.batch);
        let dcn = match c.head {
            Head::Linear => self.linear_backward(grads, &h.dlogits, &h.cls_n, "head", b, None),
            Head::Mlp { .. } => {
                let relu = Some((&h.slope[..], ActGrad::Slope));
                let dpre = self.linear_backward(grads, &h.dlogits, &h.act, "head.fc2", b, relu);
                self.linear_backward(grads, &dpre, &h.cls_n, "head.fc1", b, None)
            }
        };
        let mut dcls = vec![0.0; b * c.dim];
        self.layernorm_backward(grads, &mut dcls, &dcn, &h.cls_x, &h.stats, "norm", b);
        let mut dx = vec![0.0; self.rows() * c.dim];
        embed::scatter_cls(&mut dx, &dcls, b, c.tokens(), c.dim);
        dx
    }

    fn embed_backward(&self, patches: &[f64], dx: &[f64], grads: &mut [Vec<f64>]) {
        let c = self.cfg;
        let (b, n, d) = (self.batch, c.tokens(), c.dim);
        let (mut dpe, mut dpos, mut dcls) =
            (vec![0.0; b * (n - 1) * d], vec![0.0; n * d], vec![0.0; d]);
        embed::assemble_tokens_backward(&mut dpe, &mut dpos, &mut dcls, dx, b, n, d);
        self.put(grads, "cls_token", dcls);
        self.put(grads, "pos_embed", dpos);
        let rows = b * c.patches();
        self.linear_backward(grads, &dpe, patches, "patch_embed.proj", rows, None);
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
