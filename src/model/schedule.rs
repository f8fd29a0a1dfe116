//! The model's launch schedule, llm.c style: `embed_*`, `block_*` and `head_*` forward and
//! backward, each a short list of recorder calls over typed weights resolved by name once.
//!
//! Forward, per block l (M = B*N rows):
//!   h1 = LN1(x_l); qkv = h1 Wqkv^T + b (qk-norm: LN per head on q and k);
//!   o = attn(qkv); mid = x_l + ls1 * drop(o Wo^T + bo)
//!   h2 = LN2(mid); pre = h2 W1^T + b1; a = act(pre); x_{l+1} = mid + ls2 * drop(a W2^T + b2)
//!   (ls1, ls2: LayerScale's gamma, or 1 without it; training with GELU or QuickGELU also
//!   saves act'(pre): the backward multiplies by it)
//! The tokens: [cls ; dist or registers ; patches] + pos (on all, or the patches only),
//! then LN (norm_pre) when the model has it. The head reads the class token (and the
//! distillation token: the logits are the mean of the two heads') or the patch mean, with
//! the final LN before pooling (`norm`) or after it (`fc_norm`), then cross-entropy.
//! Backward: `dres` holds dL/d(residual stream) and LayerNorm backwards add into it in
//! place; parameter gradients are overwritten (llm.c's convention is `+=`; ours is `=`,
//! since a parameter used twice, the final norm of DeiT's two readouts, adds its second
//! gradient explicitly).

use super::arena::{Layout, Tensor};
use super::config::{Act, Config, Head, Pool};
use super::error::ModelError;
use super::recorder::{Linear, Norm, NormStats, Recorder};
use crate::gpu::Gpu;
use crate::kernels::attention::{Attention, AttentionBackward, AttentionForward, AttentionShape};
use crate::kernels::dropout::{DropoutBackward, DropoutForward, DropoutSite};
use crate::kernels::elementwise::{
    Axpby, ColumnBlock, CopyColumns, Multiply, QuickGelu, ScaleColumns,
};
use crate::kernels::embed::{
    AssembleTokens, EmbedShape, GatherCls, Patchify, PosClsBackward, ScatterCls, TokensBackward,
};
use crate::kernels::gemm::{ActGrad, Activation};
use crate::kernels::layernorm::{LayerNorm, LayerNormBackward};
use crate::kernels::loss::CrossEntropyArgs;
use crate::kernels::reduce::ColumnSum;
use crate::kernels::reduce::Reduce;
use crate::kernels::tokens::{
    Assemble, PatchesBackward, Pool as PoolTokens, PoolBackward, PrefixPosBackward, TokenLayout,
};

mod cls_avg;

/// One transformer block's weights.
pub struct BlockWeights {
    pub norm1: Norm,
    pub qkv: Linear,
    /// qk-norm: the LayerNorms of q and k per head [head_dim].
    pub qk_norm: Option<[Norm; 2]>,
    pub proj: Linear,
    pub norm2: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// LayerScale's gammas [D] of the attention and MLP branches.
    pub ls: Option<[Tensor; 2]>,
}

pub enum HeadWeights {
    Linear(Linear),
    Mlp { fc1: Linear, fc2: Linear },
}

/// Every weight of the model, resolved by name once.
pub struct Weights {
    pub patch: Linear,
    pub cls: Option<Tensor>,
    /// The distillation token or the register tokens.
    pub extra: Option<Tensor>,
    pub pos: Tensor,
    pub norm_pre: Option<Norm>,
    pub blocks: Vec<BlockWeights>,
    /// `norm` (before pooling) or `fc_norm` (after).
    pub norm: Norm,
    pub head: HeadWeights,
    /// DeiT's second head, on the distillation token.
    pub head_dist: Option<Linear>,
}

impl Weights {
    pub fn resolve(cfg: &Config, layout: &Layout) -> Weights {
        let t = |name: &str| layout.tensor(name);
        let has = |name: &str| layout.index(name).is_some();
        let linear = |name: &str, out: usize, inp: usize| Linear {
            w: t(&format!("{name}.weight")),
            b: has(&format!("{name}.bias")).then(|| t(&format!("{name}.bias"))),
            out,
            inp,
        };
        let norm_of = |name: &str, width: usize| Norm {
            gamma: t(&format!("{name}.weight")),
            beta: t(&format!("{name}.bias")),
            width,
            eps: cfg.ln_eps,
        };
        let norm = |name: &str| norm_of(name, cfg.dim);
        let (d, f, o) = (cfg.dim, cfg.mlp_hidden, &cfg.options);
        let blocks = (0..cfg.depth)
            .map(|l| BlockWeights {
                norm1: norm(&format!("blocks.{l}.norm1")),
                qkv: linear(&format!("blocks.{l}.attn.qkv"), 3 * d, d),
                qk_norm: o.qk_norm.then(|| {
                    ["q_norm", "k_norm"]
                        .map(|n| norm_of(&format!("blocks.{l}.attn.{n}"), cfg.head_dim()))
                }),
                proj: linear(&format!("blocks.{l}.attn.proj"), d, d),
                norm2: norm(&format!("blocks.{l}.norm2")),
                fc1: linear(&format!("blocks.{l}.mlp.fc1"), f, d),
                fc2: linear(&format!("blocks.{l}.mlp.fc2"), d, f),
                ls: o
                    .layer_scale
                    .map(|_| ["ls1", "ls2"].map(|n| t(&format!("blocks.{l}.{n}.gamma")))),
            })
            .collect();
        let head = match cfg.head {
            Head::Linear => HeadWeights::Linear(linear("head", cfg.classes, cfg.head_in())),
            Head::Mlp { hidden } => HeadWeights::Mlp {
                fc1: linear("head.fc1", hidden, d),
                fc2: linear("head.fc2", cfg.classes, hidden),
            },
        };
        let extra = if o.distilled {
            Some(t("dist_token"))
        } else {
            (o.reg_tokens > 0).then(|| t("reg_token"))
        };
        Weights {
            patch: linear("patch_embed.proj", d, cfg.patch_len()),
            cls: o.class_token.then(|| t("cls_token")),
            extra,
            pos: t("pos_embed"),
            norm_pre: o.pre_norm.then(|| norm("norm_pre")),
            blocks,
            norm: norm(if o.fc_norm { "fc_norm" } else { "norm" }),
            head,
            head_dist: o.distilled.then(|| linear("head_dist", cfg.classes, d)),
        }
    }
}

