//! Attention for CPU adapters with 8-lane subgroups (lavapipe): shaders/cpu/attention_lanes.wgsl,
//! written by scripts/gen_attention_lanes.py. One 8-lane subgroup per workgroup owns
//! 8 x LANE_ROWS rows of one (batch, head); the streamed rows are loaded once per block of 8
//! and shared by `subgroupBroadcast`, and on adapters where textures are cheaper to read than
//! storage (`texture::preferred`) they come from texture copies of qkv, dO and o.
//! `Attention` (src/kernels/attention.rs) reaches this through its `Specialisation` seam only.

use std::sync::OnceLock;

use super::texture;
use crate::gpu::{Bind, Command, Gpu, Out};
use crate::kernels::attention::{
    check, grid, head_class, meta, AttentionBackward, AttentionForward, AttentionShape,
    Specialisation, HEAD_CLASSES,
};
use crate::kernels::{PipelineSpec, ATTENTION_LANES};

/// The subgroup size the kernels are written for.
pub const LANES: u32 = 8;
/// Rows per lane: shaders/cpu/attention_lanes.wgsl's LANE_ROWS
/// (scripts/gen_attention_lanes.py --lane-rows).
pub const LANE_ROWS: u32 = 3;
/// Rows per workgroup.
const ROWS_PER_GROUP: usize = (LANES * LANE_ROWS) as usize;

/// The six pipelines for one head-dim class of `class_vec4` vec4: forward, backward_query
/// and backward_key over 8 x LANE_ROWS rows, then the same with one row per lane (`_tail`).
/// `rows_texture`: the rows come from textures (an override, not a uniform: it picks the
/// load instruction of every streamed step).
fn specs(class_vec4: usize, rows_texture: bool) -> Vec<PipelineSpec> {
    let constants = vec![
        ("HEAD_VEC4", class_vec4 as f64),
        ("ROWS_TEXTURE", if rows_texture { 1.0 } else { 0.0 }),
    ];
    [
        "attention_forward_lanes",
        "attention_backward_query_lanes",
        "attention_backward_key_lanes",
        "attention_forward_lanes_tail",
        "attention_backward_query_lanes_tail",
        "attention_backward_key_lanes_tail",
    ]
    .into_iter()
    .map(|entry| PipelineSpec {
        shader: ATTENTION_LANES,
        entry,
        constants: constants.clone(),
    })
    .collect()
}

/// Every pipeline this specialisation can build (for the translation test): 2 row sources
/// x 3 head-dim classes x 6 entry points.
pub fn pipeline_specs() -> Vec<PipelineSpec> {
    [false, true]
        .into_iter()
        .flat_map(|t| HEAD_CLASSES.iter().flat_map(move |&c| specs(c, t)))
        .collect()
}

/// The three passes over full blocks of rows, and their one-row-per-lane `_tail` versions.
struct Pipelines {
    forward: wgpu::ComputePipeline,
    backward_query: wgpu::ComputePipeline,
    backward_key: wgpu::ComputePipeline,
    tail_forward: wgpu::ComputePipeline,
    tail_backward_query: wgpu::ComputePipeline,
    tail_backward_key: wgpu::ComputePipeline,
}

/// One launch over some rows of every (batch, head): `tail` runs the `_tail` kernels.
struct RowLaunch {
    tail: bool,
    row_base: usize,
    grid: [u32; 3],
}

/// The texture bindings, qkv (9), dO (10) and o (11): copies of the buffers (`copied`, the
/// kernels then read their rows there), else placeholders.
struct RowTextures {
    copied: bool,
    qkv: wgpu::TextureView,
    d_o: wgpu::TextureView,
    o: wgpu::TextureView,
}

pub struct LanesAttention {
    /// The streamed rows are read from texture copies (`texture::preferred`).
    textures: bool,
    /// Bound where the textures are not used.
    placeholder: wgpu::TextureView,
    /// Indexed by [rows from textures][head class]; built on first use and kept (a pipeline
    /// costs an LLVM compile on lavapipe).
    pipelines: [[OnceLock<Pipelines>; HEAD_CLASSES.len()]; 2],
}

impl LanesAttention {
    /// Ok when the adapter has subgroups of exactly 8 lanes.
    pub fn supports(gpu: &Gpu) -> Result<(), String> {
        gpu.caps.exact_subgroups(LANES)?;
        gpu.fits_limits(&crate::kernels::ATTENTION_LANES)
    }

    pub fn new(gpu: &Gpu) -> LanesAttention {
        LanesAttention {
            textures: texture::preferred(gpu),
            placeholder: texture::placeholder(gpu),
            pipelines: Default::default(),
        }
    }

    fn pipelines(&self, gpu: &Gpu, shape: AttentionShape, rows_texture: bool) -> &Pipelines {
        check(gpu, shape);
        let class = head_class(shape.head_dim);
        self.pipelines[rows_texture as usize][class].get_or_init(|| {
            let mut built = specs(HEAD_CLASSES[class], rows_texture)
                .into_iter()
                .map(|s| s.build(gpu));
            let mut next = || built.next().expect("specs() gives 6 pipelines");
            Pipelines {
                forward: next(),
                backward_query: next(),
                backward_key: next(),
                tail_forward: next(),
                tail_backward_query: next(),
                tail_backward_key: next(),
            }
        })
    }

