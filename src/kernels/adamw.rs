//! AdamW over every parameter tensor with global gradient-norm clipping, on the device.

use crate::gpu::{div_ceil, grid_1d, Dispatch, Gpu};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    len: u32,
    slot: u32,
    count: u32,
    decay: u32,
}

/// The per-step hyper-parameters, written to a uniform buffer before each step's submit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 - beta1^t for step t (1-based)
    pub bias_correction1: f32,
    /// 1 - beta2^t
    pub bias_correction2: f32,
    /// global gradient-norm clip; 0 turns clipping off
    pub max_norm: f32,
}

impl Hyper {
    pub fn at_step(
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        max_norm: f32,
        step: u64,
    ) -> Hyper {
        let t = step as i32;
        Hyper {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            bias_correction1: 1.0 - beta1.powi(t),
            bias_correction2: 1.0 - beta2.powi(t),
            max_norm,
        }
    }
}

/// One parameter tensor with its gradient and moment buffers (all `len` floats).
pub struct ParamSlot<'a> {
    pub param: &'a wgpu::Buffer,
    pub grad: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub len: usize,
    pub decay: bool,
}

pub struct AdamW {
    sum_squares: wgpu::ComputePipeline,
    clip_scale: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
}

impl AdamW {
    pub fn new(gpu: &Gpu) -> Self {
        let s = &super::ADAMW;
        AdamW {
            sum_squares: gpu.pipeline(s, "sum_squares"),
            clip_scale: gpu.pipeline(s, "clip_scale"),
            update: gpu.pipeline(s, "adamw_update"),
        }
    }

    /// Floats needed in the `partial` buffer: one per tensor, then the clip scale and norm.
    pub fn partial_len(tensors: usize) -> usize {
        tensors + 2
    }

    pub fn hyper_buffer(gpu: &Gpu, hyper: &Hyper) -> wgpu::Buffer {
        gpu.uniform("adamw hyper", hyper)
    }

    pub fn write_hyper(gpu: &Gpu, buffer: &wgpu::Buffer, hyper: &Hyper) {
        gpu.queue.write_buffer(buffer, 0, bytemuck::bytes_of(hyper));
    }

    /// The whole update: squared norms per tensor, the clip scale, then one update per tensor.
    /// After it runs, `partial[count]` holds the clip scale and `partial[count+1]` the norm.
    pub fn record(
        &self,
        gpu: &Gpu,
        params: &[ParamSlot],
        hyper: &wgpu::Buffer,
        partial: &wgpu::Buffer,
    ) -> Vec<Dispatch> {
        let count = params.len() as u32;
        let meta = |slot: usize, p: &ParamSlot| Meta {
            len: p.len as u32,
            slot: slot as u32,
            count,
            decay: p.decay as u32,
        };
        let mut out = Vec::with_capacity(2 * params.len() + 1);
        for (slot, p) in params.iter().enumerate() {
            out.push(gpu.dispatch(
                &self.sum_squares,
                &[(0, p.grad), (1, partial)],
                &meta(slot, p),
                [1, 1, 1],
            ));
        }
        let clip_meta = Meta {
            len: 0,
            slot: 0,
            count,
            decay: 0,
        };
        out.push(gpu.dispatch(
            &self.clip_scale,
            &[(1, partial), (2, hyper)],
            &clip_meta,
            [1, 1, 1],
        ));
        for (slot, p) in params.iter().enumerate() {
            out.push(gpu.dispatch(
                &self.update,
                &[
                    (0, p.grad),
                    (2, hyper),
                    (3, partial),
                    (4, p.param),
                    (5, p.m),
                    (6, p.v),
                ],
                &meta(slot, p),
                grid_1d(div_ceil(p.len, 256)),
            ));
        }
        out
    }
}
