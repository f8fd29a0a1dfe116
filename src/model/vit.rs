//! The whole ViT on the device: the parameter arena and every buffer allocated once per
//! (model, batch size), every bind group built once, and a training step recorded once as
//! a fixed list of commands by the schedule in `schedule.rs`.

use super::arena::{Arena, Layout};
use super::config::Config;
use super::params::{HostParams, ParamSpec};
use super::recorder::Recorder;
use super::schedule::{Alloc, Net};
use crate::gpu::{Command, Gpu, GpuError, Record};
use crate::kernels::adamw::{AdamW, AdamWArgs, Hyper};
use crate::kernels::attention::AttentionProbabilities;
use crate::kernels::dropout;
pub use crate::kernels::Kernels;

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

pub struct Vit {
    pub cfg: Config,
    pub batch: usize,
    pub mode: Mode,
    /// Every parameter (and, when training, gradient and moments) in one buffer per role.
    pub arena: Arena,
    /// Input images [B, C, H, W] (normalised) and labels [B] (u32).
    pub images: wgpu::Buffer,
    pub labels: wgpu::Buffer,
    pub logits: wgpu::Buffer,
    pub losses: wgpu::Buffer,
    pub correct: wgpu::Buffer,
    /// After each step, the clip scale at `AdamW::scale_index()` and the gradient norm
    /// before clipping after it.
    pub grad_stats: Option<wgpu::Buffer>,
    net: Net,
    hyper: Option<wgpu::Buffer>,
    forward_train: Vec<Command>,
    forward_eval: Vec<Command>,
    backward: Vec<Command>,
    optimizer: Vec<Command>,
    /// The arena range AdamW updates (all of it, or the head alone).
    trainable: std::ops::Range<usize>,
    /// Added to dropout's element index (see [`Vit::set_shard`]).
    dropout_offset: u32,
    /// Attention maps: per-layer probabilities [B, A, N, N] and the commands writing them,
    /// built on the first `attention_maps` call (never part of a training step).
    maps: std::sync::OnceLock<(Vec<wgpu::Buffer>, Vec<Command>)>,
}

/// The host values in `specs` order, each checked against its spec by name.
fn ordered_values<'h>(
    specs: &[ParamSpec],
    host: &'h HostParams,
) -> Result<Vec<&'h [f32]>, ModelError> {
    specs
        .iter()
        .map(|spec| {
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
            Ok(host.values[i].as_slice())
        })
        .collect()
}

