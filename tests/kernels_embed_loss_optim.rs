//! Patch embedding, CLS rows, cross-entropy, dropout and AdamW against the CPU
//! reference, on shapes that are not multiples of the workgroup sizes.

mod common;
use common::*;
use rand::Rng;
use vit_wgpu::gpu::{Command, Gpu, Record};
use vit_wgpu::kernels::adamw::{AdamW, AdamWArgs, AdamWChunk, Hyper};
use vit_wgpu::kernels::cpu::{
    adamw::AdamWTextures, dropout::DropoutTextures, embed::EmbedTextures,
};
use vit_wgpu::kernels::dropout::{self, Dropout, DropoutBackward, DropoutForward, DropoutSite};
use vit_wgpu::kernels::embed::{
    AssembleTokens, Embed, EmbedShape, GatherCls, Patchify, PosClsBackward, ScatterCls,
    TokensBackward,
};
use vit_wgpu::kernels::loss::{CrossEntropy, CrossEntropyArgs};
use vit_wgpu::reference;

/// Launch one call alone; whether it read texture copies (a CPU specialisation ran).
fn launch_via_textures<A>(g: &Gpu, k: &impl Record<A>, args: &A) -> bool {
    let commands = g.commands(k, args);
    g.submit_commands(&commands);
    commands
        .iter()
        .any(|c| matches!(c, Command::CopyBufferToTexture { .. }))
}

fn shapes() -> Vec<EmbedShape> {
    vec![
        // micro: 28x28x1, patch 4 -> 50 tokens
        EmbedShape {
            batch: 5,
            channels: 1,
            height: 28,
            width: 28,
            patch: 4,
            dim: 64,
        },
        // rectangular, 3 channels, patch 8 -> 16 tokens, odd width
        EmbedShape {
            batch: 1,
            channels: 3,
            height: 24,
            width: 40,
            patch: 8,
            dim: 33,
        },
        // 56x56 patch 4 -> 197 tokens
        EmbedShape {
            batch: 2,
            channels: 3,
            height: 56,
            width: 56,
            patch: 4,
            dim: 96,
        },
        // 20x12 patch 4 -> 16 tokens, D a multiple of 64 (the texture path)
        EmbedShape {
            batch: 3,
            channels: 3,
            height: 20,
            width: 12,
            patch: 4,
            dim: 128,
        },
    ]
}