/// Allocates buffers, checking each against the adapter's binding limit.
pub struct Alloc<'a> {
    pub gpu: &'a Gpu,
    pub batch: usize,
}

impl Alloc<'_> {
    pub fn buf(&self, label: &str, floats: usize) -> Result<wgpu::Buffer, ModelError> {
        let bytes = (floats * 4) as u64;
        let limit = self.gpu.limits.max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(ModelError::BatchTooLarge {
                batch: self.batch,
                buffer: label.into(),
                needed: bytes.div_ceil(1 << 20),
                limit: limit >> 20,
            });
        }
        Ok(self.gpu.storage(label, floats))
    }

    /// Mean and rstd for `rows` rows, each as long as the LayerNorm kernels ask.
    fn stats(&self, rows: usize) -> Result<NormStats, ModelError> {
        let floats = LayerNorm::stats_len(rows);
        Ok(NormStats {
            mean: self.buf("layernorm mean", floats)?,
            rstd: self.buf("layernorm rstd", floats)?,
        })
    }
}

/// Activations one block saves for its backward.
pub struct BlockActs {
    pub x: wgpu::Buffer,   // block input [M, D]
    pub h1: wgpu::Buffer,  // LN1(x) [M, D]
    pub stats1: NormStats, // [M] each
    pub qkv: wgpu::Buffer, // [M, 3D]
    pub o: wgpu::Buffer,   // attention output [M, D]
    pub lse: wgpu::Buffer, // [B, A, N]
    pub mid: wgpu::Buffer, // after the attention residual [M, D]
    pub h2: wgpu::Buffer,  // LN2(mid) [M, D]
    pub stats2: NormStats,
    pub act: wgpu::Buffer, // fc1 activation [M, F]
    /// qk-norm: qkv before the norms [M, 3D] and the norms' statistics [M*A] (q, k).
    pub qk: Option<(wgpu::Buffer, [NormStats; 2])>,
    /// LayerScale: each branch after dropout, before its gamma [M, D] (attention, MLP).
    pub ls_branch: Option<[wgpu::Buffer; 2]>,
    /// GELU'(fc1 pre-activation) [M, F], saved by a training forward for the backward
    /// (ReLU's backward takes relu' from `act`; an inference model saves nothing).
    pub slope: Option<wgpu::Buffer>,
}

/// Gradient buffers of the backward, reused by every block.
pub struct GradBuffers {
    pub dres: wgpu::Buffer,     // dL/d(residual stream) [M, D]
    pub d_branch: wgpu::Buffer, // a residual branch's gradient through dropout [M, D]
    pub d_hidden: wgpu::Buffer, // [M, F]
    pub d_h: wgpu::Buffer,      // a LayerNorm output's gradient [M, D]
    pub d_o: wgpu::Buffer,      // [M, D]
    pub d_qkv: wgpu::Buffer,    // [M, 3D]
    pub attention: wgpu::Buffer,
    pub d_cls_n: wgpu::Buffer, // [B, D]
    pub d_cls_x: wgpu::Buffer, // [B, D]
    pub d_head: wgpu::Buffer,  // [B, Hh]
    pub d_pe: wgpu::Buffer,    // [B*Np, D]
    pub reduce_scratch: wgpu::Buffer,
    /// DeiT: half the logits' gradient, each head's [B, K]; the second readout's final-norm
    /// gradients [D] each, before they are added to the first's.
    pub distilled: Option<(wgpu::Buffer, [wgpu::Buffer; 2])>,
}

/// One readout of the final stream into a head: the pooled rows, the normed features (when
/// the final norm runs after pooling) and its statistics.
pub struct Readout {
    pub start: usize,
    pub count: usize,
    pub pooled: wgpu::Buffer, // [B, D]
    pub feat: wgpu::Buffer,   // [B, D]
    pub stats: NormStats,
}

impl Readout {
    /// The mean of the stream's tokens [start, start+count) into `pooled` (one token:
    /// gathered).
    fn pool<'a>(&'a self, layout: TokenLayout, x: &'a wgpu::Buffer) -> PoolTokens<'a> {
        PoolTokens {
            layout,
            start: self.start,
            count: self.count,
            scale: 1.0 / self.count as f32,
            x,
            pooled: &self.pooled,
        }
    }

    /// `pool`'s backward: dx (+)= dpooled / count on the same tokens.
    fn pool_backward<'a>(
        &self,
        layout: TokenLayout,
        dpooled: &'a wgpu::Buffer,
        dx: &'a wgpu::Buffer,
        accumulate: bool,
    ) -> PoolBackward<'a> {
        PoolBackward {
            layout,
            start: self.start,
            count: self.count,
            scale: 1.0 / self.count as f32,
            dpooled,
            dx,
            accumulate,
        }
    }
}

