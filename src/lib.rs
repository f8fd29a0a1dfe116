//! vit-wgpu: a Vision Transformer trained and run with hand-written WGSL compute shaders.

pub mod cli;
pub mod data;
pub mod dist;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod reference;
pub mod train;
pub mod verify;
pub mod viz;
