//! AdamW on CPU adapters: the vec4 sum of squares and update read each chunk's gradients
//! from one texture copy (shaders/cpu/adamw.wgsl), made by the sum of squares and read again
//! by the update.

use super::{texture, TryRecord};
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out};
use crate::kernels::adamw::{AdamWChunk, ChunkSumOfSquares, ChunkUpdate, Specialisation};

/// Texels per row of the copies: 8192 (128 KiB rows) holds labml's 20M floats in 611 rows,
/// and a 8192-texel dimension is every adapter's default limit.
const TEXTURE_WIDTH: u32 = 8192;

pub struct AdamWTextures {
    sum_squares: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
    /// Texels per row (a power of two) of the copies.
    width: u32,
}

/// The specialisation where the adapter prefers texture reads (`texture::preferred`).
pub fn for_adapter(gpu: &Gpu) -> Option<Box<dyn Specialisation>> {
    texture::preferred_for(gpu, &crate::kernels::ADAMW_CPU)
        .then(|| AdamWTextures::boxed(gpu, TEXTURE_WIDTH))
}

impl AdamWTextures {
    /// Copies in rows of `width` texels (a power of two), whatever the adapter (the tests
    /// run it on every one, with narrow rows to cover partial ones).
    pub fn boxed(gpu: &Gpu, width: u32) -> Box<dyn Specialisation> {
        assert!(
            width.is_power_of_two(),
            "AdamW texture width {width} is not a power of two"
        );
        let s = &crate::kernels::ADAMW_CPU;
        Box::new(AdamWTextures {
            sum_squares: gpu.pipeline(s, "sum_squares_texture"),
            update: gpu.pipeline(s, "adamw_update_texture"),
            width,
        })
    }

    /// Whether the chunk's gradients are worth a copy: whole vec4s, and not a small part (a
    /// head alone) of a large chunk, whose copy would cost more than it saves.
    fn worth_a_copy(c: &AdamWChunk) -> bool {
        c.whole_vec4s() && 2 * c.range.len() >= c.floats()
    }

    /// The texture of the chunk's gradients that its sum of squares copied, earlier in
    /// `recorded`, if no command since wrote the gradients.
    fn earlier_copy(&self, c: &AdamWChunk, recorded: &[Command]) -> Option<wgpu::TextureView> {
        let height = (c.grads.size() / 16).div_ceil(u64::from(self.width));
        for command in recorded.iter().rev() {
            match command {
                Command::CopyBufferToTexture {
                    buffer, texture, ..
                } if buffer == c.grads
                    && texture.width() == self.width
                    && u64::from(texture.height()) == height =>
                {
                    return Some(texture.create_view(&Default::default()));
                }
                _ if command.writes(c.grads) => return None,
                _ => {}
            }
        }
        None
    }
}

/// The gradients copied to a texture (the copies appended to `out`), then summed.
impl TryRecord<ChunkSumOfSquares<'_>> for AdamWTextures {
    fn try_record(&self, gpu: &Gpu, a: &ChunkSumOfSquares, out: &mut Vec<Command>) -> bool {
        let c = a.chunk;
        if !Self::worth_a_copy(c) {
            return false;
        }
        let Some((grads, copies)) = texture::flat(gpu, c.grads, self.width) else {
            return false;
        };
        out.extend(copies);
        let d = gpu.dispatch(
            &self.sum_squares,
            &[(11, &grads), (1, &Out(a.stats))],
            &c.meta(a.partials, a.accumulate, Some(self.width)),
            [a.partials as u32, 1, 1],
        );
        out.push(d.into());
        true
    }
}

/// Taken where the chunk's sum of squares was (it finds that copy in `out`).
impl TryRecord<ChunkUpdate<'_>> for AdamWTextures {
    fn try_record(&self, gpu: &Gpu, a: &ChunkUpdate, out: &mut Vec<Command>) -> bool {
        let c = a.chunk;
        let Some(grads) = self.earlier_copy(c, out) else {
            return false;
        };
        let d = gpu.dispatch(
            &self.update,
            &[
                (11, &grads),
                (2, a.hyper),
                (3, a.stats),
                (8, &Out(c.params)),
                (9, &Out(c.m)),
                (10, &Out(c.v)),
            ],
            &c.meta(a.partials, false, Some(self.width)),
            grid_1d(div_ceil(c.vec4s(), 256)),
        );
        out.push(d.into());
        true
    }
}
