//! Softmax cross-entropy: per-row loss, correctness flag and the logits' gradient, fused.

use crate::gpu::{div_ceil, Command, Gpu, Out, Record};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    classes: u32,
    grad_scale: f32,
    _pad: u32,
}

pub struct CrossEntropy {
    pipeline: wgpu::ComputePipeline,
}

pub struct CrossEntropyArgs<'a> {
    pub logits: &'a wgpu::Buffer,  // [B, K]
    pub labels: &'a wgpu::Buffer,  // [B] u32
    pub losses: &'a wgpu::Buffer,  // [B]
    pub dlogits: &'a wgpu::Buffer, // [B, K], = (softmax - onehot) * grad_scale
    pub correct: &'a wgpu::Buffer, // [B], 1.0 where argmax == label
    pub rows: usize,
    pub classes: usize,
    /// 1/B for the gradient of the mean loss.
    pub grad_scale: f32,
}

impl CrossEntropy {
    pub fn new(gpu: &Gpu) -> Self {
        CrossEntropy {
            pipeline: gpu.pipeline(&super::LOSS, "cross_entropy_forward_backward"),
        }
    }
}

impl Record<CrossEntropyArgs<'_>> for CrossEntropy {
    fn record(&self, gpu: &Gpu, a: &CrossEntropyArgs, out: &mut Vec<Command>) {
        let meta = Meta {
            rows: a.rows as u32,
            classes: a.classes as u32,
            grad_scale: a.grad_scale,
            _pad: 0,
        };
        let d = gpu.dispatch(
            &self.pipeline,
            &[
                (0, a.logits),
                (1, a.labels),
                (2, &Out(a.losses)),
                (3, &Out(a.dlogits)),
                (4, &Out(a.correct)),
            ],
            &meta,
            [div_ceil(a.rows, 64), 1, 1],
        );
        out.push(d.into());
    }
}
