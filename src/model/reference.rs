//! The reference model: the whole ViT in f64 on the CPU: forward, loss and every parameter's gradient, built from
//! the reference ops (src/reference/, run in f64). Independent of the kernels, it is the
//! reference the device model is checked against, and it is itself checked against finite
//! differences. The schedule mirrors the device's (`schedule.rs`), dropout included.

use super::config::{Act, Config, Head, Pool};
use super::params::HostParams;
use crate::ops::{ActGrad, Activation, Layout};
use crate::reference::elementwise::{self, ColumnBlock};
use crate::reference::gemm::{gemm, Epilogue};
use crate::reference::tokens::{self, TokenLayout};
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
    let (embed, mut x) = m.embed_forward(&images);
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
    m.embed_backward(&embed, &dx, &mut grads);
    ReferenceResult {
        loss: head.losses.iter().sum::<f64>() / m.batch as f64,
        logits: head.logits,
        grads,
    }
}

/// Each layer's qkv [B*N, 3D] as the attention reads it (after qk-norm), from the forward
/// without dropout: the input of the attention maps (`viz::rollout`'s tests).
pub fn layer_qkv(
    cfg: &Config,
    params: &[Vec<f64>],
    names: &HostParams,
    images: &[f32],
    batch: usize,
) -> Vec<Vec<f64>> {
    let m = Model {
        cfg,
        params,
        names,
        batch,
        drop: None,
    };
    let images: Vec<f64> = images.iter().map(|&v| v as f64).collect();
    let (_, mut x) = m.embed_forward(&images);
    let mut out = Vec::with_capacity(cfg.depth);
    for l in 0..cfg.depth {
        let (saved, next) = m.block_forward(l, x);
        out.push(saved.qkv);
        x = next;
    }
    out
}

struct Model<'a> {
    cfg: &'a Config,
    params: &'a [Vec<f64>],
    names: &'a HostParams,
    batch: usize,
    drop: Option<DropoutAt>,
}

/// A LayerNorm's input and its statistics (mean, rstd per row), for its backward.
type NormSaved = (Vec<f64>, (Vec<f64>, Vec<f64>));

/// What one block's forward keeps for its backward.
struct BlockSaved {
    x: Vec<f64>,
    h1: Vec<f64>,
    stats1: (Vec<f64>, Vec<f64>),
    /// qk-norm: the q and k columns before their norms [M, D] and the norms' statistics.
    qk_in: Option<[NormSaved; 2]>,
    qkv: Vec<f64>,
    /// LayerScale: each residual branch after dropout, before its gamma [M, D].
    ls_branch: Option<[Vec<f64>; 2]>,
    o: Vec<f64>,
    lse: Vec<f64>,
    mid: Vec<f64>,
    h2: Vec<f64>,
    stats2: (Vec<f64>, Vec<f64>),
    slope: Vec<f64>,
    act: Vec<f64>,
}

/// What the embedding keeps: the patches and, with `norm_pre`, its input and statistics.
struct EmbedSaved {
    patches: Vec<f64>,
    pre_norm: Option<NormSaved>,
}

/// One readout of the final stream into a head (the class token's, the distillation
/// token's, or the patch mean's).
struct Readout {
    /// Tokens [start, start+count) averaged (one token: gathered).
    start: usize,
    count: usize,
    head: &'static str,
}

struct ReadoutSaved {
    pooled: Vec<f64>,
    feat: Vec<f64>,
    /// The LayerNorm after pooling (absent when `norm` ran over every token first).
    stats: Option<(Vec<f64>, Vec<f64>)>,
    slope: Vec<f64>,
    act: Vec<f64>,
}

struct HeadSaved {
    /// `norm` over every token before pooling (avg pooling without fc_norm): its input
    /// and statistics.
    all_norm: Option<NormSaved>,
    readouts: Vec<ReadoutSaved>,
    logits: Vec<f64>,
    losses: Vec<f64>,
    dlogits: Vec<f64>,
}

/// The activation the fc1 GEMM applies (QuickGELU runs after it, element-wise).
fn activation(a: Act) -> Activation {
    match a {
        Act::Relu => Activation::Relu,
        Act::Gelu => Activation::Gelu,
        Act::QuickGelu => Activation::None,
    }
}

