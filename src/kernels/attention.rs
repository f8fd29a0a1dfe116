//! Multi-head self-attention, flash style (shaders/attention.wgsl): forward saving the row
//! log-sum-exp, backward recomputing the probabilities from it (FlashAttention-2's split
//! into a per-query and a per-key pass, no atomics), and the probabilities themselves for
//! attention maps at inference.
//!
//! The portable path is `Tiled` (storage buffers, workgroup memory, no subgroups, within
//! WebGPU's default limits) with `Rows` (no workgroup memory) beside it; the CPU-adapter
//! `Lanes` and `Lanes4` kernels live in src/kernels/cpu/attention_lanes.rs and
//! attention_lanes4.rs, held in `Attention::cpu` when chosen at construction.

use std::sync::OnceLock;

use super::{PipelineSpec, ATTENTION};
use crate::gpu::{div_ceil, Bind, Command, Gpu, Out, Record};

/// Shapes of one attention call: qkv [batch*tokens, 3*heads*head_dim].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// D = heads * head_dim.
    pub fn model_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Floats in qkv and dqkv: [B*N, 3D].
    pub fn qkv_len(&self) -> usize {
        self.batch * self.tokens * 3 * self.model_dim()
    }

    /// Floats in o and dO: [B*N, D].
    pub fn out_len(&self) -> usize {
        self.batch * self.tokens * self.model_dim()
    }

    /// Floats in lse (and the backward scratch): [B, A, N].
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads * self.tokens
    }

    /// Floats in the probabilities: [B, A, N, N].
    pub fn probs_len(&self) -> usize {
        self.lse_len() * self.tokens
    }
}

/// The largest head dim the kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 64;

/// Which kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The streamed rows staged in workgroup memory, shared by the 64 or 128 query (or key)
    /// rows of a workgroup: the portable path, for GPUs and the browser.
    Tiled,
    /// One invocation per query (or key) row streaming the other side's rows from storage,
    /// no workgroup memory: for CPU adapters without 8-lane subgroups.
    Rows,
    /// `Rows` with the streamed rows shared across 8-lane subgroups by `subgroupBroadcast`,
    /// for CPU adapters (lavapipe), where every storage load is a per-lane loop.
    Lanes,
    /// `Rows`' forward with the streamed rows shared across a quad by quad swaps, for CPU
    /// adapters with 4-lane subgroups (SwiftShader); the backward runs `Rows`.
    Lanes4,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Tiled,
        Variant::Rows,
        Variant::Lanes,
        Variant::Lanes4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Tiled => "tiled",
            Variant::Rows => "rows",
            Variant::Lanes => "lanes",
            Variant::Lanes4 => "lanes4",
        }
    }

    fn entry(self, name: &'static str) -> &'static str {
        match (self, name) {
            (Variant::Tiled, "attention_forward") => "attention_forward_tiled",
            (Variant::Tiled, "attention_backward_query") => "attention_backward_query_tiled",
            (Variant::Tiled, "attention_backward_key") => "attention_backward_key_tiled",
            _ => name,
        }
    }
}

/// `Rows`: rows per workgroup.
const ROWS: usize = 16;
/// `Rows`' forward: invocations per workgroup, each owning `QUERIES` query rows (32 rows a
/// workgroup: 197 tokens pad to 224, not 256).
const FORWARD_ROWS: usize = 8;
const QUERIES: usize = 4;

/// `Tiled`: query (or key) rows per workgroup, chosen from N (`tile_rows`). The key pass
/// runs two invocations per key row, so 128 rows need 256 invocations.
const TILE_ROWS: [usize; 2] = [64, 128];
/// Head dims run in classes of 4, 8 and 16 vec4 (d up to 16, 32, 64) in every variant, the
/// steps past d padded (shaders/attention.wgsl): one pipeline per class, exact for the
/// usual 16, 32 and 64.
pub(crate) const HEAD_CLASSES: [usize; 3] = [4, 8, 16];
/// `Tiled`: workgroup memory, two tiles of 256 vec4 and two [64] f32 arrays, as in
/// shaders/attention.wgsl.
const TILED_WORKGROUP_BYTES: u32 = 2 * 256 * 16 + 2 * 64 * 4;

