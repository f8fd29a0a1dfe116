//! Inverted dropout whose mask is a hash of (seed, step, index): backward regenerates it.

use super::cpu::TryRecord;
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out, Record};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Meta {
    len: u32,
    threshold: u32,
    scale: f32,
    seed: u32,
    accumulate: u32,
    texture_shift: u32,
    _pad: [u32; 2],
}

/// Where a dropout mask comes from: `seed` mixes the run seed with a per-site salt; the
/// step number lives in a shared uniform (`DropoutStep`) written once per training step.
#[derive(Clone, Copy, Debug)]
pub struct DropoutSite {
    pub len: usize,
    pub p: f32,
    pub seed: u32,
}

impl DropoutSite {
    /// `texture_width`: texels per row of the CPU specialisation's copies (`cpu::dropout`).
    pub(super) fn meta(&self, accumulate: bool, texture_width: Option<u32>) -> Meta {
        Meta {
            len: self.len as u32,
            threshold: threshold(self.p),
            scale: 1.0 / (1.0 - self.p),
            seed: self.seed,
            accumulate: accumulate as u32,
            texture_shift: texture_width.map_or(0, u32::trailing_zeros),
            _pad: [0; 2],
        }
    }
}

/// The mask keeps an element when its hash is at least p * 2^32.
pub fn threshold(p: f32) -> u32 {
    (p as f64 * 4294967296.0).min(u32::MAX as f64) as u32
}

/// The shared step counter and element offset: a 16-byte uniform buffer.
pub fn step_buffer(gpu: &Gpu) -> wgpu::Buffer {
    gpu.uniform("dropout step", &[0u32; 4])
}

/// `offset` is added to every element index before hashing: one rank's shard of a batch
/// (data-parallel training) passes its first element's index in the whole batch, so its
/// masks are the whole batch's masks at those positions.
pub fn write_step(gpu: &Gpu, buffer: &wgpu::Buffer, step: u32, offset: u32) {
    gpu.queue
        .write_buffer(buffer, 0, bytemuck::cast_slice(&[step, offset, 0, 0]));
}

/// Scalar kernels, and vec4 ones for lengths that are a multiple of 4.
pub struct Dropout {
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
    forward4: wgpu::ComputePipeline,
    backward4: wgpu::ComputePipeline,
    /// Offered every call first, where the adapter has one (`cpu::dropout`).
    cpu: Option<Box<dyn Specialisation>>,
}

/// A CPU-adapter specialisation of dropout: it records the calls it can take, and the
/// portable kernels run the others.
pub trait Specialisation:
    for<'a> TryRecord<DropoutForward<'a>> + for<'a> TryRecord<DropoutBackward<'a>>
{
}

impl<T> Specialisation for T where
    T: for<'a> TryRecord<DropoutForward<'a>> + for<'a> TryRecord<DropoutBackward<'a>>
{
}

impl Dropout {
    /// The portable kernels, and `cpu` (`cpu::dropout::for_adapter`) offered every call
    /// first.
    pub fn new(gpu: &Gpu, cpu: Option<Box<dyn Specialisation>>) -> Self {
        let s = &super::DROPOUT;
        Dropout {
            forward: gpu.pipeline(s, "dropout_forward"),
            backward: gpu.pipeline(s, "dropout_backward"),
            forward4: gpu.pipeline(s, "dropout_forward4"),
            backward4: gpu.pipeline(s, "dropout_backward4"),
            cpu,
        }
    }
}

/// Workgroups of 256 invocations over `len` floats, 4 per invocation when `vec4`.
pub(super) fn grid(len: usize, vec4: bool) -> [u32; 3] {
    grid_1d(div_ceil(if vec4 { len / 4 } else { len }, 256))
}

/// y (+)= x * mask / (1 - p)
pub struct DropoutForward<'a> {
    pub site: DropoutSite,
    /// The shared step counter (`step_buffer`).
    pub step: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    pub y: &'a wgpu::Buffer,
    pub accumulate: bool,
}

/// dx = dy * mask / (1 - p)
pub struct DropoutBackward<'a> {
    pub site: DropoutSite,
    pub step: &'a wgpu::Buffer,
    pub dy: &'a wgpu::Buffer,
    pub dx: &'a wgpu::Buffer,
}

impl Record<DropoutForward<'_>> for Dropout {
    fn record(&self, gpu: &Gpu, a: &DropoutForward, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let vec4 = a.site.len.is_multiple_of(4);
        let (pipeline, x, y) = if vec4 {
            (&self.forward4, 5, 6)
        } else {
            (&self.forward, 1, 2)
        };
        let d = gpu.dispatch(
            pipeline,
            &[(0, a.step), (x, a.x), (y, &Out(a.y))],
            &a.site.meta(a.accumulate, None),
            grid(a.site.len, vec4),
        );
        out.push(d.into());
    }
}

impl Record<DropoutBackward<'_>> for Dropout {
    fn record(&self, gpu: &Gpu, a: &DropoutBackward, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let vec4 = a.site.len.is_multiple_of(4);
        let (pipeline, dy, dx) = if vec4 {
            (&self.backward4, 7, 8)
        } else {
            (&self.backward, 3, 4)
        };
        let d = gpu.dispatch(
            pipeline,
            &[(0, a.step), (dy, a.dy), (dx, &Out(a.dx))],
            &a.site.meta(false, None),
            grid(a.site.len, vec4),
        );
        out.push(d.into());
    }
}
