//! Training in the page: a [`TrainingSession`] over Fashion-MNIST's four idx files (bytes
//! the page picked or fetched) that takes optimiser steps, evaluates on the test split and
//! exports a checkpoint `vit-wgpu infer` and `eval` load.
//!
//! Every piece that decides a step's numbers is the native trainer's: the epoch order and
//! augmentation (`data::augment`), the initialisation (`HostParams::init`), the learning-rate
//! schedule, AdamW and the loss (`Vit`), and the loss read-back ring. So a session and
//! `vit-wgpu train` with the same seed and flags take the same steps. Like the native
//! trainer, a step is one submit and waits only for the read-back of the step `RING` steps
//! old; the losses reach JavaScript as they arrive.

use super::{browser_gpu, field, js_error, usize_field};
use crate::data::augment::{epoch_order, make_batch};
use crate::data::idx::{self, IdxKind};
use crate::data::{Augment, Dataset};
use crate::gpu::Gpu;
use crate::kernels::Kernels;
use crate::model::{Config, HostParams, Mode, OptimConfig, Preset, Vit};
use crate::train::ring::{LossRing, StepResult};
use crate::train::schedule::Schedule;
use crate::train::{self, EvalResult};
use std::path::Path;
use wasm_bindgen::prelude::*;

/// The session's options, with `vit-wgpu train`'s defaults.
struct Options {
    preset: Preset,
    seed: u64,
    batch_size: usize,
    epochs: u64,
    lr: f32,
    weight_decay: f32,
    warmup: Option<u64>,
    cosine: bool,
    clip: f32,
    betas: (f32, f32),
    augment: bool,
    limit_train: Option<usize>,
    limit_eval: Option<usize>,
}

/// A number option checked as the CLI checks its flag (`ok` says what is allowed).
fn number(
    options: &JsValue,
    name: &str,
    default: f64,
    ok: (fn(f64) -> bool, &str),
) -> Result<f64, JsError> {
    let Some(v) = field(options, name) else {
        return Ok(default);
    };
    match v.as_f64() {
        Some(x) if ok.0(x) => Ok(x),
        _ => Err(js_error(format!(
            "invalid value {v:?} for option '{name}': {}",
            ok.1
        ))),
    }
}

fn flag(options: &JsValue, name: &str, default: bool) -> Result<bool, JsError> {
    match field(options, name) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| {
            js_error(format!(
                "invalid value {v:?} for option '{name}': expected true or false"
            ))
        }),
    }
}

const POSITIVE: (fn(f64) -> bool, &str) =
    (|x| x.is_finite() && x > 0.0, "must be a finite number > 0");
const NON_NEGATIVE: (fn(f64) -> bool, &str) = (
    |x| x.is_finite() && x >= 0.0,
    "must be a finite number >= 0",
);
const UNIT: (fn(f64) -> bool, &str) = (|x| (0.0..1.0).contains(&x), "must be in [0, 1)");
// Integers JavaScript numbers hold exactly.
const WHOLE: (fn(f64) -> bool, &str) = (
    |x| x >= 0.0 && x.fract() == 0.0 && x <= 9_007_199_254_740_991.0,
    "must be a whole number >= 0",
);

impl Options {
    /// From a JS object `{preset, seed, batchSize, epochs, lr, weightDecay, warmup,
    /// constantLr, clip, beta1, beta2, augment, limitTrain, limitEval}`.
    fn from_js(options: &JsValue) -> Result<Options, JsError> {
        let preset = match field(options, "preset") {
            None => Preset::Micro,
            Some(v) => match v.as_string().unwrap_or_default().to_lowercase().as_str() {
                "micro" => Preset::Micro,
                "tiny" => Preset::Tiny,
                "labml" => Preset::Labml,
                _ => {
                    return Err(js_error(format!(
                        "invalid value {v:?} for option 'preset': expected micro, tiny or labml"
                    )))
                }
            },
        };
        let warmup = match field(options, "warmup") {
            None => None,
            Some(_) => Some(number(options, "warmup", 0.0, WHOLE)? as u64),
        };
        Ok(Options {
            preset,
            seed: number(options, "seed", 0.0, WHOLE)? as u64,
            batch_size: usize_field(options, "batchSize")?.unwrap_or(64),
            epochs: usize_field(options, "epochs")?.unwrap_or(32) as u64,
            lr: number(options, "lr", 2.5e-4, POSITIVE)? as f32,
            weight_decay: number(options, "weightDecay", 0.0, NON_NEGATIVE)? as f32,
            warmup,
            cosine: !flag(options, "constantLr", false)?,
            clip: number(options, "clip", 1.0, NON_NEGATIVE)? as f32,
            betas: (
                number(options, "beta1", 0.9, UNIT)? as f32,
                number(options, "beta2", 0.999, UNIT)? as f32,
            ),
            augment: flag(options, "augment", true)?,
            limit_train: usize_field(options, "limitTrain")?,
            limit_eval: usize_field(options, "limitEval")?,
        })
    }

