//! The training loop: batches prepared on a CPU thread, one command encoder and one submit
//! per step, no device wait inside a step; a checkpoint every `save_every` steps (or about
//! every ten minutes) and after every epoch, which is also when the model is evaluated.
//!
//! Data-parallel (several ranks, see `crate::dist`): each rank trains on its slice of every
//! global batch and the gradients are summed between backward and AdamW (`exchange.rs`);
//! evaluation is sharded; rank 0 alone writes the run folder and shows progress.

use super::exchange::{self, GradExchange};
use super::ring::{LossRing, StepResult};
use super::run_folder::{self, RunFolder};
use super::schedule::Schedule;
use super::{check_dataset, first_non_finite, EpochMetrics, RunSummary, TrainError, TrainOptions};
use crate::data::{Augment, Batch, Dataset, Loader};
use crate::dist::{Communicator, Shard, Single};
use crate::gpu::Gpu;
use crate::model::checkpoint::{self, EpochTotals, TensorFile, TrainState};
use crate::model::{HostParams, Kernels, Mode, OptimConfig, Vit};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Without `--save-every`, a checkpoint about this often (and at every epoch's end).
const SAVE_INTERVAL: Duration = Duration::from_secs(600);

pub struct Trainer<'a> {
    gpu: &'a Gpu,
    opts: &'a TrainOptions,
    model: Vit,
    ring: LossRing,
    schedule: Schedule,
    optim: OptimConfig,
    /// The run folder: rank 0's alone (the other ranks write nothing).
    folder: Option<RunFolder>,
    comm: &'a dyn Communicator,
    /// Several ranks: the gradient all-reduce between backward and AdamW.
    exchange: Option<GradExchange>,
    train_set: Arc<Dataset>,
    val_set: Arc<Dataset>,
    steps_per_epoch: u64,
    /// Optimiser steps taken; the epoch in progress and its batches done.
    step: u64,
    epoch: u64,
    batch_in_epoch: u64,
    best_accuracy: f64,
    /// Running sums of the epoch in progress.
    totals: EpochTotals,
    /// Every epoch logged in the run folder, this process's and before.
    logged: Vec<EpochMetrics>,
    last_save: Instant,
    saved_step: Option<u64>,
    summary: RunSummary,
}