/// The head-dim class (index into HEAD_CLASSES) a head dim runs in.
pub(crate) fn head_class(head_dim: usize) -> usize {
    HEAD_CLASSES
        .iter()
        .position(|&c| 4 * c >= head_dim)
        .unwrap_or(HEAD_CLASSES.len() - 1)
}

/// Rows per `Tiled` workgroup (index into TILE_ROWS) for N tokens: the one that pads N the
/// least, the larger on a tie (K and V are then staged fewer times), and 64 when the adapter
/// cannot run 256 invocations. N = 65: one 128-row group (3 of its 4 warps work), not two
/// 64-row groups; N = 150: three 64-row groups.
fn tile_rows(tokens: usize, max_invocations: u32) -> usize {
    if max_invocations < 2 * TILE_ROWS[1] as u32 {
        return 0;
    }
    let padded = |rows: usize| tokens.div_ceil(rows) * rows;
    if padded(TILE_ROWS[0]) < padded(TILE_ROWS[1]) {
        0
    } else {
        1
    }
}

/// A portable pipeline: `Tiled`'s three passes take the head-dim class and the rows per
/// workgroup, `Rows`' the head-dim class.
fn spec(variant: Variant, entry: &'static str, head_vec4: usize, tile: usize) -> PipelineSpec {
    let mut constants = vec![("HEAD_VEC4", head_vec4 as f64)];
    if variant == Variant::Tiled {
        constants.push(("TILE_ROWS", TILE_ROWS[tile] as f64));
    } else if entry == "attention_forward" {
        constants.push(("ROWS", FORWARD_ROWS as f64));
    } else {
        constants.push(("ROWS", ROWS as f64));
    }
    PipelineSpec {
        shader: ATTENTION,
        entry: variant.entry(entry),
        constants,
    }
}

/// The three passes (forward, backward_query, backward_key) of a portable variant.
fn pass_specs(variant: Variant, head_vec4: usize, tile: usize) -> [PipelineSpec; 3] {
    [
        "attention_forward",
        "attention_backward_query",
        "attention_backward_key",
    ]
    .map(|entry| spec(variant, entry, head_vec4, tile))
}

/// One query row per invocation, its loops bounded by the shape: one pipeline for every
/// head dim and variant (attention maps only).
fn probabilities_spec() -> PipelineSpec {
    PipelineSpec {
        shader: ATTENTION,
        entry: "attention_probabilities",
        constants: vec![("ROWS", ROWS as f64)],
    }
}

