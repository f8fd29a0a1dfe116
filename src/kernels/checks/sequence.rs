//! The token sequence and the element-wise ops of timm's options: the patch embedding's
//! kernels (patchify, tokens, CLS rows), the other token layouts and pooling, LayerScale,
//! head averaging, QuickGELU and column copies, each against `crate::reference`.

use super::{Bench, TOLERANCE};
use crate::kernels::elementwise::{
    Axpby, ColumnBlock, CopyColumns, Elementwise, Multiply, QuickGelu, ScaleColumns,
};
use crate::kernels::embed::{
    AssembleTokens, Embed, EmbedShape, GatherCls, Patchify, PosClsBackward, ScatterCls,
    TokensBackward,
};
use crate::kernels::tokens::{
    Assemble, PatchesBackward, Pool, PoolBackward, PrefixPosBackward, TokenLayout, Tokens,
};
use crate::reference::{elementwise as ew, embed as re, tokens as rt};
use rand::Rng;

/// The embed.wgsl entry point, as the checks name it.
pub(super) fn embed_entry(entry: &str) -> &'static str {
    match entry {
        "patchify" => "embed.wgsl:patchify",
        "assemble_tokens" => "embed.wgsl:assemble_tokens",
        "assemble_tokens4" => "embed.wgsl:assemble_tokens4",
        "tokens_backward" => "embed.wgsl:tokens_backward",
        "tokens_backward4" => "embed.wgsl:tokens_backward4",
        "pos_cls_backward" => "embed.wgsl:pos_cls_backward",
        "gather_cls" => "embed.wgsl:gather_cls",
        _ => "embed.wgsl:scatter_cls",
    }
}

#[derive(Clone, Copy, Debug)]
pub enum EmbedOp {
    Patchify,
    Assemble,
    TokensBackward,
    PosClsBackward,
    GatherCls,
    ScatterCls,
}

impl EmbedOp {
    pub fn name(self) -> &'static str {
        match self {
            EmbedOp::Patchify => "patchify",
            EmbedOp::Assemble => "assemble tokens",
            EmbedOp::TokensBackward => "patch gradients",
            EmbedOp::PosClsBackward => "position and class gradients",
            EmbedOp::GatherCls => "gather class rows",
            EmbedOp::ScatterCls => "scatter class-row gradients",
        }
    }
}

pub(super) async fn embed(b: &mut Bench<'_>, op: EmbedOp, s: EmbedShape) -> Result<(), String> {
    let (bn, n, d, np) = (s.batch, s.tokens(), s.dim, s.patches());
    let k = Embed::new(b.gpu, None);
    match op {
        EmbedOp::Patchify => {
            let img = b.random(bn * s.channels * s.height * s.width, 1.0);
            let mut want = vec![0.0; bn * np * s.patch_len()];
            re::patchify(&mut want, &img, bn, s.channels, s.height, s.width, s.patch);
            let (bimg, out) = (b.input(&img), b.output(want.len()));
            let args = Patchify {
                shape: s,
                img: &bimg,
                patches: &out,
            };
            b.record(&k, &args);
            let got = b.run(&[&out]).await?;
            b.expect("patches", &got[0], &want, TOLERANCE);
        }
        EmbedOp::Assemble => {
            let (pe, cls, pos) = (
                b.random(bn * np * d, 1.0),
                b.random(d, 1.0),
                b.random(n * d, 1.0),
            );
            let mut want = vec![0.0; bn * n * d];
            re::assemble_tokens(&mut want, &pe, &cls, &pos, bn, n, d);
            let (bpe, bcls, bpos) = (b.input(&pe), b.input(&cls), b.input(&pos));
            let out = b.output(want.len());
            let args = AssembleTokens {
                shape: s,
                pe: &bpe,
                cls: (&bcls).into(),
                pos: (&bpos).into(),
                x0: &out,
            };
            b.record(&k, &args);
            let got = b.run(&[&out]).await?;
            b.expect("x0", &got[0], &want, TOLERANCE);
        }
        EmbedOp::TokensBackward | EmbedOp::PosClsBackward => {
            let dx0 = b.random(bn * n * d, 1.0);
            let (mut dpe, mut dpos, mut dcls) =
                (vec![0.0; bn * np * d], vec![0.0; n * d], vec![0.0; d]);
            re::assemble_tokens_backward(&mut dpe, &mut dpos, &mut dcls, &dx0, bn, n, d);
            let bdx0 = b.input(&dx0);
            if let EmbedOp::TokensBackward = op {
                let out = b.output(dpe.len());
                let args = TokensBackward {
                    shape: s,
                    dx0: &bdx0,
                    dpe: &out,
                };
                b.record(&k, &args);
                let got = b.run(&[&out]).await?;
                b.expect("dpe", &got[0], &dpe, TOLERANCE);
            } else {
                let (bpos, bcls) = (b.output(dpos.len()), b.output(d));
                let args = PosClsBackward {
                    shape: s,
                    dx0: &bdx0,
                    dpos: (&bpos).into(),
                    dcls: (&bcls).into(),
                };
                b.record(&k, &args);
                let got = b.run(&[&bpos, &bcls]).await?;
                b.expect("dpos", &got[0], &dpos, TOLERANCE);
                b.expect("dcls", &got[1], &dcls, TOLERANCE);
            }
        }
        EmbedOp::GatherCls | EmbedOp::ScatterCls => cls_rows(b, &k, op, s).await?,
    }
    Ok(())
}

