//! Training: a [`Trainer`] (one optimiser step, one epoch) over a run folder
//! ([`run_folder::RunFolder`]: metrics, checkpoints, lock) with the losses read back through
//! a ring of staging buffers ([`ring::LossRing`]). Curves and other reports hang off the
//! epoch callback of [`train_with`].

pub mod ring;
pub mod schedule;
// The trainer runs on the operating system: data loader threads, a run folder, a clock,
// and MPI ranks.
#[cfg(feature = "native")]
pub mod exchange;
#[cfg(feature = "native")]
pub mod run_folder;
#[cfg(feature = "native")]
mod trainer;

#[cfg(feature = "native")]
pub use trainer::Trainer;

use crate::data::Dataset;
use crate::gpu::GpuError;
use crate::model::checkpoint::CheckpointError;
use crate::model::{Config, HostParams, ModelError};
use std::path::PathBuf;
#[cfg(feature = "native")]
use {crate::data::Loader, crate::gpu::Gpu, crate::model::Vit, std::path::Path, std::sync::Arc};

#[derive(thiserror::Error, Debug)]
pub enum TrainError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the loss became {value} at step {step} (epoch {epoch}); training stopped. The last good \
         checkpoint is in {dir}. Try a lower --lr or a gradient clip (--clip)."
    )]
    NonFiniteLoss {
        step: u64,
        epoch: u64,
        value: f32,
        dir: PathBuf,
    },
    #[error("dataset '{dataset}' has images of {found}, the model expects {expected}")]
    DataShape {
        dataset: String,
        found: String,
        expected: String,
    },
    #[error("dataset '{dataset}' has {found} classes but the model has {expected}")]
    Classes {
        dataset: String,
        found: usize,
        expected: usize,
    },
    #[error(
        "the model's parameter '{tensor}' became {value} (element {index}) at step {step}; no \
         checkpoint was written and the last good one is in {dir}. Try a lower --lr or a \
         gradient clip (--clip)."
    )]
    NonFiniteModel {
        step: u64,
        tensor: String,
        index: usize,
        value: f32,
        dir: PathBuf,
    },
    #[error(
        "the validation loss became {value} at step {step}; no checkpoint was written and the \
         last good one is in {dir}. Try a lower --lr or a gradient clip (--clip)."
    )]
    NonFiniteValidation { step: u64, value: f64, dir: PathBuf },
    #[error(
        "{dir} is in use by process {pid} on {host} (its run.lock); wait for that run to end, \
         or use another --out. If that process is gone, delete the lock file."
    )]
    Locked {
        dir: PathBuf,
        pid: u32,
        host: String,
    },
    #[error("{0}")]
    Other(String),
}

/// Everything a training run needs besides the data.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub cfg: Config,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// Warmup steps; `None` = 5% of all steps.
    pub warmup: Option<u64>,
    pub cosine: bool,
    pub max_grad_norm: f32,
    pub seed: u64,
    pub out: PathBuf,
    /// A run folder (or its last.safetensors) to continue.
    pub resume: Option<PathBuf>,
    /// Starting weights (fine-tuning); ignored when resuming.
    pub init: Option<HostParams>,
    /// Stop after this many optimiser steps in total, checkpointing the exact position.
    pub max_steps: Option<u64>,
    pub augment: bool,
    pub progress: bool,
    /// Train the head alone (a linear probe on a pre-trained body).
    pub freeze_body: bool,
    /// Adam's beta1 and beta2.
    pub betas: (f32, f32),
    /// Checkpoint every N steps (`None`: about every 10 minutes); always at an epoch's end.
    pub save_every: Option<u64>,
    /// Past checkpoints kept besides last and best.
    pub keep: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalResult {
    pub images: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<u64>>,
}