/// Every pipeline a portable variant can build (for the translation test): `Tiled` 3
/// classes x 2 row counts x 3 passes, `Rows` 3 classes x 3 passes; and probabilities
/// (`kernels::variants::attention_pipeline_specs` adds the CPU specialisation's).
pub fn portable_pipeline_specs(variant: Variant) -> Vec<PipelineSpec> {
    let mut specs: Vec<PipelineSpec> = match variant {
        Variant::Tiled => HEAD_CLASSES
            .iter()
            .flat_map(|&c| (0..TILE_ROWS.len()).flat_map(move |t| pass_specs(variant, c, t)))
            .collect(),
        Variant::Rows => HEAD_CLASSES
            .iter()
            .flat_map(|&c| pass_specs(variant, c, 0))
            .collect(),
        Variant::Lanes | Variant::Lanes4 => Vec::new(),
    };
    specs.push(probabilities_spec());
    specs
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Meta {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_vec4: u32,
    qkv_row_vec4: u32,
    model_vec4: u32,
    scale: f32,
    row_base: u32,
}

/// The three passes of a portable variant for one head-dim class (and, on `Tiled`, one row
/// count).
struct Passes {
    forward: wgpu::ComputePipeline,
    backward_query: wgpu::ComputePipeline,
    backward_key: wgpu::ComputePipeline,
    /// Rows per workgroup: of the forward, and of the backward passes.
    forward_rows: usize,
    rows: usize,
}

/// A CPU-adapter attention (`kernels::cpu::attention_lanes`), given at construction: it
/// records the forward and backward in the portable kernels' place.
pub trait Specialisation: wgpu::WasmNotSendSync {
    fn record_forward(&self, gpu: &Gpu, a: &AttentionForward, out: &mut Vec<Command>);
    fn record_backward(&self, gpu: &Gpu, a: &AttentionBackward, out: &mut Vec<Command>);
}

pub struct Attention {
    variant: Variant,
    reason: String,
    /// The CPU-adapter specialisation (`Variant::Lanes`), which then records the forward
    /// and backward; the portable pipelines below serve the rest.
    cpu: Option<Box<dyn Specialisation>>,
    /// Indexed by head class x 2 + row count (`Rows`: always the first). Built on first use
    /// and kept.
    passes: [OnceLock<Passes>; HEAD_CLASSES.len() * TILE_ROWS.len()],
    probabilities: OnceLock<wgpu::ComputePipeline>,
}

impl Attention {
    /// `variant`, run by `cpu` when given, else by the portable kernels (the constructors
    /// that choose are in `kernels::variants`).
    pub(crate) fn assemble(
        variant: Variant,
        reason: String,
        cpu: Option<Box<dyn Specialisation>>,
    ) -> Attention {
        Attention {
            variant,
            reason,
            cpu,
            passes: Default::default(),
            probabilities: OnceLock::new(),
        }
    }

    /// Ok when the adapter runs the portable `variant`, else why not.
    pub(crate) fn supports_portable(gpu: &Gpu, variant: Variant) -> Result<(), String> {
        match variant {
            Variant::Tiled => gpu
                .caps
                .workgroup(2 * TILE_ROWS[0] as u32, TILED_WORKGROUP_BYTES),
            Variant::Rows => gpu.caps.workgroup(ROWS as u32, 0),
            Variant::Lanes | Variant::Lanes4 => {
                Err(format!("{} is not a portable attention", variant.name()))
            }
        }
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Why this variant runs here.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub(crate) fn set_reason(&mut self, reason: String) {
        self.reason = reason;
    }

    /// The portable passes for `shape` (not for `Lanes`, whose `cpu` records them).
    fn passes(&self, gpu: &Gpu, shape: AttentionShape) -> &Passes {
        check(gpu, shape);
        let class = head_class(shape.head_dim);
        let tile = match self.variant {
            Variant::Tiled => tile_rows(shape.tokens, gpu.caps.invocations),
            _ => 0,
        };
        self.passes[class * TILE_ROWS.len() + tile].get_or_init(|| {
            let [forward, backward_query, backward_key] =
                pass_specs(self.variant, HEAD_CLASSES[class], tile).map(|s| s.build(gpu));
            Passes {
                forward,
                backward_query,
                backward_key,
                forward_rows: match self.variant {
                    Variant::Tiled => TILE_ROWS[tile],
                    _ => FORWARD_ROWS * QUERIES,
                },
                rows: match self.variant {
                    Variant::Tiled => TILE_ROWS[tile],
                    _ => ROWS,
                },
            }
        })
    }

    /// Floats of scratch the backward needs: [B, A, N].
    pub fn scratch_len(shape: AttentionShape) -> usize {
        shape.lse_len()
    }

    /// Multiply-adds x 2 of the forward: S = Q K^T and O = P V, per (batch, head).
    pub fn flops_forward(shape: AttentionShape) -> f64 {
        4.0 * (shape.batch * shape.heads) as f64
            * (shape.tokens * shape.tokens * shape.head_dim) as f64
    }

    /// The backward's useful FLOPs, FlashAttention's count: S recomputed once, dV, dP, dQ
    /// and dK (2.5x the forward). The kernels recompute S and dP in both passes: 7/5 of this,
    /// 8/5 for `Tiled`, whose key pass computes S for dV and dK apart.
    pub fn flops_backward(shape: AttentionShape) -> f64 {
        2.5 * Self::flops_forward(shape)
    }
}

/// o [B*N, D] = softmax(q k^T / sqrt(d)) v per (batch, head); lse [B, A, N] = the row
/// log-sum-exp of the scaled scores, for the backward.
pub struct AttentionForward<'a> {
    pub shape: AttentionShape,
    pub qkv: &'a wgpu::Buffer, // [B*N, 3D]
    pub o: &'a wgpu::Buffer,   // [B*N, D]
    pub lse: &'a wgpu::Buffer, // [B, A, N]
}

/// dqkv [B*N, 3D] (overwritten) from dO [B*N, D] and the forward's qkv, o and lse.
/// `scratch` holds delta_i = rowsum(dO o O), `Attention::scratch_len(shape)` floats.
pub struct AttentionBackward<'a> {
    pub shape: AttentionShape,
    pub qkv: &'a wgpu::Buffer,     // [B*N, 3D]
    pub o: &'a wgpu::Buffer,       // [B*N, D]
    pub lse: &'a wgpu::Buffer,     // [B, A, N]
    pub d_o: &'a wgpu::Buffer,     // [B*N, D]
    pub dqkv: &'a wgpu::Buffer,    // [B*N, 3D]
    pub scratch: &'a wgpu::Buffer, // [B, A, N]
}

