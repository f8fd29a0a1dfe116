//! Replay a training-trajectory fixture (scripts/make_trajectory_fixture.py: timm in float64,
//! N AdamW steps with warmup + cosine, weight decay and clipping) through the real training
//! step, and compare every step's learning rate and loss and every final parameter.

use super::{compare, Report, VerifyError};
use crate::gpu::Gpu;
use crate::model::checkpoint::TensorFile;
use crate::model::{Config, Kernels, Mode, OptimConfig, Vit};
use crate::train::schedule::Schedule;
use std::path::Path;

/// The optimiser settings the fixture was made with, from its metadata.
struct Recipe {
    steps: usize,
    schedule: Schedule,
    optim: OptimConfig,
}

fn recipe(path: &Path, file: &TensorFile) -> Result<Recipe, VerifyError> {
    let get = |key: &str| -> Result<f64, VerifyError> {
        let raw = file.metadata.get(key).ok_or_else(|| VerifyError::Fixture {
            path: path.display().to_string(),
            message: format!("metadata '{key}' is missing (not a trajectory fixture?)"),
        })?;
        raw.parse::<f64>().map_err(|_| VerifyError::Fixture {
            path: path.display().to_string(),
            message: format!("metadata '{key}' = '{raw}' is not a number"),
        })
    };
    let steps = get("steps")? as usize;
    Ok(Recipe {
        steps,
        schedule: Schedule {
            lr: get("lr")? as f32,
            warmup_steps: get("warmup")? as u64,
            total_steps: steps as u64,
            cosine: true,
        },
        optim: OptimConfig {
            beta1: get("beta1")? as f32,
            beta2: get("beta2")? as f32,
            eps: get("eps")? as f32,
            weight_decay: get("weight_decay")? as f32,
            max_grad_norm: get("max_grad_norm")? as f32,
        },
    })
}

pub async fn verify_trajectory(
    gpu: &Gpu,
    path: &Path,
    file: &TensorFile,
    tolerance: f64,
    chunk_bytes: Option<u64>,
) -> Result<Report, VerifyError> {
    let mut meta = file.metadata.clone();
    meta.entry("head".into()).or_insert_with(|| "linear".into());
    let cfg = Config::from_metadata(&meta).map_err(|e| VerifyError::Fixture {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let r = recipe(path, file)?;
    let batch: usize = meta
        .get("batch")
        .and_then(|b| b.parse().ok())
        .unwrap_or_default();
    let image_len = cfg.channels * cfg.image_h * cfg.image_w;
    let (s, b) = (r.steps, batch);
    let images = file.take(
        path,
        "trajectory.images",
        &[s, b, cfg.channels, cfg.image_h, cfg.image_w],
    )?;
    let labels = file.take_int(path, "trajectory.labels", &[s, b])?;
    let expected_lr = file.take(path, "trajectory.lr", &[s])?;
    let expected_loss = file.take(path, "trajectory.loss", &[s])?;
    let params = crate::model::checkpoint::load_params_resampling(path, file, &cfg)?;

    let kernels = Kernels::new(gpu);
    let model =
        Vit::with_chunk_bytes(gpu, &kernels, &cfg, &params, b, Mode::Train, 0, chunk_bytes)?;
    gpu.check_limits()?;
    let mut lrs = Vec::with_capacity(s);
    let mut comparisons = Vec::new();
    for step in 1..=s {
        let lr = r.schedule.lr_at(step as u64);
        lrs.push(lr);
        let i = step - 1;
        let step_labels: Vec<u32> = labels[i * b..(i + 1) * b]
            .iter()
            .map(|&l| l as u32)
            .collect();
        model.write_batch(
            gpu,
            &images[i * b * image_len..(i + 1) * b * image_len],
            &step_labels,
        );
        model.write_step(gpu, step as u64, lr, &r.optim);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        model.record_train_step(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        // Verification, not training: waiting for each step's loss is fine here.
        let losses: Vec<f32> = gpu.read(&model.losses).await?;
        let loss = losses[..b].iter().map(|&v| v as f64).sum::<f64>() / b as f64;
        comparisons.push(compare(
            &format!("loss step {step}"),
            &[loss as f32],
            &expected_loss[i..i + 1],
            tolerance,
        ));
    }
    comparisons.insert(
        0,
        compare("learning rate, every step", &lrs, &expected_lr, tolerance),
    );
    let trained = model.read_params(gpu).await?;
    for (spec, values) in trained.specs.iter().zip(&trained.values) {
        let expected = file.take(path, &format!("final.{}", spec.name), &spec.shape)?;
        if spec.name.ends_with("attn.qkv.bias") {
            // The key bias adds q.b_k to a whole row of scores, which softmax ignores: its
            // gradient is exactly zero, so float32 rounding noise (~1e-9, against ~1e-17 in
            // float64) is all Adam sees and normalises to steps of up to lr. It cannot change
            // any output; compare the query and value thirds.
            let d = cfg.dim;
            let q_and_v = |t: &[f32]| [&t[..d], &t[2 * d..]].concat();
            comparisons.push(compare(
                &format!("final {} (q, v)", spec.name),
                &q_and_v(values),
                &q_and_v(&expected),
                tolerance,
            ));
            continue;
        }
        comparisons.push(compare(
            &format!("final {}", spec.name),
            values,
            &expected,
            tolerance,
        ));
    }
    Ok(Report {
        config: cfg,
        batch,
        arena_chunks: model.arena.layout.chunks.len(),
        comparisons,
    })
}
