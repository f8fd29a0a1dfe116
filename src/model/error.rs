//! What can go wrong building or loading a model on the device.

use crate::gpu::GpuError;

#[derive(thiserror::Error, Debug)]
pub enum ModelError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error(
        "batch size {batch} is too large for this adapter: buffer '{buffer}' needs {needed} MiB \
         but the adapter's largest storage binding is {limit} MiB; use a smaller --batch-size"
    )]
    BatchTooLarge {
        batch: usize,
        buffer: String,
        needed: u64,
        limit: u64,
    },
    #[error("parameter '{name}' has shape {found:?}, the model needs {expected:?}")]
    ParamShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("parameter '{name}' is missing")]
    MissingParam { name: String },
    #[error(transparent)]
    Arena(#[from] super::arena::ArenaError),
}
