//! `vit-wgpu verify`: run forward and backward on a PyTorch-written debug-state file through
//! the training code path and compare logits, loss and every gradient (llm.c's test_gpt2).

use crate::gpu::Gpu;
use crate::model::checkpoint::{CheckpointError, TensorFile};
use crate::model::{Config, Kernels, Mode, Vit};
use std::path::Path;

mod hashed;
mod trajectory;

pub use hashed::hashed_values;

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
    /// Buffers per role of the model's parameter arena.
    pub arena_chunks: usize,
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
    verify_in_chunks(gpu, path, tol, None).await
}

/// The same with the model's parameter arena in chunks of at most `chunk_bytes` (tests
/// run small fixtures in many chunks).
#[cfg(feature = "native")]
pub async fn verify_in_chunks(
    gpu: &Gpu,
    path: &Path,
    tol: Tolerances,
    chunk_bytes: Option<u64>,
) -> Result<Report, VerifyError> {
    let file = TensorFile::read(path)?;
    verify_file(gpu, path, &file, tol, chunk_bytes).await
}

/// Verify a debug-state file already in memory; `path` names it in messages.
pub async fn verify_file(
    gpu: &Gpu,
    path: &Path,
    file: &TensorFile,
    tol: Tolerances,
    chunk_bytes: Option<u64>,
) -> Result<Report, VerifyError> {
    if is_trajectory(file) {
        let tol = tol.trajectory;
        return trajectory::verify_trajectory(gpu, path, file, tol, chunk_bytes).await;
    }
    if hashed::is_hashed(file) {
        return hashed::verify_hashed(gpu, path, file, tol, chunk_bytes).await;
    }
    let cfg = fixture_config(path, file)?;
    let params = crate::model::checkpoint::load_params_resampling(path, file, &cfg)?;
    let step = run_debug_step(gpu, path, file, &cfg, &params, chunk_bytes).await?;
    let mut comparisons = step.compare_logits_and_loss(path, file, tol)?;
    for (spec, g) in params.specs.iter().zip(&step.grads) {
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
        batch: step.batch,
        arena_chunks: step.arena_chunks,
        comparisons,
    })
}

fn fixture_error(path: &Path, message: String) -> VerifyError {
    VerifyError::Fixture {
        path: path.display().to_string(),
        message,
    }
}

/// The model config in a fixture's metadata (a linear head unless it says otherwise).
pub(crate) fn fixture_config(path: &Path, file: &TensorFile) -> Result<Config, VerifyError> {
    let mut meta = file.metadata.clone();
    meta.entry("head".into()).or_insert_with(|| "linear".into());
    Config::from_metadata(&meta).map_err(|e| fixture_error(path, e.to_string()))
}

/// What one forward and backward of a debug-state file's batch gave.
pub(crate) struct DebugStep {
    pub batch: usize,
    pub classes: usize,
    pub arena_chunks: usize,
    pub logits: Vec<f32>,
    pub loss: f32,
    /// Per parameter, in `param_specs` order.
    pub grads: Vec<Vec<f32>>,
}

/// Forward and backward of the file's `input.images` and `input.labels` through the
/// training code path, with `params` (the arena in chunks of at most `chunk_bytes`).
pub(crate) async fn run_debug_step(
    gpu: &Gpu,
    path: &Path,
    file: &TensorFile,
    cfg: &Config,
    params: &crate::model::HostParams,
    chunk_bytes: Option<u64>,
) -> Result<DebugStep, VerifyError> {
    let bad = |message: String| fixture_error(path, message);
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

    let kernels = Kernels::new(gpu);
    let model = Vit::with_chunk_bytes(
        gpu,
        &kernels,
        cfg,
        params,
        batch,
        Mode::Train,
        0,
        chunk_bytes,
    )?;
    gpu.check_limits()?;
    model.write_batch(gpu, images, &labels);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    model.record_gradients(&mut encoder);
    gpu.queue.submit([encoder.finish()]);
    let logits: Vec<f32> = gpu.read(&model.logits).await?;
    let losses: Vec<f32> = gpu.read(&model.losses).await?;
    let grads = model.read_grads(gpu).await?;
    let loss = losses[..batch].iter().map(|&v| v as f64).sum::<f64>() / batch as f64;
    Ok(DebugStep {
        batch,
        classes: cfg.classes,
        arena_chunks: model.arena.layout.chunks.len(),
        logits: logits[..batch * cfg.classes].to_vec(),
        loss: loss as f32,
        grads,
    })
}

impl DebugStep {
    /// The logits and loss against the file's `expected.logits` and `expected.loss`.
    pub(crate) fn compare_logits_and_loss(
        &self,
        path: &Path,
        file: &TensorFile,
        tol: Tolerances,
    ) -> Result<Vec<Comparison>, VerifyError> {
        let expected_logits = file.take(path, "expected.logits", &[self.batch, self.classes])?;
        let expected_loss = file.take(path, "expected.loss", &[1])?;
        Ok(vec![
            compare("logits", &self.logits, &expected_logits, tol.logits),
            compare("loss", &[self.loss], &expected_loss, tol.loss),
        ])
    }
}

/// A training-trajectory fixture (scripts/make_trajectory_fixture.py) rather than one step.
pub fn is_trajectory(file: &TensorFile) -> bool {
    file.tensors.contains_key("trajectory.loss")
}

/// Re-exported so the CLI can print the path it read.
pub fn is_debug_state(file: &TensorFile) -> bool {
    file.tensors.keys().any(|k| k.starts_with("expected."))
}
