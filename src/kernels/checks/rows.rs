//! Row-wise and element-wise training kernels: LayerNorm, column sums, cross-entropy,
//! dropout and AdamW, each against `crate::reference`.

use super::{Bench, TOLERANCE};
use crate::kernels::adamw::{AdamW, AdamWArgs, AdamWChunk, Hyper};
use crate::kernels::dropout::{self, Dropout, DropoutBackward, DropoutForward, DropoutSite};
use crate::kernels::layernorm::{LayerNorm, LayerNormBackward, LayerNormForward};
use crate::kernels::loss::{CrossEntropy, CrossEntropyArgs};
use crate::kernels::reduce::{ColumnSum, Reduce};
use crate::reference;
use rand::Rng;

const EPS: f32 = 1e-5;

/// x, gamma and beta of a LayerNorm of [rows, cols].
fn layernorm_inputs(b: &mut Bench<'_>, rows: usize, cols: usize) -> [Vec<f32>; 3] {
    let x = b.random(rows * cols, 1.0);
    let gamma: Vec<f32> = b.random(cols, 1.0).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = b.random(cols, 1.0);
    [x, gamma, beta]
}

pub(super) async fn layernorm_forward(
    b: &mut Bench<'_>,
    rows: usize,
    cols: usize,
) -> Result<(), String> {
    let [x, gamma, beta] = layernorm_inputs(b, rows, cols);
    let (mut y, mut mean, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
    reference::layernorm::forward(
        &mut y, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, EPS,
    );
    let ln = LayerNorm::new(b.gpu, None);
    let (bx, bg, bb) = (b.input(&x), b.input(&gamma), b.input(&beta));
    let stats = LayerNorm::stats_len(rows);
    let (by, bm, br) = (b.output(rows * cols), b.output(stats), b.output(stats));
    let args = LayerNormForward {
        x: &bx,
        gamma: (&bg).into(),
        beta: (&bb).into(),
        y: &by,
        mean: &bm,
        rstd: &br,
        rows,
        cols,
        eps: EPS,
    };
    b.record(&ln, &args);
    let out = b.run(&[&by, &bm, &br]).await?;
    b.expect("y", &out[0], &y, TOLERANCE);
    b.expect_means("mean", &out[1], &mean, &rstd);
    b.expect("rstd", &out[2], &rstd, TOLERANCE);
    Ok(())
}

/// From the reference's mean and rstd, so the check launches the backward alone.
pub(super) async fn layernorm_backward(
    b: &mut Bench<'_>,
    rows: usize,
    cols: usize,
    accumulate: bool,
) -> Result<(), String> {
    let [x, gamma, beta] = layernorm_inputs(b, rows, cols);
    let dy = b.random(rows * cols, 1.0);
    let dx0 = b.random(rows * cols, 1.0);
    let (mut y, mut mean, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
    reference::layernorm::forward(
        &mut y, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, EPS,
    );
    let (mut dx, mut dg, mut db) = (dx0.clone(), vec![0.0; cols], vec![0.0; cols]);
    reference::layernorm::backward(
        &mut dx, &mut dg, &mut db, &dy, &x, &gamma, &mean, &rstd, rows, cols, accumulate,
    );
    let ln = LayerNorm::new(b.gpu, None);
    let stats = LayerNorm::stats_len(rows);
    let padded = |v: &[f32]| {
        let mut p = v.to_vec();
        p.resize(stats, 0.0);
        p
    };
    let (bx, bg, bdy) = (b.input(&x), b.input(&gamma), b.input(&dy));
    let (bm, br) = (b.input(&padded(&mean)), b.input(&padded(&rstd)));
    let bdx = if accumulate {
        b.input(&dx0)
    } else {
        b.output(rows * cols)
    };
    let (bdg, bdb) = (b.output(cols), b.output(cols));
    let scratch = b.output(LayerNorm::scratch_len(rows, cols));
    let args = LayerNormBackward {
        dy: &bdy,
        x: &bx,
        gamma: (&bg).into(),
        mean: &bm,
        rstd: &br,
        dx: &bdx,
        dgamma: (&bdg).into(),
        dbeta: (&bdb).into(),
        scratch: &scratch,
        rows,
        cols,
        accumulate,
    };
    b.record(&ln, &args);
    let out = b.run(&[&bdx, &bdg, &bdb]).await?;
    b.expect("dx", &out[0], &dx, TOLERANCE);
    b.expect("dgamma", &out[1], &dg, TOLERANCE);
    b.expect("dbeta", &out[2], &db, TOLERANCE);
    Ok(())
}

pub(super) async fn column_sum(
    b: &mut Bench<'_>,
    rows: usize,
    cols: usize,
    accumulate: bool,
) -> Result<(), String> {
    let x = b.random(rows * cols, 1.0);
    let init = b.random(cols, 1.0);
    let mut sums = init.clone();
    reference::reduce::column_sum(&mut sums, &x, rows, cols, accumulate);
    let k = Reduce::new(b.gpu, None);
    let bx = b.input(&x);
    let bs = if accumulate {
        b.input(&init)
    } else {
        b.output(cols)
    };
    let scratch = b.output(Reduce::column_sum_scratch_len(rows, cols));
    let args = ColumnSum {
        matrix: &bx,
        sums: (&bs).into(),
        scratch: &scratch,
        rows,
        cols,
        accumulate,
    };
    b.record(&k, &args);
    let out = b.run(&[&bs]).await?;
    b.expect("sums", &out[0], &sums, TOLERANCE);
    Ok(())
}

pub(super) async fn cross_entropy(
    b: &mut Bench<'_>,
    rows: usize,
    classes: usize,
) -> Result<(), String> {
    let logits: Vec<f32> = b.random(rows * classes, 4.0);
    let labels: Vec<u32> = (0..rows)
        .map(|_| b.rng().random_range(0..classes as u32))
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
    let k = CrossEntropy::new(b.gpu);
    let (bl, by) = (b.input(&logits), b.input(&labels));
    let (bloss, bdl, bc) = (b.output(rows), b.output(rows * classes), b.output(rows));
    let args = CrossEntropyArgs {
        logits: &bl,
        labels: &by,
        losses: &bloss,
        dlogits: &bdl,
        correct: &bc,
        rows,
        classes,
        grad_scale: scale,
    };
    b.record(&k, &args);
    let out = b.run(&[&bloss, &bdl, &bc]).await?;
    b.expect("losses", &out[0], &losses, TOLERANCE);
    b.expect("dlogits", &out[1], &dl, TOLERANCE);
    b.expect_equal("correct", &out[2], &correct);
    Ok(())
}

/// One dropout launch: the mask hashed from (seed, step, offset + index).
#[derive(Clone, Debug)]
pub struct DropoutCase {
    pub len: usize,
    pub p: f32,
    pub step: u32,
    /// A data-parallel shard's first element in the whole batch.
    pub offset: u32,
    pub accumulate: bool,
    pub backward: bool,
}

pub(super) async fn dropout(b: &mut Bench<'_>, c: &DropoutCase) -> Result<(), String> {
    let len = c.len;
    let seed = b.rng().random::<u32>();
    let site = DropoutSite { len, p: c.p, seed };
    let x = b.random(len, 1.0);
    let y0 = b.random(len, 1.0);
    let mut y = y0.clone();
    let mask = (seed, c.step, c.offset);
    if c.backward {
        reference::dropout::backward(&mut y, &x, c.p, mask);
    } else {
        reference::dropout::forward(&mut y, &x, c.p, mask, c.accumulate);
    }
    let k = Dropout::new(b.gpu, None);
    let step = dropout::step_buffer(b.gpu);
    dropout::write_step(b.gpu, &step, c.step, c.offset);
    let bx = b.input(&x);
    let by = if c.accumulate {
        b.input(&y0)
    } else {
        b.output(len)
    };
    if c.backward {
        let args = DropoutBackward {
            site,
            step: &step,
            dy: &bx,
            dx: &by,
        };
        b.record(&k, &args);
    } else {
        let args = DropoutForward {
            site,
            step: &step,
            x: &bx,
            y: &by,
            accumulate: c.accumulate,
        };
        b.record(&k, &args);
    }
    let out = b.run(&[&by]).await?;
    b.expect(if c.backward { "dx" } else { "y" }, &out[0], &y, TOLERANCE);
    Ok(())
}

/// One chunk of an arena: `floats` long, trained over `start..end`, decayed below
/// `decay_end`.
#[derive(Clone, Copy, Debug)]
pub struct ChunkRange {
    pub floats: usize,
    pub start: usize,
    pub decay_end: usize,
    pub end: usize,
}

/// An AdamW step over an arena in chunks, clipped by the norm over all of them.
#[derive(Clone, Debug)]
pub struct AdamWCase {
    pub chunks: Vec<ChunkRange>,
    /// Workgroups of the sum of squares.
    pub partials: usize,
    /// Gradients large enough for the clip to scale them.
    pub clipped: bool,
}

impl AdamWCase {
    /// Arenas of whole vec4s take the vec4 kernels, others the scalar ones; ranges and
    /// decay bounds that split vec4s; the counts of partial sums a CPU (8) and a GPU
    /// adapter (256) use, and an odd one.
    pub fn cases() -> Vec<AdamWCase> {
        let chunk = |floats, start, decay_end, end| ChunkRange {
            floats,
            start,
            decay_end,
            end,
        };
        vec![
            AdamWCase {
                chunks: vec![chunk(1031, 5, 517, 1027), chunk(67, 0, 0, 67)],
                partials: 3,
                clipped: true,
            },
            AdamWCase {
                chunks: vec![chunk(1032, 5, 517, 1027), chunk(68, 1, 3, 66)],
                partials: 256,
                clipped: false,
            },
            AdamWCase {
                chunks: vec![chunk(4100, 0, 4099, 4099)],
                partials: 8,
                clipped: true,
            },
        ]
    }

    /// Whether the kernels take vec4s: every chunk holds whole vec4s.
    pub fn vec4(&self) -> bool {
        self.chunks.iter().all(|c| c.floats.is_multiple_of(4))
    }

    pub fn describe(&self) -> String {
        let chunks: Vec<String> = self
            .chunks
            .iter()
            .map(|c| {
                format!(
                    "{} floats, range {}..{}, decay below {}",
                    c.floats, c.start, c.end, c.decay_end
                )
            })
            .collect();
        format!(
            "chunks [{}] partials={} clipped={}",
            chunks.join("; "),
            self.partials,
            self.clipped
        )
    }
}

/// One chunk's four roles on the host.
struct HostChunk {
    params: Vec<f32>,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

pub(super) async fn adamw(b: &mut Bench<'_>, c: &AdamWCase) -> Result<(), String> {
    let scale = if c.clipped { 3.0 } else { 0.01 };
    let host: Vec<HostChunk> = c
        .chunks
        .iter()
        .map(|r| HostChunk {
            params: b.random(r.floats, 1.0),
            grads: b.random(r.floats, scale),
            m: b.random(r.floats, 0.01),
            v: b.random(r.floats, 1.0)
                .iter()
                .map(|x| x * x * 1e-4)
                .collect(),
        })
        .collect();
    let hyper = Hyper::at_step(1e-2, 0.9, 0.999, 1e-8, 0.05, 1.0, 2);
    // The reference over the trained ranges, decayed and not, in the order of the chunks.
    let mut parts = Vec::new();
    for (r, h) in c.chunks.iter().zip(&host) {
        for (lo, hi, decay) in [(r.start, r.decay_end, true), (r.decay_end, r.end, false)] {
            parts.push(reference::adamw::HostParam {
                param: h.params[lo..hi].to_vec(),
                grad: h.grads[lo..hi].to_vec(),
                m: h.m[lo..hi].to_vec(),
                v: h.v[lo..hi].to_vec(),
                decay,
            });
        }
    }
    let norm = reference::adamw::step(&mut parts, &hyper);
    let k = AdamW::with_partials(b.gpu, c.partials, None);
    let buffers: Vec<[wgpu::Buffer; 4]> = host
        .iter()
        .map(|h| [&h.params, &h.grads, &h.m, &h.v].map(|v| b.input(v)))
        .collect();
    let hyper_buffer = AdamW::hyper_buffer(b.gpu, &hyper);
    let stats = b.output(AdamW::stats_len());
    let chunks = c
        .chunks
        .iter()
        .zip(&buffers)
        .map(|(r, [params, grads, m, v])| AdamWChunk {
            params,
            grads,
            m,
            v,
            range: r.start..r.end,
            decay_end: r.decay_end,
        })
        .collect();
    let args = AdamWArgs {
        chunks,
        hyper: &hyper_buffer,
        stats: &stats,
    };
    b.record(&k, &args);
    let mut reads: Vec<&wgpu::Buffer> = vec![&stats];
    for [params, _, m, v] in &buffers {
        reads.extend([params, m, v]);
    }
    let out = b.run(&reads).await?;
    let got_norm = out[0].get(AdamW::scale_index() + 1).copied();
    b.expect(
        "gradient norm",
        &[got_norm.unwrap_or(f32::NAN)],
        &[norm as f32],
        TOLERANCE,
    );
    compare_chunks(b, c, &host, &parts, &out[1..]);
    Ok(())
}

/// Every chunk's values and moments: within tolerance of the reference over the trained
/// range, and unchanged outside it.
fn compare_chunks(
    b: &mut Bench<'_>,
    c: &AdamWCase,
    host: &[HostChunk],
    parts: &[reference::adamw::HostParam],
    out: &[Vec<f32>],
) {
    for (i, (r, h)) in c.chunks.iter().zip(host).enumerate() {
        let (decayed, plain) = (&parts[2 * i], &parts[2 * i + 1]);
        let roles = [
            ("params", &h.params, [&decayed.param, &plain.param]),
            ("m", &h.m, [&decayed.m, &plain.m]),
            ("v", &h.v, [&decayed.v, &plain.v]),
        ];
        for (role, (name, before, updated)) in roles.into_iter().enumerate() {
            let got = &out[3 * i + role];
            let expected: Vec<f32> = updated.iter().flat_map(|t| t.iter().copied()).collect();
            let trained = got.get(r.start..r.end).unwrap_or(&[]);
            b.expect(
                &format!("chunk {i} {name} in range"),
                trained,
                &expected,
                TOLERANCE,
            );
            let outside = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .enumerate()
                    .filter(|(j, _)| !(r.start..r.end).contains(j))
                    .map(|(_, &x)| x)
                    .collect()
            };
            b.expect_equal(
                &format!("chunk {i} {name} outside the range"),
                &outside(got),
                &outside(before),
            );
        }
    }
}
