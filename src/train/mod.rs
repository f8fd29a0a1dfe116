//! The training loop: batches prepared on a CPU thread, one command encoder and one submit
//! per step, losses read back asynchronously through a small ring of staging buffers, an
//! evaluation and a checkpoint after every epoch.

pub mod schedule;

use crate::data::{Augment, Dataset, Loader};
use crate::gpu::{Gpu, GpuError};
use crate::model::checkpoint::{self, CheckpointError, TrainState};
use crate::model::{Config, HostParams, Kernels, Mode, ModelError, OptimConfig, Vit};
use schedule::Schedule;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
}

pub struct RunSummary {
    pub epochs: Vec<EpochMetrics>,
    pub best_accuracy: f64,
    pub steps: u64,
    pub out: PathBuf,
    /// Mean training loss of every optimiser step, in order (this process's steps only).
    pub step_losses: Vec<(u64, f32)>,
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

/// A staging buffer that receives one step's per-image losses and correctness flags.
struct Slot {
    buffer: wgpu::Buffer,
    state: Arc<AtomicU8>, // 0 idle, 1 mapping, 2 mapped, 3 failed
    step: u64,
    submission: Option<wgpu::SubmissionIndex>,
}

const IDLE: u8 = 0;
const MAPPING: u8 = 1;
const MAPPED: u8 = 2;
const FAILED: u8 = 3;

/// Losses come back through a ring of staging buffers: the step never waits for its own
/// results, and at most `RING` steps are in flight.
struct LossRing {
    slots: Vec<Slot>,
    next: usize,
    batch: usize,
}

const RING: usize = 3;

impl LossRing {
    fn new(gpu: &Gpu, batch: usize) -> LossRing {
        let slots = (0..RING)
            .map(|_| Slot {
                buffer: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("loss readback"),
                    size: (batch * 8) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(AtomicU8::new(IDLE)),
                step: 0,
                submission: None,
            })
            .collect();
        LossRing {
            slots,
            next: 0,
            batch,
        }
    }

    /// Wait for the slot about to be reused (a step `RING` steps old) and return its results.
    fn free_next(&mut self, gpu: &Gpu) -> Result<Option<(u64, f32, f32)>, GpuError> {
        let i = self.next;
        self.collect(gpu, i, true)
    }

    fn collect(
        &mut self,
        gpu: &Gpu,
        i: usize,
        wait: bool,
    ) -> Result<Option<(u64, f32, f32)>, GpuError> {
        let slot = &mut self.slots[i];
        if slot.state.load(Ordering::Acquire) == IDLE {
            return Ok(None);
        }
        if wait {
            while slot.state.load(Ordering::Acquire) == MAPPING {
                let poll = match slot.submission.clone() {
                    Some(index) => wgpu::PollType::Wait {
                        submission_index: Some(index),
                        timeout: None,
                    },
                    None => wgpu::PollType::wait_indefinitely(),
                };
                gpu.device.poll(poll).map_err(|e| GpuError::Device {
                    context: "loss read-back".into(),
                    message: e.to_string(),
                })?;
            }
        } else if slot.state.load(Ordering::Acquire) == MAPPING {
            return Ok(None);
        }
        if slot.state.load(Ordering::Acquire) == FAILED {
            return Err(GpuError::Device {
                context: "loss read-back".into(),
                message: "mapping the staging buffer failed".into(),
            });
        }
        let values: Vec<f32> = {
            let view = slot
                .buffer
                .get_mapped_range(..)
                .map_err(|e| GpuError::Device {
                    context: "loss read-back".into(),
                    message: e.to_string(),
                })?;
            bytemuck::cast_slice(&view).to_vec()
        };
        slot.buffer.unmap();
        slot.state.store(IDLE, Ordering::Release);
        let b = self.batch;
        let loss = values[..b].iter().sum::<f32>() / b as f32;
        let acc = values[b..2 * b].iter().sum::<f32>() / b as f32;
        Ok(Some((slot.step, loss, acc)))
    }

