//! Column sums: the bias gradient of every linear layer, in two launches.

use super::cpu::TryRecord;
use crate::gpu::{div_ceil, Command, Gpu, Out, Record, View};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Meta {
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
    column_sum_finish: wgpu::ComputePipeline,
    /// Offered every call first, where the adapter has one (`cpu::reduce`).
    cpu: Option<Box<dyn Specialisation>>,
}

/// A CPU-adapter specialisation of the column sums' partial pass: it records the calls it
/// can take, and the portable kernel runs the others.
pub trait Specialisation: for<'a> TryRecord<ColumnSum<'a>> {}

impl<T> Specialisation for T where T: for<'a> TryRecord<ColumnSum<'a>> {}

impl Reduce {
    /// The portable kernels, and `cpu` (`cpu::reduce::for_adapter`) offered every call
    /// first.
    pub fn new(gpu: &Gpu, cpu: Option<Box<dyn Specialisation>>) -> Self {
        let s = &super::REDUCE;
        Reduce {
            column_sum_partial: gpu.pipeline(s, "column_sum_partial"),
            column_sum_finish: gpu.pipeline(s, "column_sum_finish"),
            cpu,
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

impl ColumnSum<'_> {
    /// Partial sums per column: one per chunk of `CHUNK_ROWS` rows.
    pub(super) fn chunks(&self) -> usize {
        self.rows.div_ceil(CHUNK_ROWS).max(1)
    }

    pub(super) fn meta(&self) -> Meta {
        Meta {
            rows: self.rows as u32,
            cols: self.cols as u32,
            chunk_rows: CHUNK_ROWS as u32,
            chunks: self.chunks() as u32,
            accumulate: self.accumulate as u32,
            ..Default::default()
        }
    }
}

/// The partial sums (the CPU specialisation may take them), then their sum.
impl Record<ColumnSum<'_>> for Reduce {
    fn record(&self, gpu: &Gpu, a: &ColumnSum, out: &mut Vec<Command>) {
        let (rows, cols) = (a.rows, a.cols);
        assert!(
            a.scratch.size() >= (Self::column_sum_scratch_len(rows, cols) * 4) as u64
                && a.sums.len >= cols,
            "column_sum of {rows}x{cols}: scratch or sums too small"
        );
        let meta = a.meta();
        let col_groups = div_ceil(cols, 64);
        if !self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            let partial = gpu.dispatch(
                &self.column_sum_partial,
                &[(0, a.matrix), (1, &Out(a.scratch))],
                &meta,
                [col_groups, a.chunks() as u32, 1],
            );
            out.push(partial.into());
        }
        let finish = gpu.dispatch(
            &self.column_sum_finish,
            &[(2, a.scratch), (3, &Out(a.sums))],
            &meta,
            [col_groups, 1, 1],
        );
        out.push(finish.into());
    }
}
