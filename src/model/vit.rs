//! The whole ViT on the device: every buffer allocated once per (model, batch size), every
//! bind group built once, and a training step recorded as a fixed list of commands.
//!
//! Forward, per layer l (M = B*N rows):
//!   h1 = LN1(x_l); qkv = h1 Wqkv^T + b; o = attn(qkv); mid = x_l + drop(o Wo^T + bo)
//!   h2 = LN2(mid); pre = h2 W1^T + b1; a = act(pre); x_{l+1} = mid + drop(a W2^T + b2)
//! then c = LNf(x_L[:,0]) -> head -> logits -> cross-entropy.

use super::config::{Act, Config, Head};
use super::params::{HostParams, ParamSpec};
use crate::gpu::{Command, Gpu, GpuError};
use crate::kernels::adamw::{AdamW, Hyper, ParamSlot};
use crate::kernels::attention::{Attention, AttentionShape};
use crate::kernels::dropout::{self, Dropout, DropoutSite};
use crate::kernels::embed::{Embed, EmbedShape};
use crate::kernels::gemm::{Activation, Gemm, GemmArgs, Layout};
use crate::kernels::layernorm::{LayerNorm, LayerNormBackward, LayerNormForward};
use crate::kernels::loss::{CrossEntropy, CrossEntropyArgs};

#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error(
        "batch size {batch} is too large for this adapter: buffer '{buffer}' needs {needed} MiB \
         but the adapter's largest storage binding is {limit} MiB; use a smaller --batch-size"
    )]
    BatchTooLarge {
        batch: usize,
        buffer: String,
        needed: u64,
        limit: u64,
    },
    #[error("parameter '{name}' has shape {found:?}, the model needs {expected:?}")]
    ParamShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("parameter '{name}' is missing")]
    MissingParam { name: String },
}

/// What the model is built for: training allocates gradients, optimizer state and the
/// backward schedule; inference only the forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Infer,
}

/// One parameter tensor on the device.
pub struct DeviceParam {
    pub spec: ParamSpec,
    pub value: wgpu::Buffer,
    pub grad: Option<wgpu::Buffer>,
    pub m: Option<wgpu::Buffer>,
    pub v: Option<wgpu::Buffer>,
}

/// Optimiser settings (per step the learning rate comes from the schedule).
#[derive(Clone, Copy, Debug)]
pub struct OptimConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

/// Adam's first and second moments of one parameter tensor.
pub type Moments = (Vec<f32>, Vec<f32>);

/// Activations saved by the forward pass for one layer.
struct LayerActs {
    x: wgpu::Buffer, // input of the layer [M, D]
    h1: wgpu::Buffer,
    mean1: wgpu::Buffer,
    rstd1: wgpu::Buffer,
    qkv: wgpu::Buffer, // [M, 3D]
    o: wgpu::Buffer,   // [M, D]
    lse: wgpu::Buffer, // [B, A, N]
    mid: wgpu::Buffer, // after the attention residual [M, D]
    h2: wgpu::Buffer,
    mean2: wgpu::Buffer,
    rstd2: wgpu::Buffer,
    pre: wgpu::Buffer, // fc1 pre-activation [M, F]
    act: wgpu::Buffer, // fc1 activation [M, F]
}

pub struct Vit {
    pub cfg: Config,
    pub batch: usize,
    pub mode: Mode,
    pub params: Vec<DeviceParam>,
    /// Input images [B, C, H, W] (normalised) and labels [B] (u32).
    pub images: wgpu::Buffer,
    pub labels: wgpu::Buffer,
    pub logits: wgpu::Buffer,
    pub losses: wgpu::Buffer,
    pub correct: wgpu::Buffer,
    /// The gradient norm before clipping and the clip scale, after each step
    /// (`partial[count+1]`, `partial[count]`).
    pub grad_stats: Option<wgpu::Buffer>,
    hyper: Option<wgpu::Buffer>,
    dropout_step: wgpu::Buffer,
    forward_train: Vec<Command>,
    forward_eval: Vec<Command>,
    backward: Vec<Command>,
    optimizer: Vec<Command>,
    param_count: usize,
    /// Each layer's saved qkv [B*N, 3D], read by the attention-map path.
    layer_qkv: Vec<wgpu::Buffer>,
    /// Attention maps: per-layer probabilities [B, A, N, N] and the commands writing them,
    /// built on the first `attention_maps` call (never part of a training step).
    maps: std::sync::OnceLock<(Vec<wgpu::Buffer>, Vec<Command>)>,
}