/// The forward (eval), forward with dropout (empty without dropout) and backward command
/// lists, recorded once. The training forward and the backward are recorded as one list and
/// split, so the backward's GEMMs reuse the forward's texture copies of weights and saved
/// activations (`texture::rows_of`): the backward list must only run right after that
/// forward, as `step_commands` orders them.
fn record_lists(
    gpu: &Gpu,
    kernels: &Kernels,
    arena: &Arena,
    net: &Net,
) -> (Vec<Command>, Vec<Command>, Vec<Command>) {
    let no_scratch = gpu.storage("no reduce scratch", 1);
    // `first` then `then` recorded into one list (so `then` reuses `first`'s texture
    // copies), returned as the two parts.
    let record = |first: &dyn Fn(&mut Recorder), then: &dyn Fn(&mut Recorder)| {
        let mut r = Recorder {
            gpu,
            kernels,
            arena,
            reduce_scratch: net
                .grads
                .as_ref()
                .map_or(&no_scratch, |g| &g.reduce_scratch),
            commands: Vec::new(),
        };
        first(&mut r);
        let split = r.commands.len();
        then(&mut r);
        let second = r.commands.split_off(split);
        (r.commands, second)
    };
    let forward_eval = |r: &mut Recorder| net.forward(r, false);
    let forward_train = |r: &mut Recorder| net.forward(r, true);
    let backward = |r: &mut Recorder| net.backward(r);
    let nothing = |_: &mut Recorder| {};
    if net.grads.is_none() {
        let (forward, _) = record(&forward_eval, &nothing);
        (forward, Vec::new(), Vec::new())
    } else if net.dropout > 0.0 {
        let (eval, _) = record(&forward_eval, &nothing);
        let (train, backward) = record(&forward_train, &backward);
        (eval, train, backward)
    } else {
        let (forward, backward) = record(&forward_eval, &backward);
        (forward, Vec::new(), backward)
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
        let train = mode == Mode::Train;
        let specs = super::params::param_specs(cfg);
        let values = ordered_values(&specs, host)?;
        let layout = Layout::new(&specs, Arena::alignment(gpu));
        let arena = Arena::new(gpu, layout, &values, train);
        let alloc = Alloc { gpu, batch };
        let net = Net::new(&alloc, cfg, &arena.layout, train, seed)?;

        let (forward_eval, forward_train, backward) = record_lists(gpu, kernels, &arena, &net);
        let (hyper, grad_stats) = if train {
            let hyper = Hyper::at_step(0.0, 0.9, 0.999, 1e-8, 0.0, 0.0, 1);
            let stats = alloc.buf("gradient norm", AdamW::stats_len())?;
            (Some(AdamW::hyper_buffer(gpu, &hyper)), Some(stats))
        } else {
            (None, None)
        };
        let mut model = Vit {
            cfg: cfg.clone(),
            batch,
            mode,
            images: net.images.clone(),
            labels: net.labels.clone(),
            logits: net.logits.clone(),
            losses: net.losses.clone(),
            correct: net.correct.clone(),
            grad_stats,
            hyper,
            forward_train,
            forward_eval,
            backward,
            optimizer: Vec::new(),
            trainable: 0..0,
            dropout_offset: 0,
            maps: std::sync::OnceLock::new(),
            arena,
            net,
        };
        model.set_trainable(gpu, kernels, |_| true);
        Ok(model)
    }

    /// Upload one batch (images [B,C,H,W] normalised, labels [B]); queued, no device wait.
    pub fn write_batch(&self, gpu: &Gpu, images: &[f32], labels: &[u32]) {
        gpu.write(&self.images, images);
        gpu.write(&self.labels, labels);
    }

    /// Per-step values: dropout's step counter and the optimiser's hyper-parameters.
    pub fn write_step(&self, gpu: &Gpu, step: u64, lr: f32, opt: &OptimConfig) {
        dropout::write_step(
            gpu,
            &self.net.dropout_step,
            step as u32,
            self.dropout_offset,
        );
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
        for list in &self.step_commands(Mode::Train)[..2] {
            crate::gpu::record_commands(encoder, list);
        }
    }

    /// AdamW alone, on the gradients in the arena (after they were summed over ranks).
    pub fn record_optimizer(&self, encoder: &mut wgpu::CommandEncoder) {
        crate::gpu::record_commands(encoder, &self.optimizer);
    }

    /// Make this model (of batch `b`) one rank's shard of a global batch starting at sample
    /// `first`: dropout masks become those of the global positions, and the loss gradient is
    /// scaled by 1/`global_batch`, so the ranks' gradients sum to the whole batch's.
    pub fn set_shard(&mut self, gpu: &Gpu, kernels: &Kernels, first: usize, global_batch: usize) {
        let per_sample = self.cfg.tokens() * self.cfg.dim;
        self.dropout_offset = (first * per_sample) as u32;
        self.net.loss_grad_scale = 1.0 / global_batch as f32;
        let (eval, train, backward) = record_lists(gpu, kernels, &self.arena, &self.net);
        (self.forward_eval, self.forward_train, self.backward) = (eval, train, backward);
    }

    /// The arena range the optimizer updates: the gradients that must be summed over ranks.
    pub fn trainable(&self) -> std::ops::Range<usize> {
        self.trainable.clone()
    }

    /// A whole training step: forward, loss, backward, AdamW.
    pub fn record_train_step(&self, encoder: &mut wgpu::CommandEncoder) {
        for list in self.step_commands(Mode::Train) {
            crate::gpu::record_commands(encoder, list);
        }
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

    /// Kernel launches in one step (copies aside).
    pub fn dispatches_per_step(&self, mode: Mode) -> usize {
        let lists = self.step_commands(mode);
        lists
            .iter()
            .flat_map(|l| l.iter())
            .filter(|c| c.is_dispatch())
            .count()
    }

    /// Train only the tensors `trainable` accepts (e.g. the head alone: a linear probe);
    /// the others keep their values and leave the gradient-norm clip. The accepted tensors
    /// must be one range of the arena: all of them, or the head (see `arena.rs`).
    pub fn set_trainable(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        trainable: impl Fn(&ParamSpec) -> bool,
    ) {
        let a = &self.arena;
        let (Some(hyper), Some(stats), Some(grads), Some(m), Some(v)) =
            (&self.hyper, &self.grad_stats, &a.grads, &a.m, &a.v)
        else {
            return;
        };
        let range = match a.layout.range_of(trainable) {
            Some(r) => r,
            None => panic!("internal: the trainable tensors are not one range of the arena"),
        };
        self.trainable = range.clone();
        let args = AdamWArgs {
            params: &a.values,
            grads,
            m,
            v,
            decay_end: a.layout.decay_end.clamp(range.start, range.end),
            range,
            hyper,
            stats,
        };
        self.optimizer = gpu.commands(&kernels.adamw, &args);
    }

    /// Number of parameter tensors.
    pub fn tensor_count(&self) -> usize {
        self.arena.layout.specs.len()
    }

    /// Copy every parameter back to the host (one copy; waits).
    pub async fn read_params(&self, gpu: &Gpu) -> Result<HostParams, GpuError> {
        let arena: Vec<f32> = gpu.read(&self.arena.values).await?;
        Ok(HostParams {
            specs: self.arena.layout.specs.clone(),
            values: self.arena.layout.unpack(&arena),
        })
    }

    /// Copy every parameter gradient back to the host (waits). Empty in inference mode.
    pub async fn read_grads(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, GpuError> {
        match &self.arena.grads {
            Some(g) => Ok(self.arena.layout.unpack(&gpu.read::<f32>(g).await?)),
            None => Ok(Vec::new()),
        }
    }

    /// Optimiser moments (m, v) per tensor, for checkpoints (waits).
    pub async fn read_moments(&self, gpu: &Gpu) -> Result<Vec<Moments>, GpuError> {
        let (Some(m), Some(v)) = (&self.arena.m, &self.arena.v) else {
            return Ok(Vec::new());
        };
        let layout = &self.arena.layout;
        let ms = layout.unpack(&gpu.read::<f32>(m).await?);
        let vs = layout.unpack(&gpu.read::<f32>(v).await?);
        Ok(ms.into_iter().zip(vs).collect())
    }

    /// Restore optimiser moments (resume).
    pub fn write_moments(&self, gpu: &Gpu, moments: &[(Vec<f32>, Vec<f32>)]) {
        if let (Some(m), Some(v)) = (&self.arena.m, &self.arena.v) {
            let layout = &self.arena.layout;
            let ms: Vec<&[f32]> = moments.iter().map(|(m, _)| m.as_slice()).collect();
            let vs: Vec<&[f32]> = moments.iter().map(|(_, v)| v.as_slice()).collect();
            gpu.write(m, &layout.pack(&ms));
            gpu.write(v, &layout.pack(&vs));
        }
    }

    /// Overwrite all parameter values (same shapes, `param_specs` order; one copy).
    pub fn write_params(&self, gpu: &Gpu, host: &HostParams) {
        gpu.write(&self.arena.values, &self.arena.layout.pack(&host.values));
    }

    /// Inference only: the attention probabilities of every layer, each [B, A, N, N]
    /// row-major, computed by the attention kernels from the qkv of the last forward (call
    /// after `record_forward`'s commands were submitted; waits for the device).
    pub async fn attention_maps(
        &self,
        gpu: &Gpu,
        kernels: &Kernels,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let shape = self.net.attention_shape;
        if self.maps.get().is_none() {
            let alloc = Alloc {
                gpu,
                batch: self.batch,
            };
            let mut bufs = Vec::with_capacity(self.net.blocks.len());
            let mut cmds = Vec::new();
            for block in &self.net.blocks {
                let probs = alloc.buf("attention probabilities", shape.probs_len())?;
                let qkv = &block.qkv;
                let args = AttentionProbabilities {
                    shape,
                    qkv,
                    probs: &probs,
                };
                kernels.attention.record(gpu, &args, &mut cmds);
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
            let mut v: Vec<f32> = gpu.read(b).await?;
            v.truncate(shape.probs_len());
            out.push(v);
        }
        Ok(out)
    }

    /// Each layer's qkv [B*N, 3D] of the last forward, read back (waits; for tests).
    pub async fn read_layer_qkv(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, GpuError> {
        let mut out = Vec::with_capacity(self.net.blocks.len());
        for b in &self.net.blocks {
            out.push(gpu.read(&b.qkv).await?);
        }
        Ok(out)
    }
}