/// Inference only: the attention probabilities P [B, A, N, N] (materialised N x N, for
/// attention maps).
pub struct AttentionProbabilities<'a> {
    pub shape: AttentionShape,
    pub qkv: &'a wgpu::Buffer,   // [B*N, 3D]
    pub probs: &'a wgpu::Buffer, // [B, A, N, N]
}

impl Record<AttentionForward<'_>> for Attention {
    fn record(&self, gpu: &Gpu, a: &AttentionForward, out: &mut Vec<Command>) {
        if let Some(cpu) = &self.cpu {
            return cpu.record_forward(gpu, a, out);
        }
        let p = self.passes(gpu, a.shape);
        let (o, lse) = (Out(a.o), Out(a.lse));
        let entries: [(u32, &dyn Bind); 3] = [(0, a.qkv), (1, &o), (2, &lse)];
        let groups = grid(a.shape, p.forward_rows);
        out.push(
            gpu.dispatch(&p.forward, &entries, &meta(a.shape, 0), groups)
                .into(),
        );
    }
}

impl Record<AttentionBackward<'_>> for Attention {
    fn record(&self, gpu: &Gpu, a: &AttentionBackward, out: &mut Vec<Command>) {
        let shape = a.shape;
        assert!(
            a.scratch.size() >= 4 * Self::scratch_len(shape) as u64,
            "attention backward scratch needs {} floats",
            Self::scratch_len(shape)
        );
        if let Some(cpu) = &self.cpu {
            return cpu.record_backward(gpu, a, out);
        }
        let p = self.passes(gpu, shape);
        let (dqkv, delta) = (Out(a.dqkv), Out(a.scratch));
        let query_entries: [(u32, &dyn Bind); 6] = [
            (0, a.qkv),
            (3, a.o),
            (4, a.lse),
            (5, a.d_o),
            (6, &dqkv),
            (7, &delta),
        ];
        // the key pass reads delta, written by the query pass
        let key_entries: [(u32, &dyn Bind); 5] = [
            (0, a.qkv),
            (4, a.lse),
            (5, a.d_o),
            (6, &dqkv),
            (7, a.scratch),
        ];
        let groups = grid(shape, p.rows);
        let meta = meta(shape, 0);
        out.push(
            gpu.dispatch(&p.backward_query, &query_entries, &meta, groups)
                .into(),
        );
        out.push(
            gpu.dispatch(&p.backward_key, &key_entries, &meta, groups)
                .into(),
        );
    }
}