impl<'a> Trainer<'a> {
    /// Check the data, lock the run folder, and build the model: resumed, initialised from
    /// `opts.init`, or fresh.
    pub async fn new(
        gpu: &'a Gpu,
        kernels: &Kernels,
        opts: &'a TrainOptions,
        train_set: Arc<Dataset>,
        val_set: Arc<Dataset>,
    ) -> Result<Trainer<'a>, TrainError> {
        Trainer::with_comm(gpu, kernels, opts, train_set, val_set, &Single).await
    }

    /// [`Trainer::new`] as one rank of `comm`: `opts.batch_size` is the global batch, split
    /// evenly over the ranks; rank 0's parameters and moments are broadcast to the others.
    pub async fn with_comm(
        gpu: &'a Gpu,
        kernels: &Kernels,
        opts: &'a TrainOptions,
        train_set: Arc<Dataset>,
        val_set: Arc<Dataset>,
        comm: &'a dyn Communicator,
    ) -> Result<Trainer<'a>, TrainError> {
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
        let batch = opts.batch_size;
        let ranks = comm.size();
        if !batch.is_multiple_of(ranks) {
            return Err(TrainError::Other(format!(
                "--batch-size {batch} (the global batch) must be a multiple of the {ranks} ranks"
            )));
        }
        let steps_per_epoch = (train_set.len / batch.max(1)) as u64;
        if batch == 0 || steps_per_epoch == 0 {
            return Err(TrainError::Other(format!(
                "the training set has {} images, fewer than one batch of {batch}",
                train_set.len
            )));
        }
        let total_steps = steps_per_epoch * opts.epochs;
        let schedule = Schedule::for_run(opts.lr, opts.warmup, total_steps, opts.cosine);
        let optim = OptimConfig {
            beta1: opts.betas.0,
            beta2: opts.betas.1,
            weight_decay: opts.weight_decay,
            max_grad_norm: opts.max_grad_norm,
            ..Default::default()
        };
        let folder = match comm.rank() {
            0 => Some(RunFolder::open(&opts.out, opts.keep)?),
            _ => None,
        };
        let (params, state) = starting_point(opts)?;
        // The epochs logged up to the starting point: a line past it belongs to a checkpoint
        // that never completed (and a fresh run starts the file anew).
        let logged = match &folder {
            Some(f) => f.trim_metrics(state.step)?,
            None => Vec::new(),
        };
        let local = batch / ranks;
        let mut model = Vit::new(gpu, kernels, cfg, &params, local, Mode::Train, opts.seed)?;
        gpu.check_limits()?;
        if ranks > 1 {
            model.set_shard(gpu, kernels, comm.rank() * local, batch);
        }
        if opts.freeze_body {
            model.set_trainable(gpu, kernels, |spec| spec.name.starts_with("head."));
        }
        if !state.moments.is_empty() {
            model.write_moments(gpu, &state.moments);
        }
        exchange::broadcast_model(gpu, &model, comm).await?;
        Ok(Trainer {
            gpu,
            opts,
            ring: LossRing::new(gpu, local),
            exchange: (ranks > 1).then(|| GradExchange::new(gpu, &model)),
            comm,
            model,
            schedule,
            optim,
            folder,
            train_set,
            val_set,
            steps_per_epoch,
            step: state.step,
            epoch: state.epoch,
            batch_in_epoch: state.batch_in_epoch,
            best_accuracy: state.best_accuracy,
            totals: state.totals,
            logged,
            last_save: Instant::now(),
            saved_step: opts.resume.as_ref().map(|_| state.step),
            summary: RunSummary {
                epochs: Vec::new(),
                best_accuracy: state.best_accuracy,
                steps: state.step,
                out: opts.out.clone(),
                step_losses: Vec::new(),
            },
        })
    }

    /// Run the remaining epochs (or up to `max_steps`), calling `on_epoch` after each (on
    /// rank 0, which owns the run folder).
    pub async fn run(
        &mut self,
        on_epoch: &mut dyn FnMut(&Path, &[EpochMetrics]),
    ) -> Result<RunSummary, TrainError> {
        while self.epoch < self.opts.epochs && !self.stop_requested() {
            if !self.run_epoch().await? {
                break;
            }
            if let Some(folder) = &self.folder {
                on_epoch(&folder.dir, &self.logged);
            }
        }
        self.summary.steps = self.step;
        self.summary.best_accuracy = self.best_accuracy;
        let empty = RunSummary {
            epochs: Vec::new(),
            best_accuracy: self.best_accuracy,
            steps: self.step,
            out: self.opts.out.clone(),
            step_losses: Vec::new(),
        };
        Ok(std::mem::replace(&mut self.summary, empty))
    }

    /// This rank's parameters now (waits for the device).
    pub async fn params(&self) -> Result<HostParams, TrainError> {
        Ok(self.model.read_params(self.gpu).await?)
    }

    /// The all-reduce's total seconds and the steps it ran in (several ranks only).
    pub fn reduce_time(&self) -> Option<(f64, u64)> {
        self.exchange.as_ref().map(|e| (e.reduce_seconds, e.steps))
    }

    fn stop_requested(&self) -> bool {
        self.opts.max_steps.is_some_and(|m| self.step >= m)
    }

    /// Train the rest of the current epoch; evaluate and checkpoint at its end. Returns
    /// false when stopped early by `max_steps` (after a checkpoint of the exact position).
    pub async fn run_epoch(&mut self) -> Result<bool, TrainError> {
        let augment = self.opts.augment.then_some(Augment {
            crop_pad: 4,
            flip: true,
        });
        let mut loader = Loader::new(
            self.train_set.clone(),
            self.opts.batch_size,
            true,
            augment,
            self.opts.seed,
            self.epoch,
            true,
        )
        .shard(self.shard())
        .start_batch(self.batch_in_epoch as usize);
        let bar = progress_bar(
            self.opts,
            self.steps_per_epoch,
            self.epoch,
            self.comm.rank(),
        );
        bar.set_position(self.batch_in_epoch);
        let t0 = Instant::now();
        let seconds_before = self.totals.seconds;
        for b in loader.by_ref() {
            if self.stop_requested() {
                break;
            }
            self.step(&b).await?;
            self.batch_in_epoch += 1;
            self.totals.seconds = seconds_before + t0.elapsed().as_secs_f64();
            let t = &self.totals;
            if t.steps > 0 {
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} {:.0} img/s",
                    t.loss_sum / t.steps as f64,
                    t.accuracy_sum / t.steps as f64,
                    t.images as f64 / t.seconds
                ));
            }
            bar.inc(1);
            if self.batch_in_epoch < self.steps_per_epoch && self.save_due() {
                self.finish_steps().await?;
                self.checkpoint(None).await?;
            }
        }
        // A streamed file that could not be decoded ends the epoch with its error.
        loader.finish()?;
        self.finish_steps().await?;
        self.totals.seconds = seconds_before + t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        if self.batch_in_epoch < self.steps_per_epoch {
            // Stopped early: report the position's accuracy, checkpoint it exactly.
            let m = self.epoch_metrics().await?;
            self.summary.epochs.push(m);
            if self.saved_step != Some(self.step) {
                self.checkpoint(None).await?;
            }
            return Ok(false);
        }
        let m = self.epoch_metrics().await?;
        self.report(&m);
        self.checkpoint(Some(&m)).await?;
        self.logged.push(m.clone());
        self.summary.epochs.push(m);
        self.epoch += 1;
        self.batch_in_epoch = 0;
        self.totals = EpochTotals::default();
        Ok(true)
    }

    fn shard(&self) -> Shard {
        Shard {
            rank: self.comm.rank(),
            size: self.comm.size(),
        }
    }

    /// One optimiser step on `batch` (this rank's slice of the global batch): one submit, no
    /// wait (the loss arrives later); with several ranks, see `exchange.rs`.
    pub async fn step(&mut self, batch: &Batch) -> Result<(), TrainError> {
        self.step += 1;
        let lr = self.schedule.lr_at(self.step);
        if let Some(exchange) = &mut self.exchange {
            self.model
                .write_batch(self.gpu, &batch.images, &batch.labels);
            self.model.write_step(self.gpu, self.step, lr, &self.optim);
            let sums = exchange.step(self.gpu, &self.model, self.comm).await?;
            let global = self.opts.batch_size;
            self.totals.images += global as u64;
            return self.record(StepResult {
                step: self.step,
                loss: sums.loss / global as f32,
                accuracy: sums.correct / global as f32,
            });
        }
        // Free the staging slot first: this bounds the steps in flight.
        if let Some(r) = self.ring.free_next(self.gpu).await? {
            self.record(r)?;
        }
        let gpu = self.gpu;
        self.model.write_batch(gpu, &batch.images, &batch.labels);
        self.model.write_step(gpu, self.step, lr, &self.optim);
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("train step"),
            });
        self.model.record_train_step(&mut encoder);
        self.ring
            .record_copy(&mut encoder, &self.model.losses, &self.model.correct);
        let submission = gpu.queue.submit([encoder.finish()]);
        self.ring.submitted(self.step, submission);
        self.totals.images += batch.len as u64;
        for r in self.ring.harvest(gpu, false).await? {
            self.record(r)?;
        }
        Ok(())
    }

    /// Collect every step still in flight.
    async fn finish_steps(&mut self) -> Result<(), TrainError> {
        for r in self.ring.harvest(self.gpu, true).await? {
            self.record(r)?;
        }
        Ok(())
    }

    fn record(&mut self, r: StepResult) -> Result<(), TrainError> {
        if !r.loss.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: r.step,
                epoch: self.epoch,
                value: r.loss,
                dir: self.opts.out.clone(),
            });
        }
        self.totals.loss_sum += r.loss as f64;
        self.totals.accuracy_sum += r.accuracy as f64;
        self.totals.steps += 1;
        self.summary.step_losses.push((r.step, r.loss));
        Ok(())
    }

    fn save_due(&self) -> bool {
        match self.opts.save_every {
            Some(n) => n > 0 && self.step.is_multiple_of(n),
            None => {
                // Every rank must take the same decision (the checkpoint evaluates nothing,
                // but the ranks must stay in step): due when any rank's clock says so.
                let mut due = [(self.last_save.elapsed() >= SAVE_INTERVAL) as u64];
                self.comm.all_reduce_sum_u64(&mut due);
                due[0] > 0
            }
        }
    }

    /// Evaluate, and the epoch's line for metrics.jsonl.
    async fn epoch_metrics(&mut self) -> Result<EpochMetrics, TrainError> {
        let eval = super::evaluate_sharded(self.gpu, &self.model, &self.val_set, self.comm).await?;
        let t = &self.totals;
        let mean = |sum: f64| match t.steps {
            0 => f64::NAN,
            n => sum / n as f64,
        };
        Ok(EpochMetrics {
            epoch: self.epoch + 1,
            step: self.step,
            lr: self.schedule.lr_at(self.step.max(1)),
            train_loss: mean(t.loss_sum),
            train_accuracy: mean(t.accuracy_sum),
            val_loss: eval.loss,
            val_accuracy: eval.accuracy,
            images_per_second: t.images as f64 / t.seconds,
            seconds: t.seconds,
        })
    }

    fn report(&self, m: &EpochMetrics) {
        if self.opts.progress && self.comm.rank() == 0 {
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | {:.0} img/s, {:.1}s",
                m.epoch, self.opts.epochs, m.train_loss, m.train_accuracy, m.val_loss,
                m.val_accuracy, m.images_per_second, m.seconds
            );
        }
    }

    /// Save the exact position as one unit (see run_folder), after checking that every
    /// parameter (and at an epoch's end the validation loss) is finite: no non-finite model
    /// is ever written, and the last good checkpoint stays.
    async fn checkpoint(&mut self, end_of_epoch: Option<&EpochMetrics>) -> Result<(), TrainError> {
        let host = self.model.read_params(self.gpu).await?;
        if self.comm.size() > 1 {
            self.check_ranks_agree(&host)?;
        }
        if self.folder.is_none() {
            // Not rank 0: keep the same position and best accuracy, write nothing.
            if let Some(m) = end_of_epoch {
                self.best_accuracy = self.best_accuracy.max(m.val_accuracy);
            }
            self.last_save = Instant::now();
            self.saved_step = Some(self.step);
            return Ok(());
        }
        if let Some((tensor, index, value)) = first_non_finite(&host) {
            return Err(TrainError::NonFiniteModel {
                step: self.step,
                tensor,
                index,
                value,
                dir: self.opts.out.clone(),
            });
        }
        let mut best = false;
        if let Some(m) = end_of_epoch {
            if !m.val_loss.is_finite() {
                return Err(TrainError::NonFiniteValidation {
                    step: self.step,
                    value: m.val_loss,
                    dir: self.opts.out.clone(),
                });
            }
            best = m.val_accuracy > self.best_accuracy;
            if best {
                self.best_accuracy = m.val_accuracy;
            }
        }
        let finished = end_of_epoch.is_some();
        let state = TrainState {
            step: self.step,
            epoch: self.epoch + finished as u64,
            batch_in_epoch: if finished { 0 } else { self.batch_in_epoch },
            best_accuracy: self.best_accuracy,
            totals: if finished {
                EpochTotals::default()
            } else {
                self.totals
            },
            moments: self.model.read_moments(self.gpu).await?,
        };
        let model = self.model_file(&host, end_of_epoch.map(|m| m.val_accuracy));
        let Some(folder) = &self.folder else {
            return Ok(());
        };
        if best {
            folder.save_best(&model)?;
        }
        if let Some(m) = end_of_epoch {
            folder.append_metrics(m)?;
        }
        let state = checkpoint::state_file(&host, &state);
        folder.commit(&model, &state, self.step)?;
        self.last_save = Instant::now();
        self.saved_step = Some(self.step);
        Ok(())
    }

    /// Every rank applies the same AdamW to the same summed gradients, so their parameters
    /// must be bit-identical; ranks on adapters that round differently would drift apart.
    /// Compared by a 24-bit hash per rank: all equal iff K * sum(h^2) == sum(h)^2.
    fn check_ranks_agree(&self, host: &HostParams) -> Result<(), TrainError> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for x in host.values.iter().flatten() {
            h = (h ^ x.to_bits() as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let h = (h ^ (h >> 24) ^ (h >> 48)) & 0xff_ffff;
        let mut sums = [h, h * h];
        self.comm.all_reduce_sum_u64(&mut sums);
        let k = self.comm.size() as u128;
        if k * sums[1] as u128 != (sums[0] as u128).pow(2) {
            return Err(TrainError::Other(format!(
                "the ranks' parameters differ at step {} (rank {} has hash {h:06x}); their \
                 adapters may round differently: use one adapter type on every rank (--adapter)",
                self.step,
                self.comm.rank()
            )));
        }
        Ok(())
    }

    /// The model file, with what inference needs to know about the data in its metadata.
    fn model_file(&self, host: &HostParams, val_accuracy: Option<f64>) -> TensorFile {
        super::model_file(
            &self.opts.cfg,
            host,
            self.step,
            &self.train_set,
            val_accuracy,
        )
    }
}