    /// The preset with the data's channels, image size and classes, as `vit-wgpu train`
    /// resolves it without model flags.
    fn config(&self, data: &Dataset) -> Result<Config, JsError> {
        let mut cfg = self.preset.config();
        cfg.channels = data.channels;
        cfg.image_h = data.height;
        cfg.image_w = data.width;
        cfg.classes = data.num_classes();
        cfg.validate()
            .map_err(|e| js_error(format!("the {:?} preset on this data: {e}", self.preset)))?;
        Ok(cfg)
    }
}

/// One split from its images and labels files (bytes and names).
fn split(
    (images_name, images): (&str, Vec<u8>),
    (labels_name, labels): (&str, Vec<u8>),
    limit: Option<usize>,
) -> Result<Dataset, JsError> {
    let ds = idx::from_bytes(
        (Path::new(images_name), images),
        (Path::new(labels_name), labels),
        IdxKind::FashionMnist,
    )
    .map_err(js_error)?;
    Ok(match limit {
        Some(n) if n < ds.len => ds.subset(n),
        _ => ds,
    })
}

fn results_json(results: &[StepResult]) -> String {
    let rows: Vec<_> = results
        .iter()
        .map(|r| serde_json::json!({"step": r.step, "loss": r.loss, "accuracy": r.accuracy}))
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// A training run on the page's GPU.
#[wasm_bindgen]
pub struct TrainingSession {
    gpu: Gpu,
    model: Vit,
    ring: LossRing,
    schedule: Schedule,
    optim: OptimConfig,
    cfg: Config,
    train_set: Dataset,
    test_set: Dataset,
    opts: Options,
    steps_per_epoch: u64,
    /// Optimiser steps submitted so far.
    step: u64,
    /// The epoch whose image order `order` is.
    order_epoch: u64,
    order: Vec<usize>,
    /// The test set's result at `evaluated.0` steps, for the checkpoint's metadata.
    evaluated: Option<(u64, f64)>,
}

#[wasm_bindgen]
impl TrainingSession {
    /// A session from the four idx files (gzipped or not): `files` is
    /// `[trainImages, trainLabels, testImages, testLabels]` (Uint8Arrays), `names` their file
    /// names (for messages). `options` as `vit-wgpu train`'s flags, with its defaults:
    /// `{preset: "micro"|"tiny"|"labml", seed: 0, batchSize: 64, epochs: 32, lr: 2.5e-4,
    /// weightDecay: 0, warmup (default 5% of all steps), constantLr: false, clip: 1,
    /// beta1: 0.9, beta2: 0.999, augment: true, limitTrain, limitEval}`.
    pub async fn create(
        files: Vec<js_sys::Uint8Array>,
        names: Vec<String>,
        options: JsValue,
    ) -> Result<TrainingSession, JsError> {
        if files.len() != 4 {
            return Err(js_error(format!(
                "expected 4 files (train images, train labels, test images, test labels), found {}",
                files.len()
            )));
        }
        let opts = Options::from_js(&options)?;
        let default_names = [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ];
        let name = |i: usize| names.get(i).map_or(default_names[i], |s| s.as_str());
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| f.to_vec()).collect();
        let [train_images, train_labels, test_images, test_labels] =
            <[Vec<u8>; 4]>::try_from(bytes).map_err(|_| js_error("expected 4 files"))?;
        let train_set = split(
            (name(0), train_images),
            (name(1), train_labels),
            opts.limit_train,
        )?;
        let test_set = split(
            (name(2), test_images),
            (name(3), test_labels),
            opts.limit_eval,
        )?;
        let cfg = opts.config(&train_set)?;
        train::check_dataset(&cfg, &test_set).map_err(js_error)?;
        let batch = opts.batch_size;
        let steps_per_epoch = (train_set.len / batch) as u64;
        if steps_per_epoch == 0 {
            return Err(js_error(format!(
                "the training set has {} images, fewer than one batch of {batch}",
                train_set.len
            )));
        }
        let total_steps = steps_per_epoch * opts.epochs;
        if let Some(w) = opts.warmup.filter(|&w| w > total_steps) {
            return Err(js_error(format!(
                "invalid value '{w}' for option 'warmup': must be at most the run's {total_steps} \
                 optimiser steps ({} epochs of {steps_per_epoch} batches)",
                opts.epochs
            )));
        }
        let schedule = Schedule::for_run(opts.lr, opts.warmup, total_steps, opts.cosine);
        let optim = OptimConfig {
            beta1: opts.betas.0,
            beta2: opts.betas.1,
            weight_decay: opts.weight_decay,
            max_grad_norm: opts.clip,
            ..Default::default()
        };
        let gpu = browser_gpu().await?;
        let kernels = Kernels::new(&gpu);
        gpu.check_limits().map_err(js_error)?;
        let params = HostParams::init(&cfg, opts.seed);
        let model = Vit::new(&gpu, &kernels, &cfg, &params, batch, Mode::Train, opts.seed)
            .map_err(js_error)?;
        gpu.check_limits().map_err(js_error)?;
        let ring = LossRing::new(&gpu, batch);
        Ok(TrainingSession {
            order: epoch_order(train_set.len, true, opts.seed, 0),
            order_epoch: 0,
            gpu,
            model,
            ring,
            schedule,
            optim,
            cfg,
            train_set,
            test_set,
            opts,
            steps_per_epoch,
            step: 0,
            evaluated: None,
        })
    }

    /// Take up to `n` optimiser steps (fewer at the run's end): a JSON array of the steps
    /// whose losses came back meanwhile, `[{step, loss, accuracy}]` in step order (each
    /// step's mean over its batch). The last steps' losses come with a later call or
    /// [`TrainingSession::flush`].
    pub async fn step(&mut self, n: u32) -> Result<String, JsError> {
        let mut out = Vec::new();
        for _ in 0..n {
            if self.step >= self.total_steps() {
                break;
            }
            self.one_step(&mut out).await?;
        }
        Ok(results_json(&out))
    }

    /// Wait for every step in flight: their results as [`TrainingSession::step`] gives them.
    pub async fn flush(&mut self) -> Result<String, JsError> {
        let results = self.ring.harvest(&self.gpu, true).await.map_err(js_error)?;
        let out = self.checked(results)?;
        Ok(results_json(&out))
    }

    /// Accuracy and mean loss on the test set with the model after every step taken (the
    /// steps in flight keep their results for the next `step` or `flush`): JSON
    /// `{images, loss, accuracy, per_class_accuracy, step}`.
    pub async fn eval(&mut self) -> Result<String, JsError> {
        let k = self.cfg.classes;
        let mut result = EvalResult {
            confusion: vec![vec![0; k]; k],
            ..Default::default()
        };
        let mut loss_sum = 0.0;
        let order = epoch_order(self.test_set.len, false, 0, 0);
        let b = self.model.batch;
        for lo in (0..order.len()).step_by(b) {
            let hi = (lo + b).min(order.len());
            let batch = make_batch(&self.test_set, &order, (lo, hi), None, 0, 0);
            loss_sum += train::score_batch(&self.gpu, &self.model, batch, &mut result)
                .await
                .map_err(js_error)?;
        }
        result.set_means(loss_sum);
        self.evaluated = Some((self.step, result.accuracy));
        Ok(serde_json::json!({
            "images": result.images, "loss": result.loss, "accuracy": result.accuracy,
            "per_class_accuracy": result.per_class_accuracy(), "step": self.step,
        })
        .to_string())
    }

    /// The model now as a checkpoint file's bytes (safetensors, our format with the data's
    /// class names and normalisation), as `vit-wgpu train` writes `last.safetensors`.
    #[wasm_bindgen(js_name = exportCheckpoint)]
    pub async fn export_checkpoint(&self) -> Result<Vec<u8>, JsError> {
        let host = self.model.read_params(&self.gpu).await.map_err(js_error)?;
        if let Some((tensor, index, value)) = train::first_non_finite(&host) {
            return Err(js_error(format!(
                "the model's parameter '{tensor}' became {value} (element {index}) at step {}; \
                 no checkpoint was made. Start again with a lower lr or a gradient clip.",
                self.step
            )));
        }
        let accuracy = self
            .evaluated
            .filter(|(step, _)| *step == self.step)
            .map(|(_, acc)| acc);
        let file = train::model_file(&self.cfg, &host, self.step, &self.train_set, accuracy);
        file.to_bytes(Path::new("checkpoint.safetensors"))
            .map_err(js_error)
    }

    /// Optimiser steps taken.
    #[wasm_bindgen(getter)]
    pub fn steps(&self) -> f64 {
        self.step as f64
    }

    /// All the run's steps: epochs x batches per epoch (the schedule's length).
    #[wasm_bindgen(getter, js_name = totalSteps)]
    pub fn total_steps_js(&self) -> f64 {
        self.total_steps() as f64
    }

    #[wasm_bindgen(getter, js_name = stepsPerEpoch)]
    pub fn steps_per_epoch(&self) -> f64 {
        self.steps_per_epoch as f64
    }

    #[wasm_bindgen(getter, js_name = batchSize)]
    pub fn batch_size(&self) -> usize {
        self.opts.batch_size
    }

    /// The model's config and the data's sizes as JSON text.
    #[wasm_bindgen(getter)]
    pub fn config(&self) -> String {
        serde_json::json!({
            "model": self.cfg.to_string(), "image_h": self.cfg.image_h,
            "image_w": self.cfg.image_w, "channels": self.cfg.channels,
            "dim": self.cfg.dim, "depth": self.cfg.depth, "heads": self.cfg.heads,
            "classes": self.cfg.classes,
            "parameters": crate::model::params::param_specs(&self.cfg)
                .iter().map(|s| s.shape.iter().product::<usize>()).sum::<usize>(),
            "train_images": self.train_set.len, "test_images": self.test_set.len,
            "class_names": self.train_set.class_names,
        })
        .to_string()
    }

    /// The adapter the page's WebGPU gave (name, limits, features).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.gpu.describe()
    }
}

