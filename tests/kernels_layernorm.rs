mod common;
use common::*;
use vit_wgpu::gpu::{Command, Gpu, Record};
use vit_wgpu::kernels::cpu::layernorm::LayerNormTextures;
use vit_wgpu::kernels::layernorm::*;
use vit_wgpu::reference::layernorm;

/// Launch one call alone; whether it read texture copies (the CPU specialisation ran).
fn launch<A>(g: &Gpu, k: &impl Record<A>, args: &A) -> bool {
    let commands = g.commands(k, args);
    g.submit_commands(&commands);
    commands
        .iter()
        .any(|c| matches!(c, Command::CopyBufferToTexture { .. }))
}

fn check(rows: usize, cols: usize, accumulate: bool) {
    check_offset(rows, cols, accumulate, 0.0);
}

/// `offset` is added to every x: the forward's one-pass statistics must not cancel. Both
/// paths: storage reads, and textures (taken when cols % 64 == 0).
fn check_offset(rows: usize, cols: usize, accumulate: bool, offset: f32) {
    for textures in [false, true] {
        check_path(rows, cols, accumulate, offset, textures);
    }
}

/// The row means' error against the rows' rms, sqrt(mean^2 + var): the mean of a random row
/// is near zero, where an error relative to the mean itself is ill-conditioned (a 1x64 row's
/// mean 1.7e-4 came out 3e-8 off, "1.8e-4 relative").
fn assert_mean_close(what: &str, ours: &[f32], reference: &[f32], rstd: &[f32]) {
    let sq = |v: f64| v * v;
    let off: f64 = ours
        .iter()
        .zip(reference)
        .map(|(&a, &b)| sq(a as f64 - b as f64))
        .sum();
    let rms: f64 = reference
        .iter()
        .zip(rstd)
        .map(|(&m, &r)| sq(m as f64) + 1.0 / sq(r as f64))
        .sum();
    let err = (off / rms).sqrt();
    assert!(
        err < TOLERANCE,
        "{what}: error {err:.3e} of the rows' rms >= {TOLERANCE:.0e} (NaN: a mean not written)"
    );
    eprintln!("{what}: error {err:.3e} of the rows' rms");
}

fn check_path(rows: usize, cols: usize, accumulate: bool, offset: f32, textures: bool) {
    let g = gpu();
    let mut r = rng();
    let x: Vec<f32> = random(&mut r, rows * cols)
        .iter()
        .map(|v| v + offset)
        .collect();
    let gamma: Vec<f32> = random(&mut r, cols).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = random(&mut r, cols);
    let dy = random(&mut r, rows * cols);
    let dx0 = random(&mut r, rows * cols);
    let eps = 1e-5;

    let (mut y, mut mean, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
    layernorm::forward(
        &mut y, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, eps,
    );
    let (mut dx, mut dg, mut db) = (dx0.clone(), vec![0.0; cols], vec![0.0; cols]);
    layernorm::backward(
        &mut dx, &mut dg, &mut db, &dy, &x, &gamma, &mean, &rstd, rows, cols, accumulate,
    );

    let ln = LayerNorm::new(g, textures.then(|| LayerNormTextures::boxed(g)));
    let (bx, bg, bb, bdy) = (
        g.upload("x", &x),
        g.upload("g", &gamma),
        g.upload("b", &beta),
        g.upload("dy", &dy),
    );
    // the statistics as long as the model allocates them
    let stats_len = LayerNorm::stats_len(rows);
    let (by, bm, br) = (
        poisoned(rows * cols),
        poisoned(stats_len),
        poisoned(stats_len),
    );
    let forward_via_textures = launch(
        g,
        &ln,
        &LayerNormForward {
            x: &bx,
            gamma: (&bg).into(),
            beta: (&bb).into(),
            y: &by,
            mean: &bm,
            rstd: &br,
            rows,
            cols,
            eps,
        },
    );
    let what = format!("layernorm forward {rows}x{cols} textures={textures}");
    // the CPU specialisation runs when chosen and the width allows
    let specialised = textures && cols.is_multiple_of(64);
    assert_eq!(forward_via_textures, specialised, "{what}: path taken");
    assert_close(&what, &read(&by), &y, TOLERANCE);
    assert_mean_close(&format!("{what} mean"), &read(&bm)[..rows], &mean, &rstd);
    assert_close(
        &format!("{what} rstd"),
        &read(&br)[..rows],
        &rstd,
        TOLERANCE,
    );

    let bdx = if accumulate {
        g.upload("dx", &dx0)
    } else {
        poisoned(rows * cols)
    };
    let (bdg, bdb) = (poisoned(cols), poisoned(cols));
    let scratch = poisoned(LayerNorm::scratch_len(rows, cols));
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
    let backward_via_textures = launch(g, &ln, &args);
    let what =
        format!("layernorm backward {rows}x{cols} accumulate={accumulate} textures={textures}");
    assert_eq!(backward_via_textures, specialised, "{what}: path taken");
    assert_close(&format!("{what} dx"), &read(&bdx), &dx, TOLERANCE);
    assert_close(&format!("{what} dgamma"), &read(&bdg), &dg, TOLERANCE);
    assert_close(&format!("{what} dbeta"), &read(&bdb), &db, TOLERANCE);
}

#[test]
fn layernorm_matches_the_reference_on_odd_shapes() {
    for (rows, cols) in [(1, 64), (17, 96), (65, 192), (5 * 197, 64), (130, 33)] {
        check(rows, cols, false);
    }
}

#[test]
fn layernorm_backward_accumulates_into_residual_gradient() {
    check(65, 96, true);
    check(65, 192, true);
}

#[test]
fn layernorm_is_accurate_when_rows_have_a_large_mean() {
    check_offset(65, 192, false, 300.0);
}
