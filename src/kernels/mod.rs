//! One module per kernel family, each owning its pipelines (built once) and handing out
//! `Dispatch`es whose bind groups are built once and recorded every step.
//!
//! Gradient convention, as llm.c's: every backward kernel *overwrites* its outputs unless
//! its `accumulate` flag is set (used where a gradient adds into the residual stream).

pub mod layernorm;

/// A WGSL source embedded at compile time.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($file:literal) => {
        Shader {
            name: $file,
            source: include_str!(concat!("../../shaders/", $file)),
        }
    };
}

pub const LAYERNORM: Shader = shader!("layernorm.wgsl");

/// Every shader, for the validation test and for `vit-wgpu info --check-shaders`.
pub const ALL_SHADERS: &[Shader] = &[LAYERNORM];