/// The class rows out of the sequence, and their gradient back into a cleared one.
async fn cls_rows(b: &mut Bench<'_>, k: &Embed, op: EmbedOp, s: EmbedShape) -> Result<(), String> {
    let (bn, n, d) = (s.batch, s.tokens(), s.dim);
    if let EmbedOp::GatherCls = op {
        let full = b.random(bn * n * d, 1.0);
        let mut want = vec![0.0; bn * d];
        re::gather_cls(&mut want, &full, bn, n, d);
        let (bfull, out) = (b.input(&full), b.output(want.len()));
        let args = GatherCls {
            shape: s,
            full: &bfull,
            cls_rows: &out,
        };
        b.record(k, &args);
        let got = b.run(&[&out]).await?;
        b.expect("class rows", &got[0], &want, TOLERANCE);
    } else {
        let rows = b.random(bn * d, 1.0);
        let mut want = vec![0.0; bn * n * d];
        re::scatter_cls(&mut want, &rows, bn, n, d);
        let (brows, out) = (b.input(&rows), b.output(want.len()));
        let args = ScatterCls {
            shape: s,
            dcls_rows: &brows,
            dfull: &out,
        };
        b.record(k, &args);
        let got = b.run(&[&out]).await?;
        b.expect("dfull", &got[0], &want, TOLERANCE);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub enum TokensOp {
    Assemble,
    PatchesBackward,
    PrefixPosBackward,
    /// The class token, or the mean of the patches.
    Pool {
        mean: bool,
    },
    PoolBackward {
        mean: bool,
        accumulate: bool,
    },
}

impl TokensOp {
    pub fn check(self) -> &'static str {
        match self {
            TokensOp::Assemble | TokensOp::Pool { .. } => "forward",
            _ => "backward",
        }
    }

    pub fn name(self) -> String {
        match self {
            TokensOp::Assemble => "assemble".into(),
            TokensOp::PatchesBackward => "patch gradients".into(),
            TokensOp::PrefixPosBackward => "prefix and position gradients".into(),
            TokensOp::Pool { mean } => format!("pool {}", pooled(mean)),
            TokensOp::PoolBackward { mean, accumulate } => {
                format!("pool backward {} accumulate={accumulate}", pooled(mean))
            }
        }
    }

    pub fn entry(self) -> &'static str {
        match self {
            TokensOp::Assemble => "tokens.wgsl:assemble",
            TokensOp::PatchesBackward => "tokens.wgsl:patches_backward",
            TokensOp::PrefixPosBackward => "tokens.wgsl:prefix_pos_backward",
            TokensOp::Pool { .. } => "tokens.wgsl:pool",
            TokensOp::PoolBackward { .. } => "tokens.wgsl:pool_backward",
        }
    }
}

