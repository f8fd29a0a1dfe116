//! The command line: info, train, eval, infer, bench.

pub mod commands;
pub mod resolve;
pub mod runs;

use crate::gpu::{BackendChoice, LimitsMode};
use crate::model::config::{Act, Config, Head, Preset};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vit-wgpu",
    version,
    about = "Train and run a Vision Transformer with hand-written WGSL compute shaders on any GPU wgpu reaches",
    long_about = None
)]
pub struct Cli {
    /// Graphics API (also taken from WGPU_BACKEND when `auto`).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub backend: BackendChoice,
    /// Adapter index from `vit-wgpu info` (default: the best GPU, then a CPU adapter).
    #[arg(long, global = true)]
    pub adapter: Option<usize>,
    /// Device limits: the adapter's own, or WebGPU's defaults with only the features
    /// browsers have (what the portable kernels must fit).
    #[arg(
        long,
        value_enum,
        env = "VIT_LIMITS",
        default_value = "adapter",
        global = true
    )]
    pub limits: LimitsMode,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List every adapter with its backend, type, driver, limits and features.
    Info,
    /// Train a model (no flags: the seed's experiment, labml preset on CIFAR-10).
    Train(TrainArgs),
    /// Accuracy, per-class accuracy and confusion matrix of a checkpoint on a test set.
    Eval(EvalArgs),
    /// Classify image files: top-k classes with probabilities.
    Infer(InferArgs),
    /// Time whole training (or inference) steps on random data.
    Bench(BenchArgs),
    /// Check this GPU against PyTorch: run a debug-state file made by
    /// scripts/make_parity_fixture.py and compare logits, loss and every gradient.
    Verify(VerifyArgs),
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Debug-state safetensors files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Relative-error tolerance for logits.
    #[arg(long, default_value_t = 1e-4)]
    pub logits_tol: f64,
    /// Relative-error tolerance for the loss.
    #[arg(long, default_value_t = 1e-4)]
    pub loss_tol: f64,
    /// Relative-error tolerance for each parameter gradient.
    #[arg(long, default_value_t = 1e-3)]
    pub grad_tol: f64,
    /// Relative-error tolerance for a trajectory fixture's per-step losses, learning rates and
    /// final parameters.
    #[arg(long, default_value_t = 1e-4)]
    pub trajectory_tol: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetKind {
    Cifar10,
    FashionMnist,
    Mnist,
    /// An image folder: DATA_DIR/<class>/*.png|jpg, or DATA_DIR/train/<class>/… with val/
    /// or test/ beside it (without one, --val-split holds out validation images).
    Folder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HeadKind {
    Linear,
    Mlp,
}

/// Model shape: a preset, with any field overridden.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Starting point for the model's shape.
    #[arg(long, value_enum, default_value = "labml")]
    pub preset: Preset,
    /// A timm architecture name (e.g. vit_small_patch16_224) instead of the preset: its
    /// shape, options and input size; the flags below override it.
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Input size, H or HxW (a multiple of the patch size).
    #[arg(long, value_parser = parse_size)]
    pub image_size: Option<(usize, usize)>,
    #[arg(long)]
    pub patch: Option<usize>,
    /// Width D.
    #[arg(long)]
    pub dim: Option<usize>,
    /// Number of transformer blocks.
    #[arg(long)]
    pub depth: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub mlp_hidden: Option<usize>,
    #[arg(long, value_enum)]
    pub act: Option<Act>,
    #[arg(long, value_enum)]
    pub head: Option<HeadKind>,
    /// Hidden width of the MLP head.
    #[arg(long)]
    pub head_hidden: Option<usize>,
    #[arg(long)]
    pub dropout: Option<f32>,
    #[arg(long)]
    pub ln_eps: Option<f32>,
    /// Number of classes (default: the dataset's).
    #[arg(long)]
    pub classes: Option<usize>,
}

pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{s}' is not a size like 32 or 24x40"))
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

