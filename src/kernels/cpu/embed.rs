//! The token kernels on CPU adapters: assembly and its backward read their rows from
//! texture copies (shaders/cpu/embed.wgsl) where the width allows (D % 64 == 0).

use super::{texture, TryRecord};
use crate::gpu::{Command, Gpu, Out};
use crate::kernels::embed::{
    groups, AssembleTokens, PosClsBackward, Specialisation, TokensBackward,
};

pub struct EmbedTextures {
    assemble: wgpu::ComputePipeline,
    tokens_backward: wgpu::ComputePipeline,
    pos_cls_backward: wgpu::ComputePipeline,
}

/// The specialisation where the adapter prefers texture reads (`texture::preferred`).
pub fn for_adapter(gpu: &Gpu) -> Option<Box<dyn Specialisation>> {
    texture::preferred_for(gpu, &crate::kernels::EMBED_CPU).then(|| EmbedTextures::boxed(gpu))
}

impl EmbedTextures {
    /// Built whatever the adapter (the tests run it on every one).
    pub fn boxed(gpu: &Gpu) -> Box<dyn Specialisation> {
        let s = &crate::kernels::EMBED_CPU;
        Box::new(EmbedTextures {
            assemble: gpu.pipeline(s, "assemble_tokens_texture"),
            tokens_backward: gpu.pipeline(s, "tokens_backward_texture"),
            pos_cls_backward: gpu.pipeline(s, "pos_cls_backward_texture"),
        })
    }
}

/// dx0 [B*N, D] as a texture, its copy appended to `out` (or shared with an earlier one).
fn dx0_texture(
    gpu: &Gpu,
    dx0: &wgpu::Buffer,
    rows: usize,
    dim: usize,
    out: &mut Vec<Command>,
) -> Option<wgpu::TextureView> {
    let (view, copy) = texture::rows_of(gpu, dx0.into(), rows, dim, out)?;
    out.extend(copy);
    Some(view)
}

impl TryRecord<AssembleTokens<'_>> for EmbedTextures {
    fn try_record(&self, gpu: &Gpu, a: &AssembleTokens, out: &mut Vec<Command>) -> bool {
        let s = a.shape;
        let rows = [
            (a.pe.into(), s.batch * s.patches()),
            (a.cls, 1),
            (a.pos, s.tokens()),
        ];
        let Some(t) = texture::all_rows_of(gpu, &rows, s.dim, out) else {
            return false;
        };
        let d = gpu.dispatch(
            &self.assemble,
            &[(20, &t[0]), (21, &t[1]), (22, &t[2]), (17, &Out(a.x0))],
            &s.meta(),
            groups(s.batch * s.tokens() * s.dim / 4),
        );
        out.push(d.into());
        true
    }
}

impl TryRecord<TokensBackward<'_>> for EmbedTextures {
    fn try_record(&self, gpu: &Gpu, a: &TokensBackward, out: &mut Vec<Command>) -> bool {
        let s = a.shape;
        let Some(dx0) = dx0_texture(gpu, a.dx0, s.batch * s.tokens(), s.dim, out) else {
            return false;
        };
        let d = gpu.dispatch(
            &self.tokens_backward,
            &[(23, &dx0), (19, &Out(a.dpe))],
            &s.meta(),
            groups(s.batch * s.patches() * s.dim / 4),
        );
        out.push(d.into());
        true
    }
}

impl TryRecord<PosClsBackward<'_>> for EmbedTextures {
    fn try_record(&self, gpu: &Gpu, a: &PosClsBackward, out: &mut Vec<Command>) -> bool {
        let s = a.shape;
        let Some(dx0) = dx0_texture(gpu, a.dx0, s.batch * s.tokens(), s.dim, out) else {
            return false;
        };
        let d = gpu.dispatch(
            &self.pos_cls_backward,
            &[(23, &dx0), (8, &Out(a.dpos)), (9, &Out(a.dcls))],
            &s.meta(),
            groups(s.tokens() * s.dim / 4),
        );
        out.push(d.into());
        true
    }
}