impl EvalResult {
    /// Accuracy from the confusion counts and the mean loss from the loss sum of all images.
    pub fn set_means(&mut self, loss_sum: f64) {
        let correct: u64 = (0..self.confusion.len())
            .map(|i| self.confusion[i][i])
            .sum();
        if self.images > 0 {
            self.accuracy = correct as f64 / self.images as f64;
            self.loss = loss_sum / self.images as f64;
        }
    }

    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: u64 = row.iter().sum();
                if n == 0 {
                    0.0
                } else {
                    row[i] as f64 / n as f64
                }
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EpochMetrics {
    pub epoch: u64,
    pub step: u64,
    pub lr: f32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub images_per_second: f64,
    pub seconds: f64,
}

impl EpochMetrics {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.lr,
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "images_per_second": self.images_per_second,
            "seconds": self.seconds,
        })
        .to_string()
    }

    /// Read back a [`EpochMetrics::to_json`] line (missing numbers become NaN, a missing
    /// step 0); `None` when it is not a JSON object with an epoch.
    pub fn from_json(line: &str) -> Option<EpochMetrics> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
        Some(EpochMetrics {
            epoch: v.get("epoch")?.as_u64()?,
            step: v.get("step").and_then(|x| x.as_u64()).unwrap_or(0),
            lr: f("lr") as f32,
            train_loss: f("train_loss"),
            train_accuracy: f("train_accuracy"),
            val_loss: f("val_loss"),
            val_accuracy: f("val_accuracy"),
            images_per_second: f("images_per_second"),
            seconds: f("seconds"),
        })
    }
}

pub struct RunSummary {
    pub epochs: Vec<EpochMetrics>,
    pub best_accuracy: f64,
    pub steps: u64,
    pub out: PathBuf,
    /// Mean training loss of every optimiser step, in order (this process's steps only).
    pub step_losses: Vec<(u64, f32)>,
}

/// A model file as training writes it: the weights, and in the metadata what inference
/// needs to know about the data (class names, normalisation, eval transform), the step and
/// the validation accuracy when there is one.
pub fn model_file(
    cfg: &Config,
    host: &HostParams,
    step: u64,
    train_set: &Dataset,
    val_accuracy: Option<f64>,
) -> crate::model::checkpoint::TensorFile {
    let mut extra = vec![
        ("step", step.to_string()),
        ("dataset", train_set.name.clone()),
        (
            "class_names",
            serde_json::to_string(&train_set.class_names).unwrap_or_default(),
        ),
    ];
    extra.extend(train_set.metadata()); // normalisation and eval transform
    if let Some(acc) = val_accuracy {
        extra.push(("val_accuracy", format!("{acc:.6}")));
    }
    crate::model::checkpoint::model_file(cfg, host, &extra)
}

/// The first non-finite parameter value: (tensor, element, value). No such model is saved.
pub fn first_non_finite(host: &HostParams) -> Option<(String, usize, f32)> {
    host.specs.iter().zip(&host.values).find_map(|(spec, v)| {
        v.iter()
            .position(|x| !x.is_finite())
            .map(|i| (spec.name.clone(), i, v[i]))
    })
}

/// Check that a dataset fits the model's input.
pub fn check_dataset(cfg: &Config, ds: &Dataset) -> Result<(), TrainError> {
    if (ds.channels, ds.height, ds.width) != (cfg.channels, cfg.image_h, cfg.image_w) {
        return Err(TrainError::DataShape {
            dataset: ds.name.clone(),
            found: format!("{}x{}x{}", ds.height, ds.width, ds.channels),
            expected: format!("{}x{}x{}", cfg.image_h, cfg.image_w, cfg.channels),
        });
    }
    Ok(())
}

#[cfg(feature = "native")]
/// Train, evaluating and checkpointing after every epoch (and every `save_every` steps).
pub async fn train(
    gpu: &Gpu,
    kernels: &crate::model::Kernels,
    opts: &TrainOptions,
    train_set: Arc<Dataset>,
    val_set: Arc<Dataset>,
) -> Result<RunSummary, TrainError> {
    train_with(gpu, kernels, opts, train_set, val_set, &mut |_, _| {}).await
}

#[cfg(feature = "native")]
/// [`train`], calling `on_epoch(run folder, every epoch logged so far)` after each epoch's
/// checkpoint (the CLI draws curves.png there).
pub async fn train_with(
    gpu: &Gpu,
    kernels: &crate::model::Kernels,
    opts: &TrainOptions,
    train_set: Arc<Dataset>,
    val_set: Arc<Dataset>,
    on_epoch: &mut dyn FnMut(&Path, &[EpochMetrics]),
) -> Result<RunSummary, TrainError> {
    Trainer::new(gpu, kernels, opts, train_set, val_set)
        .await?
        .run(on_epoch)
        .await
}