/// Buffers of timm's options outside the blocks.
pub struct OptionBuffers {
    pub layout: TokenLayout,
    /// The tokens before `norm_pre` [M, D] and its statistics.
    pub pre_norm: Option<(wgpu::Buffer, NormStats)>,
    /// qk-norm's q or k columns in and out of their norm [M, D].
    pub qk_scratch: Option<[wgpu::Buffer; 2]>,
    /// `norm` over every token before avg pooling [M, D] and its statistics.
    pub norm_all: Option<(wgpu::Buffer, NormStats)>,
    /// The readouts other than the original ViT's class token (which `cls_x`, `cls_n` hold).
    pub readouts: Vec<Readout>,
    /// DeiT's second head's logits [B, K].
    pub logits_dist: Option<wgpu::Buffer>,
    /// Dinov2's [class token ; patch mean] rows and their gradient.
    pub cls_avg: Option<cls_avg::ClsAvgBuffers>,
    /// Bound where a layout has no class or extra token (never written).
    pub placeholder: [wgpu::Buffer; 2],
}

/// The model's buffers (inputs, activations, gradients) and its schedule.
pub struct Net {
    pub weights: Weights,
    pub embed_shape: EmbedShape,
    pub attention_shape: AttentionShape,
    pub act: Activation,
    pub dropout: f32,
    pub seed: u64,
    pub classes: usize,
    pub images: wgpu::Buffer, // [B, C, H, W]
    pub labels: wgpu::Buffer, // [B] u32
    pub patches: wgpu::Buffer,
    pub pe: wgpu::Buffer,
    pub blocks: Vec<BlockActs>,
    pub x_out: wgpu::Buffer,
    pub branch: wgpu::Buffer, // a residual branch before dropout [M, D]
    pub cls_x: wgpu::Buffer,
    pub cls_n: wgpu::Buffer,
    pub stats_f: NormStats,
    pub head_act: wgpu::Buffer, // the MLP head's hidden ReLU output [B, Hh]
    pub logits: wgpu::Buffer,
    pub losses: wgpu::Buffer,
    pub dlogits: wgpu::Buffer, // [B, K]
    pub correct: wgpu::Buffer,
    pub dropout_step: wgpu::Buffer,
    pub grads: Option<GradBuffers>,
    pub options: OptionBuffers,
    /// The original ViT's head: the class token's row, `norm`, one head (the `embed`
    /// kernels' gather and scatter).
    pub plain_head: bool,
    pub quick_gelu: bool,
    /// The loss gradient's factor: 1/B, or 1/(global batch) for one rank's shard.
    pub loss_grad_scale: f32,
}

fn activation(a: Act) -> Activation {
    match a {
        Act::Relu => Activation::Relu,
        Act::Gelu => Activation::Gelu,
        // QuickGELU runs after the fc1 GEMM, element-wise.
        Act::QuickGelu => Activation::None,
    }
}

impl Net {
    pub fn new(
        alloc: &Alloc,
        cfg: &Config,
        layout: &Layout,
        train: bool,
        seed: u64,
    ) -> Result<Net, ModelError> {
        let (b, n, d, f) = (alloc.batch, cfg.tokens(), cfg.dim, cfg.mlp_hidden);
        let m = b * n;
        let hh = match cfg.head {
            Head::Mlp { hidden } => hidden,
            Head::Linear => 1,
        };
        let mut blocks = Vec::with_capacity(cfg.depth);
        for _ in 0..cfg.depth {
            blocks.push(BlockActs {
                x: alloc.buf("x", m * d)?,
                h1: alloc.buf("h1", m * d)?,
                stats1: alloc.stats(m)?,
                qkv: alloc.buf("qkv", m * 3 * d)?,
                o: alloc.buf("attention out", m * d)?,
                lse: alloc.buf("lse", b * cfg.heads * n)?,
                mid: alloc.buf("mid", m * d)?,
                h2: alloc.buf("h2", m * d)?,
                stats2: alloc.stats(m)?,
                act: alloc.buf("fc1 activation", m * f)?,
                slope: match (train, cfg.act) {
                    (true, Act::Gelu | Act::QuickGelu) => Some(alloc.buf("fc1 slope", m * f)?),
                    _ => None,
                },
                qk: match cfg.options.qk_norm {
                    true => Some((
                        alloc.buf("qkv before qk-norm", m * 3 * d)?,
                        [alloc.stats(m * cfg.heads)?, alloc.stats(m * cfg.heads)?],
                    )),
                    false => None,
                },
                ls_branch: match cfg.options.layer_scale {
                    Some(_) => Some([
                        alloc.buf("attention branch", m * d)?,
                        alloc.buf("MLP branch", m * d)?,
                    ]),
                    None => None,
                },
            });
        }
        let embed_shape = EmbedShape {
            batch: b,
            channels: cfg.channels,
            height: cfg.image_h,
            width: cfg.image_w,
            patch: cfg.patch,
            dim: d,
        };
        let attention_shape = AttentionShape {
            batch: b,
            tokens: n,
            heads: cfg.heads,
            head_dim: cfg.head_dim(),
        };
        let grads = if train {
            Some(GradBuffers::new(alloc, cfg, attention_shape)?)
        } else {
            None
        };
        let options = OptionBuffers::new(alloc, cfg)?;
        Ok(Net {
            weights: Weights::resolve(cfg, layout),
            embed_shape,
            attention_shape,
            act: activation(cfg.act),
            dropout: cfg.dropout,
            seed,
            classes: cfg.classes,
            images: alloc.buf("images", b * cfg.channels * cfg.image_h * cfg.image_w)?,
            labels: alloc.buf("labels", b)?,
            patches: alloc.buf("patches", b * cfg.patches() * cfg.patch_len())?,
            pe: alloc.buf("patch embeddings", b * cfg.patches() * d)?,
            blocks,
            x_out: alloc.buf("x out", m * d)?,
            branch: alloc.buf("branch", m * d)?,
            cls_x: alloc.buf("cls rows", b * d)?,
            cls_n: alloc.buf("cls normed", b * d)?,
            stats_f: alloc.stats(b)?,
            head_act: alloc.buf("head act", b * hh)?,
            logits: alloc.buf("logits", b * cfg.classes)?,
            losses: alloc.buf("losses", b)?,
            dlogits: alloc.buf("dlogits", b * cfg.classes)?,
            correct: alloc.buf("correct", b)?,
            dropout_step: crate::kernels::dropout::step_buffer(alloc.gpu),
            grads,
            options,
            plain_head: cfg.plain_tokens()
                && cfg.options.pool == Pool::Token
                && !cfg.options.fc_norm,
            quick_gelu: cfg.act == Act::QuickGelu,
            loss_grad_scale: 1.0 / b as f32,
        })
    }

