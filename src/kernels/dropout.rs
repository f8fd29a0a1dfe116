//! Inverted dropout whose mask is a hash of (seed, step, index): backward regenerates it.

use super::cpu::texture;
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Record};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
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
    fn meta(&self, accumulate: bool, texture_width: Option<u32>) -> Meta {
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

/// Scalar kernels, and vec4 ones for lengths that are a multiple of 4: from storage, or on
/// CPU adapters from texture copies of the inputs (the accumulating forward and the backward).
pub struct Dropout {
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
    forward4: wgpu::ComputePipeline,
    backward4: wgpu::ComputePipeline,
    forward_texture: wgpu::ComputePipeline,
    backward_texture: wgpu::ComputePipeline,
    /// Texels per row (a power of two) of the texture copies, when that path is on.
    texture_width: Option<u32>,
}

/// Texels per row of the texture path's copies (as AdamW's).
const TEXTURE_WIDTH: u32 = 8192;

impl Dropout {
    pub fn new(gpu: &Gpu) -> Self {
        Self::with_texture_width(gpu, texture::preferred(gpu).then_some(TEXTURE_WIDTH))
    }

    /// The texture path off (`None`) or on with rows of `width` texels (a power of two),
    /// whatever the adapter: the tests cover both.
    pub fn with_texture_width(gpu: &Gpu, width: Option<u32>) -> Self {
        assert!(
            width.is_none_or(|w| w.is_power_of_two()),
            "dropout texture width {width:?} is not a power of two"
        );
        let s = &super::DROPOUT;
        Dropout {
            forward: gpu.pipeline(s, "dropout_forward"),
            backward: gpu.pipeline(s, "dropout_backward"),
            forward4: gpu.pipeline(s, "dropout_forward4"),
            backward4: gpu.pipeline(s, "dropout_backward4"),
            forward_texture: gpu.pipeline(s, "dropout_forward_texture"),
            backward_texture: gpu.pipeline(s, "dropout_backward_texture"),
            texture_width: width,
        }
    }

    /// Each buffer as a texture of `texture_width`-texel rows, the copies appended to `out`;
    /// `None` (and nothing appended) unless all of them can be.
    fn textures(
        &self,
        gpu: &Gpu,
        buffers: &[&wgpu::Buffer],
        out: &mut Vec<Command>,
    ) -> Option<Vec<wgpu::TextureView>> {
        let (views, copies) = texture::all_flat(gpu, buffers, self.texture_width?)?;
        out.extend(copies);
        Some(views)
    }
}

/// Workgroups of 256 invocations over `len` floats, 4 per invocation when `vec4`.
fn grid(len: usize, vec4: bool) -> [u32; 3] {
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
        let vec4 = a.site.len.is_multiple_of(4);
        if vec4 && a.accumulate {
            if let Some(t) = self.textures(gpu, &[a.x, a.y], out) {
                let d = gpu.dispatch(
                    &self.forward_texture,
                    &[(0, a.step), (9, &t[0]), (10, &t[1]), (6, a.y)],
                    &a.site.meta(true, self.texture_width),
                    grid(a.site.len, true),
                );
                out.push(d.into());
                return;
            }
        }
        let (pipeline, x, y) = if vec4 {
            (&self.forward4, 5, 6)
        } else {
            (&self.forward, 1, 2)
        };
        let d = gpu.dispatch(
            pipeline,
            &[(0, a.step), (x, a.x), (y, a.y)],
            &a.site.meta(a.accumulate, None),
            grid(a.site.len, vec4),
        );
        out.push(d.into());
    }
}

impl Record<DropoutBackward<'_>> for Dropout {
    fn record(&self, gpu: &Gpu, a: &DropoutBackward, out: &mut Vec<Command>) {
        let vec4 = a.site.len.is_multiple_of(4);
        if vec4 {
            if let Some(t) = self.textures(gpu, &[a.dy], out) {
                let d = gpu.dispatch(
                    &self.backward_texture,
                    &[(0, a.step), (11, &t[0]), (8, a.dx)],
                    &a.site.meta(false, self.texture_width),
                    grid(a.site.len, true),
                );
                out.push(d.into());
                return;
            }
        }
        let (pipeline, dy, dx) = if vec4 {
            (&self.backward4, 7, 8)
        } else {
            (&self.backward, 3, 4)
        };
        let d = gpu.dispatch(
            pipeline,
            &[(0, a.step), (dy, a.dy), (dx, a.dx)],
            &a.site.meta(false, None),
            grid(a.site.len, vec4),
        );
        out.push(d.into());
    }
}
