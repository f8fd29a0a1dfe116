//! vit-wgpu: a Vision Transformer trained and run with hand-written WGSL compute shaders.
//!
//! The core (gpu runtime, kernels, model, optimiser, checkpoint bytes) is async and touches
//! no file, thread or clock of the operating system, so it builds for the browser; what needs
//! the operating system sits behind the default `native` feature.

#[cfg(feature = "native")]
pub mod cli;
pub mod data;
#[cfg(feature = "native")]
pub mod dist;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod reference;
pub mod train;
pub mod verify;
pub mod viz;
#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub mod web;
