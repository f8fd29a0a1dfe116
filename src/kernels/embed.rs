//! Patchify, token assembly (CLS + position), their backward and CLS row gather/scatter.
//! The patch projection itself is a GEMM; its bias gradient a column sum (`reduce`).

use super::cpu::TryRecord;
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out, Record, View};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Meta {
    batch: u32,
    channels: u32,
    height: u32,
    width: u32,
    patch: u32,
    tokens: u32,
    dim: u32,
    _pad: u32,
}

/// The image and token geometry shared by the embedding kernels.
#[derive(Clone, Copy, Debug)]
pub struct EmbedShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
    pub dim: usize,
}

impl EmbedShape {
    pub fn patches(&self) -> usize {
        (self.height / self.patch) * (self.width / self.patch)
    }
    pub fn tokens(&self) -> usize {
        1 + self.patches()
    }
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    pub(super) fn meta(&self) -> Meta {
        Meta {
            batch: self.batch as u32,
            channels: self.channels as u32,
            height: self.height as u32,
            width: self.width as u32,
            patch: self.patch as u32,
            tokens: self.tokens() as u32,
            dim: self.dim as u32,
            ..Default::default()
        }
    }
}

pub struct Embed {
    patchify: wgpu::ComputePipeline,
    assemble: wgpu::ComputePipeline,
    tokens_backward: wgpu::ComputePipeline,
    /// The same on a vec4 of D per invocation (D % 4 == 0).
    assemble4: wgpu::ComputePipeline,
    tokens_backward4: wgpu::ComputePipeline,
    pos_cls_backward: wgpu::ComputePipeline,
    gather_cls: wgpu::ComputePipeline,
    scatter_cls: wgpu::ComputePipeline,
    /// Offered the token kernels' calls first, where the adapter has one (`cpu::embed`).
    cpu: Option<Box<dyn Specialisation>>,
}

/// A CPU-adapter specialisation of the token kernels: it records the calls it can take,
/// and the portable kernels run the others.
pub trait Specialisation:
    for<'a> TryRecord<AssembleTokens<'a>>
    + for<'a> TryRecord<TokensBackward<'a>>
    + for<'a> TryRecord<PosClsBackward<'a>>
{
}

impl<T> Specialisation for T where
    T: for<'a> TryRecord<AssembleTokens<'a>>
        + for<'a> TryRecord<TokensBackward<'a>>
        + for<'a> TryRecord<PosClsBackward<'a>>
{
}

/// Workgroups of 256 invocations over `n`.
pub(super) fn groups(n: usize) -> [u32; 3] {
    grid_1d(div_ceil(n, 256))
}

impl Embed {
    /// The portable kernels, and `cpu` (`cpu::embed::for_adapter`) offered the token
    /// kernels' calls first.
    pub fn new(gpu: &Gpu, cpu: Option<Box<dyn Specialisation>>) -> Self {
        let s = &super::EMBED;
        Embed {
            patchify: gpu.pipeline(s, "patchify"),
            assemble: gpu.pipeline(s, "assemble_tokens"),
            tokens_backward: gpu.pipeline(s, "tokens_backward"),
            assemble4: gpu.pipeline(s, "assemble_tokens4"),
            tokens_backward4: gpu.pipeline(s, "tokens_backward4"),
            pos_cls_backward: gpu.pipeline(s, "pos_cls_backward"),
            gather_cls: gpu.pipeline(s, "gather_cls"),
            scatter_cls: gpu.pipeline(s, "scatter_cls"),
            cpu,
        }
    }
}

/// img [B,C,H,W] -> patches [B*Np, C*P*P]
pub struct Patchify<'a> {
    pub shape: EmbedShape,
    pub img: &'a wgpu::Buffer,
    pub patches: &'a wgpu::Buffer,
}

/// x0 [B*N, D] = [cls ; pe] + pos
pub struct AssembleTokens<'a> {
    pub shape: EmbedShape,
    pub pe: &'a wgpu::Buffer,
    pub cls: View<'a>,
    pub pos: View<'a>,
    pub x0: &'a wgpu::Buffer,
}

/// dpe [B*Np, D] from dx0 [B*N, D]
pub struct TokensBackward<'a> {
    pub shape: EmbedShape,
    pub dx0: &'a wgpu::Buffer,
    pub dpe: &'a wgpu::Buffer,
}