/// Kernel families, built once per device and shared by every model on it.
pub struct Kernels {
    pub gemm: Gemm,
    pub layernorm: LayerNorm,
    pub attention: Attention,
    pub embed: Embed,
    pub dropout: Dropout,
    pub loss: CrossEntropy,
    pub adamw: AdamW,
}

impl Kernels {
    pub fn new(gpu: &Gpu) -> Kernels {
        Kernels {
            gemm: Gemm::new(gpu),
            layernorm: LayerNorm::new(gpu),
            attention: Attention::new(gpu),
            embed: Embed::new(gpu),
            dropout: Dropout::new(gpu),
            loss: CrossEntropy::new(gpu),
            adamw: AdamW::new(gpu),
        }
    }
}

fn activation(a: Act) -> Activation {
    match a {
        Act::Relu => Activation::Relu,
        Act::Gelu => Activation::Gelu,
    }
}

/// Allocates buffers, checking each against the adapter's binding limit.
struct Alloc<'a> {
    gpu: &'a Gpu,
    batch: usize,
}

impl Alloc<'_> {
    fn buf(&self, label: &str, floats: usize) -> Result<wgpu::Buffer, ModelError> {
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
}

struct Gemms<'a> {
    gpu: &'a Gpu,
    gemm: &'a Gemm,
}

impl Gemms<'_> {
    /// Y [m, n] = X [m, k] W^T (+ b), optional activation; `acc` adds into Y.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        out: &mut Vec<Command>,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        b: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
        m: usize,
        n: usize,
        k: usize,
        act: Activation,
        pre: Option<&wgpu::Buffer>,
        accumulate: bool,
    ) {
        out.extend(self.gemm.record(
            self.gpu,
            &GemmArgs {
                a: x,
                b: w,
                c: y,
                m,
                n,
                k,
                layout: Layout::NT,
                bias: b,
                pre_activation: pre,
                activation: act,
                act_grad_of: None,
                accumulate,
            },
        ));
    }

    /// dX [m, k] = dY [m, n] W [n, k], times act'(pre) when given.
    #[allow(clippy::too_many_arguments)]
    fn input_grad(
        &self,
        out: &mut Vec<Command>,
        dy: &wgpu::Buffer,
        w: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        m: usize,
        n: usize,
        k: usize,
        act_grad_of: Option<(&wgpu::Buffer, Activation)>,
    ) {
        out.extend(self.gemm.record(
            self.gpu,
            &GemmArgs {
                a: dy,
                b: w,
                c: dx,
                m,
                n: k,
                k: n,
                layout: Layout::NN,
                bias: None,
                pre_activation: None,
                activation: Activation::None,
                act_grad_of,
                accumulate: false,
            },
        ));
    }

    /// dW [n, k] = dY^T [n, m] X [m, k]
    #[allow(clippy::too_many_arguments)]
    fn weight_grad(
        &self,
        out: &mut Vec<Command>,
        dy: &wgpu::Buffer,
        x: &wgpu::Buffer,
        dw: &wgpu::Buffer,
        m: usize,
        n: usize,
        k: usize,
    ) {
        out.extend(self.gemm.record(
            self.gpu,
            &GemmArgs {
                a: dy,
                b: x,
                c: dw,
                m: n,
                n: k,
                k: m,
                layout: Layout::TN,
                bias: None,
                pre_activation: None,
                activation: Activation::None,
                act_grad_of: None,
                accumulate: false,
            },
        ));
    }
}

