//! The token sequence of timm's ViT descendants (class, distillation and register tokens,
//! position embedding on every token or the patches only) and pooling (one token, or the
//! mean of a range). The original ViT's layout runs `embed`'s kernels (with their CPU
//! specialisation); these run every other layout. Reference: `reference::tokens`.

use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out, Record, View};
pub use crate::reference::tokens::TokenLayout;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    batch: u32,
    patches: u32,
    tokens: u32,
    dim: u32,
    has_cls: u32,
    extra: u32,
    pos_start: u32,
    start: u32,
    count: u32,
    accumulate: u32,
    scale: f32,
    _pad: u32,
}

fn meta(l: &TokenLayout) -> Meta {
    Meta {
        batch: l.batch as u32,
        patches: l.patches as u32,
        tokens: l.tokens() as u32,
        dim: l.dim as u32,
        has_cls: l.cls as u32,
        extra: l.extra as u32,
        pos_start: l.pos_start as u32,
        ..Default::default()
    }
}

/// Workgroups of 256 invocations over `n`.
fn groups(n: usize) -> [u32; 3] {
    grid_1d(div_ceil(n, 256))
}

pub struct Tokens {
    assemble: wgpu::ComputePipeline,
    patches_backward: wgpu::ComputePipeline,
    prefix_pos_backward: wgpu::ComputePipeline,
    pool: wgpu::ComputePipeline,
    pool_backward: wgpu::ComputePipeline,
}

impl Tokens {
    pub fn new(gpu: &Gpu) -> Self {
        let s = &super::TOKENS;
        Tokens {
            assemble: gpu.pipeline(s, "assemble"),
            patches_backward: gpu.pipeline(s, "patches_backward"),
            prefix_pos_backward: gpu.pipeline(s, "prefix_pos_backward"),
            pool: gpu.pipeline(s, "pool"),
            pool_backward: gpu.pipeline(s, "pool_backward"),
        }
    }
}

/// x0 [B*N, D] = [cls ; extra ; pe] (+ pos from token `pos_start`), pe [B*Np, D].
/// `cls` and `extra` may be any buffer when the layout has none.
pub struct Assemble<'a> {
    pub layout: TokenLayout,
    pub pe: &'a wgpu::Buffer,
    pub cls: View<'a>,
    pub extra: View<'a>,
    pub pos: View<'a>,
    pub x0: &'a wgpu::Buffer,
}

/// dpe [B*Np, D] from dx0 [B*N, D]
pub struct PatchesBackward<'a> {
    pub layout: TokenLayout,
    pub dx0: &'a wgpu::Buffer,
    pub dpe: &'a wgpu::Buffer,
}

/// dpos, dcls, dextra (overwritten) from dx0; a missing one's binding takes a placeholder
/// (never written).
pub struct PrefixPosBackward<'a> {
    pub layout: TokenLayout,
    pub dx0: &'a wgpu::Buffer,
    pub dpos: View<'a>,
    pub dcls: View<'a>,
    pub dextra: View<'a>,
}

/// Tokens [start, start+count) of x [B*N, D], summed and times `scale`, into pooled [B, D].
pub struct Pool<'a> {
    pub layout: TokenLayout,
    pub start: usize,
    pub count: usize,
    pub scale: f32,
    pub x: &'a wgpu::Buffer,
    pub pooled: &'a wgpu::Buffer,
}

/// dx [B*N, D] (+)= scale * dpooled on tokens [start, start+count); without `accumulate`
/// the other tokens get 0.
pub struct PoolBackward<'a> {
    pub layout: TokenLayout,
    pub start: usize,
    pub count: usize,
    pub scale: f32,
    pub dpooled: &'a wgpu::Buffer,
    pub dx: &'a wgpu::Buffer,
    pub accumulate: bool,
}

impl Record<Assemble<'_>> for Tokens {
    fn record(&self, gpu: &Gpu, a: &Assemble, out: &mut Vec<Command>) {
        let l = &a.layout;
        let d = gpu.dispatch(
            &self.assemble,
            &[
                (0, a.pe),
                (1, &a.cls),
                (2, &a.extra),
                (3, &a.pos),
                (4, &Out(a.x0)),
            ],
            &meta(l),
            groups(l.batch * l.tokens() * l.dim),
        );
        out.push(d.into());
    }
}

impl Record<PatchesBackward<'_>> for Tokens {
    fn record(&self, gpu: &Gpu, a: &PatchesBackward, out: &mut Vec<Command>) {
        let l = &a.layout;
        let d = gpu.dispatch(
            &self.patches_backward,
            &[(5, a.dx0), (6, &Out(a.dpe))],
            &meta(l),
            groups(l.batch * l.patches * l.dim),
        );
        out.push(d.into());
    }
}

impl Record<PrefixPosBackward<'_>> for Tokens {
    fn record(&self, gpu: &Gpu, a: &PrefixPosBackward, out: &mut Vec<Command>) {
        let l = &a.layout;
        let d = gpu.dispatch(
            &self.prefix_pos_backward,
            &[
                (5, a.dx0),
                (7, &Out(a.dpos)),
                (8, &Out(a.dcls)),
                (9, &Out(a.dextra)),
            ],
            &meta(l),
            groups(l.tokens() * l.dim),
        );
        out.push(d.into());
    }
}

impl Record<Pool<'_>> for Tokens {
    fn record(&self, gpu: &Gpu, a: &Pool, out: &mut Vec<Command>) {
        let l = &a.layout;
        assert!(a.start + a.count <= l.tokens(), "pool beyond the sequence");
        let m = Meta {
            start: a.start as u32,
            count: a.count as u32,
            scale: a.scale,
            ..meta(l)
        };
        let d = gpu.dispatch(
            &self.pool,
            &[(10, a.x), (11, &Out(a.pooled))],
            &m,
            groups(l.batch * l.dim),
        );
        out.push(d.into());
    }
}

impl Record<PoolBackward<'_>> for Tokens {
    fn record(&self, gpu: &Gpu, a: &PoolBackward, out: &mut Vec<Command>) {
        let l = &a.layout;
        let m = Meta {
            start: a.start as u32,
            count: a.count as u32,
            scale: a.scale,
            accumulate: a.accumulate as u32,
            ..meta(l)
        };
        let d = gpu.dispatch(
            &self.pool_backward,
            &[(12, a.dpooled), (13, &Out(a.dx))],
            &m,
            groups(l.batch * l.tokens() * l.dim),
        );
        out.push(d.into());
    }
}