impl TrainingSession {
    fn total_steps(&self) -> u64 {
        self.schedule.total_steps
    }

    /// One optimiser step, as the native trainer's: the batch of this step's position in
    /// its epoch, one submit, and the results that came back pushed onto `out`.
    async fn one_step(&mut self, out: &mut Vec<StepResult>) -> Result<(), JsError> {
        let epoch = self.step / self.steps_per_epoch;
        let in_epoch = (self.step % self.steps_per_epoch) as usize;
        if epoch != self.order_epoch {
            self.order = epoch_order(self.train_set.len, true, self.opts.seed, epoch);
            self.order_epoch = epoch;
        }
        let b = self.opts.batch_size;
        let augment = self.opts.augment.then_some(Augment::standard());
        let range = (in_epoch * b, (in_epoch + 1) * b);
        let batch = make_batch(
            &self.train_set,
            &self.order,
            range,
            augment,
            self.opts.seed,
            epoch,
        );
        // Free the staging slot first: this bounds the steps in flight.
        if let Some(r) = self.ring.free_next(&self.gpu).await.map_err(js_error)? {
            out.extend(self.checked(vec![r])?);
        }
        self.step += 1;
        let lr = self.schedule.lr_at(self.step);
        let gpu = &self.gpu;
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
        let results = self.ring.harvest(gpu, false).await.map_err(js_error)?;
        out.extend(self.checked(results)?);
        Ok(())
    }

    /// Results that came back, or the native trainer's error for a non-finite loss.
    fn checked(&self, results: Vec<StepResult>) -> Result<Vec<StepResult>, JsError> {
        if let Some(r) = results.iter().find(|r| !r.loss.is_finite()) {
            return Err(js_error(format!(
                "the loss became {} at step {} (epoch {}); training stopped. Start again with a \
                 lower lr or a gradient clip.",
                r.loss,
                r.step,
                (r.step - 1) / self.steps_per_epoch + 1
            )));
        }
        Ok(results)
    }
}
