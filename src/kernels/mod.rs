//! One module per kernel family, each owning its pipelines (built once). Every entry point
//! has an args struct, and every family records with one verb, `gpu::Record::record`, into a
//! command list whose bind groups are built once and recorded every step.
//!
//! Gradient convention, as llm.c's: every backward kernel *overwrites* its outputs unless
//! its `accumulate` flag is set (used where a gradient adds into the residual stream).

pub mod adamw;
pub mod attention;
pub mod checks;
pub mod cpu;
pub mod dropout;
pub mod elementwise;
pub mod embed;
pub mod gemm;
pub mod layernorm;
pub mod loss;
pub mod peak;
pub mod reduce;
pub mod tokens;
pub mod variants;

pub use crate::gpu::Shader;

/// One pipeline a kernel family builds: shader, entry point and override constants. The
/// families list every one they can build (`pipeline_specs`), so the translation test
/// covers exactly what the program compiles.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSpec {
    pub shader: Shader,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, f64)>,
}

impl PipelineSpec {
    pub fn build(&self, gpu: &crate::gpu::Gpu) -> wgpu::ComputePipeline {
        gpu.pipeline_with(&self.shader, self.entry, &self.constants)
    }
}

macro_rules! shader {
    ($file:literal) => {
        Shader {
            name: $file,
            source: include_str!(concat!("../../shaders/", $file)),
        }
    };
}

/// A family's CPU-adapter shader: shaders/cpu/FILE appended to shaders/FILE, whose
/// declarations it uses (WGSL has no includes), named "cpu/FILE".
macro_rules! cpu_shader {
    ($file:literal) => {
        Shader {
            name: concat!("cpu/", $file),
            source: concat!(
                include_str!(concat!("../../shaders/", $file)),
                include_str!(concat!("../../shaders/cpu/", $file))
            ),
        }
    };
}

pub const ADAMW: Shader = shader!("adamw.wgsl");
pub const ATTENTION: Shader = shader!("attention.wgsl");
/// The CPU-adapter (Lanes) attention kernels: attention.wgsl with cpu/attention_lanes.wgsl
/// appended, so devices without subgroups never compile subgroup code.
pub const ATTENTION_LANES: Shader = Shader {
    name: "cpu/attention_lanes.wgsl",
    source: concat!(
        include_str!("../../shaders/attention.wgsl"),
        include_str!("../../shaders/cpu/attention_lanes.wgsl")
    ),
};
pub const ATTENTION_LANES4: Shader = Shader {
    name: "cpu/attention_lanes4.wgsl",
    source: concat!(
        include_str!("../../shaders/attention.wgsl"),
        include_str!("../../shaders/cpu/attention_lanes4.wgsl")
    ),
};
pub const DROPOUT: Shader = shader!("dropout.wgsl");
pub const EMBED: Shader = shader!("embed.wgsl");
/// LayerScale, head averaging, QuickGELU and column copies (timm's ViT options).
pub const ELEMENTWISE: Shader = shader!("elementwise.wgsl");
/// Token layouts with distillation/register tokens or positions on the patches only, and
/// pooling.
pub const TOKENS: Shader = shader!("tokens.wgsl");
/// erf, GELU and GELU' (scalar and vec4), written once: WGSL has no includes, so the GEMM
/// shaders below are this file with theirs appended.
pub const ACTIVATIONS: Shader = shader!("activations.wgsl");
/// GEMM without subgroups: the workgroup-memory tiled kernel for GPUs (with its split-K
/// reduction) and the register-block kernel for CPU adapters without 8-lane subgroups.
pub const GEMM_TILED: Shader = Shader {
    name: "gemm_tiled.wgsl",
    source: concat!(
        include_str!("../../shaders/activations.wgsl"),
        include_str!("../../shaders/gemm_tiled.wgsl")
    ),
};
/// GEMM for CPU adapters (lavapipe): register blocks, subgroup-shared loads, no barriers.
pub const GEMM_LANES: Shader = Shader {
    name: "cpu/gemm_lanes.wgsl",
    source: concat!(
        include_str!("../../shaders/activations.wgsl"),
        include_str!("../../shaders/cpu/gemm_lanes.wgsl")
    ),
};
/// GEMM for CPU adapters with 4-lane subgroups (SwiftShader): gemm_tiled.wgsl's register
/// blocks with subgroup-shared A loads appended, so devices without subgroups never compile
/// subgroup code.
pub const GEMM_LANES4: Shader = Shader {
    name: "cpu/gemm_lanes4.wgsl",
    source: concat!(
        include_str!("../../shaders/activations.wgsl"),
        include_str!("../../shaders/gemm_tiled.wgsl"),
        include_str!("../../shaders/cpu/gemm_lanes4.wgsl")
    ),
};
pub const LAYERNORM: Shader = shader!("layernorm.wgsl");
pub const LOSS: Shader = shader!("loss.wgsl");
pub const REDUCE: Shader = shader!("reduce.wgsl");
/// The CPU-adapter specialisations (`cpu`): texture reads.
pub const ADAMW_CPU: Shader = cpu_shader!("adamw.wgsl");
pub const DROPOUT_CPU: Shader = cpu_shader!("dropout.wgsl");
pub const EMBED_CPU: Shader = cpu_shader!("embed.wgsl");
pub const LAYERNORM_CPU: Shader = cpu_shader!("layernorm.wgsl");
pub const REDUCE_CPU: Shader = cpu_shader!("reduce.wgsl");
/// Benchmark only: the adapter's arithmetic ceiling.
pub const PEAK_FMA: Shader = shader!("peak_fma.wgsl");