    /// Results of every finished step, in step order, without waiting.
    fn harvest(&mut self, gpu: &Gpu, wait: bool) -> Result<Vec<(u64, f32, f32)>, GpuError> {
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        let mut out = Vec::new();
        for k in 0..RING {
            let i = (self.next + k) % RING;
            if let Some(r) = self.collect(gpu, i, wait)? {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.0);
        Ok(out)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.into(),
        source,
    }
}

/// Train, evaluating and checkpointing after every epoch.
pub fn train(
    gpu: &Gpu,
    kernels: &Kernels,
    opts: &TrainOptions,
    train_set: Arc<Dataset>,
    val_set: Arc<Dataset>,
) -> Result<RunSummary, TrainError> {
    let cfg = &opts.cfg;
    check_dataset(cfg, &train_set)?;
    check_dataset(cfg, &val_set)?;
    if train_set.class_names.len() > cfg.classes {
        return Err(TrainError::Classes {
            dataset: train_set.name.clone(),
            found: train_set.class_names.len(),
            expected: cfg.classes,
        });
    }
    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let batch = opts.batch_size;
    let steps_per_epoch = (train_set.len / batch) as u64;
    if steps_per_epoch == 0 {
        return Err(TrainError::Other(format!(
            "the training set has {} images, fewer than one batch of {batch}",
            train_set.len
        )));
    }
    let total_steps = steps_per_epoch * opts.epochs;
    let schedule = Schedule {
        lr: opts.lr,
        warmup_steps: opts.warmup.unwrap_or(total_steps / 20),
        total_steps,
        cosine: opts.cosine,
    };
    let optim = OptimConfig {
        weight_decay: opts.weight_decay,
        max_grad_norm: opts.max_grad_norm,
        ..Default::default()
    };

    // Weights and position: resumed, initialised from a checkpoint, or fresh.
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        best_accuracy: 0.0,
        moments: Vec::new(),
    };
    let params = if let Some(resume) = &opts.resume {
        let (weights, state_path) = resume_paths(resume);
        let (ckpt_cfg, params, _) = checkpoint::load_model(&weights)?;
        if &ckpt_cfg != cfg {
            return Err(TrainError::Other(format!(
                "{}: the checkpoint's model ({ckpt_cfg}) differs from the requested one ({cfg}); \
                 resume with the same flags",
                weights.display()
            )));
        }
        state = checkpoint::load_train_state(&state_path, &params)?;
        params
    } else if let Some(init) = &opts.init {
        init.clone()
    } else {
        HostParams::init(cfg, opts.seed)
    };
    let mut model = Vit::new(gpu, kernels, cfg, &params, batch, Mode::Train, opts.seed)?;
    if opts.freeze_body {
        model.set_trainable(gpu, kernels, |spec| spec.name.starts_with("head."));
    }
    let model = model;
    if !state.moments.is_empty() {
        model.write_moments(gpu, &state.moments);
    }

    let metrics_path = opts.out.join("metrics.jsonl");
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_err(&metrics_path))?;
    // curves.png covers the whole run: a resumed run starts from the epochs already logged.
    let mut curve = crate::viz::curves::previous_epochs(&metrics_path, opts.resume.is_some());
    let mut ring = LossRing::new(gpu, batch);
    let mut summary = RunSummary {
        epochs: Vec::new(),
        best_accuracy: state.best_accuracy,
        steps: state.step,
        out: opts.out.clone(),
        step_losses: Vec::new(),
    };
    let augment = opts.augment.then_some(Augment {
        crop_pad: 4,
        flip: true,
    });