fn pooled(mean: bool) -> &'static str {
    if mean {
        "mean of the patches"
    } else {
        "first token"
    }
}

pub(super) async fn tokens(b: &mut Bench<'_>, op: TokensOp, l: TokenLayout) -> Result<(), String> {
    let (n, d) = (l.tokens(), l.dim);
    let k = Tokens::new(b.gpu);
    match op {
        TokensOp::Assemble => {
            let pe = b.random(l.batch * l.patches * d, 1.0);
            let (cls, extra) = (b.random(d, 1.0), b.random(l.extra.max(1) * d, 1.0));
            let pos = b.random(l.pos_tokens() * d, 1.0);
            let mut want = vec![0.0; l.batch * n * d];
            rt::assemble(&mut want, &pe, &cls, &extra, &pos, &l);
            let [bpe, bcls, bextra, bpos] = [&pe, &cls, &extra, &pos].map(|v| b.input(v));
            let out = b.output(want.len());
            let args = Assemble {
                layout: l,
                pe: &bpe,
                cls: (&bcls).into(),
                extra: (&bextra).into(),
                pos: (&bpos).into(),
                x0: &out,
            };
            b.record(&k, &args);
            let got = b.run(&[&out]).await?;
            b.expect("x0", &got[0], &want, TOLERANCE);
        }
        TokensOp::PatchesBackward | TokensOp::PrefixPosBackward => {
            tokens_backward(b, &k, op, l).await?
        }
        TokensOp::Pool { mean } | TokensOp::PoolBackward { mean, .. } => {
            pool(b, &k, op, l, mean).await?
        }
    }
    Ok(())
}

async fn tokens_backward(
    b: &mut Bench<'_>,
    k: &Tokens,
    op: TokensOp,
    l: TokenLayout,
) -> Result<(), String> {
    let d = l.dim;
    let dx0 = b.random(l.batch * l.tokens() * d, 1.0);
    let mut dpe = vec![0.0; l.batch * l.patches * d];
    let (mut dpos, mut dcls) = (vec![0.0; l.pos_tokens() * d], vec![0.0; d]);
    let mut dextra = vec![0.0; l.extra * d];
    rt::assemble_backward(&mut dpe, &mut dpos, &mut dcls, &mut dextra, &dx0, &l);
    let bdx0 = b.input(&dx0);
    if let TokensOp::PatchesBackward = op {
        let out = b.output(dpe.len());
        let args = PatchesBackward {
            layout: l,
            dx0: &bdx0,
            dpe: &out,
        };
        b.record(k, &args);
        let got = b.run(&[&out]).await?;
        b.expect("dpe", &got[0], &dpe, TOLERANCE);
        return Ok(());
    }
    let (bpos, bcls, bextra) = (
        b.output(dpos.len()),
        b.output(d),
        b.output(l.extra.max(1) * d),
    );
    let args = PrefixPosBackward {
        layout: l,
        dx0: &bdx0,
        dpos: (&bpos).into(),
        dcls: (&bcls).into(),
        dextra: (&bextra).into(),
    };
    b.record(k, &args);
    let got = b.run(&[&bpos, &bcls, &bextra]).await?;
    b.expect("dpos", &got[0], &dpos, TOLERANCE);
    if l.cls {
        b.expect("dcls", &got[1], &dcls, TOLERANCE);
    }
    if l.extra > 0 {
        b.expect("dextra", &got[2], &dextra, TOLERANCE);
    }
    Ok(())
}