/// Every shader, for the validation test (ACTIVATIONS is a library of functions that the
/// GEMM shaders include; it validates alone too).
pub const ALL_SHADERS: &[Shader] = &[
    ACTIVATIONS,
    ADAMW,
    ATTENTION,
    ATTENTION_LANES,
    ATTENTION_LANES4,
    DROPOUT,
    ELEMENTWISE,
    EMBED,
    TOKENS,
    GEMM_TILED,
    GEMM_LANES,
    GEMM_LANES4,
    LAYERNORM,
    LOSS,
    REDUCE,
    PEAK_FMA,
    ADAMW_CPU,
    DROPOUT_CPU,
    EMBED_CPU,
    LAYERNORM_CPU,
    REDUCE_CPU,
];

/// Kernel families, built once per device and shared by every model on it.
pub struct Kernels {
    pub gemm: gemm::Gemm,
    pub layernorm: layernorm::LayerNorm,
    pub attention: attention::Attention,
    pub embed: embed::Embed,
    pub dropout: dropout::Dropout,
    pub loss: loss::CrossEntropy,
    pub adamw: adamw::AdamW,
    pub reduce: reduce::Reduce,
    pub tokens: tokens::Tokens,
    pub elementwise: elementwise::Elementwise,
}

impl Kernels {
    pub fn new(gpu: &crate::gpu::Gpu) -> Kernels {
        Kernels {
            gemm: gemm::Gemm::new(gpu),
            layernorm: layernorm::LayerNorm::new(gpu, cpu::layernorm::for_adapter(gpu)),
            attention: attention::Attention::new(gpu),
            embed: embed::Embed::new(gpu, cpu::embed::for_adapter(gpu)),
            dropout: dropout::Dropout::new(gpu, cpu::dropout::for_adapter(gpu)),
            loss: loss::CrossEntropy::new(gpu),
            adamw: adamw::AdamW::new(gpu, cpu::adamw::for_adapter(gpu)),
            reduce: reduce::Reduce::new(gpu, cpu::reduce::for_adapter(gpu)),
            tokens: tokens::Tokens::new(gpu),
            elementwise: elementwise::Elementwise::new(gpu),
        }
    }
}
