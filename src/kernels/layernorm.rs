//! LayerNorm forward (saving mean and rstd) and backward (dx, dgamma, dbeta).

use super::cpu::texture;
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Record, View};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    cols: u32,
    eps: f32,
    accumulate: u32,
    chunk_rows: u32,
    chunks: u32,
    _pad: [u32; 2],
}

/// Rows per partial sum of dgamma/dbeta.
const CHUNK_ROWS: usize = 128;

/// Texels per row of the row statistics' texture copies (layernorm.wgsl's `stat_texel`).
const STAT_TEXELS_PER_ROW: u32 = 64;

pub struct LayerNorm {
    forward: wgpu::ComputePipeline,
    backward_input: wgpu::ComputePipeline,
    backward_params: wgpu::ComputePipeline,
    params_finish: wgpu::ComputePipeline,
    forward_texture: wgpu::ComputePipeline,
    backward_input_texture: wgpu::ComputePipeline,
    backward_params_texture: wgpu::ComputePipeline,
    /// Read inputs through textures where the width allows (CPU adapters: a texel fetch
    /// instead of a per-lane load loop per float).
    textures: bool,
}

/// Forward: y = (x - mean) * rstd * gamma + beta, rows of `cols` floats.
pub struct LayerNormForward<'a> {
    pub x: &'a wgpu::Buffer,    // [rows, cols]
    pub gamma: View<'a>,        // [cols]
    pub beta: View<'a>,         // [cols]
    pub y: &'a wgpu::Buffer,    // [rows, cols]
    pub mean: &'a wgpu::Buffer, // [rows]
    pub rstd: &'a wgpu::Buffer, // [rows]
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
}

/// Backward: dx (overwritten, or added when `accumulate`), dgamma and dbeta (overwritten).
pub struct LayerNormBackward<'a> {
    pub dy: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    pub gamma: View<'a>,
    pub mean: &'a wgpu::Buffer,
    pub rstd: &'a wgpu::Buffer,
    pub dx: &'a wgpu::Buffer,
    pub dgamma: View<'a>,
    pub dbeta: View<'a>,
    /// `LayerNorm::scratch_len(rows, cols)` floats for the partial sums of dgamma/dbeta.
    pub scratch: &'a wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

impl LayerNorm {
    pub fn new(gpu: &Gpu) -> Self {
        let s = &super::LAYERNORM;
        LayerNorm {
            forward: gpu.pipeline(s, "layernorm_forward"),
            backward_input: gpu.pipeline(s, "layernorm_backward_input"),
            backward_params: gpu.pipeline(s, "layernorm_backward_params"),
            params_finish: gpu.pipeline(s, "layernorm_params_finish"),
            forward_texture: gpu.pipeline(s, "layernorm_forward_texture"),
            backward_input_texture: gpu.pipeline(s, "layernorm_backward_input_texture"),
            backward_params_texture: gpu.pipeline(s, "layernorm_backward_params_texture"),
            textures: texture::preferred(gpu),
        }
    }

    /// The same with the texture path on or off whatever the adapter (tests cover both).
    pub fn with_textures(gpu: &Gpu, textures: bool) -> Self {
        LayerNorm {
            textures,
            ..LayerNorm::new(gpu)
        }
    }

    /// Each matrix as a texture when the texture path is on (`texture::all_rows_of`).
    fn textures_of(
        &self,
        gpu: &Gpu,
        matrices: &[(View, usize)],
        cols: usize,
        out: &mut Vec<Command>,
    ) -> Option<Vec<wgpu::TextureView>> {
        self.textures
            .then(|| texture::all_rows_of(gpu, matrices, cols, out))
            .flatten()
    }

    pub fn scratch_len(rows: usize, cols: usize) -> usize {
        2 * rows.div_ceil(CHUNK_ROWS).max(1) * cols
    }
}

