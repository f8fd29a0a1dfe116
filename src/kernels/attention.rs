//! Multi-head self-attention, flash style (shaders/attention.wgsl): forward saving the row
//! log-sum-exp, backward recomputing the probabilities from it (FlashAttention-2's split
//! into a per-query and a per-key pass, no atomics), and the probabilities themselves for
//! attention maps at inference.

use std::sync::OnceLock;

use super::cpu::texture;
use super::{PipelineSpec, Shader, ATTENTION, ATTENTION_LANES};
use crate::gpu::caps::{self, Choice};
use crate::gpu::{div_ceil, Bind, Command, Gpu, Record};

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
    /// The streamed rows staged in workgroup memory, shared by the 64 query (or key) rows
    /// of a workgroup, for GPUs.
    Tiled,
    /// One invocation per query (or key) row streaming the other side's rows from storage,
    /// no workgroup memory: for CPU adapters without 8-lane subgroups.
    Rows,
    /// `Rows` with the streamed rows shared across 8-lane subgroups by `subgroupBroadcast`,
    /// for CPU adapters (lavapipe), where every storage load is a per-lane loop.
    Lanes,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Tiled, Variant::Rows, Variant::Lanes];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Tiled => "tiled",
            Variant::Rows => "rows",
            Variant::Lanes => "lanes",
        }
    }

    /// Query (or key) rows per workgroup, all of one (batch, head).
    fn rows_per_group(self) -> usize {
        match self {
            Variant::Tiled => TILE_ROWS,
            Variant::Rows => 16,
            Variant::Lanes => (LANES * LANE_ROWS) as usize,
        }
    }

    fn entry(self, name: &'static str) -> &'static str {
        match (self, name) {
            (Variant::Rows, _) => name,
            (Variant::Tiled, "attention_forward") => "attention_forward_tiled",
            (Variant::Tiled, "attention_backward_query") => "attention_backward_query_tiled",
            (Variant::Tiled, _) => "attention_backward_key_tiled",
            (Variant::Lanes, "attention_forward") => "attention_forward_lanes",
            (Variant::Lanes, "attention_backward_query") => "attention_backward_query_lanes",
            (Variant::Lanes, _) => "attention_backward_key_lanes",
        }
    }

    fn shader(self) -> Shader {
        match self {
            Variant::Lanes => ATTENTION_LANES,
            _ => ATTENTION,
        }
    }
}

/// The subgroup size the `Lanes` kernels are written for.
const LANES: u32 = 8;
/// Rows per lane in the `Lanes` kernels: shaders/attention_lanes.wgsl's LANE_ROWS
/// (scripts/gen_attention_lanes.py --lane-rows).
const LANE_ROWS: u32 = 3;
/// `Tiled`: rows per workgroup and its workgroup memory (two [16][16] vec4 tiles and two
/// [16] f32 arrays), as in shaders/attention.wgsl.
const TILE_ROWS: usize = 64;
const TILED_WORKGROUP_BYTES: u32 = 2 * 16 * 16 * 16 + 2 * 16 * 4;

/// The pipelines a variant builds for head dim 4 `head_vec4`: forward, backward_query,
/// backward_key, probabilities, and for `Lanes` the first three's one-row-per-lane `_tail`
/// kernels. `rows_texture` (`Lanes` only): the streamed rows come from textures.
fn specs(variant: Variant, head_vec4: usize, rows_texture: bool) -> Vec<PipelineSpec> {
    let base = vec![
        ("HEAD_VEC4", head_vec4 as f64),
        ("ROWS", Variant::Rows.rows_per_group() as f64),
    ];
    let mut constants = base.clone();
    if variant == Variant::Lanes {
        constants.push(("ROWS_TEXTURE", if rows_texture { 1.0 } else { 0.0 }));
    }
    let spec = |shader, entry| PipelineSpec {
        shader,
        entry,
        constants: constants.clone(),
    };
    let mut specs = vec![
        spec(variant.shader(), variant.entry("attention_forward")),
        spec(variant.shader(), variant.entry("attention_backward_query")),
        spec(variant.shader(), variant.entry("attention_backward_key")),
        // one query row per invocation in every variant: for attention maps only
        PipelineSpec {
            shader: ATTENTION,
            entry: "attention_probabilities",
            constants: base,
        },
    ];
    if variant == Variant::Lanes {
        specs.extend([
            spec(ATTENTION_LANES, "attention_forward_lanes_tail"),
            spec(ATTENTION_LANES, "attention_backward_query_lanes_tail"),
            spec(ATTENTION_LANES, "attention_backward_key_lanes_tail"),
        ]);
    }
    specs
}