#[test]
fn patchify_and_token_assembly_match_cpu_forward_and_backward() {
    let g = gpu();
    let mut r = rng();
    // storage reads, then texture copies (taken where D % 64 == 0)
    for (s, textures) in shapes().into_iter().flat_map(|s| [(s, false), (s, true)]) {
        let k = Embed::new(g, textures.then(|| EmbedTextures::boxed(g)));
        let (b, n, d, np, pl) = (s.batch, s.tokens(), s.dim, s.patches(), s.patch_len());
        let img = random(&mut r, b * s.channels * s.height * s.width);
        let pe = random(&mut r, b * np * d);
        let cls = random(&mut r, d);
        let pos = random(&mut r, n * d);
        let dx0 = random(&mut r, b * n * d);
        let what = format!("{s:?} textures={textures}");
        // the CPU specialisation runs when chosen and D allows
        let specialised = textures && d.is_multiple_of(64);

        let mut patches = vec![0.0; b * np * pl];
        reference::embed::patchify(
            &mut patches,
            &img,
            b,
            s.channels,
            s.height,
            s.width,
            s.patch,
        );
        let mut x0 = vec![0.0; b * n * d];
        reference::embed::assemble_tokens(&mut x0, &pe, &cls, &pos, b, n, d);
        let (mut dpe, mut dpos, mut dcls) = (vec![0.0; b * np * d], vec![0.0; n * d], vec![0.0; d]);
        reference::embed::assemble_tokens_backward(&mut dpe, &mut dpos, &mut dcls, &dx0, b, n, d);

        let (bimg, bpe, bcls, bpos, bdx0) = (
            g.upload("img", &img),
            g.upload("pe", &pe),
            g.upload("cls", &cls),
            g.upload("pos", &pos),
            g.upload("dx0", &dx0),
        );
        let (bpatches, bx0, bdpe, bdpos, bdcls) = (
            poisoned(b * np * pl),
            poisoned(b * n * d),
            poisoned(b * np * d),
            poisoned(n * d),
            poisoned(d),
        );
        let patchify = Patchify {
            shape: s,
            img: &bimg,
            patches: &bpatches,
        };
        g.launch(&k, &patchify);
        let assemble = AssembleTokens {
            shape: s,
            pe: &bpe,
            cls: (&bcls).into(),
            pos: (&bpos).into(),
            x0: &bx0,
        };
        let via_textures = launch_via_textures(g, &k, &assemble);
        assert_eq!(via_textures, specialised, "assemble {what}: path taken");
        let tokens_backward = TokensBackward {
            shape: s,
            dx0: &bdx0,
            dpe: &bdpe,
        };
        let via_textures = launch_via_textures(g, &k, &tokens_backward);
        assert_eq!(
            via_textures, specialised,
            "tokens_backward {what}: path taken"
        );
        let pos_cls_backward = PosClsBackward {
            shape: s,
            dx0: &bdx0,
            dpos: (&bdpos).into(),
            dcls: (&bdcls).into(),
        };
        let via_textures = launch_via_textures(g, &k, &pos_cls_backward);
        assert_eq!(
            via_textures, specialised,
            "pos_cls_backward {what}: path taken"
        );
        assert_close(
            &format!("patchify {what}"),
            &read(&bpatches),
            &patches,
            TOLERANCE,
        );
        assert_close(&format!("assemble {what}"), &read(&bx0), &x0, TOLERANCE);
        assert_close(&format!("dpe {what}"), &read(&bdpe), &dpe, TOLERANCE);
        assert_close(&format!("dpos {what}"), &read(&bdpos), &dpos, TOLERANCE);
        assert_close(&format!("dcls {what}"), &read(&bdcls), &dcls, TOLERANCE);

        // CLS rows out and their gradient back in.
        let mut rows = vec![0.0; b * d];
        reference::embed::gather_cls(&mut rows, &x0, b, n, d);
        let drows = random(&mut r, b * d);
        let mut dfull = vec![0.0; b * n * d];
        reference::embed::scatter_cls(&mut dfull, &drows, b, n, d);
        let (brows, bdfull) = (poisoned(b * d), poisoned(b * n * d));
        let bdrows = g.upload("drows", &drows);
        let gather = GatherCls {
            shape: s,
            full: &bx0,
            cls_rows: &brows,
        };
        g.launch(&k, &gather);
        let scatter = ScatterCls {
            shape: s,
            dcls_rows: &bdrows,
            dfull: &bdfull,
        };
        g.launch(&k, &scatter);
        assert_close(
            &format!("gather_cls {what}"),
            &read(&brows),
            &rows,
            TOLERANCE,
        );
        assert_close(
            &format!("scatter_cls {what}"),
            &read(&bdfull),
            &dfull,
            TOLERANCE,
        );
    }
}