    /// M = B*N (N counts every token of the layout; `embed_shape.tokens()` is the original
    /// ViT's 1 + Np).
    fn rows(&self) -> usize {
        self.embed_shape.batch * self.attention_shape.tokens
    }

    fn batch(&self) -> usize {
        self.embed_shape.batch
    }

    fn grads(&self) -> &GradBuffers {
        match &self.grads {
            Some(g) => g,
            None => panic!("internal: backward recorded for an inference model"),
        }
    }

    /// The output of block l: the next block's input, or the last residual stream.
    fn block_output(&self, l: usize) -> &wgpu::Buffer {
        self.blocks.get(l + 1).map_or(&self.x_out, |next| &next.x)
    }

    /// Dropout site `salt` (2l+1 after attention, 2l+2 after the MLP of block l).
    fn site(&self, salt: u64) -> DropoutSite {
        let seed = self.seed;
        DropoutSite {
            len: self.rows() * self.embed_shape.dim,
            p: self.dropout,
            seed: (seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as u32 ^ (seed >> 32) as u32,
        }
    }

    /// The whole forward and the loss; `train`: the forward of a training pass, with
    /// dropout, saving what the backward needs.
    pub fn forward(&self, r: &mut Recorder, train: bool) {
        self.embed_forward(r);
        for l in 0..self.blocks.len() {
            self.block_forward(r, l, train);
        }
        self.head_forward(r);
    }

    /// The whole backward, from the loss's dlogits to every parameter gradient.
    pub fn backward(&self, r: &mut Recorder) {
        let drop = self.dropout > 0.0;
        self.head_backward(r);
        for l in (0..self.blocks.len()).rev() {
            self.block_backward(r, l, drop);
        }
        self.embed_backward(r);
    }

    pub fn embed_forward(&self, r: &mut Recorder) {
        let (es, w, ob) = (self.embed_shape, &self.weights, &self.options);
        let k = r.kernels;
        let patchify = Patchify {
            shape: es,
            img: &self.images,
            patches: &self.patches,
        };
        r.record(&k.embed, &patchify);
        let rows = es.batch * es.patches();
        r.linear(&self.patches, &w.patch, &self.pe, rows);
        // With norm_pre the tokens go to its input, and its output is block 0's input.
        let x0 = ob.pre_norm.as_ref().map_or(&self.blocks[0].x, |(x, _)| x);
        let pos = r.arena.value(w.pos);
        match (self.plain_tokens(), w.cls) {
            (true, Some(cls)) => {
                let cls = r.arena.value(cls);
                let assemble = AssembleTokens {
                    shape: es,
                    pe: &self.pe,
                    cls,
                    pos,
                    x0,
                };
                r.record(&k.embed, &assemble);
            }
            _ => {
                let [p0, p1] = &ob.placeholder;
                let assemble = Assemble {
                    layout: ob.layout,
                    pe: &self.pe,
                    cls: w.cls.map_or(p0.into(), |t| r.arena.value(t)),
                    extra: w.extra.map_or(p1.into(), |t| r.arena.value(t)),
                    pos,
                    x0,
                };
                r.record(&k.tokens, &assemble);
            }
        }
        if let (Some(norm), Some((x, stats))) = (&w.norm_pre, &ob.pre_norm) {
            r.layernorm(x, norm, &self.blocks[0].x, stats, self.rows());
        }
    }

    /// The original ViT's token layout (the `embed` kernels and their CPU specialisation).
    fn plain_tokens(&self) -> bool {
        self.embed_shape.tokens() == self.attention_shape.tokens
            && self.options.layout.pos_start == 0
            && self.options.layout.cls
    }

    /// The forward of a training pass (`train`) applies dropout and saves the activation's
    /// slope for the backward.
    pub fn block_forward(&self, r: &mut Recorder, l: usize, train: bool) {
        let (w, a, m) = (&self.weights.blocks[l], &self.blocks[l], self.rows());
        let drop = train && self.dropout > 0.0;
        let slope = a.slope.as_ref().filter(|_| train);
        r.layernorm(&a.x, &w.norm1, &a.h1, &a.stats1, m);
        match (&w.qk_norm, &a.qk) {
            (Some(norms), Some((raw, stats))) => {
                r.linear(&a.h1, &w.qkv, raw, m);
                r.copy(raw, &a.qkv);
                self.qk_norm_forward(r, norms, raw, stats, &a.qkv);
            }
            _ => r.linear(&a.h1, &w.qkv, &a.qkv, m),
        }
        let (shape, qkv, o, lse) = (self.attention_shape, &a.qkv, &a.o, &a.lse);
        r.record(
            &r.kernels.attention,
            &AttentionForward { shape, qkv, o, lse },
        );
        r.copy(&a.x, &a.mid);
        let ls = |i: usize| w.ls.map(|g| g[i]).zip(a.ls_branch.as_ref().map(|b| &b[i]));
        self.residual_forward(r, &a.o, &w.proj, &a.mid, 2 * l as u64 + 1, drop, ls(0));
        r.layernorm(&a.mid, &w.norm2, &a.h2, &a.stats2, m);
        if self.quick_gelu {
            r.linear(&a.h2, &w.fc1, &a.act, m);
            let len = m * w.fc1.out;
            let act = &a.act;
            r.record(&r.kernels.elementwise, &QuickGelu { act, slope, len });
        } else {
            r.linear_act(&a.h2, &w.fc1, &a.act, m, self.act, slope);
        }
        let next = self.block_output(l);
        r.copy(&a.mid, next);
        self.residual_forward(r, &a.act, &w.fc2, next, 2 * l as u64 + 2, drop, ls(1));
    }

    /// The q and k columns of `raw` [M, 3D] through their per-head norms into `qkv`.
    fn qk_norm_forward(
        &self,
        r: &mut Recorder,
        norms: &[Norm; 2],
        raw: &wgpu::Buffer,
        stats: &[NormStats; 2],
        qkv: &wgpu::Buffer,
    ) {
        let Some([x, y]) = &self.options.qk_scratch else {
            panic!("internal: qk-norm without its scratch buffers")
        };
        let s = self.attention_shape;
        for (i, norm) in norms.iter().enumerate() {
            let (out, back) = self.qk_columns(i);
            let ew = &r.kernels.elementwise;
            r.record(
                ew,
                &CopyColumns {
                    src: raw,
                    dst: x,
                    block: out,
                },
            );
            r.layernorm(x, norm, y, &stats[i], self.rows() * s.heads);
            let ew = &r.kernels.elementwise;
            r.record(
                ew,
                &CopyColumns {
                    src: y,
                    dst: qkv,
                    block: back,
                },
            );
        }
    }

    /// Column block `i` (q: 0, k: 1) of qkv [M, 3D] out to [M, D], and back.
    fn qk_columns(&self, i: usize) -> (ColumnBlock, ColumnBlock) {
        let d = self.embed_shape.dim;
        let out = ColumnBlock {
            rows: self.rows(),
            width: d,
            src_stride: 3 * d,
            src_offset: i * d,
            dst_stride: d,
            dst_offset: 0,
        };
        let back = ColumnBlock {
            src_stride: d,
            src_offset: 0,
            dst_stride: 3 * d,
            dst_offset: i * d,
            ..out
        };
        (out, back)
    }

    /// y += drop(x W^T + b): with dropout through the branch buffer, else in the epilogue.
    /// With LayerScale `(gamma, saved)`: the dropped branch goes to `saved` (its gradient
    /// needs it), then y += gamma * saved.
    #[allow(clippy::too_many_arguments)]
    fn residual_forward(
        &self,
        r: &mut Recorder,
        x: &wgpu::Buffer,
        l: &super::recorder::Linear,
        y: &wgpu::Buffer,
        salt: u64,
        drop: bool,
        ls: Option<(Tensor, &wgpu::Buffer)>,
    ) {
        let len = self.rows() * self.embed_shape.dim;
        let dropped = match ls {
            Some((_, saved)) if drop => {
                r.linear(x, l, &self.branch, self.rows());
                let dropout = DropoutForward {
                    site: self.site(salt),
                    step: &self.dropout_step,
                    x: &self.branch,
                    y: saved,
                    accumulate: false,
                };
                r.record(&r.kernels.dropout, &dropout);
                saved
            }
            Some((_, saved)) => {
                r.linear(x, l, saved, self.rows());
                saved
            }
            None if drop => {
                r.linear(x, l, &self.branch, self.rows());
                let dropout = DropoutForward {
                    site: self.site(salt),
                    step: &self.dropout_step,
                    x: &self.branch,
                    y,
                    accumulate: true,
                };
                r.record(&r.kernels.dropout, &dropout);
                return;
            }
            None => return r.linear_residual(x, l, y, self.rows()),
        };
        if let Some((gamma, _)) = ls {
            let scale = ScaleColumns {
                x: dropped,
                gamma: r.arena.value(gamma),
                y,
                len,
                cols: self.embed_shape.dim,
                accumulate: true,
            };
            r.record(&r.kernels.elementwise, &scale);
        }
    }

    pub fn head_forward(&self, r: &mut Recorder) {
        let (w, b) = (&self.weights, self.batch());
        if self.plain_head {
            let gather = GatherCls {
                shape: self.embed_shape,
                full: &self.x_out,
                cls_rows: &self.cls_x,
            };
            r.record(&r.kernels.embed, &gather);
            r.layernorm(&self.cls_x, &w.norm, &self.cls_n, &self.stats_f, b);
            self.head_linear(r, &w.head, &self.cls_n, &self.logits);
            return self.loss(r);
        }
        let ob = &self.options;
        let stream = match &ob.norm_all {
            Some((y, stats)) => {
                r.layernorm(&self.x_out, &w.norm, y, stats, self.rows());
                y
            }
            None => &self.x_out,
        };
        if ob.cls_avg.is_some() {
            self.cls_avg_forward(r, stream);
            return self.loss(r);
        }
        for (i, ro) in ob.readouts.iter().enumerate() {
            r.record(&r.kernels.tokens, &ro.pool(ob.layout, stream));
            let feat = match ob.norm_all {
                Some(_) => &ro.pooled,
                None => {
                    r.layernorm(&ro.pooled, &w.norm, &ro.feat, &ro.stats, b);
                    &ro.feat
                }
            };
            match (i, &w.head_dist, &ob.logits_dist) {
                (0, _, _) => self.head_linear(r, &w.head, feat, &self.logits),
                (_, Some(h), Some(logits)) => r.linear(feat, h, logits, b),
                _ => panic!("internal: a second readout without a second head"),
            }
        }
        if let Some(dist) = &ob.logits_dist {
            // The mean of the two heads' logits (timm's DeiT outside distillation training).
            let mean = Axpby {
                x: dist.into(),
                y: (&self.logits).into(),
                alpha: 0.5,
                beta: 0.5,
                len: b * self.classes,
            };
            r.record(&r.kernels.elementwise, &mean);
        }
        self.loss(r);
    }

    fn head_linear(
        &self,
        r: &mut Recorder,
        head: &HeadWeights,
        x: &wgpu::Buffer,
        logits: &wgpu::Buffer,
    ) {
        let b = self.batch();
        match head {
            HeadWeights::Linear(h) => r.linear(x, h, logits, b),
            HeadWeights::Mlp { fc1, fc2 } => {
                r.linear_act(x, fc1, &self.head_act, b, Activation::Relu, None);
                r.linear(&self.head_act, fc2, logits, b);
            }
        }
    }

    fn loss(&self, r: &mut Recorder) {
        let b = self.batch();
        let args = CrossEntropyArgs {
            logits: &self.logits,
            labels: &self.labels,
            losses: &self.losses,
            dlogits: &self.dlogits,
            correct: &self.correct,
            rows: b,
            classes: self.classes,
            grad_scale: self.loss_grad_scale,
        };
        r.record(&r.kernels.loss, &args);
    }

    /// dfeat [B, D] from the logits' gradient through `head` (input `x`).
    fn head_linear_backward(
        &self,
        r: &mut Recorder,
        head: &HeadWeights,
        dlogits: &wgpu::Buffer,
        x: &wgpu::Buffer,
    ) {
        let (g, b) = (self.grads(), self.batch());
        match head {
            HeadWeights::Linear(h) => r.linear_backward(dlogits, x, h, Some(&g.d_cls_n), b, None),
            HeadWeights::Mlp { fc1, fc2 } => {
                let relu = Some((&self.head_act, ActGrad::ReluOutput));
                r.linear_backward(dlogits, &self.head_act, fc2, Some(&g.d_head), b, relu);
                r.linear_backward(&g.d_head, x, fc1, Some(&g.d_cls_n), b, None);
            }
        }
    }

    pub fn head_backward(&self, r: &mut Recorder) {
        let (w, g, b) = (&self.weights, self.grads(), self.batch());
        if self.plain_head {
            self.head_linear_backward(r, &w.head, &self.dlogits, &self.cls_n);
            r.layernorm_backward(
                &g.d_cls_n,
                &self.cls_x,
                &w.norm,
                &self.stats_f,
                &g.d_cls_x,
                b,
                false,
            );
            let scatter = ScatterCls {
                shape: self.embed_shape,
                dcls_rows: &g.d_cls_x,
                dfull: &g.dres,
            };
            return r.record(&r.kernels.embed, &scatter);
        }
        let ob = &self.options;
        let dlogits = match &g.distilled {
            Some((half, _)) => {
                let args = Axpby {
                    x: (&self.dlogits).into(),
                    y: half.into(),
                    alpha: 0.5,
                    beta: 0.0,
                    len: b * self.classes,
                };
                r.record(&r.kernels.elementwise, &args);
                half
            }
            None => &self.dlogits,
        };
        // The gradient of the pooled stream: of the normed tokens first with norm_all.
        let dstream = if ob.norm_all.is_some() {
            &g.d_h
        } else {
            &g.dres
        };
        let readouts = match ob.cls_avg {
            Some(_) => {
                self.cls_avg_backward(r, dlogits, dstream);
                &[][..]
            }
            None => &ob.readouts[..],
        };
        for (i, ro) in readouts.iter().enumerate() {
            let feat = if ob.norm_all.is_some() {
                &ro.pooled
            } else {
                &ro.feat
            };
            match (i, &w.head_dist) {
                (0, _) => self.head_linear_backward(r, &w.head, dlogits, feat),
                (_, Some(h)) => r.linear_backward(dlogits, feat, h, Some(&g.d_cls_n), b, None),
                _ => panic!("internal: a second readout without a second head"),
            }
            let dpooled = if ob.norm_all.is_some() {
                &g.d_cls_n
            } else {
                self.final_norm_backward(r, i, ro);
                &g.d_cls_x
            };
            let scatter = ro.pool_backward(ob.layout, dpooled, dstream, i > 0);
            r.record(&r.kernels.tokens, &scatter);
        }
        if let Some((_, stats)) = &ob.norm_all {
            r.layernorm_backward(
                &g.d_h,
                &self.x_out,
                &w.norm,
                stats,
                &g.dres,
                self.rows(),
                false,
            );
        }
    }

    /// Readout i's final norm backward: d_cls_n -> d_cls_x. A second readout (DeiT's) adds
    /// its gamma and beta gradients to the first's.
    fn final_norm_backward(&self, r: &mut Recorder, i: usize, ro: &Readout) {
        let (w, g, b) = (&self.weights, self.grads(), self.batch());
        if i == 0 {
            return r.layernorm_backward(
                &g.d_cls_n, &ro.pooled, &w.norm, &ro.stats, &g.d_cls_x, b, false,
            );
        }
        let Some((_, [dg, db])) = &g.distilled else {
            panic!("internal: a second readout without its gradient buffers")
        };
        r.record(
            &r.kernels.layernorm,
            &LayerNormBackward {
                dy: &g.d_cls_n,
                x: &ro.pooled,
                gamma: r.arena.value(w.norm.gamma),
                mean: &ro.stats.mean,
                rstd: &ro.stats.rstd,
                dx: &g.d_cls_x,
                dgamma: dg.into(),
                dbeta: db.into(),
                scratch: r.reduce_scratch,
                rows: b,
                cols: w.norm.width,
                accumulate: false,
            },
        );
        for (part, t) in [(dg, w.norm.gamma), (db, w.norm.beta)] {
            let add = Axpby {
                x: part.into(),
                y: r.arena.grad(t),
                alpha: 1.0,
                beta: 1.0,
                len: w.norm.width,
            };
            r.record(&r.kernels.elementwise, &add);
        }
    }

    /// `g.dres` holds dL/dx_{l+1} on entry and dL/dx_l on return.
    pub fn block_backward(&self, r: &mut Recorder, l: usize, drop: bool) {
        let (w, a, g, m) = (
            &self.weights.blocks[l],
            &self.blocks[l],
            self.grads(),
            self.rows(),
        );
        let ls = |i: usize| w.ls.map(|t| t[i]).zip(a.ls_branch.as_ref().map(|b| &b[i]));
        let dy = self.branch_backward(r, 2 * l as u64 + 2, drop, ls(1));
        let act = match (&a.slope, self.act) {
            (Some(slope), _) => Some((slope, ActGrad::Slope)),
            (None, Activation::Relu) => Some((&a.act, ActGrad::ReluOutput)),
            (None, _) => panic!("internal: {:?} backward without its saved slope", self.act),
        };
        r.linear_backward(dy, &a.act, &w.fc2, Some(&g.d_hidden), m, act);
        r.linear_backward(&g.d_hidden, &a.h2, &w.fc1, Some(&g.d_h), m, None);
        r.layernorm_backward(&g.d_h, &a.mid, &w.norm2, &a.stats2, &g.dres, m, true);
        let dy = self.branch_backward(r, 2 * l as u64 + 1, drop, ls(0));
        r.linear_backward(dy, &a.o, &w.proj, Some(&g.d_o), m, None);
        r.record(&r.kernels.attention, &self.attention_backward(l));
        if let (Some(norms), Some((raw, stats))) = (&w.qk_norm, &a.qk) {
            self.qk_norm_backward(r, norms, raw, stats);
        }
        r.linear_backward(&g.d_qkv, &a.h1, &w.qkv, Some(&g.d_h), m, None);
        r.layernorm_backward(&g.d_h, &a.x, &w.norm1, &a.stats1, &g.dres, m, true);
    }

    /// d_qkv's q and k columns through their per-head norms, in place (the norms' inputs
    /// taken again from `raw`).
    fn qk_norm_backward(
        &self,
        r: &mut Recorder,
        norms: &[Norm; 2],
        raw: &wgpu::Buffer,
        stats: &[NormStats; 2],
    ) {
        let (g, s) = (self.grads(), self.attention_shape);
        let Some([x, dx]) = &self.options.qk_scratch else {
            panic!("internal: qk-norm without its scratch buffers")
        };
        // d_o is free once the attention backward has read it.
        let dy = &g.d_o;
        for (i, norm) in norms.iter().enumerate() {
            let (out, back) = self.qk_columns(i);
            let ew = &r.kernels.elementwise;
            r.record(
                ew,
                &CopyColumns {
                    src: &g.d_qkv,
                    dst: dy,
                    block: out,
                },
            );
            r.record(
                ew,
                &CopyColumns {
                    src: raw,
                    dst: x,
                    block: out,
                },
            );
            let rows = self.rows() * s.heads;
            r.layernorm_backward(dy, x, norm, &stats[i], dx, rows, false);
            let ew = &r.kernels.elementwise;
            r.record(
                ew,
                &CopyColumns {
                    src: dx,
                    dst: &g.d_qkv,
                    block: back,
                },
            );
        }
    }

    /// Block l's attention backward: from d_o and the forward's qkv, o and lse to d_qkv.
    fn attention_backward(&self, l: usize) -> AttentionBackward<'_> {
        let (a, g) = (&self.blocks[l], self.grads());
        AttentionBackward {
            shape: self.attention_shape,
            qkv: &a.qkv,
            o: &a.o,
            lse: &a.lse,
            d_o: &g.d_o,
            dqkv: &g.d_qkv,
            scratch: &g.attention,
        }
    }

