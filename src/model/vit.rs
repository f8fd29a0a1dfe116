//! The whole ViT on the device: the parameter arena and every buffer allocated once per
//! (model, batch size), every bind group built once, and a training step recorded once as
//! a fixed list of commands by the schedule in `schedule.rs`.

use super::arena::{Arena, Layout};
use super::config::Config;
use super::error::ModelError;
use super::params::{HostParams, ParamSpec};
use super::recorder::Recorder;
use super::schedule::{Alloc, Net};
use crate::gpu::{Command, Gpu, GpuError, Record};
use crate::kernels::adamw::{AdamW, AdamWArgs, AdamWChunk, Hyper};
use crate::kernels::attention::AttentionProbabilities;
use crate::kernels::dropout;
pub use crate::kernels::Kernels;

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
    /// Every parameter (and, when training, gradient and moments) in a few chunks per role.
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
    /// Forward and loss without dropout (evaluation, inference).
    forward_eval: Vec<Command>,
    /// Training: forward (with dropout) and loss, then the backward, one list (see
    /// `record_lists`); empty for an inference model.
    forward_backward: Vec<Command>,
    optimizer: Vec<Command>,
    /// The flat arena range AdamW updates (all of it, or the head alone).
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

/// The command lists, recorded once: the evaluation forward (no dropout), and for a
/// training model the training pass, forward (with dropout) and backward as ONE list that
/// always runs whole and in order. So whatever a kernel family records in the forward for
/// the backward to reuse is never stale, with no rule on the order in which lists run.
fn record_lists(
    gpu: &Gpu,
    kernels: &Kernels,
    arena: &Arena,
    net: &Net,
) -> (Vec<Command>, Vec<Command>) {
    let no_scratch = gpu.storage("no reduce scratch", 1);
    let record = |pass: &dyn Fn(&mut Recorder)| {
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
        pass(&mut r);
        r.commands
    };
    let forward_eval = record(&|r| net.forward(r, false));
    let forward_backward = match net.grads {
        Some(_) => record(&|r| {
            net.forward(r, true);
            net.backward(r);
        }),
        None => Vec::new(),
    };
    (forward_eval, forward_backward)
}

