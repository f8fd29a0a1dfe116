//! Attention for CPU adapters with 4-lane subgroups (SwiftShader, Chrome's WebGPU on a
//! machine without a GPU): the `Rows` forward in a workgroup of one quad whose lanes share
//! each streamed key and value row by quad swaps (shaders/cpu/attention_lanes4.wgsl, written
//! by scripts/gen_attention_rows.py). There every storage load is a gather of one float per
//! lane and a quad swap one register swizzle: a quarter of the forward's loads.
//! Only the forward of the 16-vec4 head-dim class (d 33..=64, ViT's 64) has a pipeline of its
//! own; other head dims and the backward passes run the portable `Rows` kernels.

use std::sync::OnceLock;

use crate::gpu::{Bind, Command, Gpu, Out, Record};
use crate::kernels::attention::{
    self, check, grid, head_class, meta, Attention, AttentionBackward, AttentionForward,
    Specialisation, Variant, HEAD_CLASSES,
};
use crate::kernels::{PipelineSpec, ATTENTION_LANES4};

const LANES: u32 = 4;
/// Query rows per lane (attention.wgsl's QUERIES).
const QUERIES: usize = 4;
/// The head-dim class (vec4 steps) it has a pipeline for.
const CLASS: usize = 16;

fn forward_spec() -> PipelineSpec {
    PipelineSpec {
        shader: ATTENTION_LANES4,
        entry: "attention_forward_lanes4",
        constants: vec![("HEAD_VEC4", CLASS as f64)],
    }
}

/// Every pipeline it can build: its forward, and the portable `Rows` kernels' for the rest.
pub fn pipeline_specs() -> Vec<PipelineSpec> {
    let mut specs = vec![forward_spec()];
    specs.extend(attention::portable_pipeline_specs(Variant::Rows));
    specs
}

pub struct LanesAttention4 {
    /// `Rows`, for the backward passes and the head dims outside `CLASS`.
    portable: Attention,
    forward: OnceLock<wgpu::ComputePipeline>,
}

impl LanesAttention4 {
    /// Ok when the adapter has subgroups of at least 4 lanes (a workgroup of 4 is then one
    /// quad) and runs the portable `Rows` kernels.
    pub fn supports(gpu: &Gpu) -> Result<(), String> {
        gpu.caps.subgroups_of_at_least(LANES)?;
        Attention::supports_portable(gpu, Variant::Rows)?;
        gpu.fits_limits(&ATTENTION_LANES4)
    }

    /// Panics if the adapter cannot run it (check `supports` first).
    pub fn new(gpu: &Gpu) -> LanesAttention4 {
        if let Err(why) = Self::supports(gpu) {
            panic!("lanes4 attention on adapter '{}': {why}", gpu.info.name);
        }
        LanesAttention4 {
            portable: Attention::assemble(Variant::Rows, "lanes4 fallback".into(), None),
            forward: OnceLock::new(),
        }
    }

    /// Whether its own forward runs a head dim (else `Rows`').
    pub fn runs_forward(head_dim: usize) -> bool {
        HEAD_CLASSES[head_class(head_dim)] == CLASS
    }
}

impl Specialisation for LanesAttention4 {
    fn record_forward(&self, gpu: &Gpu, a: &AttentionForward, out: &mut Vec<Command>) {
        if !Self::runs_forward(a.shape.head_dim) {
            return self.portable.record(gpu, a, out);
        }
        check(gpu, a.shape);
        let pipeline = self.forward.get_or_init(|| forward_spec().build(gpu));
        let (o, lse) = (Out(a.o), Out(a.lse));
        let entries: [(u32, &dyn Bind); 3] = [(0, a.qkv), (1, &o), (2, &lse)];
        let groups = grid(a.shape, LANES as usize * QUERIES);
        out.push(
            gpu.dispatch(pipeline, &entries, &meta(a.shape, 0), groups)
                .into(),
        );
    }

    fn record_backward(&self, gpu: &Gpu, a: &AttentionBackward, out: &mut Vec<Command>) {
        self.portable.record(gpu, a, out);
    }
}
