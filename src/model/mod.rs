//! The Vision Transformer: config and presets, parameters under timm's names, the device
//! model with its fixed launch schedule, and the CPU reference model.

pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod params;
pub mod pos_embed;
pub mod vit;

pub use config::{Act, Config, Head, Preset};
pub use params::{HostParams, ParamSpec};
pub use vit::{Kernels, Mode, ModelError, OptimConfig, Vit};
