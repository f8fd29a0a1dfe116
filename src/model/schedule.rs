//! The model's launch schedule, llm.c style: `embed_*`, `block_*` and `head_*` forward and
//! backward, each a short list of recorder calls over typed weights resolved by name once.
//!
//! Forward, per block l (M = B*N rows):
//!   h1 = LN1(x_l); qkv = h1 Wqkv^T + b; o = attn(qkv); mid = x_l + drop(o Wo^T + bo)
//!   h2 = LN2(mid); pre = h2 W1^T + b1; a = act(pre); x_{l+1} = mid + drop(a W2^T + b2)
//!   (training with GELU also saves GELU'(pre): the backward multiplies by it)
//! then c = LNf(x_L[:,0]) -> head -> logits -> cross-entropy.
//! Backward: `dres` holds dL/d(residual stream) and LayerNorm backwards add into it in
//! place; parameter gradients are overwritten (llm.c's convention is `+=`; ours is `=`,
//! since every parameter is used once).

use super::arena::{Layout, Tensor};
use super::config::{Act, Config, ConfigError, Head, Pool};
use super::error::ModelError;
use super::recorder::{Linear, Norm, NormStats, Recorder};
use crate::gpu::Gpu;
use crate::kernels::attention::{Attention, AttentionBackward, AttentionForward, AttentionShape};
use crate::kernels::dropout::{DropoutBackward, DropoutForward, DropoutSite};
use crate::kernels::embed::{
    AssembleTokens, EmbedShape, GatherCls, Patchify, PosClsBackward, ScatterCls, TokensBackward,
};
use crate::kernels::gemm::{ActGrad, Activation};
use crate::kernels::layernorm::LayerNorm;
use crate::kernels::loss::CrossEntropyArgs;
use crate::kernels::reduce::Reduce;

/// One transformer block's weights.
pub struct BlockWeights {
    pub norm1: Norm,
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
}

pub enum HeadWeights {
    Linear(Linear),
    Mlp { fc1: Linear, fc2: Linear },
}

/// Every weight of the model, resolved by name once.
pub struct Weights {
    pub patch: Linear,
    pub cls: Tensor,
    pub pos: Tensor,
    pub blocks: Vec<BlockWeights>,
    pub norm: Norm,
    pub head: HeadWeights,
}

