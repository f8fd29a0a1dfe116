//! The kernels of timm's ViT options (token layouts, pooling, LayerScale, head averaging,
//! QuickGELU, column copies) against the CPU reference, on odd shapes, outputs poisoned
//! with NaN before each launch.

mod common;
use common::*;
use rand::Rng;
use vit_wgpu::gpu::View;
use vit_wgpu::kernels::elementwise::{
    Axpby, ColumnBlock, CopyColumns, Elementwise, Multiply, QuickGelu, ScaleColumns,
};
use vit_wgpu::kernels::tokens::{
    Assemble, PatchesBackward, Pool, PoolBackward, PrefixPosBackward, TokenLayout, Tokens,
};
use vit_wgpu::reference::{elementwise as ew, tokens as rt};

fn layouts() -> Vec<TokenLayout> {
    let l = |batch, patches, dim, cls, extra, pos_start| TokenLayout {
        batch,
        patches,
        dim,
        cls,
        extra,
        pos_start,
    };
    vec![
        l(3, 12, 24, true, 0, 1),  // no_embed_class
        l(2, 49, 33, false, 0, 0), // no class token (gap), odd width
        l(2, 16, 20, true, 4, 5),  // dinov2 registers, positions on the patches
        l(3, 15, 17, true, 2, 0),  // registers with positions
        l(5, 196, 64, true, 1, 0), // DeiT distilled: 198 tokens
        l(1, 7, 300, false, 3, 3), // registers without a class token, wide
    ]
}

fn buf(v: &[f32]) -> wgpu::Buffer {
    gpu().upload("input", v)
}

fn view(b: &wgpu::Buffer) -> View<'_> {
    View::from(b)
}

#[test]
fn token_assembly_and_its_backward_match_cpu_on_every_layout() {
    let (g, mut r) = (gpu(), rng());
    let k = Tokens::new(g);
    for l in layouts() {
        let (n, d) = (l.tokens(), l.dim);
        let pe = random(&mut r, l.batch * l.patches * d);
        let cls = random(&mut r, d);
        let extra = random(&mut r, l.extra.max(1) * d);
        let pos = random(&mut r, l.pos_tokens() * d);
        let (bpe, bcls, bextra, bpos) = (buf(&pe), buf(&cls), buf(&extra), buf(&pos));
        let x0 = poisoned(l.batch * n * d);
        g.launch(
            &k,
            &Assemble {
                layout: l,
                pe: &bpe,
                cls: view(&bcls),
                extra: view(&bextra),
                pos: view(&bpos),
                x0: &x0,
            },
        );
        let mut want = vec![0.0f32; l.batch * n * d];
        rt::assemble(&mut want, &pe, &cls, &extra, &pos, &l);
        assert_close(&format!("assemble {l:?}"), &read(&x0), &want, TOLERANCE);

        let dx0 = random(&mut r, l.batch * n * d);
        let bdx0 = buf(&dx0);
        let dpe = poisoned(l.batch * l.patches * d);
        g.launch(
            &k,
            &PatchesBackward {
                layout: l,
                dx0: &bdx0,
                dpe: &dpe,
            },
        );
        let (dpos, dcls, dextra) = (
            poisoned(l.pos_tokens() * d),
            poisoned(d),
            poisoned(l.extra.max(1) * d),
        );
        g.launch(
            &k,
            &PrefixPosBackward {
                layout: l,
                dx0: &bdx0,
                dpos: view(&dpos),
                dcls: view(&dcls),
                dextra: view(&dextra),
            },
        );
        let mut want_pe = vec![0.0f32; l.batch * l.patches * d];
        let mut want_pos = vec![0.0f32; l.pos_tokens() * d];
        let mut want_cls = vec![0.0f32; d];
        let mut want_extra = vec![0.0f32; l.extra * d];
        rt::assemble_backward(
            &mut want_pe,
            &mut want_pos,
            &mut want_cls,
            &mut want_extra,
            &dx0,
            &l,
        );
        assert_close("dpe", &read(&dpe), &want_pe, TOLERANCE);
        assert_close("dpos", &read(&dpos), &want_pos, TOLERANCE);
        if l.cls {
            assert_close("dcls", &read(&dcls), &want_cls, TOLERANCE);
        }
        if l.extra > 0 {
            assert_close("dextra", &read(&dextra), &want_extra, TOLERANCE);
        }
    }
}

#[test]
fn pooling_and_its_backward_match_cpu() {
    let (g, mut r) = (gpu(), rng());
    let k = Tokens::new(g);
    for l in layouts() {
        let (n, d) = (l.tokens(), l.dim);
        // the class token, the second token, the mean of the patches
        for (start, count) in [(0, 1), (1, 1), (l.prefix(), l.patches)] {
            let scale = 1.0 / count as f32;
            let x = random(&mut r, l.batch * n * d);
            let bx = buf(&x);
            let pooled = poisoned(l.batch * d);
            g.launch(
                &k,
                &Pool {
                    layout: l,
                    start,
                    count,
                    scale,
                    x: &bx,
                    pooled: &pooled,
                },
            );
            let mut want = vec![0.0f32; l.batch * d];
            rt::pool(&mut want, &x, l.batch, n, d, start, count, scale as f64);
            assert_close("pool", &read(&pooled), &want, TOLERANCE);

            let dp = random(&mut r, l.batch * d);
            let bdp = buf(&dp);
            for accumulate in [false, true] {
                let before = random(&mut r, l.batch * n * d);
                let dx = if accumulate {
                    buf(&before)
                } else {
                    poisoned(before.len())
                };
                g.launch(
                    &k,
                    &PoolBackward {
                        layout: l,
                        start,
                        count,
                        scale,
                        dpooled: &bdp,
                        dx: &dx,
                        accumulate,
                    },
                );
                let mut want = before.clone();
                rt::pool_backward(
                    &mut want,
                    &dp,
                    l.batch,
                    n,
                    d,
                    start,
                    count,
                    scale as f64,
                    accumulate,
                );
                assert_close("pool backward", &read(&dx), &want, TOLERANCE);
            }
        }
    }
}