    /// The gradient of a residual branch's output: dres itself, or through LayerScale
    /// (`(gamma, saved branch)`: gamma's gradient = column sums of saved * dres) and
    /// dropout.
    fn branch_backward(
        &self,
        r: &mut Recorder,
        salt: u64,
        drop: bool,
        ls: Option<(Tensor, &wgpu::Buffer)>,
    ) -> &wgpu::Buffer {
        let g = self.grads();
        let (rows, dim) = (self.rows(), self.embed_shape.dim);
        let dy = match ls {
            Some((gamma, saved)) => {
                let len = rows * dim;
                let ew = &r.kernels.elementwise;
                r.record(
                    ew,
                    &Multiply {
                        a: saved,
                        b: &g.dres,
                        y: &g.d_h,
                        len,
                    },
                );
                let sum = ColumnSum {
                    matrix: &g.d_h,
                    sums: r.arena.grad(gamma),
                    scratch: r.reduce_scratch,
                    rows,
                    cols: dim,
                    accumulate: false,
                };
                r.record(&r.kernels.reduce, &sum);
                // Through dropout next: d_o then (d_o is free here in both branches).
                let out = if drop { &g.d_o } else { &g.d_branch };
                let scale = ScaleColumns {
                    x: &g.dres,
                    gamma: r.arena.value(gamma),
                    y: out,
                    len,
                    cols: dim,
                    accumulate: false,
                };
                r.record(&r.kernels.elementwise, &scale);
                out
            }
            None => &g.dres,
        };
        if !drop {
            return dy;
        }
        let dropout = DropoutBackward {
            site: self.site(salt),
            step: &self.dropout_step,
            dy,
            dx: &g.d_branch,
        };
        r.record(&r.kernels.dropout, &dropout);
        &g.d_branch
    }