/// dpos [N, D] and dcls [D] from dx0 (overwritten)
pub struct PosClsBackward<'a> {
    pub shape: EmbedShape,
    pub dx0: &'a wgpu::Buffer,
    pub dpos: View<'a>,
    pub dcls: View<'a>,
}

/// [B*N, D] -> the CLS rows [B, D]
pub struct GatherCls<'a> {
    pub shape: EmbedShape,
    pub full: &'a wgpu::Buffer,
    pub cls_rows: &'a wgpu::Buffer,
}

/// [B, D] -> [B*N, D] with zeros outside the CLS rows: `dfull` (exactly [B*N, D]) is
/// cleared, then the CLS rows written.
pub struct ScatterCls<'a> {
    pub shape: EmbedShape,
    pub dcls_rows: &'a wgpu::Buffer,
    pub dfull: &'a wgpu::Buffer,
}

impl Record<Patchify<'_>> for Embed {
    fn record(&self, gpu: &Gpu, a: &Patchify, out: &mut Vec<Command>) {
        let s = a.shape;
        let n = s.batch * s.patches() * s.patch_len();
        let d = gpu.dispatch(
            &self.patchify,
            &[(0, a.img), (1, &Out(a.patches))],
            &s.meta(),
            groups(n),
        );
        out.push(d.into());
    }
}

impl Record<AssembleTokens<'_>> for Embed {
    fn record(&self, gpu: &Gpu, a: &AssembleTokens, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let s = a.shape;
        let n = s.batch * s.tokens() * s.dim;
        // The vec4 kernel binds the same buffers as vec4 arrays (14..17).
        let (pipeline, first, threads) = if s.dim.is_multiple_of(4) {
            (&self.assemble4, 14, n / 4)
        } else {
            (&self.assemble, 2, n)
        };
        let d = gpu.dispatch(
            pipeline,
            &[
                (first, a.pe),
                (first + 1, &a.cls),
                (first + 2, &a.pos),
                (first + 3, &Out(a.x0)),
            ],
            &s.meta(),
            groups(threads),
        );
        out.push(d.into());
    }
}

impl Record<TokensBackward<'_>> for Embed {
    fn record(&self, gpu: &Gpu, a: &TokensBackward, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let s = a.shape;
        let n = s.batch * s.patches() * s.dim;
        // The vec4 kernel binds the same buffers as vec4 arrays (18, 19).
        let (pipeline, first, threads) = if s.dim.is_multiple_of(4) {
            (&self.tokens_backward4, 18, n / 4)
        } else {
            (&self.tokens_backward, 6, n)
        };
        let d = gpu.dispatch(
            pipeline,
            &[(first, a.dx0), (first + 1, &Out(a.dpe))],
            &s.meta(),
            groups(threads),
        );
        out.push(d.into());
    }
}

impl Record<PosClsBackward<'_>> for Embed {
    fn record(&self, gpu: &Gpu, a: &PosClsBackward, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let s = a.shape;
        let d = gpu.dispatch(
            &self.pos_cls_backward,
            &[(6, a.dx0), (8, &Out(a.dpos)), (9, &Out(a.dcls))],
            &s.meta(),
            groups(s.tokens() * s.dim),
        );
        out.push(d.into());
    }
}

impl Record<GatherCls<'_>> for Embed {
    fn record(&self, gpu: &Gpu, a: &GatherCls, out: &mut Vec<Command>) {
        let s = a.shape;
        let d = gpu.dispatch(
            &self.gather_cls,
            &[(10, a.full), (11, &Out(a.cls_rows))],
            &s.meta(),
            groups(s.batch * s.dim),
        );
        out.push(d.into());
    }
}

impl Record<ScatterCls<'_>> for Embed {
    fn record(&self, gpu: &Gpu, a: &ScatterCls, out: &mut Vec<Command>) {
        let s = a.shape;
        assert_eq!(
            a.dfull.size(),
            4 * (s.batch * s.tokens() * s.dim) as u64,
            "scatter_cls clears the whole of dfull: it must be exactly [B*N, D]"
        );
        out.push(Command::ClearBuffer(a.dfull.clone()));
        let d = gpu.dispatch(
            &self.scatter_cls,
            &[(12, a.dcls_rows), (13, &Out(a.dfull))],
            &s.meta(),
            groups(s.batch * s.dim),
        );
        out.push(d.into());
    }
}
