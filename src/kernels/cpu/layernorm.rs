//! LayerNorm on CPU adapters: the forward, dx and partial-sum passes read their inputs
//! from texture copies (shaders/cpu/layernorm.wgsl) where the width allows (cols % 64 == 0).

use super::{texture, TryRecord};
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out};
use crate::kernels::layernorm::{LayerNormBackward, LayerNormForward, Specialisation};

/// Texels per row of the row statistics' texture copies (cpu/layernorm.wgsl's `stat_texel`).
const STAT_TEXELS_PER_ROW: u32 = 64;

pub struct LayerNormTextures {
    forward: wgpu::ComputePipeline,
    backward_input: wgpu::ComputePipeline,
    backward_params: wgpu::ComputePipeline,
}

/// The specialisation where the adapter prefers texture reads (`texture::preferred`).
pub fn for_adapter(gpu: &Gpu) -> Option<Box<dyn Specialisation>> {
    texture::preferred_for(gpu, &crate::kernels::LAYERNORM_CPU)
        .then(|| LayerNormTextures::boxed(gpu))
}

impl LayerNormTextures {
    /// Built whatever the adapter (the tests run it on every one).
    pub fn boxed(gpu: &Gpu) -> Box<dyn Specialisation> {
        let s = &crate::kernels::LAYERNORM_CPU;
        Box::new(LayerNormTextures {
            forward: gpu.pipeline(s, "layernorm_forward_texture"),
            backward_input: gpu.pipeline(s, "layernorm_backward_input_texture"),
            backward_params: gpu.pipeline(s, "layernorm_backward_params_texture"),
        })
    }
}

impl TryRecord<LayerNormForward<'_>> for LayerNormTextures {
    fn try_record(&self, gpu: &Gpu, a: &LayerNormForward, out: &mut Vec<Command>) -> bool {
        let inputs = [(a.x.into(), a.rows), (a.gamma, 1), (a.beta, 1)];
        let Some(t) = texture::all_rows_of(gpu, &inputs, a.cols, out) else {
            return false;
        };
        let d = gpu.dispatch(
            &self.forward,
            &[
                (16, &t[0]),
                (17, &t[1]),
                (18, &t[2]),
                (20, &Out(a.y)),
                (4, &Out(a.mean)),
                (5, &Out(a.rstd)),
            ],
            &a.meta(),
            grid_1d(div_ceil(a.rows, 64)),
        );
        out.push(d.into());
        true
    }
}

/// dx and the partial sums of dgamma/dbeta (the family sums them).
impl TryRecord<LayerNormBackward<'_>> for LayerNormTextures {
    fn try_record(&self, gpu: &Gpu, a: &LayerNormBackward, out: &mut Vec<Command>) -> bool {
        // When adding to dx, its old values come through a texture too.
        let mut inputs = vec![(a.dy.into(), a.rows), (a.x.into(), a.rows), (a.gamma, 1)];
        if a.accumulate {
            inputs.push((a.dx.into(), a.rows));
        }
        // The statistics in rows of 64 texels (`stat_texel`): their buffers must hold whole
        // vec4s (`LayerNorm::stats_len`), else storage is read.
        let Some((stats, stat_copies)) =
            texture::all_flat(gpu, &[a.mean, a.rstd], STAT_TEXELS_PER_ROW)
        else {
            return false;
        };
        let Some(mut t) = texture::all_rows_of(gpu, &inputs, a.cols, out) else {
            return false;
        };
        out.extend(stat_copies);
        if !a.accumulate {
            t.push(texture::placeholder(gpu));
        }
        let (dy, x, gamma, dx_old) = (&t[0], &t[1], &t[2], &t[3]);
        let meta = a.meta();
        let input = gpu.dispatch(
            &self.backward_input,
            &[
                (19, dy),
                (16, x),
                (17, gamma),
                (22, dx_old),
                (9, a.mean),
                (10, a.rstd),
                (21, &Out(a.dx)),
            ],
            &meta,
            grid_1d(div_ceil(a.rows, 64)),
        );
        let params = gpu.dispatch(
            &self.backward_params,
            &[
                (19, dy),
                (16, x),
                (23, &stats[0]),
                (24, &stats[1]),
                (14, &Out(a.scratch)),
            ],
            &meta,
            [div_ceil(a.cols / 4, 64), a.chunks() as u32, 1],
        );
        out.extend([input.into(), params.into()]);
        true
    }
}