#[cfg(feature = "native")]
/// [`train_with`] as one rank of `comm` (data-parallel; see `crate::dist`). Returns the
/// trainer too, for its final parameters and all-reduce time.
pub async fn train_ranked<'a>(
    gpu: &'a Gpu,
    kernels: &crate::model::Kernels,
    opts: &'a TrainOptions,
    (train_set, val_set): (Arc<Dataset>, Arc<Dataset>),
    on_epoch: &mut dyn FnMut(&Path, &[EpochMetrics]),
    comm: &'a dyn crate::dist::Communicator,
) -> Result<(RunSummary, Trainer<'a>), TrainError> {
    let mut trainer = Trainer::with_comm(gpu, kernels, opts, train_set, val_set, comm).await?;
    let summary = trainer.run(on_epoch).await?;
    Ok((summary, trainer))
}

#[cfg(feature = "native")]
/// `--resume` takes a run folder or its `last.safetensors`.
pub fn resume_paths(resume: &Path) -> (PathBuf, PathBuf) {
    let weights = if resume.is_dir() {
        resume.join("last.safetensors")
    } else {
        resume.to_path_buf()
    };
    let state = weights.with_file_name(
        weights
            .file_stem()
            .map(|s| format!("{}.state.safetensors", s.to_string_lossy()))
            .unwrap_or_else(|| "last.state.safetensors".into()),
    );
    (weights, state)
}

#[cfg(feature = "native")]
/// Accuracy, loss and confusion matrix over a dataset, in batches of the model's size
/// (the last one padded; padded rows are ignored).
pub async fn evaluate(gpu: &Gpu, model: &Vit, ds: &Arc<Dataset>) -> Result<EvalResult, TrainError> {
    evaluate_sharded(gpu, model, ds, &crate::dist::Single).await
}

#[cfg(feature = "native")]
/// [`evaluate`] over `comm`'s ranks: each takes its slice of every batch of
/// (model batch x ranks) images, and the counts and loss sums are summed over the ranks.
pub async fn evaluate_sharded(
    gpu: &Gpu,
    model: &Vit,
    ds: &Arc<Dataset>,
    comm: &dyn crate::dist::Communicator,
) -> Result<EvalResult, TrainError> {
    let k = model.cfg.classes;
    let b = model.batch;
    let mut result = EvalResult {
        confusion: vec![vec![0; k]; k],
        ..Default::default()
    };
    let mut loss_sum = 0.0f64;
    let shard = crate::dist::Shard {
        rank: comm.rank(),
        size: comm.size(),
    };
    let mut loader = Loader::new(ds.clone(), b * shard.size, false, None, 0, 0, false).shard(shard);
    for batch in loader.by_ref() {
        loss_sum += score_batch(gpu, model, batch, &mut result).await?;
    }
    loader.finish()?;
    if shard.size > 1 {
        let mut counts: Vec<u64> = result.confusion.iter().flatten().copied().collect();
        counts.push(result.images as u64);
        comm.all_reduce_sum_u64(&mut counts);
        result.images = counts[k * k] as usize;
        for (row, sums) in result.confusion.iter_mut().zip(counts.chunks(k)) {
            row.copy_from_slice(sums);
        }
        let mut sum = [loss_sum];
        comm.all_reduce_sum_f64(&mut sum);
        loss_sum = sum[0];
    }
    result.set_means(loss_sum);
    Ok(result)
}

/// Evaluation of one batch of at most the model's size (padded here; padded rows are
/// ignored): its images and confusion counts are added to `result`; returns its loss sum.
pub async fn score_batch(
    gpu: &crate::gpu::Gpu,
    model: &crate::model::Vit,
    batch: crate::data::Batch,
    result: &mut EvalResult,
) -> Result<f64, TrainError> {
    let (n, b, k) = (batch.len, model.batch, model.cfg.classes);
    if n == 0 {
        return Ok(0.0); // a last partial batch this rank has no slice of
    }
    let mut images = batch.images;
    let mut labels = batch.labels;
    images.resize(
        b * model.cfg.channels * model.cfg.image_h * model.cfg.image_w,
        0.0,
    );
    labels.resize(b, 0);
    model.write_batch(gpu, &images, &labels);
    let reads = [(&model.logits).into(), (&model.losses).into()];
    let read: Vec<Vec<f32>> = gpu
        .record_and_read(|e| model.record_forward(e), &reads)
        .await?;
    let (logits, losses) = (&read[0], &read[1]);
    let mut loss_sum = 0.0;
    for i in 0..n {
        let pred = argmax(&logits[i * k..(i + 1) * k]);
        result.confusion[labels[i] as usize][pred] += 1;
        loss_sum += losses[i] as f64;
    }
    result.images += n;
    Ok(loss_sum)
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