    /// Blocks of 8 x LANE_ROWS rows; when the last N mod (8 x LANE_ROWS) rows are at most 8,
    /// they run in an 8-row block of the `_tail` kernels (50 tokens: 2 x 24 + 8 rows of work
    /// rather than 3 x 24).
    fn row_launches(shape: AttentionShape) -> Vec<RowLaunch> {
        let heads = (shape.batch * shape.heads) as u32;
        let (full, rest) = (shape.tokens / ROWS_PER_GROUP, shape.tokens % ROWS_PER_GROUP);
        if rest == 0 || rest > LANES as usize {
            return vec![RowLaunch {
                tail: false,
                row_base: 0,
                grid: grid(shape, ROWS_PER_GROUP),
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
            row_base: full * ROWS_PER_GROUP,
            grid: [1, heads, 1],
        });
        launches
    }

    /// The copies of qkv [B*N, 3D] and, for the backward, of dO and o [B*N, D] not already
    /// in `out` (see `texture::rows_of`) are appended to it: all of them, or none (then the
    /// kernels read storage).
    fn row_textures(
        &self,
        gpu: &Gpu,
        shape: AttentionShape,
        qkv: &wgpu::Buffer,
        d_o_and_o: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
        out: &mut Vec<Command>,
    ) -> RowTextures {
        let placeholder = &self.placeholder;
        let unused = RowTextures {
            copied: false,
            qkv: placeholder.clone(),
            d_o: placeholder.clone(),
            o: placeholder.clone(),
        };
        if !self.textures {
            return unused;
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
            return unused;
        };
        out.extend(copies);
        RowTextures {
            copied: true,
            qkv,
            d_o,
            o,
        }
    }

    fn forward(&self, gpu: &Gpu, a: &AttentionForward, out: &mut Vec<Command>) {
        let t = self.row_textures(gpu, a.shape, a.qkv, None, out);
        let p = self.pipelines(gpu, a.shape, t.copied);
        let (o, lse) = (Out(a.o), Out(a.lse));
        let entries: [(u32, &dyn Bind); 4] = [(0, a.qkv), (1, &o), (2, &lse), (9, &t.qkv)];
        for l in Self::row_launches(a.shape) {
            let pipeline = if l.tail { &p.tail_forward } else { &p.forward };
            let meta = meta(a.shape, l.row_base);
            out.push(gpu.dispatch(pipeline, &entries, &meta, l.grid).into());
        }
    }

    fn backward(&self, gpu: &Gpu, a: &AttentionBackward, out: &mut Vec<Command>) {
        let shape = a.shape;
        let t = self.row_textures(gpu, shape, a.qkv, Some((a.d_o, a.o)), out);
        let p = self.pipelines(gpu, shape, t.copied);
        let (dqkv, delta) = (Out(a.dqkv), Out(a.scratch));
        let query_entries: [(u32, &dyn Bind); 9] = [
            (0, a.qkv),
            (3, a.o),
            (4, a.lse),
            (5, a.d_o),
            (6, &dqkv),
            (7, &delta),
            (9, &t.qkv),
            (10, &t.d_o),
            (11, &t.o),
        ];
        // the key pass reads delta, written by the query pass
        let key_entries: [(u32, &dyn Bind); 7] = [
            (0, a.qkv),
            (4, a.lse),
            (5, a.d_o),
            (6, &dqkv),
            (7, a.scratch),
            (9, &t.qkv),
            (10, &t.d_o),
        ];
        let launches = Self::row_launches(shape);
        for l in &launches {
            let pipeline = if l.tail {
                &p.tail_backward_query
            } else {
                &p.backward_query
            };
            let meta = meta(shape, l.row_base);
            out.push(gpu.dispatch(pipeline, &query_entries, &meta, l.grid).into());
        }
        for l in &launches {
            let pipeline = if l.tail {
                &p.tail_backward_key
            } else {
                &p.backward_key
            };
            let meta = meta(shape, l.row_base);
            out.push(gpu.dispatch(pipeline, &key_entries, &meta, l.grid).into());
        }
    }
}

impl Specialisation for LanesAttention {
    fn record_forward(&self, gpu: &Gpu, a: &AttentionForward, out: &mut Vec<Command>) {
        self.forward(gpu, a, out)
    }

    fn record_backward(&self, gpu: &Gpu, a: &AttentionBackward, out: &mut Vec<Command>) {
        self.backward(gpu, a, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_rows_match_the_generated_shader() {
        let line = format!("const LANE_ROWS: u32 = {LANE_ROWS}u;");
        assert!(
            ATTENTION_LANES.source.contains(&line),
            "shaders/cpu/attention_lanes.wgsl lacks `{line}`: regenerate it with \
             scripts/gen_attention_lanes.py --lane-rows {LANE_ROWS}"
        );
    }
}
