//! Specialisations for CPU adapters (Mesa's llvmpipe/lavapipe), kept apart from the
//! portable kernels as llm.c keeps its kernel variants in dev/: each family reaches its
//! CPU path through one seam, and the model never sees it.

pub mod gemm_lanes;
pub mod texture;
