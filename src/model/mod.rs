//! The Vision Transformer: config and presets, parameters under timm's names, the device
//! model (parameter arena, per-block schedule, recorder), and the f64 reference model
//! (`reference`).

pub mod arch;
pub mod arena;
pub mod checkpoint;
pub mod config;
pub mod error;
#[cfg(feature = "native")]
pub mod hub;
pub mod init;
pub mod params;
pub mod pos_embed;
pub mod recorder;
pub mod reference;
pub mod schedule;
pub mod vit;

pub use config::{Act, Config, Head, Options, Pool, Preset};
pub use error::ModelError;
pub use params::{HostParams, ParamSpec};
pub use vit::{Kernels, Mode, OptimConfig, Vit};
