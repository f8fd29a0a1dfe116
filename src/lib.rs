//! vit-wgpu: a Vision Transformer trained and run with hand-written WGSL compute shaders.

pub mod data;
pub mod gpu;
pub mod kernels;
pub mod reference;