/// Every pipeline a variant can build (for the translation test).
pub fn pipeline_specs(variant: Variant) -> Vec<PipelineSpec> {
    let textures: &[bool] = if variant == Variant::Lanes {
        &[false, true]
    } else {
        &[false]
    };
    textures
        .iter()
        .flat_map(|&t| (1..=MAX_HEAD_DIM / 4).flat_map(move |v4| specs(variant, v4, t)))
        .collect()
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_vec4: u32,
    qkv_row_vec4: u32,
    model_vec4: u32,
    scale: f32,
    row_base: u32,
}

/// The four entry points specialised for one head dim, and for `Lanes` the `_tail` kernels
/// (forward, backward_query, backward_key).
struct Pipelines {
    forward: wgpu::ComputePipeline,
    backward_query: wgpu::ComputePipeline,
    backward_key: wgpu::ComputePipeline,
    probabilities: wgpu::ComputePipeline,
    tail: Option<TailPipelines>,
}

/// The `Lanes` kernels with one row per lane (the `_tail` entry points).
struct TailPipelines {
    forward: wgpu::ComputePipeline,
    backward_query: wgpu::ComputePipeline,
    backward_key: wgpu::ComputePipeline,
}

impl Pipelines {
    /// The pipeline `which` picks for a launch: from the tail kernels when `tail`.
    fn pick(
        &self,
        tail: bool,
        which: impl Fn(&Pipelines) -> &wgpu::ComputePipeline,
        which_tail: impl Fn(&TailPipelines) -> &wgpu::ComputePipeline,
    ) -> &wgpu::ComputePipeline {
        match (&self.tail, tail) {
            (Some(t), true) => which_tail(t),
            _ => which(self),
        }
    }
}

/// One launch over some rows of every (batch, head): `tail` runs the `_tail` kernels.
struct RowLaunch {
    tail: bool,
    row_base: usize,
    grid: [u32; 3],
}

pub struct Attention {
    variant: Variant,
    reason: String,
    /// `Lanes` on an adapter where textures are cheaper to read than storage
    /// (`texture::preferred`): the streamed rows are read from texture copies.
    textures: bool,
    /// Bound where a `Lanes` kernel's textures are not used.
    placeholder: Option<wgpu::TextureView>,
    /// Indexed by [rows from textures][head_dim / 4 - 1]; built on first use and kept (a
    /// pipeline costs an LLVM compile on lavapipe).
    pipelines: [[OnceLock<Pipelines>; MAX_HEAD_DIM / 4]; 2],
}

impl Attention {
    /// The variant `choose` picks for this adapter.
    pub fn new(gpu: &Gpu) -> Attention {
        let choice = Attention::choose(gpu);
        let mut attention = Attention::with_variant(gpu, choice.variant);
        attention.reason = choice.reason;
        attention
    }

    /// On a CPU adapter `Lanes` with 8-lane subgroups, else `Rows`; on a GPU `Tiled` when
    /// its workgroup fits, else `Rows`. VIT_ATTENTION_VARIANT forces one the adapter runs.
    pub fn choose(gpu: &Gpu) -> Choice<Variant> {
        let preferred: &[(Variant, &str)] = if gpu.caps.cpu {
            &[
                (
                    Variant::Lanes,
                    "CPU adapter with 8-lane subgroups: streamed rows shared by subgroupBroadcast",
                ),
                (
                    Variant::Rows,
                    "CPU adapter without 8-lane subgroups: one row per invocation, no workgroup memory",
                ),
            ]
        } else {
            &[
                (
                    Variant::Tiled,
                    "GPU: K/V tiles in workgroup memory shared by 64 query rows",
                ),
                (Variant::Rows, "one row per invocation, no workgroup memory"),
            ]
        };
        caps::choose(
            caps::ATTENTION_VARIANT_ENV,
            caps::overrides().attention.as_deref(),
            &Variant::ALL,
            Variant::name,
            |v| Attention::supports(gpu, v),
            preferred,
        )
    }

    /// Ok when the adapter runs `variant`, else why not.
    pub fn supports(gpu: &Gpu, variant: Variant) -> Result<(), String> {
        match variant {
            Variant::Tiled => gpu.caps.workgroup(TILE_ROWS as u32, TILED_WORKGROUP_BYTES),
            Variant::Rows => gpu.caps.workgroup(16, 0),
            Variant::Lanes => gpu.caps.exact_subgroups(LANES),
        }
    }

    /// `Lanes` needs subgroups of exactly 8 lanes.
    pub fn lanes_supported(gpu: &Gpu) -> bool {
        Attention::supports(gpu, Variant::Lanes).is_ok()
    }