async fn pool(
    b: &mut Bench<'_>,
    k: &Tokens,
    op: TokensOp,
    l: TokenLayout,
    mean: bool,
) -> Result<(), String> {
    let (n, d) = (l.tokens(), l.dim);
    let (start, count) = if mean {
        (l.prefix(), l.patches)
    } else {
        (0, 1)
    };
    let scale = 1.0 / count as f32;
    if let TokensOp::Pool { .. } = op {
        let x = b.random(l.batch * n * d, 1.0);
        let mut want = vec![0.0; l.batch * d];
        rt::pool(&mut want, &x, l.batch, n, d, start, count, scale as f64);
        let (bx, out) = (b.input(&x), b.output(want.len()));
        let args = Pool {
            layout: l,
            start,
            count,
            scale,
            x: &bx,
            pooled: &out,
        };
        b.record(k, &args);
        let got = b.run(&[&out]).await?;
        b.expect("pooled", &got[0], &want, TOLERANCE);
        return Ok(());
    }
    let accumulate = matches!(
        op,
        TokensOp::PoolBackward {
            accumulate: true,
            ..
        }
    );
    let dpooled = b.random(l.batch * d, 1.0);
    let before = b.random(l.batch * n * d, 1.0);
    let mut want = before.clone();
    rt::pool_backward(
        &mut want,
        &dpooled,
        l.batch,
        n,
        d,
        start,
        count,
        scale as f64,
        accumulate,
    );
    let bdp = b.input(&dpooled);
    let out = if accumulate {
        b.input(&before)
    } else {
        b.output(before.len())
    };
    let args = PoolBackward {
        layout: l,
        start,
        count,
        scale,
        dpooled: &bdp,
        dx: &out,
        accumulate,
    };
    b.record(k, &args);
    let got = b.run(&[&out]).await?;
    b.expect("dx", &got[0], &want, TOLERANCE);
    Ok(())
}

#[derive(Clone, Copy, Debug)]
pub enum ElementwiseOp {
    ScaleColumns {
        rows: usize,
        cols: usize,
        accumulate: bool,
    },
    Multiply {
        len: usize,
    },
    Axpby {
        len: usize,
        alpha: f32,
        beta: f32,
    },
    QuickGelu {
        len: usize,
        slope: bool,
    },
    CopyColumns(ColumnBlock),
}

impl ElementwiseOp {
    /// The forward of LayerScale, QuickGELU and column copies; products and scaled sums
    /// serve both passes.
    pub fn check(self) -> &'static str {
        match self {
            ElementwiseOp::ScaleColumns { .. } => "LayerScale",
            ElementwiseOp::Multiply { .. } => "product",
            ElementwiseOp::Axpby { .. } => "scaled sum",
            ElementwiseOp::QuickGelu { slope: false, .. } => "QuickGELU forward",
            ElementwiseOp::QuickGelu { slope: true, .. } => "QuickGELU with its slope",
            ElementwiseOp::CopyColumns(_) => "column copy",
        }
    }

    pub fn describe(self) -> String {
        match self {
            ElementwiseOp::ScaleColumns {
                rows,
                cols,
                accumulate,
            } => format!("rows={rows} cols={cols} accumulate={accumulate}"),
            ElementwiseOp::Multiply { len } => format!("len={len}"),
            ElementwiseOp::Axpby { len, alpha, beta } => {
                format!("len={len} alpha={alpha} beta={beta}")
            }
            ElementwiseOp::QuickGelu { len, .. } => format!("len={len}"),
            ElementwiseOp::CopyColumns(c) => format!(
                "rows={} width={} from stride {} at {} to stride {} at {}",
                c.rows, c.width, c.src_stride, c.src_offset, c.dst_stride, c.dst_offset
            ),
        }
    }

    pub fn entry(self) -> &'static str {
        match self {
            ElementwiseOp::ScaleColumns { .. } => "elementwise.wgsl:scale_columns",
            ElementwiseOp::Multiply { .. } => "elementwise.wgsl:multiply",
            ElementwiseOp::Axpby { .. } => "elementwise.wgsl:axpby",
            ElementwiseOp::QuickGelu { slope: false, .. } => "elementwise.wgsl:quick_gelu",
            ElementwiseOp::QuickGelu { slope: true, .. } => "elementwise.wgsl:quick_gelu_slope",
            ElementwiseOp::CopyColumns(_) => "elementwise.wgsl:copy_columns",
        }
    }
}