    pub fn embed_backward(&self, r: &mut Recorder) {
        let (es, w, g, ob) = (self.embed_shape, &self.weights, self.grads(), &self.options);
        let dx0 = match (&w.norm_pre, &ob.pre_norm) {
            (Some(norm), Some((x, stats))) => {
                r.layernorm_backward(&g.dres, x, norm, stats, &g.d_h, self.rows(), false);
                &g.d_h
            }
            _ => &g.dres,
        };
        let dpe = &g.d_pe;
        match (self.plain_tokens(), w.cls) {
            (true, Some(cls)) => {
                r.record(
                    &r.kernels.embed,
                    &TokensBackward {
                        shape: es,
                        dx0,
                        dpe,
                    },
                );
                let (dpos, dcls) = (r.arena.grad(w.pos), r.arena.grad(cls));
                r.record(
                    &r.kernels.embed,
                    &PosClsBackward {
                        shape: es,
                        dx0,
                        dpos,
                        dcls,
                    },
                );
            }
            _ => {
                let layout = ob.layout;
                r.record(&r.kernels.tokens, &PatchesBackward { layout, dx0, dpe });
                let [p0, p1] = &ob.placeholder;
                let args = PrefixPosBackward {
                    layout,
                    dx0,
                    dpos: r.arena.grad(w.pos),
                    dcls: w.cls.map_or(p0.into(), |t| r.arena.grad(t)),
                    dextra: w.extra.map_or(p1.into(), |t| r.arena.grad(t)),
                };
                r.record(&r.kernels.tokens, &args);
            }
        }
        let rows = es.batch * es.patches();
        r.linear_backward(&g.d_pe, &self.patches, &w.patch, None, rows, None);
    }
}