/// The token layout of `cfg` for a batch of `batch`.
pub fn token_layout(cfg: &Config, batch: usize) -> TokenLayout {
    let o = &cfg.options;
    let extra = o.distilled as usize + o.reg_tokens;
    TokenLayout {
        batch,
        patches: cfg.patches(),
        dim: cfg.dim,
        cls: o.class_token,
        extra,
        pos_start: if o.no_embed_class {
            cfg.prefix_tokens()
        } else {
            0
        },
    }
}

/// What the head reads: the class token (and the distillation token), or the patch mean.
fn readouts(cfg: &Config) -> Vec<Readout> {
    match cfg.options.pool {
        Pool::Token if cfg.options.distilled => vec![
            Readout {
                start: 0,
                count: 1,
                head: "head",
            },
            Readout {
                start: 1,
                count: 1,
                head: "head_dist",
            },
        ],
        Pool::Token => vec![Readout {
            start: 0,
            count: 1,
            head: "head",
        }],
        Pool::Avg => vec![Readout {
            start: cfg.prefix_tokens(),
            count: cfg.patches(),
            head: "head",
        }],
        // Concatenated into one feature row (head_forward's ClsAvg branch).
        Pool::ClsAvg => vec![
            Readout {
                start: 0,
                count: 1,
                head: "head",
            },
            Readout {
                start: cfg.prefix_tokens(),
                count: cfg.patches(),
                head: "head",
            },
        ],
    }
}

/// The final LayerNorm's name.
fn final_norm(cfg: &Config) -> &'static str {
    if cfg.options.fc_norm {
        "fc_norm"
    } else {
        "norm"
    }
}

