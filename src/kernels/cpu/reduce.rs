//! Column sums on CPU adapters: the partial sums read the matrix from a texture copy
//! (shaders/cpu/reduce.wgsl) where its width allows (cols % 64 == 0).

use super::{texture, TryRecord};
use crate::gpu::{div_ceil, Command, Gpu, Out};
use crate::kernels::reduce::{ColumnSum, Specialisation};

pub struct ReduceTextures {
    column_sum_partial: wgpu::ComputePipeline,
}

/// The specialisation where the adapter prefers texture reads (`texture::preferred`).
pub fn for_adapter(gpu: &Gpu) -> Option<Box<dyn Specialisation>> {
    texture::preferred_for(gpu, &crate::kernels::REDUCE_CPU).then(|| ReduceTextures::boxed(gpu))
}

impl ReduceTextures {
    /// Built whatever the adapter (the tests run it on every one).
    pub fn boxed(gpu: &Gpu) -> Box<dyn Specialisation> {
        let s = &crate::kernels::REDUCE_CPU;
        Box::new(ReduceTextures {
            column_sum_partial: gpu.pipeline(s, "column_sum_partial_texture"),
        })
    }
}

/// The partial sums only (the family sums them).
impl TryRecord<ColumnSum<'_>> for ReduceTextures {
    fn try_record(&self, gpu: &Gpu, a: &ColumnSum, out: &mut Vec<Command>) -> bool {
        let Some((view, copy)) = texture::rows_of(gpu, a.matrix.into(), a.rows, a.cols, out) else {
            return false;
        };
        out.extend(copy);
        let d = gpu.dispatch(
            &self.column_sum_partial,
            &[(1, &Out(a.scratch)), (4, &view)],
            &a.meta(),
            [div_ceil(a.cols / 4, 64), a.chunks() as u32, 1],
        );
        out.push(d.into());
        true
    }
}