impl Vit {
    pub fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        cfg: &Config,
        host: &HostParams,
        batch: usize,
        mode: Mode,
        seed: u64,
    ) -> Result<Vit, ModelError> {
        cfg.validate()?;
        let specs = super::params::param_specs(cfg);
        let alloc = Alloc { gpu, batch };
        // Parameters, checked against the model's shapes by name.
        let mut params = Vec::with_capacity(specs.len());
        for spec in &specs {
            let i = host
                .index(&spec.name)
                .ok_or_else(|| ModelError::MissingParam {
                    name: spec.name.clone(),
                })?;
            if host.specs[i].shape != spec.shape {
                return Err(ModelError::ParamShape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: host.specs[i].shape.clone(),
                });
            }
            let value = gpu.upload(&spec.name, &host.values[i]);
            let train = mode == Mode::Train;
            let zeros = |label: &str| train.then(|| gpu.upload(label, &vec![0f32; spec.len()]));
            params.push(DeviceParam {
                spec: spec.clone(),
                value,
                grad: zeros("grad"),
                m: zeros("adam m"),
                v: zeros("adam v"),
            });
        }
        let by_name = |name: &str| -> &DeviceParam {
            // Every name below comes from param_specs, so the lookup cannot fail.
            params
                .iter()
                .find(|p| p.spec.name == name)
                .unwrap_or_else(|| panic!("internal: no parameter {name}"))
        };
        let w = |name: &str| &by_name(name).value;
        let gw = |name: &str| {
            by_name(name)
                .grad
                .as_ref()
                .unwrap_or_else(|| panic!("internal: no gradient for {name}"))
        };

        let (b, n, d, f) = (batch, cfg.tokens(), cfg.dim, cfg.mlp_hidden);
        let (np, pl, k) = (cfg.patches(), cfg.patch_len(), cfg.classes);
        let m = b * n;
        let act = activation(cfg.act);
        let es = EmbedShape {
            batch: b,
            channels: cfg.channels,
            height: cfg.image_h,
            width: cfg.image_w,
            patch: cfg.patch,
            dim: d,
        };
        let ashape = AttentionShape {
            batch: b,
            tokens: n,
            heads: cfg.heads,
            head_dim: cfg.head_dim(),
        };

        let images = alloc.buf("images", b * cfg.channels * cfg.image_h * cfg.image_w)?;
        let labels = alloc.buf("labels", b)?;
        let patches = alloc.buf("patches", b * np * pl)?;
        let pe = alloc.buf("patch embeddings", b * np * d)?;
        let mut layers = Vec::with_capacity(cfg.depth);
        for _ in 0..cfg.depth {
            layers.push(LayerActs {
                x: alloc.buf("x", m * d)?,
                h1: alloc.buf("h1", m * d)?,
                mean1: alloc.buf("mean1", m)?,
                rstd1: alloc.buf("rstd1", m)?,
                qkv: alloc.buf("qkv", m * 3 * d)?,
                o: alloc.buf("attention out", m * d)?,
                lse: alloc.buf("lse", b * cfg.heads * n)?,
                mid: alloc.buf("mid", m * d)?,
                h2: alloc.buf("h2", m * d)?,
                mean2: alloc.buf("mean2", m)?,
                rstd2: alloc.buf("rstd2", m)?,
                pre: alloc.buf("fc1 pre-activation", m * f)?,
                act: alloc.buf("fc1 activation", m * f)?,
            });
        }
        let x_out = alloc.buf("x out", m * d)?;
        let branch = alloc.buf("branch", m * d)?; // a residual branch before dropout
        let cls_x = alloc.buf("cls rows", b * d)?;
        let cls_n = alloc.buf("cls normed", b * d)?;
        let mean_f = alloc.buf("mean f", b)?;
        let rstd_f = alloc.buf("rstd f", b)?;
        let head_hidden = match cfg.head {
            Head::Mlp { hidden } => hidden,
            Head::Linear => 1,
        };
        let head_pre = alloc.buf("head pre", b * head_hidden)?;
        let head_act = alloc.buf("head act", b * head_hidden)?;
        let logits = alloc.buf("logits", b * k)?;
        let losses = alloc.buf("losses", b)?;
        let dlogits = alloc.buf("dlogits", b * k)?;
        let correct = alloc.buf("correct", b)?;
        let dropout_step = dropout::step_buffer(gpu);

        let ks = kernels;
        let g = Gemms {
            gpu,
            gemm: &ks.gemm,
        };
        let site = |salt: u64| DropoutSite {
            len: m * d,
            p: cfg.dropout,
            seed: (seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as u32 ^ (seed >> 32) as u32,
        };

        // LayerNorm over rows of width D (every norm in the model).
        let ln_forward = |x: &wgpu::Buffer,
                          gamma: &wgpu::Buffer,
                          beta: &wgpu::Buffer,
                          y: &wgpu::Buffer,
                          mean: &wgpu::Buffer,
                          rstd: &wgpu::Buffer,
                          rows: usize|
         -> Command {
            ks.layernorm
                .forward(
                    gpu,
                    &LayerNormForward {
                        x,
                        gamma,
                        beta,
                        y,
                        mean,
                        rstd,
                        rows,
                        cols: d,
                        eps: cfg.ln_eps,
                    },
                )
                .into()
        };

        // ---- forward ----
        let build_forward = |train: bool| -> Vec<Command> {
            let drop = train && cfg.dropout > 0.0;
            let mut c: Vec<Command> = Vec::new();
            c.push(ks.embed.patchify(gpu, es, &images, &patches).into());
            g.linear(
                &mut c,
                &patches,
                w("patch_embed.proj.weight"),
                Some(w("patch_embed.proj.bias")),
                &pe,
                b * np,
                d,
                pl,
                Activation::None,
                None,
                false,
            );
            c.push(
                ks.embed
                    .assemble_tokens(gpu, es, &pe, w("cls_token"), w("pos_embed"), &layers[0].x)
                    .into(),
            );
            for (l, la) in layers.iter().enumerate() {
                let p = |s: &str| format!("blocks.{l}.{s}");
                let next = layers.get(l + 1).map(|n| &n.x).unwrap_or(&x_out);
                c.push(ln_forward(
                    &la.x,
                    w(&p("norm1.weight")),
                    w(&p("norm1.bias")),
                    &la.h1,
                    &la.mean1,
                    &la.rstd1,
                    m,
                ));
                g.linear(
                    &mut c,
                    &la.h1,
                    w(&p("attn.qkv.weight")),
                    Some(w(&p("attn.qkv.bias"))),
                    &la.qkv,
                    m,
                    3 * d,
                    d,
                    Activation::None,
                    None,
                    false,
                );
                c.extend(ks.attention.forward(gpu, ashape, &la.qkv, &la.o, &la.lse));
                c.push(Command::CopyBuffer {
                    src: la.x.clone(),
                    dst: la.mid.clone(),
                });
                if drop {
                    g.linear(
                        &mut c,
                        &la.o,
                        w(&p("attn.proj.weight")),
                        Some(w(&p("attn.proj.bias"))),
                        &branch,
                        m,
                        d,
                        d,
                        Activation::None,
                        None,
                        false,
                    );
                    c.push(
                        ks.dropout
                            .forward(
                                gpu,
                                site(2 * l as u64 + 1),
                                &dropout_step,
                                &branch,
                                &la.mid,
                                true,
                            )
                            .into(),
                    );
                } else {
                    g.linear(
                        &mut c,
                        &la.o,
                        w(&p("attn.proj.weight")),
                        Some(w(&p("attn.proj.bias"))),
                        &la.mid,
                        m,
                        d,
                        d,
                        Activation::None,
                        None,
                        true,
                    );
                }
                c.push(ln_forward(
                    &la.mid,
                    w(&p("norm2.weight")),
                    w(&p("norm2.bias")),
                    &la.h2,
                    &la.mean2,
                    &la.rstd2,
                    m,
                ));
                g.linear(
                    &mut c,
                    &la.h2,
                    w(&p("mlp.fc1.weight")),
                    Some(w(&p("mlp.fc1.bias"))),
                    &la.act,
                    m,
                    f,
                    d,
                    act,
                    Some(&la.pre),
                    false,
                );
                c.push(Command::CopyBuffer {
                    src: la.mid.clone(),
                    dst: next.clone(),
                });
                if drop {
                    g.linear(
                        &mut c,
                        &la.act,
                        w(&p("mlp.fc2.weight")),
                        Some(w(&p("mlp.fc2.bias"))),
                        &branch,
                        m,
                        d,
                        f,
                        Activation::None,
                        None,
                        false,
                    );
                    c.push(
                        ks.dropout
                            .forward(
                                gpu,
                                site(2 * l as u64 + 2),
                                &dropout_step,
                                &branch,
                                next,
                                true,
                            )
                            .into(),
                    );
                } else {
                    g.linear(
                        &mut c,
                        &la.act,
                        w(&p("mlp.fc2.weight")),
                        Some(w(&p("mlp.fc2.bias"))),
                        next,
                        m,
                        d,
                        f,
                        Activation::None,
                        None,
                        true,
                    );
                }
            }
            c.push(ks.embed.gather_cls(gpu, es, &x_out, &cls_x).into());
            c.push(ln_forward(
                &cls_x,
                w("norm.weight"),
                w("norm.bias"),
                &cls_n,
                &mean_f,
                &rstd_f,
                b,
            ));
            match cfg.head {
                Head::Linear => g.linear(
                    &mut c,
                    &cls_n,
                    w("head.weight"),
                    Some(w("head.bias")),
                    &logits,
                    b,
                    k,
                    d,
                    Activation::None,
                    None,
                    false,
                ),
                Head::Mlp { hidden } => {
                    g.linear(
                        &mut c,
                        &cls_n,
                        w("head.fc1.weight"),
                        Some(w("head.fc1.bias")),
                        &head_act,
                        b,
                        hidden,
                        d,
                        Activation::Relu,
                        Some(&head_pre),
                        false,
                    );
                    g.linear(
                        &mut c,
                        &head_act,
                        w("head.fc2.weight"),
                        Some(w("head.fc2.bias")),
                        &logits,
                        b,
                        k,
                        hidden,
                        Activation::None,
                        None,
                        false,
                    );
                }
            }
            c.push(
                ks.loss
                    .record(
                        gpu,
                        &CrossEntropyArgs {
                            logits: &logits,
                            labels: &labels,
                            losses: &losses,
                            dlogits: &dlogits,
                            correct: &correct,
                            rows: b,
                            classes: k,
                            grad_scale: 1.0 / b as f32,
                        },
                    )
                    .into(),
            );
            c
        };
        let forward_eval = build_forward(false);
        let forward_train = if mode == Mode::Train && cfg.dropout > 0.0 {
            build_forward(true)
        } else {
            Vec::new()
        };

        // ---- backward and optimizer ----
        let mut backward: Vec<Command> = Vec::new();
        let mut optimizer: Vec<Command> = Vec::new();
        let mut hyper = None;
        let mut grad_stats = None;
        if mode == Mode::Train {
            let c = &mut backward;
            let drop = cfg.dropout > 0.0;
            let grad_a = alloc.buf("residual grad a", m * d)?;
            let grad_b = alloc.buf("residual grad b", m * d)?;
            let d_branch = alloc.buf("branch grad", m * d)?;
            let d_hidden = alloc.buf("hidden grad", m * f)?;
            let d_h = alloc.buf("normed grad", m * d)?;
            let d_o = alloc.buf("attention out grad", m * d)?;
            let d_qkv = alloc.buf("qkv grad", m * 3 * d)?;
            let att_scratch = alloc.buf("attention scratch", Attention::scratch_len(ashape))?;
            let d_cls_n = alloc.buf("cls normed grad", b * d)?;
            let d_cls_x = alloc.buf("cls grad", b * d)?;
            let d_head = alloc.buf("head hidden grad", b * head_hidden)?;
            let d_pe = alloc.buf("patch embedding grad", b * np * d)?;
            let reduce_scratch = alloc.buf(
                "column-sum scratch",
                [(b, k), (b, head_hidden), (m, 3 * d), (m, f), (b * np, d)]
                    .iter()
                    .map(|&(r, c)| Embed::column_sum_scratch_len(r, c))
                    .chain([LayerNorm::scratch_len(m, d), LayerNorm::scratch_len(b, d)])
                    .max()
                    .unwrap_or(1),
            )?;

            // head
            match cfg.head {
                Head::Linear => {
                    g.weight_grad(c, &dlogits, &cls_n, gw("head.weight"), b, k, d);
                    c.extend(
                        ks.embed
                            .column_sum(
                                gpu,
                                &dlogits,
                                gw("head.bias"),
                                &reduce_scratch,
                                b,
                                k,
                                false,
                            )
                            .map(Command::from),
                    );
                    g.input_grad(c, &dlogits, w("head.weight"), &d_cls_n, b, k, d, None);
                }
                Head::Mlp { hidden } => {
                    g.weight_grad(c, &dlogits, &head_act, gw("head.fc2.weight"), b, k, hidden);
                    c.extend(
                        ks.embed
                            .column_sum(
                                gpu,
                                &dlogits,
                                gw("head.fc2.bias"),
                                &reduce_scratch,
                                b,
                                k,
                                false,
                            )
                            .map(Command::from),
                    );
                    g.input_grad(
                        c,
                        &dlogits,
                        w("head.fc2.weight"),
                        &d_head,
                        b,
                        k,
                        hidden,
                        Some((&head_pre, Activation::Relu)),
                    );
                    g.weight_grad(c, &d_head, &cls_n, gw("head.fc1.weight"), b, hidden, d);
                    c.extend(
                        ks.embed
                            .column_sum(
                                gpu,
                                &d_head,
                                gw("head.fc1.bias"),
                                &reduce_scratch,
                                b,
                                hidden,
                                false,
                            )
                            .map(Command::from),
                    );
                    g.input_grad(
                        c,
                        &d_head,
                        w("head.fc1.weight"),
                        &d_cls_n,
                        b,
                        hidden,
                        d,
                        None,
                    );
                }
            }
            c.extend(
                ks.layernorm
                    .backward(
                        gpu,
                        &LayerNormBackward {
                            dy: &d_cls_n,
                            x: &cls_x,
                            gamma: w("norm.weight"),
                            mean: &mean_f,
                            rstd: &rstd_f,
                            dx: &d_cls_x,
                            dgamma: gw("norm.weight"),
                            dbeta: gw("norm.bias"),
                            scratch: &reduce_scratch,
                            rows: b,
                            cols: d,
                            accumulate: false,
                        },
                    )
                    .map(Command::from),
            );
            c.push(ks.embed.scatter_cls(gpu, es, &d_cls_x, &grad_a).into());

            for (l, la) in layers.iter().enumerate().rev() {
                let p = |s: &str| format!("blocks.{l}.{s}");
                // MLP branch: grad_a holds dL/dx_{l+1}.
                let dy = if drop {
                    c.push(
                        ks.dropout
                            .backward(
                                gpu,
                                site(2 * l as u64 + 2),
                                &dropout_step,
                                &grad_a,
                                &d_branch,
                            )
                            .into(),
                    );
                    &d_branch
                } else {
                    &grad_a
                };
                g.weight_grad(c, dy, &la.act, gw(&p("mlp.fc2.weight")), m, d, f);
                c.extend(
                    ks.embed
                        .column_sum(
                            gpu,
                            dy,
                            gw(&p("mlp.fc2.bias")),
                            &reduce_scratch,
                            m,
                            d,
                            false,
                        )
                        .map(Command::from),
                );
                g.input_grad(
                    c,
                    dy,
                    w(&p("mlp.fc2.weight")),
                    &d_hidden,
                    m,
                    d,
                    f,
                    Some((&la.pre, act)),
                );
                g.weight_grad(c, &d_hidden, &la.h2, gw(&p("mlp.fc1.weight")), m, f, d);
                c.extend(
                    ks.embed
                        .column_sum(
                            gpu,
                            &d_hidden,
                            gw(&p("mlp.fc1.bias")),
                            &reduce_scratch,
                            m,
                            f,
                            false,
                        )
                        .map(Command::from),
                );
                g.input_grad(c, &d_hidden, w(&p("mlp.fc1.weight")), &d_h, m, f, d, None);
                c.push(Command::CopyBuffer {
                    src: grad_a.clone(),
                    dst: grad_b.clone(),
                });
                c.extend(
                    ks.layernorm
                        .backward(
                            gpu,
                            &LayerNormBackward {
                                dy: &d_h,
                                x: &la.mid,
                                gamma: w(&p("norm2.weight")),
                                mean: &la.mean2,
                                rstd: &la.rstd2,
                                dx: &grad_b,
                                dgamma: gw(&p("norm2.weight")),
                                dbeta: gw(&p("norm2.bias")),
                                scratch: &reduce_scratch,
                                rows: m,
                                cols: d,
                                accumulate: true,
                            },
                        )
                        .map(Command::from),
                );
                // Attention branch: grad_b holds dL/dmid.
                let dy = if drop {
                    c.push(
                        ks.dropout
                            .backward(
                                gpu,
                                site(2 * l as u64 + 1),
                                &dropout_step,
                                &grad_b,
                                &d_branch,
                            )
                            .into(),
                    );
                    &d_branch
                } else {
                    &grad_b
                };
                g.weight_grad(c, dy, &la.o, gw(&p("attn.proj.weight")), m, d, d);
                c.extend(
                    ks.embed
                        .column_sum(
                            gpu,
                            dy,
                            gw(&p("attn.proj.bias")),
                            &reduce_scratch,
                            m,
                            d,
                            false,
                        )
                        .map(Command::from),
                );
                g.input_grad(c, dy, w(&p("attn.proj.weight")), &d_o, m, d, d, None);
                c.extend(ks.attention.backward(
                    gpu,
                    ashape,
                    &la.qkv,
                    &la.o,
                    &la.lse,
                    &d_o,
                    &d_qkv,
                    &att_scratch,
                ));
                g.weight_grad(c, &d_qkv, &la.h1, gw(&p("attn.qkv.weight")), m, 3 * d, d);
                c.extend(
                    ks.embed
                        .column_sum(
                            gpu,
                            &d_qkv,
                            gw(&p("attn.qkv.bias")),
                            &reduce_scratch,
                            m,
                            3 * d,
                            false,
                        )
                        .map(Command::from),
                );
                g.input_grad(c, &d_qkv, w(&p("attn.qkv.weight")), &d_h, m, 3 * d, d, None);
                c.push(Command::CopyBuffer {
                    src: grad_b.clone(),
                    dst: grad_a.clone(),
                });
                c.extend(
                    ks.layernorm
                        .backward(
                            gpu,
                            &LayerNormBackward {
                                dy: &d_h,
                                x: &la.x,
                                gamma: w(&p("norm1.weight")),
                                mean: &la.mean1,
                                rstd: &la.rstd1,
                                dx: &grad_a,
                                dgamma: gw(&p("norm1.weight")),
                                dbeta: gw(&p("norm1.bias")),
                                scratch: &reduce_scratch,
                                rows: m,
                                cols: d,
                                accumulate: true,
                            },
                        )
                        .map(Command::from),
                );
            }
            // embedding: grad_a holds dL/dx_0
            c.push(ks.embed.tokens_backward(gpu, es, &grad_a, &d_pe).into());
            c.push(
                ks.embed
                    .pos_cls_backward(gpu, es, &grad_a, gw("pos_embed"), gw("cls_token"))
                    .into(),
            );
            g.weight_grad(
                c,
                &d_pe,
                &patches,
                gw("patch_embed.proj.weight"),
                b * np,
                d,
                pl,
            );
            c.extend(
                ks.embed
                    .column_sum(
                        gpu,
                        &d_pe,
                        gw("patch_embed.proj.bias"),
                        &reduce_scratch,
                        b * np,
                        d,
                        false,
                    )
                    .map(Command::from),
            );

            let hyper_buf =
                AdamW::hyper_buffer(gpu, &Hyper::at_step(0.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 1));
            let partial = alloc.buf("grad norms", AdamW::partial_len(params.len()))?;
            let slots: Vec<ParamSlot> = params
                .iter()
                .map(|p| ParamSlot {
                    param: &p.value,
                    grad: p.grad.as_ref().unwrap_or(&p.value),
                    m: p.m.as_ref().unwrap_or(&p.value),
                    v: p.v.as_ref().unwrap_or(&p.value),
                    len: p.spec.len(),
                    decay: p.spec.decay,
                })
                .collect();
            optimizer.extend(
                ks.adamw
                    .record(gpu, &slots, &hyper_buf, &partial)
                    .into_iter()
                    .map(Command::from),
            );
            hyper = Some(hyper_buf);
            grad_stats = Some(partial);
        }

        let param_count = params.len();
        Ok(Vit {
            cfg: cfg.clone(),
            batch,
            mode,
            params,
            images,
            labels,
            logits,
            losses,
            correct,
            grad_stats,
            hyper,
            dropout_step,
            forward_train,
            forward_eval,
            backward,
            optimizer,
            param_count,
            layer_qkv: layers.iter().map(|la| la.qkv.clone()).collect(),
            maps: std::sync::OnceLock::new(),
        })
    }

    /// Upload one batch (images [B,C,H,W] normalised, labels [B]); queued, no device wait.
    pub fn write_batch(&self, gpu: &Gpu, images: &[f32], labels: &[u32]) {
        gpu.write(&self.images, images);
        gpu.write(&self.labels, labels);
    }

    /// Per-step values: dropout's step counter and the optimiser's hyper-parameters.
    pub fn write_step(&self, gpu: &Gpu, step: u64, lr: f32, opt: &OptimConfig) {
        dropout::write_step(gpu, &self.dropout_step, step as u32);
        if let Some(h) = &self.hyper {
            let hyper = Hyper::at_step(
                lr,
                opt.beta1,
                opt.beta2,
                opt.eps,
                opt.weight_decay,
                opt.max_grad_norm,
                step.max(1),
            );
            AdamW::write_hyper(gpu, h, &hyper);
        }
    }

    /// Forward (with dropout when training) + loss + backward, no optimizer step.
    pub fn record_gradients(&self, encoder: &mut wgpu::CommandEncoder) {
        let forward = if self.forward_train.is_empty() {
            &self.forward_eval
        } else {
            &self.forward_train
        };
        crate::gpu::record_commands(encoder, forward);
        crate::gpu::record_commands(encoder, &self.backward);
    }

    /// A whole training step: forward, loss, backward, AdamW.
    pub fn record_train_step(&self, encoder: &mut wgpu::CommandEncoder) {
        self.record_gradients(encoder);
        crate::gpu::record_commands(encoder, &self.optimizer);
    }

    /// Forward and loss without dropout (evaluation, inference).
    pub fn record_forward(&self, encoder: &mut wgpu::CommandEncoder) {
        crate::gpu::record_commands(encoder, &self.forward_eval);
    }

    /// The command lists of one step in order (forward, then for training backward and
    /// optimizer), for profiling.
    pub fn step_commands(&self, mode: Mode) -> Vec<&[Command]> {
        let forward = if self.forward_train.is_empty() || mode == Mode::Infer {
            &self.forward_eval
        } else {
            &self.forward_train
        };
        match mode {
            Mode::Infer => vec![forward],
            Mode::Train => vec![forward, &self.backward, &self.optimizer],
        }
    }

    /// Train only the tensors `trainable` accepts (e.g. the head alone: a linear probe);
    /// the others keep their values and leave the gradient-norm clip.
    pub fn set_trainable(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        trainable: impl Fn(&ParamSpec) -> bool,
    ) {
        let (Some(hyper), Some(partial)) = (&self.hyper, &self.grad_stats) else {
            return;
        };
        let slots: Vec<ParamSlot> = self
            .params
            .iter()
            .filter(|p| trainable(&p.spec))
            .filter_map(|p| match (&p.grad, &p.m, &p.v) {
                (Some(grad), Some(m), Some(v)) => Some(ParamSlot {
                    param: &p.value,
                    grad,
                    m,
                    v,
                    len: p.spec.len(),
                    decay: p.spec.decay,
                }),
                _ => None,
            })
            .collect();
        self.optimizer = kernels
            .adamw
            .record(gpu, &slots, hyper, partial)
            .into_iter()
            .map(Command::from)
            .collect();
    }

    /// Number of parameter tensors.
    pub fn tensor_count(&self) -> usize {
        self.param_count
    }

    /// Copy every parameter back to the host (waits).
    pub fn read_params(&self, gpu: &Gpu) -> Result<HostParams, GpuError> {
        let mut values = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut v: Vec<f32> = gpu.read(&p.value)?;
            v.truncate(p.spec.len());
            values.push(v);
        }
        Ok(HostParams {
            specs: self.params.iter().map(|p| p.spec.clone()).collect(),
            values,
        })
    }

    /// Copy every parameter gradient back to the host (waits). Empty in inference mode.
    pub fn read_grads(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, GpuError> {
        let mut out = Vec::new();
        for p in &self.params {
            if let Some(g) = &p.grad {
                let mut v: Vec<f32> = gpu.read(g)?;
                v.truncate(p.spec.len());
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Optimiser moments (m, v) per tensor, for checkpoints (waits).
    pub fn read_moments(&self, gpu: &Gpu) -> Result<Vec<Moments>, GpuError> {
        let mut out = Vec::new();
        for p in &self.params {
            if let (Some(m), Some(v)) = (&p.m, &p.v) {
                let mut mv: Vec<f32> = gpu.read(m)?;
                let mut vv: Vec<f32> = gpu.read(v)?;
                mv.truncate(p.spec.len());
                vv.truncate(p.spec.len());
                out.push((mv, vv));
            }
        }
        Ok(out)
    }

    /// Restore optimiser moments (resume).
    pub fn write_moments(&self, gpu: &Gpu, moments: &[(Vec<f32>, Vec<f32>)]) {
        for (p, (mv, vv)) in self.params.iter().zip(moments) {
            if let (Some(m), Some(v)) = (&p.m, &p.v) {
                gpu.write(m, mv);
                gpu.write(v, vv);
            }
        }
    }

    /// Inference only: the attention probabilities of every layer, each [B, A, N, N]
    /// row-major, computed by the attention kernels from the qkv of the last forward (call
    /// after `record_forward`'s commands were submitted; waits for the device).
    pub fn attention_maps(
        &self,
        gpu: &Gpu,
        kernels: &Kernels,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let shape = AttentionShape {
            batch: self.batch,
            tokens: self.cfg.tokens(),
            heads: self.cfg.heads,
            head_dim: self.cfg.head_dim(),
        };
        if self.maps.get().is_none() {
            let alloc = Alloc {
                gpu,
                batch: self.batch,
            };
            let mut bufs = Vec::with_capacity(self.layer_qkv.len());
            let mut cmds = Vec::new();
            for qkv in &self.layer_qkv {
                let probs = alloc.buf("attention probabilities", shape.probs_len())?;
                cmds.extend(kernels.attention.probabilities(gpu, shape, qkv, &probs));
                bufs.push(probs);
            }
            let _ = self.maps.set((bufs, cmds));
        }
        let Some((bufs, cmds)) = self.maps.get() else {
            unreachable!("attention maps were just built")
        };
        gpu.submit_commands(cmds);
        let mut out = Vec::with_capacity(bufs.len());
        for b in bufs {
            let mut v: Vec<f32> = gpu.read(b)?;
            v.truncate(shape.probs_len());
            out.push(v);
        }
        Ok(out)
    }

    /// Each layer's qkv [B*N, 3D] of the last forward, read back (waits; for tests).
    pub fn read_layer_qkv(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, GpuError> {
        self.layer_qkv.iter().map(|b| gpu.read(b)).collect()
    }

    /// Overwrite all parameter values (same shapes).
    pub fn write_params(&self, gpu: &Gpu, host: &HostParams) {
        for (p, v) in self.params.iter().zip(&host.values) {
            gpu.write(&p.value, v);
        }
    }
}
