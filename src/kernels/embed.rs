//! Patchify, token assembly (CLS + position), their backward, CLS row gather/scatter and
//! column sums (bias gradients). The patch projection itself is a GEMM.

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
    accumulate: u32,
    chunk_rows: u32,
    chunks: u32,
    _pad: [u32; 2],
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
            accumulate: 0,
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
    column_sum_partial: wgpu::ComputePipeline,
    column_sum_finish: wgpu::ComputePipeline,
}

/// Rows per partial sum in `column_sum`.
const CHUNK_ROWS: usize = 128;

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
            column_sum_partial: gpu.pipeline(s, "column_sum_partial"),
            column_sum_finish: gpu.pipeline(s, "column_sum_finish"),
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

    /// Floats of scratch `column_sum` needs for a [rows, cols] matrix.
    pub fn column_sum_scratch_len(rows: usize, cols: usize) -> usize {
        rows.div_ceil(CHUNK_ROWS).max(1) * cols
    }

    /// sums[n] (+)= sum over rows of matrix [rows, cols]: the bias gradient of a linear layer.
    /// Two launches: partial sums over chunks of rows into `scratch`, then their sum.
    #[allow(clippy::too_many_arguments)]
    pub fn column_sum(
        &self,
        gpu: &Gpu,
        matrix: &wgpu::Buffer,
        sums: View,
        scratch: &wgpu::Buffer,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> [Dispatch; 2] {
        let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
        assert!(
            scratch.size() >= (Self::column_sum_scratch_len(rows, cols) * 4) as u64,
            "column_sum scratch too small for {rows}x{cols}"
        );
        let meta = Meta {
            batch: rows as u32,
            dim: cols as u32,
            accumulate: accumulate as u32,
            chunk_rows: CHUNK_ROWS as u32,
            chunks: chunks as u32,
            ..Default::default()
        };
        let col_groups = div_ceil(cols, 64);
        [
            gpu.dispatch(
                &self.column_sum_partial,
                &[(14, matrix), (15, scratch)],
                &meta,
                [col_groups, chunks as u32, 1],
            ),
            gpu.dispatch(
                &self.column_sum_finish,
                &[(16, scratch), (17, &sums)],
                &meta,
                [col_groups, 1, 1],
            ),
        ]
    }
}
