//! Flag checks and the training config: pure functions of the parsed flags (and of the
//! data's shape), run before any work starts and tested without a device or a dataset.
//! A bad flag is a usage error: the message names the flag, the value and the allowed
//! range, and the program exits with code 2, as for clap's own errors.

use super::{BenchArgs, EvalArgs, InferArgs, ModelArgs, TrainArgs, VerifyArgs};
use crate::model::config::Config;

#[derive(Debug, Clone, PartialEq)]
pub enum UsageError {
    Flag {
        flag: &'static str,
        value: String,
        allowed: String,
    },
    /// Flags valid one by one that together make no model (or do not fit the data).
    Combination(String),
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsageError::Flag {
                flag,
                value,
                allowed,
            } => write!(f, "invalid value '{value}' for '--{flag}': {allowed}"),
            UsageError::Combination(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for UsageError {}

fn bad(flag: &'static str, value: impl ToString, allowed: &str) -> UsageError {
    UsageError::Flag {
        flag,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

fn positive(flag: &'static str, v: f64) -> Result<(), UsageError> {
    match v.is_finite() && v > 0.0 {
        true => Ok(()),
        false => Err(bad(flag, v, "must be a finite number > 0")),
    }
}

fn non_negative(flag: &'static str, v: f64) -> Result<(), UsageError> {
    match v.is_finite() && v >= 0.0 {
        true => Ok(()),
        false => Err(bad(flag, v, "must be a finite number >= 0")),
    }
}

/// In [0, 1).
fn unit(flag: &'static str, v: f64) -> Result<(), UsageError> {
    match (0.0..1.0).contains(&v) {
        true => Ok(()),
        false => Err(bad(flag, v, "must be in [0, 1)")),
    }
}

fn at_least_one(flag: &'static str, v: Option<u64>) -> Result<(), UsageError> {
    match v {
        Some(0) => Err(bad(flag, 0, "must be at least 1")),
        _ => Ok(()),
    }
}

/// Size flags of the model: each at least 1, dropout in [0, 1), LayerNorm eps > 0.
pub fn check_model(m: &ModelArgs) -> Result<(), UsageError> {
    if let (Some(name), Some(Err(e))) = (&m.arch, m.arch_config()) {
        return Err(bad("arch", name, &e.to_string()));
    }
    if let Some((h, w)) = m.image_size {
        if h == 0 || w == 0 {
            return Err(bad(
                "image-size",
                format!("{h}x{w}"),
                "must be at least 1x1",
            ));
        }
    }
    let sizes = [
        ("patch", m.patch),
        ("dim", m.dim),
        ("depth", m.depth),
        ("heads", m.heads),
        ("mlp-hidden", m.mlp_hidden),
        ("head-hidden", m.head_hidden),
    ];
    for (flag, v) in sizes {
        at_least_one(flag, v.map(|v| v as u64))?;
    }
    if m.classes.is_some_and(|k| k < 2) {
        return Err(bad("classes", m.classes.unwrap_or(0), "must be at least 2"));
    }
    if let Some(d) = m.dropout {
        unit("dropout", d as f64)?;
    }
    if let Some(e) = m.ln_eps {
        positive("ln-eps", e as f64)?;
    }
    Ok(())
}

/// Every `train` flag that can be checked before the data is read.
pub fn check_train(a: &TrainArgs) -> Result<(), UsageError> {
    check_model(&a.model)?;
    at_least_one("epochs", Some(a.epochs))?;
    at_least_one("batch-size", Some(a.batch_size as u64))?;
    positive("lr", a.lr as f64)?;
    non_negative("weight-decay", a.weight_decay as f64)?;
    if !(a.clip.is_finite() && a.clip >= 0.0) {
        return Err(bad(
            "clip",
            a.clip,
            "must be a finite number > 0, or 0 for no clipping",
        ));
    }
    unit("beta1", a.beta1 as f64)?;
    unit("beta2", a.beta2 as f64)?;
    at_least_one("limit-train", a.limit_train.map(|v| v as u64))?;
    at_least_one("limit-eval", a.data.limit_eval.map(|v| v as u64))?;
    at_least_one("max-steps", a.max_steps)?;
    at_least_one("save-every", a.save_every)?;
    check_val_split(a.data.val_split)
}

/// A held-out share: strictly between 0 and 1.
fn check_val_split(v: Option<f64>) -> Result<(), UsageError> {
    match v {
        Some(f) if !(f > 0.0 && f < 1.0) => Err(bad("val-split", f, "must be in (0, 1)")),
        _ => Ok(()),
    }
}

/// Warmup must fit in the run: at most the total number of optimiser steps.
pub fn check_warmup(
    warmup: Option<u64>,
    epochs: u64,
    train_images: usize,
    batch_size: usize,
) -> Result<(), UsageError> {
    let steps_per_epoch = (train_images / batch_size.max(1)) as u64;
    let total = steps_per_epoch.saturating_mul(epochs);
    match warmup {
        Some(w) if w > total => Err(bad(
            "warmup",
            w,
            &format!(
                "must be at most the run's {total} optimiser steps \
                 ({epochs} epochs of {steps_per_epoch} batches)"
            ),
        )),
        _ => Ok(()),
    }
}

pub fn check_eval(a: &EvalArgs) -> Result<(), UsageError> {
    at_least_one("batch-size", Some(a.batch_size as u64))?;
    at_least_one("limit-eval", a.data.limit_eval.map(|v| v as u64))?;
    check_val_split(a.data.val_split)
}

pub fn check_infer(a: &InferArgs) -> Result<(), UsageError> {
    at_least_one("top-k", Some(a.top_k as u64))?;
    at_least_one("batch-size", Some(a.batch_size as u64))?;
    at_least_one("workers", a.workers.map(|v| v as u64))
}

pub fn check_bench(a: &BenchArgs) -> Result<(), UsageError> {
    check_model(&a.model)?;
    at_least_one("batch-size", Some(a.batch_size as u64))?;
    at_least_one("workers", a.workers.map(|v| v as u64))?;
    at_least_one("data-batches", a.data_batches.map(|v| v as u64))?;
    // `--steps 0` with `--data folder` measures the loader alone.
    if a.data.is_none() {
        at_least_one("steps", Some(a.steps as u64))?;
    }
    Ok(())
}

pub fn check_verify(a: &VerifyArgs) -> Result<(), UsageError> {
    positive("logits-tol", a.logits_tol)?;
    positive("loss-tol", a.loss_tol)?;
    positive("grad-tol", a.grad_tol)?;
    positive("trajectory-tol", a.trajectory_tol)
}

/// What the training data says about the model's input and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

/// The model a `train` run builds. Starting weights (`init`, an --init checkpoint's
/// config) decide its shape, else the preset does; flags override either. The data
/// decides channels and classes (and, without --init or --image-size, the image size)
/// unless flags say otherwise; images of another size are resized to the model's.
pub fn train_config(
    model: &ModelArgs,
    init: Option<&Config>,
    data: &DataShape,
) -> Result<Config, UsageError> {
    let cfg = match init {
        Some(c) => {
            let mut c = model.apply(c.clone());
            if model.classes.is_none() {
                c.classes = data.classes;
            }
            c
        }
        None => {
            let mut c = model.config(Some(data.channels), Some(data.classes));
            if model.image_size.is_none() && model.arch.is_none() {
                c.image_h = data.height;
                c.image_w = data.width;
            }
            c
        }
    };
    if cfg.channels != data.channels {
        return Err(UsageError::Combination(format!(
            "the model takes images of {} channels, the dataset has {}",
            cfg.channels, data.channels
        )));
    }
    if cfg.classes < data.classes {
        return Err(bad(
            "classes",
            cfg.classes,
            &format!("the dataset has {} classes", data.classes),
        ));
    }
    cfg.validate().map_err(|e| {
        UsageError::Combination(format!("the model flags give no valid model: {e}"))
    })?;
    Ok(cfg)
}