impl Model<'_> {
    fn p(&self, name: &str) -> &[f64] {
        match self.names.index(name) {
            Some(i) => &self.params[i],
            None => panic!("no parameter {name}"),
        }
    }

    /// Adds into the gradient (zero at the start): a tensor used twice (the final norm
    /// of DeiT's two readouts) sums its two gradients.
    fn put(&self, grads: &mut [Vec<f64>], name: &str, g: Vec<f64>) {
        match self.names.index(name) {
            Some(i) => grads[i].iter_mut().zip(g).for_each(|(a, b)| *a += b),
            None => panic!("no parameter {name}"),
        }
    }

    fn rows(&self) -> usize {
        self.batch * self.cfg.tokens()
    }

    /// y [rows, out] = x W^T + b (then the activation, keeping its slope at the
    /// pre-activation for the backward).
    fn linear(&self, x: &[f64], name: &str, rows: usize, act: Activation) -> (Vec<f64>, Vec<f64>) {
        let w = self.p(&format!("{name}.weight"));
        let b = self.bias(name);
        let out = self.out_features(name);
        let inp = w.len() / out;
        let mut y = vec![0.0; rows * out];
        let mut slope = vec![0.0; rows * out];
        let epilogue = Epilogue {
            bias: b,
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
        let out = self.out_features(name);
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
        if self.bias(name).is_some() {
            self.put(grads, &format!("{name}.bias"), db);
        }
        dx
    }

    /// A linear layer's bias, when it has one (CLIP's patch embedding has none).
    fn bias(&self, name: &str) -> Option<&[f64]> {
        let i = self.names.index(&format!("{name}.bias"))?;
        Some(&self.params[i])
    }

    /// Output features of linear layer `name` (its weight's first dimension).
    fn out_features(&self, name: &str) -> usize {
        match self.names.index(&format!("{name}.weight")) {
            Some(i) => self.names.specs[i].shape[0],
            None => panic!("no parameter {name}.weight"),
        }
    }

    fn layernorm(&self, x: &[f64], name: &str, rows: usize) -> NormSaved {
        let d = self.p(&format!("{name}.weight")).len();
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
        let d = self.p(&format!("{name}.weight")).len();
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

    /// y = x + drop(branch), or x + gamma * drop(branch) with LayerScale `gamma` (then the
    /// dropped branch is returned too, for gamma's gradient).
    fn residual(
        &self,
        x: &[f64],
        branch: &[f64],
        salt: u64,
        gamma: Option<&str>,
    ) -> (Vec<f64>, Option<Vec<f64>>) {
        let mut dropped = branch.to_vec();
        if let Some((seed, step)) = self.site(salt) {
            dropout::forward(
                &mut dropped,
                branch,
                self.cfg.dropout,
                (seed, step, 0),
                false,
            );
        }
        let mut y = x.to_vec();
        match gamma {
            Some(name) => {
                elementwise::scale_columns(&mut y, &dropped, self.p(name), self.cfg.dim, true);
                (y, Some(dropped))
            }
            None => {
                y.iter_mut().zip(&dropped).for_each(|(a, b)| *a += b);
                (y, None)
            }
        }
    }

    /// The gradient of a residual branch from the stream's gradient (through LayerScale
    /// `gamma`, whose gradient is the column sums of dropped branch * dres).
    fn residual_backward(
        &self,
        grads: &mut [Vec<f64>],
        dres: &[f64],
        salt: u64,
        gamma: Option<(&str, &[f64])>,
    ) -> Vec<f64> {
        let mut d = dres.to_vec();
        if let Some((name, dropped)) = gamma {
            let dim = self.cfg.dim;
            let mut prod = vec![0.0; d.len()];
            elementwise::multiply(&mut prod, dropped, dres);
            let mut dg = vec![0.0; dim];
            reduce::column_sum(&mut dg, &prod, d.len() / dim, dim, false);
            self.put(grads, name, dg);
            elementwise::scale_columns(&mut d, dres, self.p(name), dim, false);
        }
        if let Some((seed, step)) = self.site(salt) {
            let through = d.clone();
            dropout::backward(&mut d, &through, self.cfg.dropout, (seed, step, 0));
        }
        d
    }

    /// The q and k columns of qkv [M, 3D] normalised per head (LayerNorm over head_dim
    /// with `attn.q_norm` / `attn.k_norm`), in place; returns their inputs and statistics.
    fn qk_norm(&self, l: usize, qkv: &mut [f64]) -> [NormSaved; 2] {
        let (c, m) = (self.cfg, self.rows());
        let d = c.dim;
        let block = |offset: usize, to_qkv: bool| ColumnBlock {
            rows: m,
            width: d,
            src_stride: if to_qkv { d } else { 3 * d },
            src_offset: if to_qkv { 0 } else { offset },
            dst_stride: if to_qkv { 3 * d } else { d },
            dst_offset: if to_qkv { offset } else { 0 },
        };
        [("q_norm", 0), ("k_norm", d)].map(|(name, offset)| {
            let mut x = vec![0.0; m * d];
            elementwise::copy_columns(&mut x, qkv, &block(offset, false));
            let (y, stats) = self.layernorm(&x, &format!("blocks.{l}.attn.{name}"), m * c.heads);
            elementwise::copy_columns(qkv, &y, &block(offset, true));
            (x, stats)
        })
    }

    /// dqkv's q and k columns through the qk norms, in place.
    fn qk_norm_backward(
        &self,
        l: usize,
        grads: &mut [Vec<f64>],
        dqkv: &mut [f64],
        saved: &[NormSaved; 2],
    ) {
        let (c, m) = (self.cfg, self.rows());
        let d = c.dim;
        for ((name, offset), (x, stats)) in [("q_norm", 0), ("k_norm", d)].iter().zip(saved) {
            let mut dy = vec![0.0; m * d];
            let out = ColumnBlock {
                rows: m,
                width: d,
                src_stride: 3 * d,
                src_offset: *offset,
                dst_stride: d,
                dst_offset: 0,
            };
            elementwise::copy_columns(&mut dy, dqkv, &out);
            let mut dx = vec![0.0; m * d];
            let name = format!("blocks.{l}.attn.{name}");
            self.layernorm_backward(grads, &mut dx, &dy, x, stats, &name, m * c.heads);
            let back = ColumnBlock {
                src_stride: d,
                src_offset: 0,
                dst_stride: 3 * d,
                dst_offset: *offset,
                ..out
            };
            elementwise::copy_columns(dqkv, &dx, &back);
        }
    }

    fn embed_forward(&self, images: &[f64]) -> (EmbedSaved, Vec<f64>) {
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
        let o = &c.options;
        let extra = match (o.distilled, o.reg_tokens) {
            (true, _) => self.p("dist_token"),
            (false, r) if r > 0 => self.p("reg_token"),
            _ => &[],
        };
        let cls = if o.class_token {
            self.p("cls_token")
        } else {
            &[]
        };
        let layout = token_layout(c, b);
        tokens::assemble(&mut x, &pe, cls, extra, self.p("pos_embed"), &layout);
        if !o.pre_norm {
            let saved = EmbedSaved {
                patches,
                pre_norm: None,
            };
            return (saved, x);
        }
        let (y, stats) = self.layernorm(&x, "norm_pre", b * n);
        let saved = EmbedSaved {
            patches,
            pre_norm: Some((x, stats)),
        };
        (saved, y)
    }

    fn block_forward(&self, l: usize, x: Vec<f64>) -> (BlockSaved, Vec<f64>) {
        let (c, m) = (self.cfg, self.rows());
        let q = |s: &str| format!("blocks.{l}.{s}");
        let (h1, stats1) = self.layernorm(&x, &q("norm1"), m);
        let (mut qkv, _) = self.linear(&h1, &q("attn.qkv"), m, Activation::None);
        let qk_in = c.options.qk_norm.then(|| self.qk_norm(l, &mut qkv));
        let ls = c.options.layer_scale.is_some();
        let (ls1, ls2) = (q("ls1.gamma"), q("ls2.gamma"));
        let (mut o, mut lse) = (vec![0.0; m * c.dim], vec![0.0; m * c.heads]);
        let n = c.tokens();
        attention::forward(&mut o, &mut lse, &qkv, self.batch, n, c.heads, c.head_dim());
        let (proj, _) = self.linear(&o, &q("attn.proj"), m, Activation::None);
        let (mid, branch1) = self.residual(&x, &proj, 2 * l as u64 + 1, ls.then_some(&*ls1));
        let (h2, stats2) = self.layernorm(&mid, &q("norm2"), m);
        let (mut act, mut slope) = self.linear(&h2, &q("mlp.fc1"), m, activation(c.act));
        if c.act == Act::QuickGelu {
            let pre = act.clone();
            elementwise::quick_gelu_forward(&mut act, Some(&mut slope), &pre);
        }
        let (fc2, _) = self.linear(&act, &q("mlp.fc2"), m, Activation::None);
        let (next, branch2) = self.residual(&mid, &fc2, 2 * l as u64 + 2, ls.then_some(&*ls2));
        let saved = BlockSaved {
            x,
            h1,
            stats1,
            qk_in,
            qkv,
            ls_branch: branch1.zip(branch2).map(|(a, b)| [a, b]),
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
        let names = [q("ls1.gamma"), q("ls2.gamma")];
        let ls = |i: usize| {
            let name: &str = &names[i];
            s.ls_branch.as_ref().map(|b| (name, &b[i][..]))
        };
        let dy = self.residual_backward(grads, &dres, 2 * l as u64 + 2, ls(1));
        let act = Some((&s.slope[..], ActGrad::Slope));
        let dpre = self.linear_backward(grads, &dy, &s.act, &q("mlp.fc2"), m, act);
        let dh2 = self.linear_backward(grads, &dpre, &s.h2, &q("mlp.fc1"), m, None);
        self.layernorm_backward(grads, &mut dres, &dh2, &s.mid, &s.stats2, &q("norm2"), m);
        let dy = self.residual_backward(grads, &dres, 2 * l as u64 + 1, ls(0));
        let d_o = self.linear_backward(grads, &dy, &s.o, &q("attn.proj"), m, None);
        let mut dqkv = vec![0.0; s.qkv.len()];
        let n = c.tokens();
        let (b, a, hd) = (self.batch, c.heads, c.head_dim());
        attention::backward(&mut dqkv, &d_o, &s.qkv, &s.o, &s.lse, b, n, a, hd);
        if let Some(qk) = &s.qk_in {
            self.qk_norm_backward(l, grads, &mut dqkv, qk);
        }
        let dh1 = self.linear_backward(grads, &dqkv, &s.h1, &q("attn.qkv"), m, None);
        self.layernorm_backward(grads, &mut dres, &dh1, &s.x, &s.stats1, &q("norm1"), m);
        dres
    }

    fn head_forward(&self, x: &[f64], labels: &[u32]) -> HeadSaved {
        let (c, b, n, d) = (self.cfg, self.batch, self.cfg.tokens(), self.cfg.dim);
        let norm = final_norm(c);
        let norm_all = c.norm_all_tokens();
        let normed = norm_all.then(|| self.layernorm(x, norm, self.rows()));
        let stream = normed.as_ref().map_or(x, |(y, _)| &y[..]);
        let outs = readouts(c);
        let k = c.classes;
        let mut logits = vec![0.0; b * k];
        let mut saved = Vec::new();
        if c.options.pool == Pool::ClsAvg {
            let (out, readout) = self.cls_avg_forward(stream, &outs);
            logits = out;
            saved.push(readout);
        }
        for r in outs.iter().filter(|_| c.options.pool != Pool::ClsAvg) {
            let mut pooled = vec![0.0; b * d];
            let scale = 1.0 / r.count as f64;
            tokens::pool(&mut pooled, stream, b, n, d, r.start, r.count, scale);
            let (feat, stats) = if norm_all {
                (pooled.clone(), None)
            } else {
                let (y, st) = self.layernorm(&pooled, norm, b);
                (y, Some(st))
            };
            let (out, slope, act) = match c.head {
                Head::Linear => {
                    let (out, _) = self.linear(&feat, r.head, b, Activation::None);
                    (out, Vec::new(), Vec::new())
                }
                Head::Mlp { .. } => {
                    let (act, slope) = self.linear(&feat, "head.fc1", b, Activation::Relu);
                    let (out, _) = self.linear(&act, "head.fc2", b, Activation::None);
                    (out, slope, act)
                }
            };
            // Several readouts (DeiT's two heads): the mean of their logits, as timm's
            // VisionTransformerDistilled returns outside distillation training.
            let w = 1.0 / outs.len() as f64;
            logits.iter_mut().zip(&out).for_each(|(l, o)| *l += w * o);
            saved.push(ReadoutSaved {
                pooled,
                feat,
                stats,
                slope,
                act,
            });
        }
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
            all_norm: normed.map(|(_, stats)| (x.to_vec(), stats)),
            readouts: saved,
            logits,
            losses,
            dlogits,
        }
    }

    /// Returns dL/dx_L (zero outside the tokens the head reads).
    fn head_backward(&self, h: &HeadSaved, grads: &mut [Vec<f64>]) -> Vec<f64> {
        let (c, b, n, d) = (self.cfg, self.batch, self.cfg.tokens(), self.cfg.dim);
        let norm = final_norm(c);
        let outs = readouts(c);
        let mut dlogits = h.dlogits.clone();
        dlogits.iter_mut().for_each(|v| *v /= outs.len() as f64);
        let mut dstream = vec![0.0; self.rows() * d];
        if c.options.pool == Pool::ClsAvg {
            self.cls_avg_backward(&h.readouts[0], &h.dlogits, &outs, &mut dstream, grads);
        }
        let split = c.options.pool != Pool::ClsAvg;
        for (r, s) in outs.iter().zip(&h.readouts).filter(|_| split) {
            let dfeat = match c.head {
                Head::Linear => self.linear_backward(grads, &dlogits, &s.feat, r.head, b, None),
                Head::Mlp { .. } => {
                    let relu = Some((&s.slope[..], ActGrad::Slope));
                    let dpre = self.linear_backward(grads, &dlogits, &s.act, "head.fc2", b, relu);
                    self.linear_backward(grads, &dpre, &s.feat, "head.fc1", b, None)
                }
            };
            let dpooled = match &s.stats {
                Some(stats) => {
                    let mut dp = vec![0.0; b * d];
                    self.layernorm_backward(grads, &mut dp, &dfeat, &s.pooled, stats, norm, b);
                    dp
                }
                None => dfeat,
            };
            let scale = 1.0 / r.count as f64;
            tokens::pool_backward(
                &mut dstream,
                &dpooled,
                b,
                n,
                d,
                r.start,
                r.count,
                scale,
                true,
            );
        }
        match &h.all_norm {
            Some((x, stats)) => {
                let mut dx = vec![0.0; self.rows() * d];
                self.layernorm_backward(grads, &mut dx, &dstream, x, stats, norm, self.rows());
                dx
            }
            None => dstream,
        }
    }

    /// transformers' Dinov2 head: logits = head([class token ; patch mean]) of the normed
    /// stream; the readout saved holds the [B, 2D] feature row.
    fn cls_avg_forward(&self, stream: &[f64], outs: &[Readout]) -> (Vec<f64>, ReadoutSaved) {
        let (c, b, n, d) = (self.cfg, self.batch, self.cfg.tokens(), self.cfg.dim);
        let mut feat = vec![0.0; b * 2 * d];
        for (half, r) in outs.iter().enumerate() {
            let mut pooled = vec![0.0; b * d];
            let scale = 1.0 / r.count as f64;
            tokens::pool(&mut pooled, stream, b, n, d, r.start, r.count, scale);
            for (row, p) in feat.chunks_mut(2 * d).zip(pooled.chunks(d)) {
                row[half * d..(half + 1) * d].copy_from_slice(p);
            }
        }
        debug_assert_eq!(c.head_in(), 2 * d);
        let (logits, _) = self.linear(&feat, "head", b, Activation::None);
        let saved = ReadoutSaved {
            pooled: Vec::new(),
            feat,
            stats: None,
            slope: Vec::new(),
            act: Vec::new(),
        };
        (logits, saved)
    }

    /// The head's gradients, and the feature row's gradient scattered into `dstream`.
    fn cls_avg_backward(
        &self,
        s: &ReadoutSaved,
        dlogits: &[f64],
        outs: &[Readout],
        dstream: &mut [f64],
        grads: &mut [Vec<f64>],
    ) {
        let (b, n, d) = (self.batch, self.cfg.tokens(), self.cfg.dim);
        let dfeat = self.linear_backward(grads, dlogits, &s.feat, "head", b, None);
        for (half, r) in outs.iter().enumerate() {
            let dpooled: Vec<f64> = dfeat
                .chunks(2 * d)
                .flat_map(|row| row[half * d..(half + 1) * d].to_vec())
                .collect();
            let scale = 1.0 / r.count as f64;
            tokens::pool_backward(dstream, &dpooled, b, n, d, r.start, r.count, scale, true);
        }
    }

    fn embed_backward(&self, e: &EmbedSaved, dx: &[f64], grads: &mut [Vec<f64>]) {
        let c = self.cfg;
        let (b, d) = (self.batch, c.dim);
        let layout = token_layout(c, b);
        let dx0 = match &e.pre_norm {
            Some((x0, stats)) => {
                let mut dx0 = vec![0.0; dx.len()];
                self.layernorm_backward(grads, &mut dx0, dx, x0, stats, "norm_pre", self.rows());
                dx0
            }
            None => dx.to_vec(),
        };
        let mut dpe = vec![0.0; b * c.patches() * d];
        let mut dpos = vec![0.0; layout.pos_tokens() * d];
        let mut dcls = vec![0.0; if layout.cls { d } else { 0 }];
        let mut dextra = vec![0.0; layout.extra * d];
        tokens::assemble_backward(&mut dpe, &mut dpos, &mut dcls, &mut dextra, &dx0, &layout);
        if layout.cls {
            self.put(grads, "cls_token", dcls);
        }
        if c.options.distilled {
            self.put(grads, "dist_token", dextra);
        } else if c.options.reg_tokens > 0 {
            self.put(grads, "reg_token", dextra);
        }
        self.put(grads, "pos_embed", dpos);
        let rows = b * c.patches();
        self.linear_backward(grads, &dpe, &e.patches, "patch_embed.proj", rows, None);
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
