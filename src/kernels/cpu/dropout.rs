//! Dropout on CPU adapters: the accumulating forward (the residual stream's) and the
//! backward read their inputs from texture copies of whole buffers
//! (shaders/cpu/dropout.wgsl), for lengths that are a multiple of 4.

use super::{texture, TryRecord};
use crate::gpu::{Command, Gpu, Out};
use crate::kernels::dropout::{grid, DropoutBackward, DropoutForward, Specialisation};

pub struct DropoutTextures {
    forward: wgpu::ComputePipeline,
    backward: wgpu::ComputePipeline,
    /// Texels per row (a power of two) of the copies.
    width: u32,
}

/// Texels per row of the copies (as AdamW's).
const TEXTURE_WIDTH: u32 = 8192;

/// The specialisation where the adapter prefers texture reads (`texture::preferred`).
pub fn for_adapter(gpu: &Gpu) -> Option<Box<dyn Specialisation>> {
    texture::preferred_for(gpu, &crate::kernels::DROPOUT_CPU)
        .then(|| DropoutTextures::boxed(gpu, TEXTURE_WIDTH))
}

impl DropoutTextures {
    /// Copies in rows of `width` texels (a power of two), whatever the adapter (the tests
    /// run it on every one, with narrow rows to cover partial ones).
    pub fn boxed(gpu: &Gpu, width: u32) -> Box<dyn Specialisation> {
        assert!(
            width.is_power_of_two(),
            "dropout texture width {width} is not a power of two"
        );
        let s = &crate::kernels::DROPOUT_CPU;
        Box::new(DropoutTextures {
            forward: gpu.pipeline(s, "dropout_forward_texture"),
            backward: gpu.pipeline(s, "dropout_backward_texture"),
            width,
        })
    }

    /// Each buffer as a texture, the copies appended to `out`; `None` (and nothing
    /// appended) unless all of them can be.
    fn textures(
        &self,
        gpu: &Gpu,
        buffers: &[&wgpu::Buffer],
        out: &mut Vec<Command>,
    ) -> Option<Vec<wgpu::TextureView>> {
        let (views, copies) = texture::all_flat(gpu, buffers, self.width)?;
        out.extend(copies);
        Some(views)
    }
}

/// The accumulating forward only (y += x * mask / (1 - p)).
impl TryRecord<DropoutForward<'_>> for DropoutTextures {
    fn try_record(&self, gpu: &Gpu, a: &DropoutForward, out: &mut Vec<Command>) -> bool {
        if !(a.accumulate && a.site.len.is_multiple_of(4)) {
            return false;
        }
        let Some(t) = self.textures(gpu, &[a.x, a.y], out) else {
            return false;
        };
        let d = gpu.dispatch(
            &self.forward,
            &[(0, a.step), (9, &t[0]), (10, &t[1]), (6, &Out(a.y))],
            &a.site.meta(true, Some(self.width)),
            grid(a.site.len, true),
        );
        out.push(d.into());
        true
    }
}

impl TryRecord<DropoutBackward<'_>> for DropoutTextures {
    fn try_record(&self, gpu: &Gpu, a: &DropoutBackward, out: &mut Vec<Command>) -> bool {
        if !a.site.len.is_multiple_of(4) {
            return false;
        }
        let Some(t) = self.textures(gpu, &[a.dy], out) else {
            return false;
        };
        let d = gpu.dispatch(
            &self.backward,
            &[(0, a.step), (11, &t[0]), (8, &Out(a.dx))],
            &a.site.meta(false, Some(self.width)),
            grid(a.site.len, true),
        );
        out.push(d.into());
        true
    }
}
