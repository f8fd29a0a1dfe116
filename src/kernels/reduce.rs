//! Column sums: the bias gradient of every linear layer, in two launches.

use super::cpu::texture;
use crate::gpu::{div_ceil, Command, Gpu, Record, View};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    rows: u32,
    cols: u32,
    chunk_rows: u32,
    chunks: u32,
    accumulate: u32,
    _pad: [u32; 3],
}

/// Rows per partial sum.
const CHUNK_ROWS: usize = 128;

pub struct Reduce {
    column_sum_partial: wgpu::ComputePipeline,
    column_sum_partial_texture: wgpu::ComputePipeline,
    column_sum_finish: wgpu::ComputePipeline,
    /// Read the matrix through a texture where its shape allows (CPU adapters, where
    /// that replaces a per-lane load loop per element).
    textures: bool,
}

impl Reduce {
    pub fn new(gpu: &Gpu) -> Self {
        let s = &super::REDUCE;
        Reduce {
            column_sum_partial: gpu.pipeline(s, "column_sum_partial"),
            column_sum_partial_texture: gpu.pipeline(s, "column_sum_partial_texture"),
            column_sum_finish: gpu.pipeline(s, "column_sum_finish"),
            textures: texture::preferred(gpu),
        }
    }

    /// The same with the texture path on or off whatever the adapter (tests cover both).
    pub fn with_textures(gpu: &Gpu, textures: bool) -> Self {
        Reduce {
            textures,
            ..Reduce::new(gpu)
        }
    }

    /// Floats of scratch `column_sum` needs for a [rows, cols] matrix.
    pub fn column_sum_scratch_len(rows: usize, cols: usize) -> usize {
        rows.div_ceil(CHUNK_ROWS).max(1) * cols
    }
}

/// sums[cols] (+)= sum over rows of matrix [rows, cols]: partial sums over chunks of rows
/// into `scratch`, then their sum.
pub struct ColumnSum<'a> {
    pub matrix: &'a wgpu::Buffer,
    pub sums: View<'a>,
    /// `Reduce::column_sum_scratch_len(rows, cols)` floats.
    pub scratch: &'a wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

impl Record<ColumnSum<'_>> for Reduce {
    fn record(&self, gpu: &Gpu, a: &ColumnSum, out: &mut Vec<Command>) {
        let ColumnSum {
            matrix,
            sums,
            scratch,
            rows,
            cols,
            accumulate,
        } = *a;
        let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
        assert!(
            scratch.size() >= (Self::column_sum_scratch_len(rows, cols) * 4) as u64
                && sums.len >= cols,
            "column_sum of {rows}x{cols}: scratch or sums too small"
        );
        let meta = Meta {
            rows: rows as u32,
            cols: cols as u32,
            chunk_rows: CHUNK_ROWS as u32,
            chunks: chunks as u32,
            accumulate: accumulate as u32,
            ..Default::default()
        };
        let col_groups = div_ceil(cols, 64);
        let as_texture = self
            .textures
            .then(|| texture::rows_of(gpu, matrix.into(), rows, cols, out))
            .flatten();
        let partial = match as_texture {
            Some((view, copy)) => {
                out.extend(copy);
                gpu.dispatch(
                    &self.column_sum_partial_texture,
                    &[(1, scratch), (4, &view)],
                    &meta,
                    [div_ceil(cols / 4, 64), chunks as u32, 1],
                )
            }
            None => gpu.dispatch(
                &self.column_sum_partial,
                &[(0, matrix), (1, scratch)],
                &meta,
                [col_groups, chunks as u32, 1],
            ),
        };
        let finish = gpu.dispatch(
            &self.column_sum_finish,
            &[(2, scratch), (3, &sums)],
            &meta,
            [col_groups, 1, 1],
        );
        out.extend([partial.into(), finish.into()]);
    }
}