#[test]
fn cross_entropy_loss_gradient_and_accuracy_match_cpu() {
    let g = gpu();
    let k = CrossEntropy::new(g);
    let mut r = rng();
    for (rows, classes) in [(1, 10), (5, 10), (65, 1000), (130, 3)] {
        let logits: Vec<f32> = random(&mut r, rows * classes)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let labels: Vec<u32> = (0..rows)
            .map(|_| r.random_range(0..classes as u32))
            .collect();
        let scale = 1.0 / rows as f32;
        let (mut losses, mut dl, mut correct) =
            (vec![0.0; rows], vec![0.0; rows * classes], vec![0.0; rows]);
        reference::loss::cross_entropy(
            &mut losses,
            &mut dl,
            &mut correct,
            &logits,
            &labels,
            classes,
            scale,
        );
        let (bl, by) = (g.upload("logits", &logits), g.upload("labels", &labels));
        let (bloss, bdl, bc) = (poisoned(rows), poisoned(rows * classes), poisoned(rows));
        g.launch(
            &k,
            &CrossEntropyArgs {
                logits: &bl,
                labels: &by,
                losses: &bloss,
                dlogits: &bdl,
                correct: &bc,
                rows,
                classes,
                grad_scale: scale,
            },
        );
        let what = format!("cross-entropy {rows}x{classes}");
        assert_close(&format!("{what} loss"), &read(&bloss), &losses, TOLERANCE);
        assert_close(&format!("{what} dlogits"), &read(&bdl), &dl, TOLERANCE);
        assert_eq!(read(&bc), correct, "{what} correct flags");
    }
}