impl Record<AttentionProbabilities<'_>> for Attention {
    fn record(&self, gpu: &Gpu, a: &AttentionProbabilities, out: &mut Vec<Command>) {
        check_binding(gpu, "probabilities", a.shape.probs_len());
        check(gpu, a.shape);
        let pipeline = self
            .probabilities
            .get_or_init(|| probabilities_spec().build(gpu));
        let probs = Out(a.probs);
        let d = gpu.dispatch(
            pipeline,
            &[(0, a.qkv), (8, &probs)],
            &meta(a.shape, 0),
            grid(a.shape, ROWS),
        );
        out.push(d.into());
    }
}

/// Benchmark shapes: the tiny preset (3 heads x 64, batch 64) and labml (8 heads x 64,
/// batch 16) at 65 tokens (32x32 images, patch 4) and 197 tokens (higher resolution), and
/// micro (4 heads x 16, batch 64, 50 tokens).
pub fn bench_cases() -> Vec<AttentionShape> {
    let shape = |batch, tokens, heads, head_dim| AttentionShape {
        batch,
        tokens,
        heads,
        head_dim,
    };
    vec![
        shape(64, 65, 3, 64),
        shape(64, 197, 3, 64),
        // micro: 28x28 images in patches of 4, 4 heads of 16
        shape(64, 50, 4, 16),
        shape(16, 65, 8, 64),
        shape(16, 197, 8, 64),
    ]
}

pub(crate) fn check(gpu: &Gpu, s: AttentionShape) {
    assert!(
        s.head_dim.is_multiple_of(4) && (4..=MAX_HEAD_DIM).contains(&s.head_dim),
        "attention head dim {} must be a multiple of 4 up to {MAX_HEAD_DIM}",
        s.head_dim
    );
    assert!(
        s.tokens >= 1 && s.batch >= 1 && s.heads >= 1,
        "empty attention shape {s:?}"
    );
    let groups = s.batch * s.heads;
    assert!(
        groups <= gpu.limits.max_compute_workgroups_per_dimension as usize,
        "attention: batch x heads = {groups} exceeds the adapter's workgroups per dimension"
    );
    check_binding(gpu, "qkv", s.qkv_len());
}

fn check_binding(gpu: &Gpu, what: &str, floats: usize) {
    let bytes = 4 * floats as u64;
    let limit = gpu.limits.max_storage_buffer_binding_size;
    assert!(
        bytes <= limit,
        "attention: {what} of {bytes} bytes exceeds the adapter's storage binding size {limit}"
    );
}

pub(crate) fn meta(s: AttentionShape, row_base: usize) -> Meta {
    let model = s.model_dim();
    Meta {
        batch: s.batch as u32,
        tokens: s.tokens as u32,
        heads: s.heads as u32,
        head_vec4: (s.head_dim / 4) as u32,
        qkv_row_vec4: (3 * model / 4) as u32,
        model_vec4: (model / 4) as u32,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        row_base: row_base as u32,
    }
}

/// x: blocks of `rows` rows, y: (batch, head).
pub(crate) fn grid(s: AttentionShape, rows: usize) -> [u32; 3] {
    [div_ceil(s.tokens, rows), (s.batch * s.heads) as u32, 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiled_rows_per_workgroup_fit_the_token_count() {
        let rows = |n| TILE_ROWS[tile_rows(n, 256)];
        assert_eq!(rows(17), 64);
        assert_eq!(rows(64), 64);
        // one group of 128 (3 live warps), not two of 64
        assert_eq!(rows(65), 128);
        assert_eq!(rows(150), 64);
        assert_eq!(rows(197), 128);
        // an adapter without 256 invocations runs the key pass at 2 x 64
        assert_eq!(TILE_ROWS[tile_rows(197, 128)], 64);
    }

    #[test]
    fn head_dims_run_in_the_smallest_class_that_holds_them() {
        let class = |d| HEAD_CLASSES[head_class(d)];
        assert_eq!(
            [class(4), class(16), class(20), class(32), class(64)],
            [4, 4, 8, 8, 16]
        );
    }

    #[test]
    fn the_portable_path_lists_few_pipelines() {
        let tiled = portable_pipeline_specs(Variant::Tiled).len();
        assert!(tiled <= 20, "Tiled lists {tiled} pipelines");
    }
}