    let mut step = state.step;
    let start_epoch = state.epoch;
    for epoch in start_epoch..opts.epochs {
        let start_batch = if epoch == start_epoch {
            state.batch_in_epoch as usize
        } else {
            0
        };
        let mut loader = Loader::new(
            train_set.clone(),
            batch,
            true,
            augment,
            opts.seed,
            epoch,
            true,
        )
        .start_batch(start_batch);
        let bar = progress_bar(opts.progress, steps_per_epoch, epoch, opts.epochs);
        bar.set_position(start_batch as u64);
        let t0 = Instant::now();
        let (mut loss_sum, mut acc_sum, mut counted) = (0.0f64, 0.0f64, 0u64);
        let mut images_done = 0usize;
        let mut lr = schedule.lr_at(step.max(1));
        let handle = |results: Vec<(u64, f32, f32)>,
                      loss_sum: &mut f64,
                      acc_sum: &mut f64,
                      counted: &mut u64,
                      summary: &mut RunSummary|
         -> Result<(), TrainError> {
            for (s, loss, acc) in results {
                if !loss.is_finite() {
                    return Err(TrainError::NonFiniteLoss {
                        step: s,
                        epoch,
                        value: loss,
                        dir: opts.out.clone(),
                    });
                }
                *loss_sum += loss as f64;
                *acc_sum += acc as f64;
                *counted += 1;
                summary.step_losses.push((s, loss));
            }
            Ok(())
        };
        let mut batch_index = start_batch as u64;
        for b in loader.by_ref() {
            if opts.max_steps.is_some_and(|m| step >= m) {
                break;
            }
            step += 1;
            batch_index += 1;
            lr = schedule.lr_at(step);
            // Free the staging slot first: this bounds the steps in flight.
            if let Some(r) = ring.free_next(gpu)? {
                handle(
                    vec![r],
                    &mut loss_sum,
                    &mut acc_sum,
                    &mut counted,
                    &mut summary,
                )?;
            }
            model.write_batch(gpu, &b.images, &b.labels);
            model.write_step(gpu, step, lr, &optim);
            let mut encoder = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("train step"),
                });
            model.record_train_step(&mut encoder);
            let slot = &mut ring.slots[ring.next];
            let lb = (batch * 4) as u64;
            encoder.copy_buffer_to_buffer(&model.losses, 0, &slot.buffer, 0, lb);
            encoder.copy_buffer_to_buffer(&model.correct, 0, &slot.buffer, lb, lb);
            slot.submission = Some(gpu.queue.submit([encoder.finish()]));
            slot.step = step;
            slot.state.store(MAPPING, Ordering::Release);
            let state_flag = slot.state.clone();
            slot.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
                state_flag.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
            });
            ring.next = (ring.next + 1) % RING;
            images_done += b.len;
            let results = ring.harvest(gpu, false)?;
            handle(
                results,
                &mut loss_sum,
                &mut acc_sum,
                &mut counted,
                &mut summary,
            )?;
            if counted > 0 {
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} {:.0} img/s",
                    loss_sum / counted as f64,
                    acc_sum / counted as f64,
                    images_done as f64 / t0.elapsed().as_secs_f64()
                ));
            }
            bar.inc(1);
        }
        loader.finish()?;
        let results = ring.harvest(gpu, true)?;
        handle(
            results,
            &mut loss_sum,
            &mut acc_sum,
            &mut counted,
            &mut summary,
        )?;
        gpu.wait("end of epoch")?;
        let seconds = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let finished_epoch = batch_index >= steps_per_epoch;
        let host = model.read_params(gpu)?;
        let moments = model.read_moments(gpu)?;
        let stopped_early = !finished_epoch;
        // Evaluate after a whole epoch (and on an early stop, so the run still reports).
        let eval = evaluate(gpu, &model, &val_set)?;
        let m = EpochMetrics {
            epoch: epoch + 1,
            step,
            lr,
            train_loss: if counted > 0 {
                loss_sum / counted as f64
            } else {
                f64::NAN
            },
            train_accuracy: if counted > 0 {
                acc_sum / counted as f64
            } else {
                f64::NAN
            },
            val_loss: eval.loss,
            val_accuracy: eval.accuracy,
            images_per_second: images_done as f64 / seconds,
            seconds,
        };
        writeln!(metrics_file, "{}", m.to_json()).map_err(io_err(&metrics_path))?;
        curve.push(m.clone());
        crate::viz::curves::update_curves(&opts.out.join("curves.png"), &curve);
        if opts.progress {
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | {:.0} img/s, {:.1}s",
                m.epoch, opts.epochs, m.train_loss, m.train_accuracy, m.val_loss, m.val_accuracy, m.images_per_second, m.seconds
            );
        }
        let best = eval.accuracy > summary.best_accuracy;
        if best {
            summary.best_accuracy = eval.accuracy;
        }
        let new_state = TrainState {
            step,
            epoch: if finished_epoch { epoch + 1 } else { epoch },
            batch_in_epoch: if finished_epoch { 0 } else { batch_index },
            best_accuracy: summary.best_accuracy,
            moments,
        };
        let mut extra = vec![
            ("step", step.to_string()),
            ("val_accuracy", format!("{:.6}", eval.accuracy)),
            ("dataset", train_set.name.clone()),
            (
                "class_names",
                serde_json::to_string(&train_set.class_names).unwrap_or_default(),
            ),
        ];
        extra.extend(train_set.metadata()); // normalisation and eval transform
        checkpoint::save_model(&opts.out.join("last.safetensors"), cfg, &host, &extra)?;
        checkpoint::save_train_state(&opts.out.join("last.state.safetensors"), &host, &new_state)?;
        if best {
            checkpoint::save_model(&opts.out.join("best.safetensors"), cfg, &host, &extra)?;
        }
        summary.epochs.push(m);
        summary.steps = step;
        if stopped_early {
            break;
        }
    }
    Ok(summary)
}

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

fn progress_bar(enabled: bool, len: u64, epoch: u64, epochs: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

/// Accuracy, loss and confusion matrix over a dataset, in batches of the model's size
/// (the last one padded; padded rows are ignored).
pub fn evaluate(gpu: &Gpu, model: &Vit, ds: &Arc<Dataset>) -> Result<EvalResult, TrainError> {
    let k = model.cfg.classes;
    let b = model.batch;
    let mut result = EvalResult {
        confusion: vec![vec![0; k]; k],
        ..Default::default()
    };
    let mut loss_sum = 0.0f64;
    let mut loader = Loader::new(ds.clone(), b, false, None, 0, 0, false);
    for batch in loader.by_ref() {
        let n = batch.len;
        let mut images = batch.images;
        let mut labels = batch.labels;
        images.resize(
            b * model.cfg.channels * model.cfg.image_h * model.cfg.image_w,
            0.0,
        );
        labels.resize(b, 0);
        model.write_batch(gpu, &images, &labels);
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("eval"),
            });
        model.record_forward(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        let logits: Vec<f32> = gpu.read(&model.logits)?;
        let losses: Vec<f32> = gpu.read(&model.losses)?;
        for i in 0..n {
            let row = &logits[i * k..(i + 1) * k];
            let pred = argmax(row);
            result.confusion[labels[i] as usize][pred] += 1;
            loss_sum += losses[i] as f64;
        }
        result.images += n;
    }
    loader.finish()?;
    let correct: u64 = (0..k).map(|i| result.confusion[i][i]).sum();
    if result.images > 0 {
        result.accuracy = correct as f64 / result.images as f64;
        result.loss = loss_sum / result.images as f64;
    }
    Ok(result)
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