#[test]
fn cross_entropy_gradient_matches_finite_differences_of_cpu_loss() {
    let mut r = rng();
    let (rows, classes) = (3, 7);
    let logits = random(&mut r, rows * classes);
    let labels: Vec<u32> = vec![0, 6, 3];
    let mean_loss = |z: &[f32]| {
        let (mut l, mut d, mut c) = (vec![0.0; rows], vec![0.0; rows * classes], vec![0.0; rows]);
        reference::loss::cross_entropy(
            &mut l,
            &mut d,
            &mut c,
            z,
            &labels,
            classes,
            1.0 / rows as f32,
        );
        (l.iter().map(|&v| v as f64).sum::<f64>() / rows as f64, d)
    };
    let (_, grad) = mean_loss(&logits);
    let h = 1e-2f32;
    for i in 0..rows * classes {
        let (mut up, mut down) = (logits.clone(), logits.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (mean_loss(&up).0 - mean_loss(&down).0) / (2.0 * h as f64);
        assert!(
            (fd - grad[i] as f64).abs() < 1e-4,
            "dlogits[{i}]: finite difference {fd} vs {}",
            grad[i]
        );
    }
}

/// From storage, and from texture copies in rows of 16 texels (whole rows and a partial one).
#[test]
fn dropout_forward_and_backward_regenerate_the_same_mask_as_cpu() {
    for width in [None, Some(16)] {
        dropout_regenerates_the_same_mask_as_cpu(width);
    }
}

fn dropout_regenerates_the_same_mask_as_cpu(width: Option<u32>) {
    let g = gpu();
    let k = Dropout::new(g, width.map(|w| DropoutTextures::boxed(g, w)));
    let mut r = rng();
    let step_buf = dropout::step_buffer(g);
    // offset: the element position of a rank's shard in the global batch (data parallel)
    // lengths that are a multiple of 4 take the vec4 kernels, the others the scalar ones
    for (len, p, step, offset) in [
        (1usize, 0.1f32, 0u32, 0u32),
        (4161, 0.1, 7, 0),
        (65 * 192 + 3, 0.5, 123456, 0),
        (1, 0.3, 2, 7),
        (3 * 50 * 48 + 5, 0.1, 9, 2 * 50 * 48),
        (4, 0.5, 3, 0),
        (65 * 192, 0.1, 11, 0),
        (3 * 50 * 48 + 4, 0.3, 9, 2 * 50 * 48 + 1),
    ] {
        let seed = r.random::<u32>();
        let site = DropoutSite { len, p, seed };
        let x = random(&mut r, len);
        let dy = random(&mut r, len);
        let y0 = random(&mut r, len);
        let mut y = y0.clone();
        reference::dropout::forward(&mut y, &x, p, (seed, step, offset), true);
        let mut dx = vec![0.0; len];
        reference::dropout::backward(&mut dx, &dy, p, (seed, step, offset));
        dropout::write_step(g, &step_buf, step, offset);
        let (bx, bdy, by, bdx) = (
            g.upload("x", &x),
            g.upload("dy", &dy),
            g.upload("y", &y0),
            poisoned(len),
        );
        let forward = DropoutForward {
            site,
            step: &step_buf,
            x: &bx,
            y: &by,
            accumulate: true,
        };
        // the CPU specialisation runs when chosen and the length is whole vec4s
        let specialised = width.is_some() && len.is_multiple_of(4);
        let forward_via_textures = launch_via_textures(g, &k, &forward);
        let backward = DropoutBackward {
            site,
            step: &step_buf,
            dy: &bdy,
            dx: &bdx,
        };
        let backward_via_textures = launch_via_textures(g, &k, &backward);
        let what = format!("dropout len={len} p={p} step={step} offset={offset} {width:?}");
        assert_eq!(
            (forward_via_textures, backward_via_textures),
            (specialised, specialised),
            "{what}: paths taken"
        );
        assert_close(
            &format!("{what} forward (accumulate)"),
            &read(&by),
            &y,
            TOLERANCE,
        );
        assert_close(&format!("{what} backward"), &read(&bdx), &dx, TOLERANCE);
        if len > 10000 {
            let dropped = (0..len as u32)
                .filter(|&i| reference::dropout::keep_scale(seed, step, i, p) == 0.0)
                .count();
            let rate = dropped as f64 / len as f64;
            assert!(
                (rate - p as f64).abs() < 0.02,
                "{what}: dropped fraction {rate}"
            );
        }
    }
    // The offset matters: a shard's masks are not those of the unshifted positions.
    let shifted: Vec<f32> = (0..1000)
        .map(|i| reference::dropout::keep_scale(1, 1, i + 7200, 0.1))
        .collect();
    let unshifted: Vec<f32> = (0..1000)
        .map(|i| reference::dropout::keep_scale(1, 1, i, 0.1))
        .collect();
    assert_ne!(shifted, unshifted);
    // A different step gives a different mask.
    let a: Vec<f32> = (0..1000)
        .map(|i| reference::dropout::keep_scale(1, 1, i, 0.5))
        .collect();
    let b: Vec<f32> = (0..1000)
        .map(|i| reference::dropout::keep_scale(1, 2, i, 0.5))
        .collect();
    assert_ne!(a, b);
}

/// Arenas of whole vec4s take the vec4 kernels, others (one float more) the scalar ones;
/// the gradient norm's partial sums in the counts a CPU (8) and a GPU adapter (256) use,
/// and an odd one; the arena in one chunk and in three (the norm spans them all).
#[test]
fn adamw_over_an_arena_range_with_clipping_matches_cpu_over_several_steps() {
    for chunks in [ONE_CHUNK, THREE_CHUNKS] {
        for partials in [8, 256, 3] {
            adamw_over_an_arena_range(chunks, 0, partials, None);
            adamw_over_an_arena_range(chunks, 1, partials, None);
        }
        // the CPU specialisation: in one chunk 1184 vec4s in rows of 64 texels, 18 whole and
        // one of 32 (with one extra float a chunk is not whole vec4s, it declines and the
        // scalar kernels run)
        for partials in [8, 3] {
            adamw_over_an_arena_range(chunks, 0, partials, Some(64));
            adamw_over_an_arena_range(chunks, 1, partials, Some(64));
        }
    }
}

/// The five test tensors' chunks: all in one, or split so that the frozen tensor, the
/// weight-decayed ones and the others each begin a chunk's story differently.
const ONE_CHUNK: &[&[usize]] = &[&[0, 1, 2, 3, 4]];
const THREE_CHUNKS: &[&[usize]] = &[&[0, 1], &[2], &[3, 4]];

/// `chunks`: the tensors of each arena chunk; `extra` floats after each chunk's last
/// tensor's padding; `partials` workgroups in the sum of squares; `width`: the CPU
/// specialisation's texture rows in texels, or `None` for the portable kernels alone.
fn adamw_over_an_arena_range(
    chunks: &[&[usize]],
    extra: usize,
    partials: usize,
    width: Option<u32>,
) {
    let g = gpu();
    let k = AdamW::with_partials(g, partials, width.map(|w| AdamWTextures::boxed(g, w)));
    let mut r = rng();
    // Five tensors of odd sizes at 64-float aligned offsets; weight-decayed ones first. The
    // first is frozen (outside the trained range): its values must not move and its
    // gradient must stay out of the norm.
    let lens = [67usize, 257, 4099, 1, 64];
    let decay = [true, true, true, false, false];
    // (chunk, offset) of each tensor, and each chunk's floats
    let mut place = [(0usize, 0usize); 5];
    let mut totals = Vec::new();
    for (c, tensors) in chunks.iter().enumerate() {
        let mut at = 0;
        for &t in *tensors {
            place[t] = (c, at);
            at = (at + lens[t]).div_ceil(64) * 64;
        }
        totals.push(at + extra);
    }
    let mut host: Vec<reference::adamw::HostParam> = lens
        .iter()
        .zip(decay)
        .map(|(&n, decay)| reference::adamw::HostParam {
            param: random(&mut r, n),
            grad: vec![0.0; n],
            m: random(&mut r, n).iter().map(|v| v * 0.01).collect(),
            v: random(&mut r, n).iter().map(|v| v * v * 1e-4).collect(),
            decay,
        })
        .collect();
    let pack = |field: &dyn Fn(&reference::adamw::HostParam) -> &Vec<f32>,
                host: &[reference::adamw::HostParam]| {
        let mut out: Vec<Vec<f32>> = totals.iter().map(|&n| vec![0f32; n]).collect();
        for (h, &(c, o)) in host.iter().zip(&place) {
            out[c][o..o + field(h).len()].copy_from_slice(field(h));
        }
        out
    };
    let upload = |label: &str, chunks: Vec<Vec<f32>>| -> Vec<wgpu::Buffer> {
        chunks.iter().map(|c| g.upload(label, c)).collect()
    };
    let params = upload("params", pack(&|h| &h.param, &host));
    let grads = upload("grads", pack(&|h| &h.grad, &host));
    let m = upload("m", pack(&|h| &h.m, &host));
    let v = upload("v", pack(&|h| &h.v, &host));
    let hyper0 = Hyper::at_step(1e-2, 0.9, 0.999, 1e-8, 0.05, 1.0, 1);
    let hyper_buf = AdamW::hyper_buffer(g, &hyper0);
    let stats = g.storage("stats", AdamW::stats_len());
    // Per chunk: from its first trained tensor to the end of its last, decay up to the end
    // of its last weight-decayed one.
    let chunk_args = chunks
        .iter()
        .enumerate()
        .map(|(c, tensors)| {
            let trained: Vec<usize> = tensors.iter().copied().filter(|&t| t != 0).collect();
            let start = trained.iter().map(|&t| place[t].1).min().unwrap_or(0);
            let end = trained.iter().map(|&t| place[t].1 + lens[t]).max();
            let range = start..end.unwrap_or(0);
            let decayed = trained.iter().filter(|&&t| decay[t]);
            let decay_end = decayed.map(|&t| place[t].1 + lens[t]).max();
            AdamWChunk {
                params: &params[c],
                grads: &grads[c],
                m: &m[c],
                v: &v[c],
                decay_end: decay_end.unwrap_or(range.start),
                range,
            }
        })
        .collect();
    let args = AdamWArgs {
        chunks: chunk_args,
        hyper: &hyper_buf,
        stats: &stats,
    };
    let commands = g.commands(&k, &args);
    // Every chunk here is worth a copy (its range at least half of it): the specialisation
    // takes both passes of each one whose buffers hold whole vec4s.
    let specialised = width.is_some() && extra == 0;
    assert_eq!(
        cpu_dispatches(&commands),
        if specialised { 2 * chunks.len() } else { 0 },
        "adamw {} chunks extra {extra} width {width:?}: launches of cpu/adamw.wgsl",
        chunks.len()
    );
    for (c, buffer) in grads.iter().enumerate() {
        let copied = commands.iter().any(
            |command| matches!(command, Command::CopyBufferToTexture { buffer: b, .. } if b == buffer),
        );
        assert_eq!(
            copied, specialised,
            "chunk {c}'s gradients copied to a texture"
        );
    }
    let frozen = host[0].param.clone();
    for step in 1..=3u64 {
        // Step 1 gradients are large (clipping active), later ones small (inactive).
        let scale = if step == 1 { 3.0 } else { 0.01 };
        for h in host.iter_mut() {
            h.grad = random(&mut r, h.param.len())
                .iter()
                .map(|v| v * scale)
                .collect();
        }
        for (buffer, chunk) in grads.iter().zip(pack(&|h| &h.grad, &host)) {
            g.write(buffer, &chunk);
        }
        g.poison(&stats);
        let hyper = Hyper::at_step(1e-2, 0.9, 0.999, 1e-8, 0.05, 1.0, step);
        AdamW::write_hyper(g, &hyper_buf, &hyper);
        g.submit_commands(&commands);
        let norm = reference::adamw::step(&mut host[1..], &hyper);
        let got_norm = read(&stats)[AdamW::scale_index() + 1] as f64;
        assert!(
            (got_norm - norm).abs() <= 1e-4 * norm,
            "step {step}: grad norm {got_norm} vs {norm}"
        );
        let read_all = |b: &[wgpu::Buffer]| -> Vec<Vec<f32>> { b.iter().map(read).collect() };
        let (gp, gm, gv) = (read_all(&params), read_all(&m), read_all(&v));
        let (c0, o0) = place[0];
        assert_eq!(
            &gp[c0][o0..o0 + lens[0]],
            &frozen[..],
            "the frozen tensor moved"
        );
        for (i, (h, &(c, o))) in host.iter().zip(&place).enumerate().skip(1) {
            let n = h.param.len();
            let what = format!("adamw step {step} tensor {i} ({n} floats, chunk {c})");
            assert_close(
                &format!("{what} param"),
                &gp[c][o..o + n],
                &h.param,
                TOLERANCE,
            );
            assert_close(&format!("{what} m"), &gm[c][o..o + n], &h.m, TOLERANCE);
            assert_close(&format!("{what} v"), &gv[c][o..o + n], &h.v, TOLERANCE);
        }
        for (c, &total) in totals.iter().enumerate() {
            let padding = (0..total).filter(|&i| {
                !(0..5).any(|t| place[t].0 == c && (place[t].1..place[t].1 + lens[t]).contains(&i))
            });
            for i in padding {
                assert!(
                    gp[c][i] == 0.0 && gm[c][i] == 0.0 && gv[c][i] == 0.0,
                    "chunk {c} padding element {i} changed"
                );
            }
        }
    }
}

/// A range and a decay boundary that split vec4s: the vec4 kernels update exactly the floats
/// of [start, end), decay exactly those below decay_end, and leave every other float as it
/// was (values, moments and the gradient norm alike): from storage, from textures (the arena
/// in one partial row of 16 texels), and with rows too narrow for a buffer-to-texture copy
/// (64 bytes), where the specialisation declines and the portable kernels run.
#[test]
fn adamw_updates_exactly_its_range_when_the_bounds_split_vec4s() {
    for width in [None, Some(16), Some(4)] {
        adamw_updates_exactly_its_range(width);
    }
}

fn adamw_updates_exactly_its_range(width: Option<u32>) {
    let g = gpu();
    let k = AdamW::with_partials(g, 8, width.map(|w| AdamWTextures::boxed(g, w)));
    let mut r = rng();
    let (total, start, decay_end, end) = (32usize, 5usize, 13usize, 27usize);
    let (param, grad) = (random(&mut r, total), random(&mut r, total));
    let m0: Vec<f32> = random(&mut r, total).iter().map(|v| v * 0.01).collect();
    let v0: Vec<f32> = random(&mut r, total).iter().map(|v| v * v * 1e-4).collect();
    let (bp, bg, bm, bv) = (
        g.upload("params", &param),
        g.upload("grads", &grad),
        g.upload("m", &m0),
        g.upload("v", &v0),
    );
    let hyper = Hyper::at_step(1e-2, 0.9, 0.999, 1e-8, 0.05, 1.0, 2);
    let hyper_buf = AdamW::hyper_buffer(g, &hyper);
    let stats = poisoned(AdamW::stats_len());
    let args = AdamWArgs {
        chunks: vec![AdamWChunk {
            params: &bp,
            grads: &bg,
            m: &bm,
            v: &bv,
            range: start..end,
            decay_end,
        }],
        hyper: &hyper_buf,
        stats: &stats,
    };
    let commands = g.commands(&k, &args);
    g.submit_commands(&commands);
    // rows of 4 texels (64 bytes) are too narrow for a buffer-to-texture copy
    let specialised = width == Some(16);
    assert_eq!(
        cpu_dispatches(&commands),
        if specialised { 2 } else { 0 },
        "adamw width {width:?}: launches of cpu/adamw.wgsl"
    );

    let part = |lo: usize, hi: usize, decay: bool| reference::adamw::HostParam {
        param: param[lo..hi].to_vec(),
        grad: grad[lo..hi].to_vec(),
        m: m0[lo..hi].to_vec(),
        v: v0[lo..hi].to_vec(),
        decay,
    };
    let mut host = [part(start, decay_end, true), part(decay_end, end, false)];
    let norm = reference::adamw::step(&mut host, &hyper);
    let got_norm = read(&stats)[AdamW::scale_index() + 1] as f64;
    assert!(
        (got_norm - norm).abs() <= 1e-4 * norm,
        "grad norm {got_norm} vs {norm}"
    );
    let (gp, gm, gv) = (read(&bp), read(&bm), read(&bv));
    for (name, got, before, updated) in [
        ("param", &gp, &param, [&host[0].param, &host[1].param]),
        ("m", &gm, &m0, [&host[0].m, &host[1].m]),
        ("v", &gv, &v0, [&host[0].v, &host[1].v]),
    ] {
        assert_eq!(
            &got[..start],
            &before[..start],
            "{name} below the range moved"
        );
        assert_eq!(&got[end..], &before[end..], "{name} past the range moved");
        let expected: Vec<f32> = updated.iter().flat_map(|t| t.iter().copied()).collect();
        assert_close(
            &format!("adamw {name} in range"),
            &got[start..end],
            &expected,
            TOLERANCE,
        );
    }
}

/// Launches in `commands` of the CPU specialisation's shader.
fn cpu_dispatches(commands: &[Command]) -> usize {
    let name = vit_wgpu::kernels::ADAMW_CPU.name;
    commands
        .iter()
        .filter(|c| matches!(c, Command::Dispatch(d) if d.family == name))
        .count()
}

/// The portable AdamW shader runs within WebGPU's defaults: no textures, and at most 8
/// storage buffers per entry point.
#[test]
fn portable_adamw_shader_binds_storage_buffers_only() {
    let source = vit_wgpu::kernels::ADAMW.source;
    let module = naga::front::wgsl::parse_str(source).expect("adamw.wgsl parses");
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .expect("adamw.wgsl validates");
    for (i, entry) in module.entry_points.iter().enumerate() {
        let uses = info.get_entry_point(i);
        let used: Vec<_> = module
            .global_variables
            .iter()
            .filter(|&(h, _)| !uses[h].is_empty())
            .map(|(_, var)| var)
            .collect();
        let storage = used
            .iter()
            .filter(|var| matches!(var.space, naga::AddressSpace::Storage { .. }))
            .count();
        let images = used
            .iter()
            .filter(|var| matches!(module.types[var.ty].inner, naga::TypeInner::Image { .. }))
            .count();
        assert!(
            storage <= 8 && images == 0,
            "adamw.wgsl {}: {storage} storage buffers (at most 8), {images} textures (none)",
            entry.name
        );
    }
}