impl OptionBuffers {
    fn new(alloc: &Alloc, cfg: &Config) -> Result<OptionBuffers, ModelError> {
        let (b, d, o) = (alloc.batch, cfg.dim, &cfg.options);
        let m = b * cfg.tokens();
        let layout = super::reference::token_layout(cfg, b);
        let plain_head = cfg.plain_tokens() && o.pool == Pool::Token && !o.fc_norm;
        let spans: Vec<(usize, usize)> = match o.pool {
            _ if plain_head => Vec::new(),
            Pool::Token if o.distilled => vec![(0, 1), (1, 1)],
            Pool::Token => vec![(0, 1)],
            Pool::Avg => vec![(cfg.prefix_tokens(), cfg.patches())],
            Pool::ClsAvg => vec![(0, 1), (cfg.prefix_tokens(), cfg.patches())],
        };
        let mut readouts = Vec::new();
        for (start, count) in spans {
            readouts.push(Readout {
                start,
                count,
                pooled: alloc.buf("pooled", b * d)?,
                feat: alloc.buf("pooled normed", b * d)?,
                stats: alloc.stats(b)?,
            });
        }
        let norm_all = cfg.norm_all_tokens();
        Ok(OptionBuffers {
            layout,
            pre_norm: match o.pre_norm {
                true => Some((alloc.buf("tokens before norm_pre", m * d)?, alloc.stats(m)?)),
                false => None,
            },
            qk_scratch: match o.qk_norm {
                true => Some([alloc.buf("qk in", m * d)?, alloc.buf("qk out", m * d)?]),
                false => None,
            },
            norm_all: match norm_all {
                true => Some((alloc.buf("normed tokens", m * d)?, alloc.stats(m)?)),
                false => None,
            },
            readouts,
            logits_dist: match o.distilled {
                true => Some(alloc.buf("distillation logits", b * cfg.classes)?),
                false => None,
            },
            cls_avg: match o.pool {
                Pool::ClsAvg => Some(cls_avg::ClsAvgBuffers {
                    feat: alloc.buf("cls and patch mean", b * 2 * d)?,
                    dfeat: alloc.buf("cls and patch mean grad", b * 2 * d)?,
                }),
                _ => None,
            },
            placeholder: [alloc.buf("placeholder", d)?, alloc.buf("placeholder", d)?],
        })
    }
}

