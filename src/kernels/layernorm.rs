//! LayerNorm forward (saving mean and rstd) and backward (dx, dgamma, dbeta).

use super::cpu::TryRecord;
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out, Record, View};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Meta {
    rows: u32,
    cols: u32,
    eps: f32,
    accumulate: u32,
    chunk_rows: u32,
    chunks: u32,
    _pad: [u32; 2],
}

/// Rows per partial sum of dgamma/dbeta.
const CHUNK_ROWS: usize = 128;

pub struct LayerNorm {
    forward: wgpu::ComputePipeline,
    backward_input: wgpu::ComputePipeline,
    backward_params: wgpu::ComputePipeline,
    params_finish: wgpu::ComputePipeline,
    /// Offered every call first, where the adapter has one (`cpu::layernorm`).
    cpu: Option<Box<dyn Specialisation>>,
}

/// A CPU-adapter specialisation of LayerNorm: it records the calls it can take, and the
/// portable kernels run the others.
pub trait Specialisation:
    for<'a> TryRecord<LayerNormForward<'a>> + for<'a> TryRecord<LayerNormBackward<'a>>
{
}

impl<T> Specialisation for T where
    T: for<'a> TryRecord<LayerNormForward<'a>> + for<'a> TryRecord<LayerNormBackward<'a>>
{
}

/// Forward: y = (x - mean) * rstd * gamma + beta, rows of `cols` floats.
pub struct LayerNormForward<'a> {
    pub x: &'a wgpu::Buffer,    // [rows, cols]
    pub gamma: View<'a>,        // [cols]
    pub beta: View<'a>,         // [cols]
    pub y: &'a wgpu::Buffer,    // [rows, cols]
    pub mean: &'a wgpu::Buffer, // [LayerNorm::stats_len(rows)]
    pub rstd: &'a wgpu::Buffer, // [LayerNorm::stats_len(rows)]
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
}

/// Backward: dx (overwritten, or added when `accumulate`), dgamma and dbeta (overwritten).
pub struct LayerNormBackward<'a> {
    pub dy: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    pub gamma: View<'a>,
    pub mean: &'a wgpu::Buffer,
    pub rstd: &'a wgpu::Buffer,
    pub dx: &'a wgpu::Buffer,
    pub dgamma: View<'a>,
    pub dbeta: View<'a>,
    /// `LayerNorm::scratch_len(rows, cols)` floats for the partial sums of dgamma/dbeta.
    pub scratch: &'a wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

impl LayerNormForward<'_> {
    pub(super) fn meta(&self) -> Meta {
        Meta {
            rows: self.rows as u32,
            cols: self.cols as u32,
            eps: self.eps,
            accumulate: 0,
            chunk_rows: 0,
            chunks: 0,
            _pad: [0; 2],
        }
    }
}

impl LayerNormBackward<'_> {
    /// Partial sums per column of dgamma/dbeta: one per chunk of `CHUNK_ROWS` rows.
    pub(super) fn chunks(&self) -> usize {
        self.rows.div_ceil(CHUNK_ROWS).max(1)
    }

    pub(super) fn meta(&self) -> Meta {
        Meta {
            rows: self.rows as u32,
            cols: self.cols as u32,
            eps: 0.0,
            accumulate: self.accumulate as u32,
            chunk_rows: CHUNK_ROWS as u32,
            chunks: self.chunks() as u32,
            _pad: [0; 2],
        }
    }
}

impl LayerNorm {
    /// The portable kernels, and `cpu` (`cpu::layernorm::for_adapter`) offered every call
    /// first.
    pub fn new(gpu: &Gpu, cpu: Option<Box<dyn Specialisation>>) -> Self {
        let s = &super::LAYERNORM;
        LayerNorm {
            forward: gpu.pipeline(s, "layernorm_forward"),
            backward_input: gpu.pipeline(s, "layernorm_backward_input"),
            backward_params: gpu.pipeline(s, "layernorm_backward_params"),
            params_finish: gpu.pipeline(s, "layernorm_params_finish"),
            cpu,
        }
    }

    pub fn scratch_len(rows: usize, cols: usize) -> usize {
        2 * rows.div_ceil(CHUNK_ROWS).max(1) * cols
    }

    /// Floats of each statistics buffer (mean, rstd) for `rows` rows: whole vec4s, so the
    /// CPU specialisation can copy them as they are.
    pub fn stats_len(rows: usize) -> usize {
        rows.next_multiple_of(4)
    }
}

impl Record<LayerNormForward<'_>> for LayerNorm {
    fn record(&self, gpu: &Gpu, a: &LayerNormForward, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let d = gpu.dispatch(
            &self.forward,
            &[
                (0, a.x),
                (1, &a.gamma),
                (2, &a.beta),
                (3, &Out(a.y)),
                (4, &Out(a.mean)),
                (5, &Out(a.rstd)),
            ],
            &a.meta(),
            grid_1d(div_ceil(a.rows, 64)),
        );
        out.push(d.into());
    }
}

/// Three launches: dx per row, then dgamma/dbeta partial sums over row chunks, then their
/// sum. The CPU specialisation may take the first two.
impl Record<LayerNormBackward<'_>> for LayerNorm {
    fn record(&self, gpu: &Gpu, a: &LayerNormBackward, out: &mut Vec<Command>) {
        assert!(
            a.scratch.size() >= (Self::scratch_len(a.rows, a.cols) * 4) as u64,
            "layernorm scratch too small for {}x{}",
            a.rows,
            a.cols
        );
        let meta = a.meta();
        let col_groups = div_ceil(a.cols, 64);
        if !self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            let input = gpu.dispatch(
                &self.backward_input,
                &[
                    (6, a.dy),
                    (7, a.x),
                    (8, &a.gamma),
                    (9, a.mean),
                    (10, a.rstd),
                    (11, &Out(a.dx)),
                ],
                &meta,
                grid_1d(div_ceil(a.rows, 64)),
            );
            let params = gpu.dispatch(
                &self.backward_params,
                &[
                    (6, a.dy),
                    (7, a.x),
                    (9, a.mean),
                    (10, a.rstd),
                    (14, &Out(a.scratch)),
                ],
                &meta,
                [col_groups, a.chunks() as u32, 1],
            );
            out.extend([input.into(), params.into()]);
        }
        let finish = gpu.dispatch(
            &self.params_finish,
            &[(15, a.scratch), (12, &Out(a.dgamma)), (13, &Out(a.dbeta))],
            &meta,
            [col_groups, 1, 1],
        );
        out.push(finish.into());
    }
}
