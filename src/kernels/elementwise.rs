//! Element-wise ops of timm's ViT options: LayerScale (`ScaleColumns`, `Multiply`), the
//! mean of two heads (`Axpby`), QuickGELU in place after the fc1 GEMM (`QuickGelu`, its
//! slope for the backward GEMM), and strided column copies (`CopyColumns`, qk-norm).
//! Reference: `reference::elementwise`.

use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out, Record, View};
pub use crate::reference::elementwise::ColumnBlock;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    len: u32,
    cols: u32,
    accumulate: u32,
    alpha: f32,
    beta: f32,
    width: u32,
    src_stride: u32,
    src_offset: u32,
    dst_stride: u32,
    dst_offset: u32,
    _pad: [u32; 2],
}

fn groups(n: usize) -> [u32; 3] {
    grid_1d(div_ceil(n, 256))
}

pub struct Elementwise {
    scale_columns: wgpu::ComputePipeline,
    multiply: wgpu::ComputePipeline,
    axpby: wgpu::ComputePipeline,
    quick_gelu: wgpu::ComputePipeline,
    quick_gelu_slope: wgpu::ComputePipeline,
    copy_columns: wgpu::ComputePipeline,
}

impl Elementwise {
    pub fn new(gpu: &Gpu) -> Self {
        let s = &super::ELEMENTWISE;
        Elementwise {
            scale_columns: gpu.pipeline(s, "scale_columns"),
            multiply: gpu.pipeline(s, "multiply"),
            axpby: gpu.pipeline(s, "axpby"),
            quick_gelu: gpu.pipeline(s, "quick_gelu"),
            quick_gelu_slope: gpu.pipeline(s, "quick_gelu_slope"),
            copy_columns: gpu.pipeline(s, "copy_columns"),
        }
    }
}

/// y [len / cols, cols] (+)= gamma[col] * x
pub struct ScaleColumns<'a> {
    pub x: &'a wgpu::Buffer,
    pub gamma: View<'a>,
    pub y: &'a wgpu::Buffer,
    pub len: usize,
    pub cols: usize,
    pub accumulate: bool,
}

/// y = a * b over `len` elements
pub struct Multiply<'a> {
    pub a: &'a wgpu::Buffer,
    pub b: &'a wgpu::Buffer,
    pub y: &'a wgpu::Buffer,
    pub len: usize,
}

/// y = alpha * x + beta * y over `len` elements (y unread when beta == 0)
pub struct Axpby<'a> {
    pub x: View<'a>,
    pub y: View<'a>,
    pub alpha: f32,
    pub beta: f32,
    pub len: usize,
}

/// act = quick_gelu(act) in place over `len` elements, and slope = its derivative at the
/// old act when given
pub struct QuickGelu<'a> {
    pub act: &'a wgpu::Buffer,
    pub slope: Option<&'a wgpu::Buffer>,
    pub len: usize,
}

/// A block of columns of one row-major matrix into another
pub struct CopyColumns<'a> {
    pub src: &'a wgpu::Buffer,
    pub dst: &'a wgpu::Buffer,
    pub block: ColumnBlock,
}

impl Record<ScaleColumns<'_>> for Elementwise {
    fn record(&self, gpu: &Gpu, a: &ScaleColumns, out: &mut Vec<Command>) {
        assert!(a.cols > 0 && a.len.is_multiple_of(a.cols) && a.gamma.len >= a.cols);
        let m = Meta {
            len: a.len as u32,
            cols: a.cols as u32,
            accumulate: a.accumulate as u32,
            ..Default::default()
        };
        let d = gpu.dispatch(
            &self.scale_columns,
            &[(0, a.x), (1, &a.gamma), (2, &Out(a.y))],
            &m,
            groups(a.len),
        );
        out.push(d.into());
    }
}

impl Record<Multiply<'_>> for Elementwise {
    fn record(&self, gpu: &Gpu, a: &Multiply, out: &mut Vec<Command>) {
        let m = Meta {
            len: a.len as u32,
            ..Default::default()
        };
        let d = gpu.dispatch(
            &self.multiply,
            &[(3, a.a), (4, a.b), (5, &Out(a.y))],
            &m,
            groups(a.len),
        );
        out.push(d.into());
    }
}

impl Record<Axpby<'_>> for Elementwise {
    fn record(&self, gpu: &Gpu, a: &Axpby, out: &mut Vec<Command>) {
        assert!(
            a.x.len >= a.len && a.y.len >= a.len,
            "axpby beyond its buffers"
        );
        let m = Meta {
            len: a.len as u32,
            alpha: a.alpha,
            beta: a.beta,
            ..Default::default()
        };
        let d = gpu.dispatch(&self.axpby, &[(6, &a.x), (7, &Out(a.y))], &m, groups(a.len));
        out.push(d.into());
    }
}

impl Record<QuickGelu<'_>> for Elementwise {
    fn record(&self, gpu: &Gpu, a: &QuickGelu, out: &mut Vec<Command>) {
        let m = Meta {
            len: a.len as u32,
            ..Default::default()
        };
        let d = match a.slope {
            Some(slope) => gpu.dispatch(
                &self.quick_gelu_slope,
                &[(8, &Out(a.act)), (9, &Out(slope))],
                &m,
                groups(a.len),
            ),
            None => gpu.dispatch(&self.quick_gelu, &[(8, &Out(a.act))], &m, groups(a.len)),
        };
        out.push(d.into());
    }
}

impl Record<CopyColumns<'_>> for Elementwise {
    fn record(&self, gpu: &Gpu, a: &CopyColumns, out: &mut Vec<Command>) {
        let b = &a.block;
        let m = Meta {
            len: (b.rows * b.width) as u32,
            width: b.width as u32,
            src_stride: b.src_stride as u32,
            src_offset: b.src_offset as u32,
            dst_stride: b.dst_stride as u32,
            dst_offset: b.dst_offset as u32,
            ..Default::default()
        };
        let d = gpu.dispatch(
            &self.copy_columns,
            &[(10, a.src), (11, &Out(a.dst))],
            &m,
            groups(b.rows * b.width),
        );
        out.push(d.into());
    }
}