    /// A given variant; panics if the adapter cannot run it (check `supports` first).
    pub fn with_variant(gpu: &Gpu, variant: Variant) -> Attention {
        if let Err(why) = Attention::supports(gpu, variant) {
            panic!(
                "attention variant {} on adapter '{}': {why}",
                variant.name(),
                gpu.info.name
            );
        }
        let lanes = variant == Variant::Lanes;
        Attention {
            variant,
            reason: "chosen by the caller".into(),
            textures: lanes && texture::preferred(gpu),
            placeholder: lanes.then(|| texture::placeholder(gpu)),
            pipelines: Default::default(),
        }
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Why this variant runs here.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn pipelines(&self, gpu: &Gpu, shape: AttentionShape, rows_texture: bool) -> &Pipelines {
        check(gpu, shape);
        let v4 = shape.head_dim / 4;
        self.pipelines[rows_texture as usize][v4 - 1].get_or_init(|| {
            let mut built = specs(self.variant, v4, rows_texture)
                .into_iter()
                .map(|s| s.build(gpu));
            let mut next = || {
                built
                    .next()
                    .expect("specs() gives 4 pipelines, 7 for Lanes")
            };
            Pipelines {
                forward: next(),
                backward_query: next(),
                backward_key: next(),
                probabilities: next(),
                tail: (self.variant == Variant::Lanes).then(|| TailPipelines {
                    forward: next(),
                    backward_query: next(),
                    backward_key: next(),
                }),
            }
        })
    }

    /// Floats of scratch the backward needs: [B, A, N].
    pub fn scratch_len(shape: AttentionShape) -> usize {
        shape.lse_len()
    }

    /// The launches covering every row: blocks of the variant's rows per workgroup; for
    /// `Lanes`, when the last N mod (8 x LANE_ROWS) rows are at most 8, they run in an 8-row
    /// block of the `_tail` kernels (50 tokens: 2 x 24 + 8 rows of work rather than 3 x 24).
    fn row_launches(&self, shape: AttentionShape) -> Vec<RowLaunch> {
        let per_group = self.variant.rows_per_group();
        let heads = (shape.batch * shape.heads) as u32;
        let (full, rest) = (shape.tokens / per_group, shape.tokens % per_group);
        if self.variant != Variant::Lanes || rest == 0 || rest > LANES as usize {
            return vec![RowLaunch {
                tail: false,
                row_base: 0,
                grid: grid(shape, per_group),
            }];
        }
        let mut launches = Vec::new();
        if full > 0 {
            launches.push(RowLaunch {
                tail: false,
                row_base: 0,
                grid: [full as u32, heads, 1],
            });
        }
        launches.push(RowLaunch {
            tail: true,
            row_base: full * per_group,
            grid: [1, heads, 1],
        });
        launches
    }

    /// Multiply-adds x 2 of the forward: S = Q K^T and O = P V, per (batch, head).
    pub fn flops_forward(shape: AttentionShape) -> f64 {
        4.0 * (shape.batch * shape.heads) as f64
            * (shape.tokens * shape.tokens * shape.head_dim) as f64
    }

    /// The backward's useful FLOPs, FlashAttention's count: S recomputed once, dV, dP, dQ
    /// and dK (2.5x the forward). The kernels recompute S and dP in both passes, 7/5 of this.
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

/// The `Lanes` kernels' texture bindings, qkv (9), dO (10) and o (11): copies of the
/// buffers (`copied`, the kernels then read their rows there), else placeholders.
struct RowTextures {
    copied: bool,
    qkv: wgpu::TextureView,
    d_o: wgpu::TextureView,
    o: wgpu::TextureView,
}

impl Attention {
    /// `None` for the variants without textures. The copies of qkv [B*N, 3D] and, for the
    /// backward, of dO and o [B*N, D] not already in `out` (see `texture::rows_of`) are
    /// appended to it: all of them, or none (then the kernels read storage).
    fn row_textures(
        &self,
        gpu: &Gpu,
        shape: AttentionShape,
        qkv: &wgpu::Buffer,
        d_o_and_o: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
        out: &mut Vec<Command>,
    ) -> Option<RowTextures> {
        let placeholder = self.placeholder.as_ref()?;
        let unused = RowTextures {
            copied: false,
            qkv: placeholder.clone(),
            d_o: placeholder.clone(),
            o: placeholder.clone(),
        };
        if !self.textures {
            return Some(unused);
        }
        let (rows, model) = (shape.batch * shape.tokens, shape.model_dim());
        let mut copies = Vec::new();
        let mut copy_of = |buffer: &wgpu::Buffer, cols: usize| {
            let (view, copy) = texture::rows_of(gpu, buffer.into(), rows, cols, out)?;
            copies.extend(copy);
            Some(view)
        };
        let qkv = copy_of(qkv, 3 * model);
        let (d_o, o) = match d_o_and_o {
            Some((d_o, o)) => (copy_of(d_o, model), copy_of(o, model)),
            None => (Some(placeholder.clone()), Some(placeholder.clone())),
        };
        let (Some(qkv), Some(d_o), Some(o)) = (qkv, d_o, o) else {
            return Some(unused);
        };
        out.extend(copies);
        Some(RowTextures {
            copied: true,
            qkv,
            d_o,
            o,
        })
    }
}

impl Record<AttentionForward<'_>> for Attention {
    fn record(&self, gpu: &Gpu, a: &AttentionForward, out: &mut Vec<Command>) {
        let textures = self.row_textures(gpu, a.shape, a.qkv, None, out);
        let p = self.pipelines(gpu, a.shape, textures.as_ref().is_some_and(|t| t.copied));
        let mut entries: Vec<(u32, &dyn Bind)> = vec![(0, a.qkv), (1, a.o), (2, a.lse)];
        if let Some(t) = &textures {
            entries.push((9, &t.qkv));
        }
        for l in self.row_launches(a.shape) {
            let pipeline = p.pick(l.tail, |p| &p.forward, |t| &t.forward);
            let meta = meta(a.shape, l.row_base);
            out.push(gpu.dispatch(pipeline, &entries, &meta, l.grid).into());
        }
    }
}

impl Record<AttentionBackward<'_>> for Attention {
    fn record(&self, gpu: &Gpu, a: &AttentionBackward, out: &mut Vec<Command>) {
        let AttentionBackward {
            shape,
            qkv,
            o,
            lse,
            d_o,
            dqkv,
            scratch,
        } = *a;
        assert!(
            scratch.size() >= 4 * Self::scratch_len(shape) as u64,
            "attention backward scratch needs {} floats",
            Self::scratch_len(shape)
        );
        let textures = self.row_textures(gpu, shape, qkv, Some((d_o, o)), out);
        let p = self.pipelines(gpu, shape, textures.as_ref().is_some_and(|t| t.copied));
        let mut query_entries: Vec<(u32, &dyn Bind)> = vec![
            (0, qkv),
            (3, o),
            (4, lse),
            (5, d_o),
            (6, dqkv),
            (7, scratch),
        ];
        let mut key_entries: Vec<(u32, &dyn Bind)> =
            vec![(0, qkv), (4, lse), (5, d_o), (6, dqkv), (7, scratch)];
        if let Some(t) = &textures {
            query_entries.extend([(9, &t.qkv as &dyn Bind), (10, &t.d_o), (11, &t.o)]);
            key_entries.extend([(9, &t.qkv as &dyn Bind), (10, &t.d_o)]);
        }
        // every query row's pass (it writes delta) before any key row's
        let launches = self.row_launches(shape);
        for l in &launches {
            let pipeline = p.pick(l.tail, |p| &p.backward_query, |t| &t.backward_query);
            let meta = meta(shape, l.row_base);
            out.push(gpu.dispatch(pipeline, &query_entries, &meta, l.grid).into());
        }
        for l in &launches {
            let pipeline = p.pick(l.tail, |p| &p.backward_key, |t| &t.backward_key);
            let meta = meta(shape, l.row_base);
            out.push(gpu.dispatch(pipeline, &key_entries, &meta, l.grid).into());
        }
    }
}