impl Record<LayerNormForward<'_>> for LayerNorm {
    fn record(&self, gpu: &Gpu, a: &LayerNormForward, out: &mut Vec<Command>) {
        let meta = Meta {
            rows: a.rows as u32,
            cols: a.cols as u32,
            eps: a.eps,
            accumulate: 0,
            chunk_rows: 0,
            chunks: 0,
            _pad: [0; 2],
        };
        let inputs = [(a.x.into(), a.rows), (a.gamma, 1), (a.beta, 1)];
        if let Some(t) = self.textures_of(gpu, &inputs, a.cols, out) {
            let d = gpu.dispatch(
                &self.forward_texture,
                &[
                    (16, &t[0]),
                    (17, &t[1]),
                    (18, &t[2]),
                    (20, a.y),
                    (4, a.mean),
                    (5, a.rstd),
                ],
                &meta,
                grid_1d(div_ceil(a.rows, 64)),
            );
            out.push(d.into());
            return;
        }
        let d = gpu.dispatch(
            &self.forward,
            &[
                (0, a.x),
                (1, &a.gamma),
                (2, &a.beta),
                (3, a.y),
                (4, a.mean),
                (5, a.rstd),
            ],
            &meta,
            grid_1d(div_ceil(a.rows, 64)),
        );
        out.push(d.into());
    }
}

/// Three launches: dx per row, then dgamma/dbeta partial sums over row chunks, then their sum.
impl Record<LayerNormBackward<'_>> for LayerNorm {
    fn record(&self, gpu: &Gpu, a: &LayerNormBackward, out: &mut Vec<Command>) {
        let chunks = a.rows.div_ceil(CHUNK_ROWS).max(1);
        assert!(
            a.scratch.size() >= (Self::scratch_len(a.rows, a.cols) * 4) as u64,
            "layernorm scratch too small for {}x{}",
            a.rows,
            a.cols
        );
        let meta = Meta {
            rows: a.rows as u32,
            cols: a.cols as u32,
            eps: 0.0,
            accumulate: a.accumulate as u32,
            chunk_rows: CHUNK_ROWS as u32,
            chunks: chunks as u32,
            _pad: [0; 2],
        };
        // When adding to dx, its old values come through a texture too.
        let mut inputs = vec![(a.dy.into(), a.rows), (a.x.into(), a.rows), (a.gamma, 1)];
        if a.accumulate {
            inputs.push((a.dx.into(), a.rows));
        }
        // The statistics' copies, in rows of 64 texels (layernorm.wgsl's stat_texel): their
        // buffers must hold whole vec4s (the model rounds them up), else storage is read.
        let textures = self
            .textures
            .then(|| texture::all_flat(gpu, &[a.mean, a.rstd], STAT_TEXELS_PER_ROW))
            .flatten()
            .and_then(|stats| Some((stats, self.textures_of(gpu, &inputs, a.cols, out)?)));
        if let Some(((stats, copies), mut t)) = textures {
            out.extend(copies);
            if !a.accumulate {
                t.push(texture::placeholder(gpu));
            }
            let (dy, x, gamma, dx_old) = (&t[0], &t[1], &t[2], &t[3]);
            let input = gpu.dispatch(
                &self.backward_input_texture,
                &[
                    (19, dy),
                    (16, x),
                    (17, gamma),
                    (22, dx_old),
                    (9, a.mean),
                    (10, a.rstd),
                    (21, a.dx),
                ],
                &meta,
                grid_1d(div_ceil(a.rows, 64)),
            );
            let params = gpu.dispatch(
                &self.backward_params_texture,
                &[
                    (19, dy),
                    (16, x),
                    (23, &stats[0]),
                    (24, &stats[1]),
                    (14, a.scratch),
                ],
                &meta,
                [div_ceil(a.cols / 4, 64), chunks as u32, 1],
            );
            let finish = gpu.dispatch(
                &self.params_finish,
                &[(15, a.scratch), (12, &a.dgamma), (13, &a.dbeta)],
                &meta,
                [div_ceil(a.cols, 64), 1, 1],
            );
            out.extend([input.into(), params.into(), finish.into()]);
            return;
        }
        let input = gpu.dispatch(
            &self.backward_input,
            &[
                (6, a.dy),
                (7, a.x),
                (8, &a.gamma),
                (9, a.mean),
                (10, a.rstd),
                (11, a.dx),
            ],
            &meta,
            grid_1d(div_ceil(a.rows, 64)),
        );
        let col_groups = div_ceil(a.cols, 64);
        let params = gpu.dispatch(
            &self.backward_params,
            &[
                (6, a.dy),
                (7, a.x),
                (9, a.mean),
                (10, a.rstd),
                (14, a.scratch),
            ],
            &meta,
            [col_groups, chunks as u32, 1],
        );
        let finish = gpu.dispatch(
            &self.params_finish,
            &[(15, a.scratch), (12, &a.dgamma), (13, &a.dbeta)],
            &meta,
            [col_groups, 1, 1],
        );
        out.extend([input.into(), params.into(), finish.into()]);
    }
}