impl Weights {
    pub fn resolve(cfg: &Config, layout: &Layout) -> Weights {
        let t = |name: &str| layout.tensor(name);
        let linear = |name: &str, out: usize, inp: usize| Linear {
            w: t(&format!("{name}.weight")),
            b: t(&format!("{name}.bias")),
            out,
            inp,
        };
        let norm = |name: &str| Norm {
            gamma: t(&format!("{name}.weight")),
            beta: t(&format!("{name}.bias")),
            width: cfg.dim,
            eps: cfg.ln_eps,
        };
        let (d, f) = (cfg.dim, cfg.mlp_hidden);
        let blocks = (0..cfg.depth)
            .map(|l| BlockWeights {
                norm1: norm(&format!("blocks.{l}.norm1")),
                qkv: linear(&format!("blocks.{l}.attn.qkv"), 3 * d, d),
                proj: linear(&format!("blocks.{l}.attn.proj"), d, d),
                norm2: norm(&format!("blocks.{l}.norm2")),
                fc1: linear(&format!("blocks.{l}.mlp.fc1"), f, d),
                fc2: linear(&format!("blocks.{l}.mlp.fc2"), d, f),
            })
            .collect();
        let head = match cfg.head {
            Head::Linear => HeadWeights::Linear(linear("head", cfg.classes, d)),
            Head::Mlp { hidden } => HeadWeights::Mlp {
                fc1: linear("head.fc1", hidden, d),
                fc2: linear("head.fc2", cfg.classes, hidden),
            },
        };
        Weights {
            patch: linear("patch_embed.proj", d, cfg.patch_len()),
            cls: t("cls_token"),
            pos: t("pos_embed"),
            blocks,
            norm: norm("norm"),
            head,
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
    /// The loss gradient's factor: 1/B, or 1/(global batch) for one rank's shard.
    pub loss_grad_scale: f32,
}

/// The first option of `cfg` the device schedule does not run yet.
fn not_on_device_yet(cfg: &Config) -> Option<&'static str> {
    let o = &cfg.options;
    [
        (!o.class_token, "class_token"),
        (o.pool != Pool::Token, "global_pool"),
        (o.fc_norm, "fc_norm"),
        (o.no_embed_class, "no_embed_class"),
        (o.layer_scale.is_some(), "init_values (LayerScale)"),
        (o.reg_tokens > 0, "reg_tokens"),
        (o.distilled, "distilled"),
        (o.pre_norm, "pre_norm"),
        (o.qk_norm, "qk_norm"),
        (cfg.act == Act::QuickGelu, "act quick_gelu"),
    ]
    .into_iter()
    .find_map(|(set, name)| set.then_some(name))
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
        if let Some(option) = not_on_device_yet(cfg) {
            return Err(ConfigError::Invalid(format!(
                "option '{option}' runs on the CPU reference model only so far"
            ))
            .into());
        }
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
                    (true, Act::Gelu) => Some(alloc.buf("fc1 GELU slope", m * f)?),
                    _ => None,
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
            loss_grad_scale: 1.0 / b as f32,
        })
    }

    fn rows(&self) -> usize {
        self.embed_shape.batch * self.embed_shape.tokens()
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
        let (es, w) = (self.embed_shape, &self.weights);
        let k = r.kernels;
        let patchify = Patchify {
            shape: es,
            img: &self.images,
            patches: &self.patches,
        };
        r.record(&k.embed, &patchify);
        let rows = es.batch * es.patches();
        r.linear(&self.patches, &w.patch, &self.pe, rows);
        let (cls, pos) = (r.arena.value(w.cls), r.arena.value(w.pos));
        let x0 = &self.blocks[0].x;
        let assemble = AssembleTokens {
            shape: es,
            pe: &self.pe,
            cls,
            pos,
            x0,
        };
        r.record(&k.embed, &assemble);
    }

    /// The forward of a training pass (`train`) applies dropout and saves GELU's slope for
    /// the backward.
    pub fn block_forward(&self, r: &mut Recorder, l: usize, train: bool) {
        let (w, a, m) = (&self.weights.blocks[l], &self.blocks[l], self.rows());
        let drop = train && self.dropout > 0.0;
        let slope = a.slope.as_ref().filter(|_| train);
        r.layernorm(&a.x, &w.norm1, &a.h1, &a.stats1, m);
        r.linear(&a.h1, &w.qkv, &a.qkv, m);
        let (shape, qkv, o, lse) = (self.attention_shape, &a.qkv, &a.o, &a.lse);
        r.record(
            &r.kernels.attention,
            &AttentionForward { shape, qkv, o, lse },
        );
        r.copy(&a.x, &a.mid);
        self.residual_forward(r, &a.o, &w.proj, &a.mid, 2 * l as u64 + 1, drop);
        r.layernorm(&a.mid, &w.norm2, &a.h2, &a.stats2, m);
        r.linear_act(&a.h2, &w.fc1, &a.act, m, self.act, slope);
        let next = self.block_output(l);
        r.copy(&a.mid, next);
        self.residual_forward(r, &a.act, &w.fc2, next, 2 * l as u64 + 2, drop);
    }

    /// y += drop(x W^T + b): with dropout through the branch buffer, else in the epilogue.
    fn residual_forward(
        &self,
        r: &mut Recorder,
        x: &wgpu::Buffer,
        l: &super::recorder::Linear,
        y: &wgpu::Buffer,
        salt: u64,
        drop: bool,
    ) {
        if drop {
            r.linear(x, l, &self.branch, self.rows());
            let dropout = DropoutForward {
                site: self.site(salt),
                step: &self.dropout_step,
                x: &self.branch,
                y,
                accumulate: true,
            };
            r.record(&r.kernels.dropout, &dropout);
        } else {
            r.linear_residual(x, l, y, self.rows());
        }
    }

    pub fn head_forward(&self, r: &mut Recorder) {
        let (w, b) = (&self.weights, self.batch());
        let gather = GatherCls {
            shape: self.embed_shape,
            full: &self.x_out,
            cls_rows: &self.cls_x,
        };
        r.record(&r.kernels.embed, &gather);
        r.layernorm(&self.cls_x, &w.norm, &self.cls_n, &self.stats_f, b);
        match &w.head {
            HeadWeights::Linear(h) => r.linear(&self.cls_n, h, &self.logits, b),
            HeadWeights::Mlp { fc1, fc2 } => {
                r.linear_act(&self.cls_n, fc1, &self.head_act, b, Activation::Relu, None);
                r.linear(&self.head_act, fc2, &self.logits, b);
            }
        }
        self.loss(r);
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

    pub fn head_backward(&self, r: &mut Recorder) {
        let (w, g, b) = (&self.weights, self.grads(), self.batch());
        match &w.head {
            HeadWeights::Linear(h) => {
                r.linear_backward(&self.dlogits, &self.cls_n, h, Some(&g.d_cls_n), b, None)
            }
            HeadWeights::Mlp { fc1, fc2 } => {
                let relu = Some((&self.head_act, ActGrad::ReluOutput));
                r.linear_backward(&self.dlogits, &self.head_act, fc2, Some(&g.d_head), b, relu);
                r.linear_backward(&g.d_head, &self.cls_n, fc1, Some(&g.d_cls_n), b, None);
            }
        }
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
        r.record(&r.kernels.embed, &scatter);
    }

    /// `g.dres` holds dL/dx_{l+1} on entry and dL/dx_l on return.
    pub fn block_backward(&self, r: &mut Recorder, l: usize, drop: bool) {
        let (w, a, g, m) = (
            &self.weights.blocks[l],
            &self.blocks[l],
            self.grads(),
            self.rows(),
        );
        let dy = self.branch_backward(r, 2 * l as u64 + 2, drop);
        let act = match (&a.slope, self.act) {
            (Some(slope), _) => Some((slope, ActGrad::Slope)),
            (None, Activation::Relu) => Some((&a.act, ActGrad::ReluOutput)),
            (None, _) => panic!("internal: {:?} backward without its saved slope", self.act),
        };
        r.linear_backward(dy, &a.act, &w.fc2, Some(&g.d_hidden), m, act);
        r.linear_backward(&g.d_hidden, &a.h2, &w.fc1, Some(&g.d_h), m, None);
        r.layernorm_backward(&g.d_h, &a.mid, &w.norm2, &a.stats2, &g.dres, m, true);
        let dy = self.branch_backward(r, 2 * l as u64 + 1, drop);
        r.linear_backward(dy, &a.o, &w.proj, Some(&g.d_o), m, None);
        r.record(&r.kernels.attention, &self.attention_backward(l));
        r.linear_backward(&g.d_qkv, &a.h1, &w.qkv, Some(&g.d_h), m, None);
        r.layernorm_backward(&g.d_h, &a.x, &w.norm1, &a.stats1, &g.dres, m, true);
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

    /// The gradient of a residual branch's output: dres itself, or through dropout.
    fn branch_backward(&self, r: &mut Recorder, salt: u64, drop: bool) -> &wgpu::Buffer {
        let g = self.grads();
        if !drop {
            return &g.dres;
        }
        let dropout = DropoutBackward {
            site: self.site(salt),
            step: &self.dropout_step,
            dy: &g.dres,
            dx: &g.d_branch,
        };
        r.record(&r.kernels.dropout, &dropout);
        &g.d_branch
    }

    pub fn embed_backward(&self, r: &mut Recorder) {
        let (es, w, g) = (self.embed_shape, &self.weights, self.grads());
        let (dx0, dpe) = (&g.dres, &g.d_pe);
        r.record(
            &r.kernels.embed,
            &TokensBackward {
                shape: es,
                dx0,
                dpe,
            },
        );
        let (dpos, dcls) = (r.arena.grad(w.pos), r.arena.grad(w.cls));
        r.record(
            &r.kernels.embed,
            &PosClsBackward {
                shape: es,
                dx0,
                dpos,
                dcls,
            },
        );
        let rows = es.batch * es.patches();
        r.linear_backward(&g.d_pe, &self.patches, &w.patch, None, rows, None);
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
        let reduce = [(b, k), (b, hh), (m, 3 * d), (m, f), (m, d), (b * np, d)]
            .iter()
            .map(|&(r, c)| Reduce::column_sum_scratch_len(r, c))
            .chain([LayerNorm::scratch_len(m, d), LayerNorm::scratch_len(b, d)])
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
        })
    }
}