pub(super) async fn elementwise(b: &mut Bench<'_>, op: ElementwiseOp) -> Result<(), String> {
    let k = Elementwise::new(b.gpu);
    match op {
        ElementwiseOp::ScaleColumns {
            rows,
            cols,
            accumulate,
        } => {
            let len = rows * cols;
            let (x, gamma, before) = (b.random(len, 1.0), b.random(cols, 1.0), b.random(len, 1.0));
            let mut want = before.clone();
            ew::scale_columns(&mut want, &x, &gamma, cols, accumulate);
            let (bx, bg) = (b.input(&x), b.input(&gamma));
            let y = if accumulate {
                b.input(&before)
            } else {
                b.output(len)
            };
            let args = ScaleColumns {
                x: &bx,
                gamma: (&bg).into(),
                y: &y,
                len,
                cols,
                accumulate,
            };
            b.record(&k, &args);
            let got = b.run(&[&y]).await?;
            b.expect("y", &got[0], &want, TOLERANCE);
        }
        ElementwiseOp::Multiply { len } => {
            let (x, y) = (b.random(len, 1.0), b.random(len, 1.0));
            let mut want = vec![0.0; len];
            ew::multiply(&mut want, &x, &y);
            let (bx, by, out) = (b.input(&x), b.input(&y), b.output(len));
            let args = Multiply {
                a: &bx,
                b: &by,
                y: &out,
                len,
            };
            b.record(&k, &args);
            let got = b.run(&[&out]).await?;
            b.expect("y", &got[0], &want, TOLERANCE);
        }
        ElementwiseOp::Axpby { len, alpha, beta } => {
            let (x, before) = (b.random(len, 1.0), b.random(len, 1.0));
            let mut want = before.clone();
            ew::axpby(&mut want, &x, alpha as f64, beta as f64);
            let bx = b.input(&x);
            // beta 0 must not read y: it starts poisoned
            let y = if beta == 0.0 {
                b.output(len)
            } else {
                b.input(&before)
            };
            let args = Axpby {
                x: (&bx).into(),
                y: (&y).into(),
                alpha,
                beta,
                len,
            };
            b.record(&k, &args);
            let got = b.run(&[&y]).await?;
            b.expect("y", &got[0], &want, TOLERANCE);
        }
        ElementwiseOp::QuickGelu { len, slope } => quick_gelu(b, &k, len, slope).await?,
        ElementwiseOp::CopyColumns(block) => copy_columns(b, &k, block).await?,
    }
    Ok(())
}

async fn quick_gelu(
    b: &mut Bench<'_>,
    k: &Elementwise,
    len: usize,
    slope: bool,
) -> Result<(), String> {
    let x: Vec<f32> = (0..len).map(|_| b.rng().random_range(-6.0..6.0)).collect();
    let (mut want, mut want_slope) = (vec![0.0; len], vec![0.0; len]);
    ew::quick_gelu_forward(&mut want, Some(&mut want_slope), &x);
    let (act, bslope) = (b.input(&x), b.output(len));
    let args = QuickGelu {
        act: &act,
        slope: slope.then_some(&bslope),
        len,
    };
    b.record(k, &args);
    let got = b.run(&[&act, &bslope]).await?;
    b.expect("act", &got[0], &want, TOLERANCE);
    if slope {
        b.expect("slope", &got[1], &want_slope, TOLERANCE);
    }
    Ok(())
}

/// A block that fills its destination writes into poison; one that fills part of it, into
/// random values, which must stay outside the block.
async fn copy_columns(
    b: &mut Bench<'_>,
    k: &Elementwise,
    block: ColumnBlock,
) -> Result<(), String> {
    let src = b.random(block.rows * block.src_stride, 1.0);
    let whole = block.dst_stride == block.width;
    let before = if whole {
        vec![0.0; block.rows * block.dst_stride]
    } else {
        b.random(block.rows * block.dst_stride, 1.0)
    };
    let mut want = before.clone();
    ew::copy_columns(&mut want, &src, &block);
    let bsrc = b.input(&src);
    let dst = if whole {
        b.output(before.len())
    } else {
        b.input(&before)
    };
    let args = CopyColumns {
        src: &bsrc,
        dst: &dst,
        block,
    };
    b.record(k, &args);
    let got = b.run(&[&dst]).await?;
    b.expect("dst", &got[0], &want, TOLERANCE);
    Ok(())
}
