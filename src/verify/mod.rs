//! `vit-wgpu verify`: run forward and backward on a PyTorch-written debug-state file through
//! the training code path and compare logits, loss and every gradient (llm.c's test_gpt2).

use crate::gpu::Gpu;
use crate::model::checkpoint::{CheckpointError, TensorFile};
use crate::model::{Config, Kernels, Mode, Vit};
use std::path::Path;

mod trajectory;

#[derive(Clone, Copy, Debug)]
pub struct Tolerances {
    pub logits: f64,
    pub loss: f64,
    pub grads: f64,
    /// Per-step losses and final parameters of a training-trajectory fixture.
    pub trajectory: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            logits: 1e-4,
            loss: 1e-4,
            grads: 1e-3,
            trajectory: 1e-4,
        }
    }
}

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub name: String,
    pub relative_error: f64,
    pub worst_index: usize,
    pub ours: f32,
    pub expected: f32,
    pub tolerance: f64,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.relative_error < self.tolerance
    }
}

pub struct Report {
    pub config: Config,
    pub batch: usize,
    pub comparisons: Vec<Comparison>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.comparisons.iter().all(Comparison::passed)
    }
}

#[derive(thiserror::Error, Debug)]
pub enum VerifyError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error("{path}: {message}")]
    Fixture { path: String, message: String },
}

pub(crate) fn compare(name: &str, ours: &[f32], expected: &[f32], tolerance: f64) -> Comparison {
    let (relative_error, worst_index) = crate::reference::relative_error(ours, expected);
    Comparison {
        name: name.into(),
        relative_error,
        worst_index,
        ours: ours[worst_index],
        expected: expected[worst_index],
        tolerance,
    }
}

/// Verify the debug-state file at `path` (reads it; see [`verify_file`]).
#[cfg(feature = "native")]
pub async fn verify(gpu: &Gpu, path: &Path, tol: Tolerances) -> Result<Report, VerifyError> {
    let file = TensorFile::read(path)?;
    verify_file(gpu, path, &file, tol).await
}

/// Verify a debug-state file already in memory; `path` names it in messages.
pub async fn verify_file(
    gpu: &Gpu,
    path: &Path,
    file: &TensorFile,
    tol: Tolerances,
) -> Result<Report, VerifyError> {
    if is_trajectory(file) {
        return crate::verify::trajectory::verify_trajectory(gpu, path, file, tol.trajectory).await;
    }
    let bad = |message: String| VerifyError::Fixture {
        path: path.display().to_string(),
        message,
    };
    let mut meta = file.metadata.clone();
    meta.entry("head".into()).or_insert_with(|| "linear".into());
    let cfg = Config::from_metadata(&meta).map_err(|e| bad(e.to_string()))?;
    let params = crate::model::checkpoint::load_params_resampling(path, file, &cfg)?;
    let (images_shape, images) = file
        .tensors
        .get("input.images")
        .ok_or_else(|| bad("tensor 'input.images' is missing (not a debug-state file?)".into()))?;
    let (_, labels) = file
        .int_tensors
        .get("input.labels")
        .ok_or_else(|| bad("tensor 'input.labels' (int64) is missing".into()))?;
    let batch = labels.len();
    let expected_shape = vec![batch, cfg.channels, cfg.image_h, cfg.image_w];
    if images_shape != &expected_shape {
        return Err(bad(format!(
            "input.images has shape {images_shape:?}, expected {expected_shape:?}"
        )));
    }
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let expected_logits = file.take(path, "expected.logits", &[batch, cfg.classes])?;
    let expected_loss = file.take(path, "expected.loss", &[1])?;

    let kernels = Kernels::new(gpu);
    let model = Vit::new(gpu, &kernels, &cfg, &params, batch, Mode::Train, 0)?;
    gpu.check_limits()?;
    model.write_batch(gpu, images, &labels);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    model.record_gradients(&mut encoder);
    gpu.queue.submit([encoder.finish()]);
    let logits: Vec<f32> = gpu.read(&model.logits).await?;
    let losses: Vec<f32> = gpu.read(&model.losses).await?;
    let grads = model.read_grads(gpu).await?;

    let mut comparisons = vec![compare(
        "logits",
        &logits[..batch * cfg.classes],
        &expected_logits,
        tol.logits,
    )];
    let loss = losses[..batch].iter().map(|&v| v as f64).sum::<f64>() / batch as f64;
    comparisons.push(compare("loss", &[loss as f32], &expected_loss, tol.loss));
    for (spec, g) in params.specs.iter().zip(&grads) {
        let name = format!("expected.grad.{}", spec.name);
        let expected = file.take(path, &name, &spec.shape)?;
        comparisons.push(compare(
            &format!("grad {}", spec.name),
            g,
            &expected,
            tol.grads,
        ));
    }
    Ok(Report {
        config: cfg,
        batch,
        comparisons,
    })
}

/// A training-trajectory fixture (scripts/make_trajectory_fixture.py) rather than one step.
pub fn is_trajectory(file: &TensorFile) -> bool {
    file.tensors.contains_key("trajectory.loss")
}

/// Re-exported so the CLI can print the path it read.
pub fn is_debug_state(file: &TensorFile) -> bool {
    file.tensors.keys().any(|k| k.starts_with("expected."))
}
