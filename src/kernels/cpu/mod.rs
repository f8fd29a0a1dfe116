//! Specialisations for CPU adapters (Mesa's llvmpipe/lavapipe, SwiftShader), kept apart from the
//! portable kernels as llm.c keeps its kernel variants in dev/: each family reaches its
//! CPU path through one seam, and the model never sees it.
//!
//! The seam: a family's struct holds an optional `family::Specialisation`, given at
//! construction (`Kernels::new` passes `cpu::FAMILY::for_adapter`), and offers each call to
//! it first (`TryRecord`); when it declines (a shape its texture copies cannot take), the
//! portable kernel runs. Imports go one way: these modules use the families' argument
//! types, and the portable families never name them.

pub mod adamw;
pub mod attention_lanes;
pub mod attention_lanes4;
pub mod dropout;
pub mod embed;
pub mod gemm_lanes;
pub mod gemm_lanes4;
pub mod layernorm;
pub mod reduce;
pub mod texture;

use crate::gpu::{Command, Gpu};

/// A CPU specialisation of one kernel call: append its launches (and the texture copies
/// they read) to `out` and return true, or append nothing and return false.
pub trait TryRecord<Args> {
    fn try_record(&self, gpu: &Gpu, args: &Args, out: &mut Vec<Command>) -> bool;
}