/// What a plain timm state_dict cannot say about its model (ignored for our checkpoints,
/// whose metadata carries the config) and the resolution to run at.
#[derive(Args, Debug, Clone, Default)]
pub struct HintArgs {
    /// Run at this input size, H or HxW (same patch size: the position embeddings are
    /// resampled as timm does).
    #[arg(long, value_parser = parse_size)]
    pub image_size: Option<(usize, usize)>,
    /// Attention heads of a timm checkpoint (default: width / 64).
    #[arg(long)]
    pub heads: Option<usize>,
    /// MLP activation of a timm checkpoint (default: gelu).
    #[arg(long, value_enum)]
    pub act: Option<Act>,
    /// LayerNorm eps of a timm checkpoint (default: 1e-6).
    #[arg(long)]
    pub ln_eps: Option<f32>,
}

impl HintArgs {
    pub fn hints(&self) -> crate::model::checkpoint::ConfigHints {
        crate::model::checkpoint::ConfigHints {
            heads: self.heads,
            act: self.act,
            ln_eps: self.ln_eps,
            image_size: self.image_size,
        }
    }
}

impl ModelArgs {
    /// `base` (e.g. an --init checkpoint's config) with only the flags given applied.
    pub fn apply(&self, mut c: Config) -> Config {
        if let Some((h, w)) = self.image_size {
            c.image_h = h;
            c.image_w = w;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(patch, dim, depth, heads, mlp_hidden, act, dropout, ln_eps, classes);
        match self.head {
            Some(HeadKind::Linear) => c.head = Head::Linear,
            Some(HeadKind::Mlp) => {
                c.head = Head::Mlp {
                    hidden: self.head_hidden.unwrap_or(4 * c.dim),
                }
            }
            None => {}
        }
        c
    }

    /// `--arch`'s config (checked by `resolve::check_model` before any use).
    pub fn arch_config(&self) -> Option<Result<Config, crate::model::arch::ArchError>> {
        let name = self.arch.as_deref()?;
        Some(crate::model::arch::lookup(name).and_then(|(args, _)| {
            // A feature model (num_classes 0) gets the data's classes later.
            let classes = (args.num_classes < 2).then_some(10);
            args.to_config(&format!("--arch {name}"), classes)
        }))
    }

    /// The preset (or `--arch`) with overrides applied; channels come from the data.
    pub fn config(&self, channels: Option<usize>, classes: Option<usize>) -> Config {
        let mut c = match self.arch_config() {
            Some(Ok(c)) => c,
            _ => self.preset.config(),
        };
        if let Some((h, w)) = self.image_size {
            c.image_h = h;
            c.image_w = w;
        }
        if let Some(ch) = channels {
            c.channels = ch;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(patch, dim, depth, heads, mlp_hidden, act, dropout, ln_eps);
        if let Some(k) = self.classes.or(classes) {
            c.classes = k;
        }
        let hidden = self.head_hidden.unwrap_or(match c.head {
            Head::Mlp { hidden } => hidden,
            Head::Linear => 4 * c.dim,
        });
        match self.head {
            Some(HeadKind::Linear) => c.head = Head::Linear,
            Some(HeadKind::Mlp) => c.head = Head::Mlp { hidden },
            None => {
                if let Head::Mlp { .. } = c.head {
                    c.head = Head::Mlp { hidden }
                }
            }
        }
        c
    }
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    #[arg(long, value_enum, default_value = "cifar10")]
    pub dataset: DatasetKind,
    /// Where the dataset lives (default: ./data/<dataset>; Fashion-MNIST also looks in
    /// /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist package).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    pub limit_eval: Option<usize>,
    /// Folder datasets: decoding threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Folder datasets: decode everything into memory at the model's size before training
    /// (pad-and-crop augmentation) instead of streaming with timm's transforms.
    #[arg(long)]
    pub in_memory: bool,
    /// Streamed folders: resampling filter of the crops and resizes.
    #[arg(long, default_value = "bilinear")]
    pub interpolation: crate::data::transforms::Interpolation,
    /// Streamed folders: evaluation resizes to size/crop_pct, then center-crops (timm).
    #[arg(long, default_value_t = 0.875)]
    pub crop_pct: f64,
    /// Per-channel mean: `imagenet`, `0.5`, or comma-separated values (default: 0.5, or
    /// the checkpoint's for eval). Stored in the checkpoint, so infer uses it.
    #[arg(long)]
    pub mean: Option<String>,
    /// Per-channel standard deviation: `imagenet`, `0.5`, or comma-separated values.
    #[arg(long)]
    pub std: Option<String>,
    /// Folders without val/ or test/: validate on this fraction of each class's training
    /// images, held out by a fixed-seed shuffle (the same split for every run and for
    /// `eval`). Training defaults to 0.1.
    #[arg(long, value_name = "FRACTION")]
    pub val_split: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// First: clap's derive takes each field's values out of the matches as it reads them.
    #[command(flatten)]
    pub given: runs::Given,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 32)]
    pub epochs: u64,
    /// Images per optimiser step (under mpirun: the global batch, split over the ranks).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2.5e-4)]
    pub lr: f32,
    /// Decoupled weight decay (AdamW) on weight matrices only.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Linear warmup steps (default: 5% of all steps).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Keep the learning rate constant after warmup instead of cosine decay.
    #[arg(long)]
    pub constant_lr: bool,
    /// Global gradient-norm clip (0 turns it off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f32,
    /// Adam's first-moment decay, in [0, 1).
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f32,
    /// Adam's second-moment decay, in [0, 1).
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f32,
    /// Checkpoint every N optimiser steps (default: about every 10 minutes); always at the
    /// end of an epoch. A resume continues at the exact batch.
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Past checkpoints to keep (step-N.safetensors) besides last and best.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub keep: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder for metrics and checkpoints (default: runs/<preset>-<dataset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue a run in its folder (DIR, or a checkpoint in it), with the flags in its
    /// run.json: only --epochs, --save-every, --keep, --workers, --data-dir and this run's
    /// --max-steps, --quiet, --log-steps may differ.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start from these weights (ours or a timm state_dict). The model takes the
    /// checkpoint's shape; --head/--classes give it a fresh head (the body is kept), and
    /// --image-size fine-tunes at another resolution (position embeddings resampled).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// With --init: train the head alone (a linear probe).
    #[arg(long, requires = "init")]
    pub freeze_body: bool,
    /// Train on the first N training images only.
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Stop after this many optimiser steps in all, checkpointing the exact position.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// No random crop / flip.
    #[arg(long)]
    pub no_augment: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Write every optimiser step's mean training loss (over the whole global batch) to
    /// FILE, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub log_steps: Option<PathBuf>,
    /// Every rank writes its final parameters to DIR/rank-<R>.safetensors (to check that
    /// the ranks of a data-parallel run agree).
    #[arg(long, value_name = "DIR", hide = true)]
    pub rank_weights: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// First: clap's derive takes each field's values out of the matches as it reads them.
    #[command(flatten)]
    pub given: runs::Given,
    /// Our checkpoint, a run folder (its best.safetensors, evaluated on the run's data
    /// unless data flags say otherwise), a timm state_dict or a model folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub hints: HintArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct InferArgs {
    /// Our checkpoint, a run folder (its best.safetensors), a timm state_dict or a model
    /// folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub hints: HintArgs,
    /// Image files (any size or format the image crate reads) or folders of them
    /// (searched recursively).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Decoding threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Class names, comma separated (default: from the checkpoint, else class indices).
    #[arg(long)]
    pub classes: Option<String>,
    /// One JSON object per image.
    #[arg(long)]
    pub json: bool,
    /// Write attention maps to DIR: <stem>_attention.png (the image and its attention
    /// rollout) and <stem>_heads.png (the last layer's CLS attention per head).
    #[arg(long, value_name = "DIR")]
    pub attention: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    Train,
    Infer,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "train")]
    pub mode: BenchMode,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup_steps: usize,
    /// One machine-readable JSON line.
    #[arg(long)]
    pub json: bool,
    /// Also time every launch alone and print the share of a step per kernel family.
    #[arg(long)]
    pub profile: bool,
    /// Also measure the data loader: `folder` streams DATA_DIR (its train/ subfolder if
    /// present) with timm's training transforms at the model's input size.
    #[arg(long, value_enum)]
    pub data: Option<BenchData>,
    #[arg(long, requires = "data")]
    pub data_dir: Option<PathBuf>,
    /// Loader threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Loader: stop after this many batches (default: one epoch).
    #[arg(long)]
    pub data_batches: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchData {
    Folder,
}