impl GradBuffers {
    fn new(alloc: &Alloc, cfg: &Config, s: AttentionShape) -> Result<GradBuffers, ModelError> {
        let (b, d, f, k) = (alloc.batch, cfg.dim, cfg.mlp_hidden, cfg.classes);
        let (m, np) = (b * cfg.tokens(), cfg.patches());
        let hh = match cfg.head {
            Head::Mlp { hidden } => hidden,
            Head::Linear => 1,
        };
        let hd = cfg.head_dim();
        let reduce = [(b, k), (b, hh), (m, 3 * d), (m, f), (m, d), (b * np, d)]
            .iter()
            .map(|&(r, c)| Reduce::column_sum_scratch_len(r, c))
            .chain([LayerNorm::scratch_len(m, d), LayerNorm::scratch_len(b, d)])
            .chain([LayerNorm::scratch_len(m * cfg.heads, hd)])
            .max()
            .unwrap_or(1);
        Ok(GradBuffers {
            dres: alloc.buf("residual grad", m * d)?,
            d_branch: alloc.buf("branch grad", m * d)?,
            d_hidden: alloc.buf("hidden grad", m * f)?,
            d_h: alloc.buf("normed grad", m * d)?,
            d_o: alloc.buf("attention out grad", m * d)?,
            d_qkv: alloc.buf("qkv grad", m * 3 * d)?,
            attention: alloc.buf("attention scratch", Attention::scratch_len(s))?,
            d_cls_n: alloc.buf("cls normed grad", b * d)?,
            d_cls_x: alloc.buf("cls grad", b * d)?,
            d_head: alloc.buf("head hidden grad", b * hh)?,
            d_pe: alloc.buf("patch embedding grad", b * np * d)?,
            reduce_scratch: alloc.buf("column-sum scratch", reduce)?,
            distilled: match cfg.options.distilled {
                true => Some((
                    alloc.buf("half logits grad", b * k)?,
                    [alloc.buf("norm grad", d)?, alloc.buf("norm grad", d)?],
                )),
                false => None,
            },
        })
    }
}
