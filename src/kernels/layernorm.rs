//! LayerNorm forward (saving mean and rstd) and backward (dx, dgamma, dbeta).

use crate::gpu::{div_ceil, grid_1d, Dispatch, Gpu};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    cols: u32,
    eps: f32,
    accumulate: u32,
}

pub struct LayerNorm {
    forward: wgpu::ComputePipeline,
    backward_input: wgpu::ComputePipeline,
    backward_params: wgpu::ComputePipeline,
}

/// Forward: y = (x - mean) * rstd * gamma + beta, rows of `cols` floats.
pub struct LayerNormForward<'a> {
    pub x: &'a wgpu::Buffer,     // [rows, cols]
    pub gamma: &'a wgpu::Buffer, // [cols]
    pub beta: &'a wgpu::Buffer,  // [cols]
    pub y: &'a wgpu::Buffer,     // [rows, cols]
    pub mean: &'a wgpu::Buffer,  // [rows]
    pub rstd: &'a wgpu::Buffer,  // [rows]
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
}

/// Backward: dx (overwritten, or added when `accumulate`), dgamma and dbeta (overwritten).
pub struct LayerNormBackward<'a> {
    pub dy: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    pub gamma: &'a wgpu::Buffer,
    pub mean: &'a wgpu::Buffer,
    pub rstd: &'a wgpu::Buffer,
    pub dx: &'a wgpu::Buffer,
    pub dgamma: &'a wgpu::Buffer,
    pub dbeta: &'a wgpu::Buffer,
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
        }
    }

    pub fn forward(&self, gpu: &Gpu, a: &LayerNormForward) -> Dispatch {
        let meta = Meta {
            rows: a.rows as u32,
            cols: a.cols as u32,
            eps: a.eps,
            accumulate: 0,
        };
        gpu.dispatch(
            &self.forward,
            &[
                (0, a.x),
                (1, a.gamma),
                (2, a.beta),
                (3, a.y),
                (4, a.mean),
                (5, a.rstd),
            ],
            &meta,
            grid_1d(div_ceil(a.rows, 64)),
        )
    }

    /// Two launches: dx per row, then dgamma/dbeta per column.
    pub fn backward(&self, gpu: &Gpu, a: &LayerNormBackward) -> [Dispatch; 2] {
        let meta = Meta {
            rows: a.rows as u32,
            cols: a.cols as u32,
            eps: 0.0,
            accumulate: a.accumulate as u32,
        };
        let input = gpu.dispatch(
            &self.backward_input,
            &[
                (6, a.dy),
                (7, a.x),
                (8, a.gamma),
                (9, a.mean),
                (10, a.rstd),
                (11, a.dx),
            ],
            &meta,
            grid_1d(div_ceil(a.rows, 64)),
        );
        let params = gpu.dispatch(
            &self.backward_params,
            &[
                (6, a.dy),
                (7, a.x),
                (9, a.mean),
                (10, a.rstd),
                (12, a.dgamma),
                (13, a.dbeta),
            ],
            &meta,
            grid_1d(div_ceil(a.cols, 64)),
        );
        [input, params]
    }
}
