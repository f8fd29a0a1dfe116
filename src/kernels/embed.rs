//! Patchify, token assembly (CLS + position), their backward and CLS row gather/scatter.
//! The patch projection itself is a GEMM; its bias gradient a column sum (`reduce`).

use crate::gpu::{div_ceil, grid_1d, Dispatch, Gpu, View};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
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
    fn meta(&self) -> Meta {
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
    pos_cls_backward: wgpu::ComputePipeline,
    gather_cls: wgpu::ComputePipeline,
    scatter_cls: wgpu::ComputePipeline,
}

fn groups(n: usize) -> [u32; 3] {
    grid_1d(div_ceil(n, 256))
}

impl Embed {
    pub fn new(gpu: &Gpu) -> Self {
        let s = &super::EMBED;
        Embed {
            patchify: gpu.pipeline(s, "patchify"),
            assemble: gpu.pipeline(s, "assemble_tokens"),
            tokens_backward: gpu.pipeline(s, "tokens_backward"),
            pos_cls_backward: gpu.pipeline(s, "pos_cls_backward"),
            gather_cls: gpu.pipeline(s, "gather_cls"),
            scatter_cls: gpu.pipeline(s, "scatter_cls"),
        }
    }

    /// img [B,C,H,W] -> patches [B*Np, C*P*P]
    pub fn patchify(
        &self,
        gpu: &Gpu,
        s: EmbedShape,
        img: &wgpu::Buffer,
        patches: &wgpu::Buffer,
    ) -> Dispatch {
        let n = s.batch * s.patches() * s.patch_len();
        gpu.dispatch(
            &self.patchify,
            &[(0, img), (1, patches)],
            &s.meta(),
            groups(n),
        )
    }

    /// x0 [B*N, D] = [cls ; pe] + pos
    pub fn assemble_tokens(
        &self,
        gpu: &Gpu,
        s: EmbedShape,
        pe: &wgpu::Buffer,
        cls: View,
        pos: View,
        x0: &wgpu::Buffer,
    ) -> Dispatch {
        let n = s.batch * s.tokens() * s.dim;
        gpu.dispatch(
            &self.assemble,
            &[(2, pe), (3, &cls), (4, &pos), (5, x0)],
            &s.meta(),
            groups(n),
        )
    }

    /// dpe [B*Np, D] from dx0 [B*N, D]
    pub fn tokens_backward(
        &self,
        gpu: &Gpu,
        s: EmbedShape,
        dx0: &wgpu::Buffer,
        dpe: &wgpu::Buffer,
    ) -> Dispatch {
        let n = s.batch * s.patches() * s.dim;
        gpu.dispatch(
            &self.tokens_backward,
            &[(6, dx0), (7, dpe)],
            &s.meta(),
            groups(n),
        )
    }

    /// dpos [N, D] and dcls [D] from dx0 (overwritten)
    pub fn pos_cls_backward(
        &self,
        gpu: &Gpu,
        s: EmbedShape,
        dx0: &wgpu::Buffer,
        dpos: View,
        dcls: View,
    ) -> Dispatch {
        let n = s.tokens() * s.dim;
        gpu.dispatch(
            &self.pos_cls_backward,
            &[(6, dx0), (8, &dpos), (9, &dcls)],
            &s.meta(),
            groups(n),
        )
    }

    /// [B*N, D] -> the CLS rows [B, D]
    pub fn gather_cls(
        &self,
        gpu: &Gpu,
        s: EmbedShape,
        full: &wgpu::Buffer,
        cls_rows: &wgpu::Buffer,
    ) -> Dispatch {
        gpu.dispatch(
            &self.gather_cls,
            &[(10, full), (11, cls_rows)],
            &s.meta(),
            groups(s.batch * s.dim),
        )
    }

    /// [B, D] -> [B*N, D] with zeros outside the CLS rows (overwritten)
    pub fn scatter_cls(
        &self,
        gpu: &Gpu,
        s: EmbedShape,
        dcls_rows: &wgpu::Buffer,
        dfull: &wgpu::Buffer,
    ) -> Dispatch {
        let n = s.batch * s.tokens() * s.dim;
        gpu.dispatch(
            &self.scatter_cls,
            &[(12, dcls_rows), (13, dfull)],
            &s.meta(),
            groups(n),
        )
    }
}