/// The weights and position to start from.
fn starting_point(opts: &TrainOptions) -> Result<(HostParams, TrainState), TrainError> {
    let fresh = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        best_accuracy: 0.0,
        totals: EpochTotals::default(),
        moments: Vec::new(),
    };
    let Some(resume) = &opts.resume else {
        let params = match &opts.init {
            Some(init) => init.clone(),
            None => HostParams::init(&opts.cfg, opts.seed),
        };
        return Ok((params, fresh));
    };
    let (step, weights, state_path) = run_folder::resume_pair(resume)?;
    let (ckpt_cfg, params, _) = checkpoint::load_model(&weights)?;
    if ckpt_cfg != opts.cfg {
        return Err(TrainError::Other(format!(
            "{}: the checkpoint's model ({ckpt_cfg}) differs from the requested one ({}); \
             resume with the same flags",
            weights.display(),
            opts.cfg
        )));
    }
    let state = checkpoint::load_train_state(&state_path, &params)?;
    if state.step != step {
        return Err(TrainError::Other(format!(
            "{}: its step {} differs from the step {step} it is stamped with",
            state_path.display(),
            state.step
        )));
    }
    Ok((params, state))
}

fn progress_bar(opts: &TrainOptions, len: u64, epoch: u64, rank: usize) -> indicatif::ProgressBar {
    if !opts.progress || rank != 0 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{}/{}", epoch + 1, opts.epochs));
    bar
}