#[test]
fn layer_scale_multiply_and_axpby_match_cpu_on_odd_shapes() {
    let (g, mut r) = (gpu(), rng());
    let k = Elementwise::new(g);
    for (rows, cols) in [(65, 33), (394, 384), (1, 7), (1000, 24)] {
        let len = rows * cols;
        let x = random(&mut r, len);
        let gamma = random(&mut r, cols);
        let (bx, bg) = (buf(&x), buf(&gamma));
        for accumulate in [false, true] {
            let before = random(&mut r, len);
            let y = if accumulate {
                buf(&before)
            } else {
                poisoned(len)
            };
            let args = ScaleColumns {
                x: &bx,
                gamma: view(&bg),
                y: &y,
                len,
                cols,
                accumulate,
            };
            g.launch(&k, &args);
            let mut want = before.clone();
            ew::scale_columns(&mut want, &x, &gamma, cols, accumulate);
            assert_close("scale_columns", &read(&y), &want, TOLERANCE);
        }
        let b = random(&mut r, len);
        let bb = buf(&b);
        let y = poisoned(len);
        g.launch(
            &k,
            &Multiply {
                a: &bx,
                b: &bb,
                y: &y,
                len,
            },
        );
        let mut want = vec![0.0f32; len];
        ew::multiply(&mut want, &x, &b);
        assert_close("multiply", &read(&y), &want, TOLERANCE);
        for (alpha, beta) in [(0.5f32, 0.5f32), (0.5, 0.0), (-1.25, 2.0)] {
            let before = random(&mut r, len);
            // beta 0 must not read y: poison it
            let y = if beta == 0.0 {
                poisoned(len)
            } else {
                buf(&before)
            };
            g.launch(
                &k,
                &Axpby {
                    x: view(&bx),
                    y: view(&y),
                    alpha,
                    beta,
                    len,
                },
            );
            let mut want = before.clone();
            ew::axpby(&mut want, &x, alpha as f64, beta as f64);
            assert_close("axpby", &read(&y), &want, TOLERANCE);
        }
    }
}

#[test]
fn quick_gelu_and_its_slope_match_cpu() {
    let (g, mut r) = (gpu(), rng());
    let k = Elementwise::new(g);
    for len in [1, 255, 257, 4097, 65 * 193] {
        let x: Vec<f32> = (0..len).map(|_| r.random_range(-6.0..6.0)).collect();
        let mut want = vec![0.0f32; len];
        let mut want_slope = vec![0.0f32; len];
        ew::quick_gelu_forward(&mut want, Some(&mut want_slope), &x);
        let act = buf(&x);
        let slope = poisoned(len);
        g.launch(
            &k,
            &QuickGelu {
                act: &act,
                slope: Some(&slope),
                len,
            },
        );
        assert_close("quick_gelu", &read(&act), &want, TOLERANCE);
        assert_close("quick_gelu slope", &read(&slope), &want_slope, TOLERANCE);
        let act = buf(&x);
        g.launch(
            &k,
            &QuickGelu {
                act: &act,
                slope: None,
                len,
            },
        );
        assert_close("quick_gelu (no slope)", &read(&act), &want, TOLERANCE);
    }
}

#[test]
fn column_copies_match_cpu() {
    let (g, mut r) = (gpu(), rng());
    let k = Elementwise::new(g);
    for (rows, d) in [(65, 24), (394, 36), (3, 4)] {
        // q and k out of qkv [rows, 3d] and back
        for offset in [0, d, 2 * d] {
            let qkv = random(&mut r, rows * 3 * d);
            let out = ColumnBlock {
                rows,
                width: d,
                src_stride: 3 * d,
                src_offset: offset,
                dst_stride: d,
                dst_offset: 0,
            };
            let (src, dst) = (buf(&qkv), poisoned(rows * d));
            g.launch(
                &k,
                &CopyColumns {
                    src: &src,
                    dst: &dst,
                    block: out,
                },
            );
            let mut want = vec![0.0f32; rows * d];
            ew::copy_columns(&mut want, &qkv, &out);
            assert_close("copy out", &read(&dst), &want, TOLERANCE);
            let back = ColumnBlock {
                src_stride: d,
                src_offset: 0,
                dst_stride: 3 * d,
                dst_offset: offset,
                ..out
            };
            let cols = random(&mut r, rows * d);
            let target = buf(&qkv);
            g.launch(
                &k,
                &CopyColumns {
                    src: &buf(&cols),
                    dst: &target,
                    block: back,
                },
            );
            let mut want = qkv.clone();
            ew::copy_columns(&mut want, &cols, &back);
            assert_close("copy back", &read(&target), &want, TOLERANCE);
        }
    }
}