impl Vit {
    /// The model with its arena in chunks as large as the adapter binds (or as
    /// `VIT_ARENA_CHUNK_BYTES` says).
    pub fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        cfg: &Config,
        host: &HostParams,
        batch: usize,
        mode: Mode,
        seed: u64,
    ) -> Result<Vit, ModelError> {
        Self::with_chunk_bytes(gpu, kernels, cfg, host, batch, mode, seed, None)
    }

    /// The same with arena chunks of at most `chunk_bytes` (tests run small models in
    /// several chunks).
    #[allow(clippy::too_many_arguments)]
    pub fn with_chunk_bytes(
        gpu: &Gpu,
        kernels: &Kernels,
        cfg: &Config,
        host: &HostParams,
        batch: usize,
        mode: Mode,
        seed: u64,
        chunk_bytes: Option<u64>,
    ) -> Result<Vit, ModelError> {
        cfg.validate()?;
        let train = mode == Mode::Train;
        let specs = super::params::param_specs(cfg);
        let values = ordered_values(&specs, host)?;
        let max_chunk = Arena::max_chunk(gpu, chunk_bytes)?;
        let layout = Layout::new(&specs, Arena::alignment(gpu), max_chunk)?;
        let arena = Arena::new(gpu, layout, &values, train);
        let alloc = Alloc { gpu, batch };
        let net = Net::new(&alloc, cfg, &arena.layout, train, seed)?;

        let (forward_eval, forward_backward) = record_lists(gpu, kernels, &arena, &net);
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
            forward_eval,
            forward_backward,
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
        crate::gpu::record_commands(encoder, &self.forward_backward);
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
        (self.forward_eval, self.forward_backward) =
            record_lists(gpu, kernels, &self.arena, &self.net);
    }

    /// The flat arena range the optimizer updates (`arena.layout.pieces` splits it by
    /// chunk): the gradients that must be summed over ranks.
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

    /// The command lists of one step in order, for profiling: the forward; for training the
    /// forward and backward (one list), then the optimizer.
    pub fn step_commands(&self, mode: Mode) -> Vec<&[Command]> {
        match mode {
            Mode::Infer => vec![&self.forward_eval],
            Mode::Train => vec![&self.forward_backward, &self.optimizer],
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
        let layout = &a.layout;
        let mut pieces = layout.pieces(range);
        if pieces.is_empty() {
            // Nothing to train (empty tensors): the norm is still written, as zero.
            pieces.push((0, 0..0));
        }
        let decay_end = layout.pieces(0..layout.decay_end);
        let chunks = pieces
            .into_iter()
            .map(|(c, range)| {
                let decay = decay_end.iter().find(|(d, _)| *d == c);
                let decay_end = decay.map_or(0, |(_, r)| r.end);
                AdamWChunk {
                    params: &a.values[c],
                    grads: &grads[c],
                    m: &m[c],
                    v: &v[c],
                    decay_end: decay_end.clamp(range.start, range.end),
                    range,
                }
            })
            .collect();
        let args = AdamWArgs {
            chunks,
            hyper,
            stats,
        };
        self.optimizer = gpu.commands(&kernels.adamw, &args);
    }

    /// Number of parameter tensors.
    pub fn tensor_count(&self) -> usize {
        self.arena.layout.specs.len()
    }

    /// Copy every parameter back to the host (one copy per chunk; waits).
    pub async fn read_params(&self, gpu: &Gpu) -> Result<HostParams, GpuError> {
        Ok(HostParams {
            specs: self.arena.layout.specs.clone(),
            values: self.read_role(gpu, &self.arena.values).await?,
        })
    }

    /// Per-tensor data of one role of the arena (waits).
    async fn read_role(
        &self,
        gpu: &Gpu,
        chunks: &[wgpu::Buffer],
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let mut host = Vec::with_capacity(chunks.len());
        for c in chunks {
            host.push(gpu.read::<f32>(c).await?);
        }
        Ok(self.arena.layout.unpack(&host))
    }

    /// Overwrite one role of the arena from per-tensor data (queued).
    fn write_role<T: AsRef<[f32]>>(&self, gpu: &Gpu, chunks: &[wgpu::Buffer], tensors: &[T]) {
        for (buffer, host) in chunks.iter().zip(self.arena.layout.pack(tensors)) {
            gpu.write(buffer, &host);
        }
    }

    /// Copy every parameter gradient back to the host (waits). Empty in inference mode.
    pub async fn read_grads(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, GpuError> {
        match &self.arena.grads {
            Some(g) => self.read_role(gpu, g).await,
            None => Ok(Vec::new()),
        }
    }

    /// Optimiser moments (m, v) per tensor, for checkpoints (waits).
    pub async fn read_moments(&self, gpu: &Gpu) -> Result<Vec<Moments>, GpuError> {
        let (Some(m), Some(v)) = (&self.arena.m, &self.arena.v) else {
            return Ok(Vec::new());
        };
        let ms = self.read_role(gpu, m).await?;
        let vs = self.read_role(gpu, v).await?;
        Ok(ms.into_iter().zip(vs).collect())
    }

    /// Restore optimiser moments (resume).
    pub fn write_moments(&self, gpu: &Gpu, moments: &[(Vec<f32>, Vec<f32>)]) {
        if let (Some(m), Some(v)) = (&self.arena.m, &self.arena.v) {
            let ms: Vec<&[f32]> = moments.iter().map(|(m, _)| m.as_slice()).collect();
            let vs: Vec<&[f32]> = moments.iter().map(|(_, v)| v.as_slice()).collect();
            self.write_role(gpu, m, &ms);
            self.write_role(gpu, v, &vs);
        }
    }

    /// Overwrite all parameter values (same shapes, `param_specs` order; one copy per chunk).
    pub fn write_params(&self, gpu: &Gpu, host: &HostParams) {
        self.write_role(gpu, &self.arena.values, &host.values);
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