impl Record<AttentionProbabilities<'_>> for Attention {
    fn record(&self, gpu: &Gpu, a: &AttentionProbabilities, out: &mut Vec<Command>) {
        check_binding(gpu, "probabilities", a.shape.probs_len());
        // the pipeline set the model's own attention calls build, if this shape's
        let rows_texture = self.textures && a.shape.model_dim().is_multiple_of(64);
        let p = self.pipelines(gpu, a.shape, rows_texture);
        let d = gpu.dispatch(
            &p.probabilities,
            &[(0, a.qkv), (8, a.probs)],
            &meta(a.shape, 0),
            grid(a.shape, Variant::Rows.rows_per_group()),
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

fn check(gpu: &Gpu, s: AttentionShape) {
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

fn meta(s: AttentionShape, row_base: usize) -> Meta {
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
fn grid(s: AttentionShape, rows: usize) -> [u32; 3] {
    [div_ceil(s.tokens, rows), (s.batch * s.heads) as u32, 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_rows_match_the_generated_shader() {
        let line = format!("const LANE_ROWS: u32 = {LANE_ROWS}u;");
        assert!(
            ATTENTION_LANES.source.contains(&line),
            "shaders/attention_lanes.wgsl lacks `{line}`: regenerate it with \
             scripts/gen_attention_lanes.py --lane-rows {LANE_ROWS}"
        );
    }
}
