mod common;
use common::*;
use std::sync::OnceLock;
use vit_wgpu::kernels::cpu::gemm_lanes::LanesPlan;
use vit_wgpu::kernels::gemm::*;
use vit_wgpu::reference::gemm::{self as reference, Epilogue};

/// One `Gemm` per variant for the whole test binary: pipelines compile once.
fn gemm(variant: Variant) -> &'static Gemm {
    static GEMMS: [OnceLock<Gemm>; 5] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = Variant::ALL
        .iter()
        .position(|&v| v == variant)
        .expect("a variant of Variant::ALL");
    GEMMS[i].get_or_init(|| Gemm::with_variant(gpu(), variant))
}

/// True when the adapter runs `variant`; otherwise prints one line saying why not.
fn runs(variant: Variant) -> bool {
    match Gemm::supports(gpu(), variant) {
        Ok(()) => true,
        Err(why) => {
            eprintln!(
                "SKIPPED GEMM variant {} on '{}': {why}",
                variant.name(),
                gpu().info.name
            );
            false
        }
    }
}

/// Shapes that are not tile multiples (tiles are 32, 64 and 128), including 1-sized ones,
/// 50 and 197 rows, the ViT token count (5 images x 197 tokens), widths that are not
/// multiples of 4 (scalar loads) and both texture-eligible widths (multiples of 64) and
/// storage-only ones, for every operand of every layout. The last five have n and k tile
/// multiples (n of 32, k of 8), which the `Lanes` kernel runs without bounds checks; (65, 64,
/// 192) and (80, 128, 40) also leave a last row tile of 1 and 16 rows, which it runs as a
/// row of 16x64 tiles (unchecked for 16).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 64, 64),
    (50, 36, 50),
    (197, 50, 65),
    (50, 197, 36),
    (17, 96, 17),
    (65, 192, 96),
    (985, 64, 192),
    (17, 33, 64),
    (65, 33, 1),
    (1, 96, 192),
    (985, 96, 17),
    (17, 192, 1),
    (64, 96, 65),
    (192, 33, 985),
    (65, 64, 192),
    (128, 64, 192),
    (64, 192, 64),
    (96, 32, 40),
    (80, 128, 40),
];

#[derive(Clone, Copy, Default)]
struct Flags {
    bias: bool,
    slope: bool,
    activation: Option<Activation>,
    act_grad: Option<ActGrad>,
    accumulate: bool,
}

/// Run one GEMM on the device and on the CPU, compare C (and the saved slope).
/// Returns the largest relative error.
fn check(variant: Variant, layout: Layout, shape: (usize, usize, usize), f: Flags) -> f64 {
    check_tiles(variant, layout, shape, f, Tiles::Planned)
}

/// The `Lanes` tiles a check runs: as `LanesPlan::for_shape` picks for the shape (32x32 for every
/// shape of these tests) or 16x64 whatever it picks.
#[derive(Clone, Copy, PartialEq)]
enum Tiles {
    Planned,
    Wide,
}

fn check_tiles(
    variant: Variant,
    layout: Layout,
    shape: (usize, usize, usize),
    f: Flags,
    tiles: Tiles,
) -> f64 {
    let (m, n, k) = shape;
    let plan = match variant {
        Variant::Lanes | Variant::LanesStorage => TestPlan::Lanes(LanesPlan {
            wide: tiles == Tiles::Wide,
            ..LanesPlan::for_shape(m, n, k, layout, 1)
        }),
        _ => TestPlan::Portable(Plan::for_shape(m, n, k, layout)),
    };
    check_plan(variant, layout, shape, f, plan)
}

/// The plan a check runs with: the portable variants' or the lanes kernel's.
#[derive(Clone, Copy, Debug)]
enum TestPlan {
    Portable(Plan),
    Lanes(LanesPlan),
}

/// `check` with the plan given (tile size and split-K, or the lanes kernel's chunks, bands
/// and tiles).
fn check_plan(
    variant: Variant,
    layout: Layout,
    (m, n, k): (usize, usize, usize),
    f: Flags,
    plan: TestPlan,
) -> f64 {
    let g = gpu();
    let mut r = rng();
    let a = random(&mut r, m * k);
    let b = random(&mut r, n * k);
    let bias = random(&mut r, n);
    let aux = random(&mut r, m * n);
    let c0 = random(&mut r, m * n);
    let activation = f.activation.unwrap_or(Activation::None);

    let epilogue = Epilogue {
        bias: f.bias.then_some(&bias[..]),
        activation,
        act_grad: f.act_grad.map(|grad| (&aux[..], grad)),
        accumulate: f.accumulate,
    };
    let mut c = c0.clone();
    let mut slope = vec![0.0; m * n];
    reference::gemm(
        &mut c,
        Some(&mut slope),
        &a,
        &b,
        m,
        n,
        k,
        layout,
        &epilogue,
        0..m,
    );

    let (ba, bb, bbias, baux) = (
        g.upload("a", &a),
        g.upload("b", &b),
        g.upload("bias", &bias),
        g.upload("aux", &aux),
    );
    let bc = if f.accumulate {
        g.upload("c", &c0)
    } else {
        poisoned(m * n)
    };
    let bslope = poisoned(m * n);
    let args = GemmArgs {
        a: (&ba).into(),
        b: (&bb).into(),
        c: (&bc).into(),
        m,
        n,
        k,
        layout,
        bias: f.bias.then(|| (&bbias).into()),
        slope: f.slope.then_some(&bslope),
        activation,
        act_grad: f.act_grad.map(|grad| (&baux, grad)),
        accumulate: f.accumulate,
    };
    let commands = match plan {
        TestPlan::Portable(plan) => gemm(variant).record_with_plan(g, &args, plan),
        TestPlan::Lanes(plan) => gemm(variant).record_with_lanes_plan(g, &args, plan),
    };
    g.submit_commands(&commands);
    let what = format!(
        "{} {plan:?} {layout:?} {m}x{n}x{k} bias={} slope={} act={activation:?} act_grad={:?} accumulate={}",
        variant.name(),
        f.bias,
        f.slope,
        f.act_grad,
        f.accumulate
    );
    let mut err = assert_close(&what, &read(&bc), &c, TOLERANCE);
    if f.slope {
        err = err.max(assert_close(
            &format!("{what} slope"),
            &read(&bslope),
            &slope,
            TOLERANCE,
        ));
    }
    err
}

/// Forwards (NT) with a bias, as the model runs them (the lanes kernel compiles that
/// epilogue in; a plain NT reads its epilogue from the shape record, like any other).
fn every_layout_on_odd_shapes(variant: Variant, tiles: Tiles) {
    for layout in Layout::ALL {
        let flags = Flags {
            bias: layout == Layout::NT,
            ..Default::default()
        };
        let mut worst: f64 = 0.0;
        for &shape in SHAPES {
            worst = worst.max(check_tiles(variant, layout, shape, flags, tiles));
        }
        eprintln!(
            "SUMMARY {} {layout:?}{}: {} shapes, largest relative error {worst:.2e}",
            variant.name(),
            if tiles == Tiles::Wide {
                " 16x64 tiles"
            } else {
                ""
            },
            SHAPES.len()
        );
    }
}

fn every_epilogue(variant: Variant, tiles: Tiles) {
    let relu = Some(Activation::Relu);
    let gelu = Some(Activation::Gelu);
    let (relu_output, slope) = (Some(ActGrad::ReluOutput), Some(ActGrad::Slope));
    let cases = [
        // forward of a linear layer: bias, activation, saved slope
        (
            Layout::NT,
            Flags {
                bias: true,
                ..Default::default()
            },
        ),
        (
            Layout::NT,
            Flags {
                bias: true,
                activation: relu,
                ..Default::default()
            },
        ),
        (
            Layout::NT,
            Flags {
                bias: true,
                slope: true,
                activation: gelu,
                ..Default::default()
            },
        ),
        (
            Layout::NT,
            Flags {
                slope: true,
                activation: relu,
                ..Default::default()
            },
        ),
        // residual stream: x += proj(o) + b
        (
            Layout::NT,
            Flags {
                bias: true,
                accumulate: true,
                ..Default::default()
            },
        ),
        // backward through the MLP activation: dH = (dA W2) * act'(pre), act'(pre) from
        // relu(pre) or from the saved slope
        (
            Layout::NN,
            Flags {
                act_grad: relu_output,
                ..Default::default()
            },
        ),
        (
            Layout::NN,
            Flags {
                act_grad: slope,
                ..Default::default()
            },
        ),
        (
            Layout::NN,
            Flags {
                act_grad: slope,
                accumulate: true,
                ..Default::default()
            },
        ),
        // weight gradients added into an existing gradient
        (
            Layout::TN,
            Flags {
                accumulate: true,
                ..Default::default()
            },
        ),
        (
            Layout::TN,
            Flags {
                bias: true,
                activation: gelu,
                ..Default::default()
            },
        ),
    ];
    for (layout, flags) in cases {
        // n % 4 == 0 runs the registers GEMM's 12x8 blocks (gemm_registers_aligned): the
        // last two with C's edges inside a block and a workgroup's tile, k odd in the last
        for shape in [
            (65, 96, 64),
            (985, 33, 17),
            (17, 192, 192),
            (64, 128, 192),
            (68, 36, 20),
            (97, 12, 7),
        ] {
            check_tiles(variant, layout, shape, flags, tiles);
        }
    }
}

#[test]
fn tiled_gemm_matches_cpu_in_every_layout_on_odd_shapes() {
    if runs(Variant::Tiled) {
        every_layout_on_odd_shapes(Variant::Tiled, Tiles::Planned);
    }
}

#[test]
fn registers_gemm_matches_cpu_in_every_layout_on_odd_shapes() {
    if runs(Variant::Registers) {
        every_layout_on_odd_shapes(Variant::Registers, Tiles::Planned);
    }
}

#[test]
fn lanes4_gemm_matches_cpu_in_every_layout_on_odd_shapes() {
    if runs(Variant::Lanes4) {
        every_layout_on_odd_shapes(Variant::Lanes4, Tiles::Planned);
    }
}

#[test]
fn lanes4_gemm_applies_every_epilogue() {
    if runs(Variant::Lanes4) {
        every_epilogue(Variant::Lanes4, Tiles::Planned);
    }
}

#[test]
fn cpu_gemm_matches_cpu_in_every_layout_on_odd_shapes() {
    if runs(Variant::Lanes) {
        every_layout_on_odd_shapes(Variant::Lanes, Tiles::Planned);
    }
}

#[test]
fn cpu_gemm_from_storage_matches_cpu_in_every_layout_on_odd_shapes() {
    if runs(Variant::LanesStorage) {
        every_layout_on_odd_shapes(Variant::LanesStorage, Tiles::Planned);
    }
}

#[test]
fn tiled_gemm_applies_every_epilogue() {
    if runs(Variant::Tiled) {
        every_epilogue(Variant::Tiled, Tiles::Planned);
    }
}

#[test]
fn registers_gemm_applies_every_epilogue() {
    if runs(Variant::Registers) {
        every_epilogue(Variant::Registers, Tiles::Planned);
    }
}

#[test]
fn cpu_gemm_applies_every_epilogue() {
    if runs(Variant::Lanes) {
        every_epilogue(Variant::Lanes, Tiles::Planned);
    }
}

#[test]
fn cpu_gemm_from_storage_applies_every_epilogue() {
    if runs(Variant::LanesStorage) {
        every_epilogue(Variant::LanesStorage, Tiles::Planned);
    }
}

/// 16x64 tiles (`LanesPlan::wide`), which `LanesPlan::for_shape` picks for large C and short k, in
/// every layout (weight gradients included, though the plan never picks them there) on the
/// odd shapes: aligned ones (n of 64, m of 16) run unchecked, the rest with bounds checks.
#[test]
fn cpu_gemm_with_16x64_tiles_matches_cpu_in_every_layout_on_odd_shapes() {
    for variant in [Variant::Lanes, Variant::LanesStorage] {
        if runs(variant) {
            every_layout_on_odd_shapes(variant, Tiles::Wide);
        }
    }
}

#[test]
fn cpu_gemm_with_16x64_tiles_applies_every_epilogue() {
    for variant in [Variant::Lanes, Variant::LanesStorage] {
        if runs(variant) {
            every_epilogue(variant, Tiles::Wide);
        }
    }
}

/// The 64 and 128 tiles in every layout, and split-K (weight gradients, TN) with the
/// reduction pass running every epilogue, on odd shapes, whatever `Plan::for_shape` picks.
#[test]
fn tiled_gemm_matches_cpu_with_both_tile_sizes_and_split_k() {
    if !runs(Variant::Tiled) {
        return;
    }
    let shapes = [(197, 50, 65), (1, 36, 17), (130, 129, 33)];
    for layout in Layout::ALL {
        for blocks in [1, 2] {
            let mut worst: f64 = 0.0;
            for &shape in &shapes {
                let plan = TestPlan::Portable(Plan { blocks, splits: 1 });
                worst = worst.max(check_plan(
                    Variant::Tiled,
                    layout,
                    shape,
                    Flags::default(),
                    plan,
                ));
            }
            eprintln!("SUMMARY tiled {layout:?} {blocks}x{blocks} blocks: largest relative error {worst:.2e}");
        }
    }
    let epilogue = Flags {
        bias: true,
        slope: true,
        activation: Some(Activation::Gelu),
        act_grad: Some(ActGrad::ReluOutput),
        accumulate: true,
    };
    for layout in Layout::ALL {
        let mut worst: f64 = 0.0;
        for (shape, splits) in [
            ((50, 33, 985), 3),
            ((65, 96, 4100), 16),
            ((17, 1, 197), 5),
            ((130, 64, 600), 2),
        ] {
            for blocks in [1, 2] {
                let plan = TestPlan::Portable(Plan { blocks, splits });
                for flags in [Flags::default(), epilogue] {
                    worst = worst.max(check_plan(Variant::Tiled, layout, shape, flags, plan));
                }
            }
        }
        eprintln!("SUMMARY tiled {layout:?} split-K: largest relative error {worst:.2e}");
    }
}

/// Operands bound as vec4 arrays are read to their last float: views at an offset into a
/// larger buffer (as the parameter arena's) and views that end a buffer whose size is not
/// a multiple of 16 bytes (copied into a padded buffer first), in every layout and variant.
#[test]
fn every_variant_reads_operands_at_offsets_and_at_unpadded_buffer_ends() {
    use vit_wgpu::gpu::View;
    let g = gpu();
    let at = g.limits.min_storage_buffer_offset_alignment as usize / 4;
    for variant in Variant::ALL {
        if !runs(variant) {
            continue;
        }
        for layout in Layout::ALL {
            // A's floats (5 x 17 = 85) end its buffer; B's (17 x 7 = 119) have room after
            let (m, n, k) = (5, 7, 17);
            let mut r = rng();
            let a = random(&mut r, m * k);
            let b = random(&mut r, n * k);
            let mut a_host = vec![f32::NAN; at];
            a_host.extend(&a);
            let mut b_host = vec![f32::NAN; at];
            b_host.extend(&b);
            b_host.extend([f32::NAN; 5]);
            let (ba, bb) = (g.upload("a", &a_host), g.upload("b", &b_host));
            let bc = poisoned(m * n);
            let view = |buffer, len| View {
                buffer,
                offset: 4 * at as u64,
                len,
            };
            let args = GemmArgs {
                a: view(&ba, m * k),
                b: view(&bb, n * k),
                c: (&bc).into(),
                m,
                n,
                k,
                layout,
                bias: None,
                slope: None,
                activation: Activation::None,
                act_grad: None,
                accumulate: false,
            };
            let mut list = Vec::new();
            vit_wgpu::gpu::Record::record(gemm(variant), g, &args, &mut list);
            g.submit_commands(&list);
            let mut c = vec![0.0; m * n];
            reference::gemm(&mut c, None, &a, &b, m, n, k, layout, &Epilogue::NONE, 0..m);
            let what = format!("{} {layout:?} operands at offsets", variant.name());
            assert_close(&what, &read(&bc), &c, TOLERANCE);
        }
    }
}

/// `Lanes` weight gradients in k-chunks, each launch adding into C: chunk edges inside
/// and at whole loop trips, aligned (no bounds checks) and not, with a partial last row
/// tile, into zeros and into an existing gradient; an epilogue beyond accumulation runs
/// unsplit whatever the plan says.
#[test]
fn cpu_gemm_splits_long_weight_gradients_into_k_chunks() {
    let epilogue = Flags {
        bias: true,
        slope: true,
        activation: Some(Activation::Gelu),
        ..Default::default()
    };
    for variant in [Variant::Lanes, Variant::LanesStorage] {
        if !runs(variant) {
            continue;
        }
        let mut worst: f64 = 0.0;
        for (shape, splits) in [
            ((64, 96, 1000), 3),
            ((70, 64, 2048), 4),
            ((50, 33, 985), 3),
            ((65, 96, 4100), 5),
            ((32, 32, 264), 32),
        ] {
            for accumulate in [false, true] {
                let flags = Flags {
                    accumulate,
                    ..Default::default()
                };
                let plan = TestPlan::Lanes(LanesPlan {
                    splits,
                    band: 0,
                    wide: false,
                });
                worst = worst.max(check_plan(variant, Layout::TN, shape, flags, plan));
            }
            let plan = TestPlan::Lanes(LanesPlan {
                splits,
                band: 0,
                wide: false,
            });
            worst = worst.max(check_plan(variant, Layout::TN, shape, epilogue, plan));
        }
        eprintln!(
            "SUMMARY {} TN k-chunks: largest relative error {worst:.2e}",
            variant.name()
        );
    }
}

/// Column bands (`LanesPlan::band`): every tile computed once, whatever the band width, the
/// number of column tiles (a last band narrower than the rest) and the row tiles (a partial
/// last row tile runs in a launch of its own), with the epilogues input gradients take.
#[test]
fn cpu_gemm_runs_column_bands_in_any_order() {
    let variant = Variant::Lanes;
    if !runs(variant) {
        return;
    }
    let slope = Flags {
        act_grad: Some(ActGrad::Slope),
        ..Default::default()
    };
    let accumulate = Flags {
        accumulate: true,
        ..Default::default()
    };
    let mut worst: f64 = 0.0;
    // (m, n, k): 5, 3 and 6 column tiles of 32 (a narrower last band or none), 1 (a band
    // wider than the grid), an unaligned n; 97, 64, 65 and 70 rows; (65, 192, 128) reads its
    // operands through textures where the adapter prefers them
    for shape in [
        (97, 160, 64),
        (64, 96, 36),
        (97, 32, 20),
        (70, 150, 24),
        (65, 192, 128),
    ] {
        for band in [1, 2, 3] {
            let plan = TestPlan::Lanes(LanesPlan {
                splits: 1,
                band,
                wide: false,
            });
            for flags in [Flags::default(), slope, accumulate] {
                worst = worst.max(check_plan(variant, Layout::NN, shape, flags, plan));
            }
        }
    }
    eprintln!("SUMMARY lanes NN column bands: largest relative error {worst:.2e}");
}

/// `Lanes` runs an input gradient in column bands when its B outgrows a core's cache.
#[test]
fn cpu_gemm_plans_column_bands_for_input_gradients_with_wide_weights() {
    // labml fc2 dX: B = W2 [512, 2048], 4 MiB; qkv dX [1536, 512], 3 MiB
    assert_eq!(LanesPlan::for_shape(4160, 2048, 512, Layout::NN, 1).band, 2);
    assert_eq!(LanesPlan::for_shape(4160, 512, 1536, Layout::NN, 1).band, 2);
    // labml proj dX (1 MiB), every tiny GEMM, every forward and weight gradient
    assert_eq!(LanesPlan::for_shape(4160, 512, 512, Layout::NN, 1).band, 0);
    assert_eq!(LanesPlan::for_shape(4160, 768, 192, Layout::NN, 1).band, 0);
    assert_eq!(LanesPlan::for_shape(4160, 2048, 512, Layout::NT, 1).band, 0);
    assert_eq!(LanesPlan::for_shape(512, 2048, 4160, Layout::TN, 1).band, 0);
}

/// `Lanes` takes 16x64 tiles where the epilogue's stores weigh as much as the arithmetic:
/// k at most 96 per float the epilogue moves, C of 2 MiB or more, n a multiple of 64, never
/// for weight gradients.
#[test]
fn cpu_gemm_plans_16x64_tiles_for_short_k_and_large_outputs() {
    // tiny fc1 forward (GELU + slope) and fc2 dX (x slope): k = 192, two floats moved
    assert!(LanesPlan::for_shape(4160, 768, 192, Layout::NT, 2).wide);
    assert!(LanesPlan::for_shape(4160, 768, 192, Layout::NN, 2).wide);
    // micro: k = 64 forwards, C alone
    assert!(LanesPlan::for_shape(3200, 192, 64, Layout::NT, 1).wide);
    assert!(LanesPlan::for_shape(3200, 256, 64, Layout::NT, 2).wide);
    // tiny qkv forward: k = 192 with C alone; fc2 forward: k = 768
    assert!(!LanesPlan::for_shape(4160, 576, 192, Layout::NT, 1).wide);
    assert!(!LanesPlan::for_shape(4160, 192, 768, Layout::NT, 2).wide);
    // labml: k >= 512 everywhere
    assert!(!LanesPlan::for_shape(1040, 2048, 512, Layout::NT, 1).wide);
    assert!(!LanesPlan::for_shape(4160, 2048, 512, Layout::NN, 2).wide);
    // micro's n = 64 outputs (0.8 MB), n not a multiple of 64, a weight gradient
    assert!(!LanesPlan::for_shape(3200, 64, 64, Layout::NT, 2).wide);
    assert!(!LanesPlan::for_shape(4160, 100, 64, Layout::NT, 1).wide);
    assert!(!LanesPlan::for_shape(2048, 512, 64, Layout::TN, 2).wide);
}

/// `Lanes` chunks k only for weight gradients whose operands outgrow the cache.
#[test]
fn cpu_gemm_plans_k_chunks_for_weight_gradients_with_large_operands() {
    // chunks of at most 6 MiB of A and B: labml qkv dW at batch 64, A [4160, 1536] and
    // B [4160, 512], 34 MB
    assert_eq!(
        LanesPlan::for_shape(1536, 512, 4160, Layout::TN, 1).splits,
        6
    );
    // labml fc1 dW at batch 64: 42.6 MB; at batch 16 (k = 1040): 10.6 MB
    assert_eq!(
        LanesPlan::for_shape(2048, 512, 4160, Layout::TN, 1).splits,
        7
    );
    assert_eq!(
        LanesPlan::for_shape(2048, 512, 1040, Layout::TN, 1).splits,
        2
    );
    // tiny qkv dW: 12.8 MB; tiny fc1 dW: 16 MB
    assert_eq!(
        LanesPlan::for_shape(576, 192, 4160, Layout::TN, 1).splits,
        3
    );
    assert_eq!(
        LanesPlan::for_shape(768, 192, 4160, Layout::TN, 1).splits,
        3
    );
    // labml proj dW at batch 16: 4.3 MB; micro qkv dW: 3.3 MB; every forward or input
    // gradient
    assert_eq!(
        LanesPlan::for_shape(512, 512, 1040, Layout::TN, 1).splits,
        1
    );
    assert_eq!(LanesPlan::for_shape(192, 64, 3200, Layout::TN, 1).splits, 1);
    assert_eq!(
        LanesPlan::for_shape(4160, 1536, 512, Layout::NT, 1).splits,
        1
    );
    assert_eq!(
        LanesPlan::for_shape(4160, 512, 1536, Layout::NN, 1).splits,
        1
    );
    // never a chunk shorter than 256 k
    assert_eq!(
        LanesPlan::for_shape(4096, 4096, 600, Layout::TN, 1).splits,
        2
    );
}

/// Plans sized for resident workgroups (about 512 on a large GPU): the 128 tile alone when
/// it gives 256 or more, split-K on top when k allows, else the 64 tile split as far as k
/// allows (labml at batch 64: 4160 token rows).
#[test]
fn tiled_gemm_plans_enough_workgroups_for_a_large_gpu() {
    let plan = |m, n, k, layout| Plan::for_shape(m, n, k, layout);
    let p = |blocks, splits| Plan { blocks, splits };
    // qkv and fc1 forwards: 396 and 528 tiles of 128
    assert_eq!(plan(4160, 1536, 512, Layout::NT), p(2, 1));
    assert_eq!(plan(4160, 2048, 512, Layout::NT), p(2, 1));
    // fc2 forward and fc1 dX: 132 tiles, k = 2048 in 4 splits
    assert_eq!(plan(4160, 512, 2048, Layout::NT), p(2, 4));
    assert_eq!(plan(4160, 512, 2048, Layout::NN), p(2, 4));
    // proj forward: 132 tiles of 128 and k = 512 too short to split: 520 tiles of 64
    assert_eq!(plan(4160, 512, 512, Layout::NT), p(1, 1));
    // weight gradients (k = 4160): qkv's 48 and fc1's 64 tiles of 128 in 8 splits; proj's
    // 16 become 64 tiles of 64 in 8 splits; the patch embedding's [512, 48] 8 of 64
    assert_eq!(plan(1536, 512, 4160, Layout::TN), p(2, 8));
    assert_eq!(plan(2048, 512, 4160, Layout::TN), p(2, 8));
    assert_eq!(plan(512, 512, 4160, Layout::TN), p(1, 8));
    assert_eq!(plan(512, 48, 4096, Layout::TN), p(1, 8));
    // never a split shorter than 512 k; at most 32 splits
    assert_eq!(plan(64, 64, 1000, Layout::TN).splits, 1);
    assert_eq!(plan(64, 64, 100_000, Layout::NN), p(1, 32));
}

/// The variant `Gemm::new` takes follows the adapter's capabilities (or VIT_GEMM_VARIANT),
/// and says why.
#[test]
fn gemm_new_picks_the_variant_the_adapter_supports() {
    let g = gpu();
    let gemm = Gemm::new(g);
    let forced = std::env::var("VIT_GEMM_VARIANT").ok();
    let expected = if let Some(v) = Variant::ALL
        .into_iter()
        .find(|v| forced.as_deref() == Some(v.name()) && Gemm::supports(g, *v).is_ok())
    {
        v
    } else if g.caps.cpu {
        // the lanes shader's bindings exceed WebGPU's 8 storage buffers (VIT_LIMITS=webgpu)
        if g.caps.exact_subgroups(8).is_ok()
            && g.fits_limits(&vit_wgpu::kernels::GEMM_LANES).is_ok()
        {
            Variant::Lanes
        } else if g.caps.exact_subgroups(4).is_ok() {
            Variant::Lanes4
        } else {
            Variant::Registers
        }
    } else {
        Variant::Tiled
    };
    assert_eq!(gemm.variant(), expected, "reason: {}", gemm.reason());
    assert!(Gemm::supports(g, gemm.variant()).is_ok());
    assert!(!gemm.reason().is_empty());
    eprintln!("GEMM variant {}: {}", gemm.variant().name(), gemm.reason());
}

#[test]
fn reference_erf_matches_known_values() {
    // erf values from Abramowitz & Stegun / mpmath
    for (x, want) in [
        (0.0, 0.0),
        (0.1, 0.112_462_916_018_284_9),
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
        (3.5, 0.999_999_256_901_627_7),
        (-1.0, -0.842_700_792_949_714_9),
    ] {
        let got = reference::erf(x);
        assert!(
            (got - want).abs() < 1e-12,
            "erf({x}) = {got}, expected {want}"
        );
    }
}

#[test]
fn reference_gelu_grad_matches_finite_differences() {
    let h = 1e-5;
    let mut x = -6.0;
    while x <= 6.0 {
        let fd = (reference::gelu(x + h) - reference::gelu(x - h)) / (2.0 * h);
        let grad = reference::gelu_grad(x);
        assert!(
            (fd - grad).abs() < 1e-8,
            "gelu'({x}): analytic {grad} vs finite difference {fd}"
        );
        x += 0.0625;
    }
    // and relu's, away from the kink
    for x in [-2.0, -0.3, 0.3, 2.0] {
        let fd = (reference::relu(x + h) - reference::relu(x - h)) / (2.0 * h);
        assert!((fd - reference::relu_grad(x)).abs() < 1e-9, "relu'({x})");
    }
}

/// Classifier heads have few columns (3 classes): every epilogue buffer is then smaller
/// than one vec4, which the vectorised epilogue must not bind.
#[test]
fn every_variant_handles_fewer_than_four_columns_with_all_epilogues() {
    for variant in Variant::ALL {
        if !runs(variant) {
            continue;
        }
        for layout in Layout::ALL {
            for n in [1, 2, 3] {
                let f = Flags {
                    bias: true,
                    slope: true,
                    activation: Some(Activation::Gelu),
                    ..Default::default()
                };
                check(variant, layout, (5, n, 7), f);
                let g = Flags {
                    act_grad: Some(ActGrad::Slope),
                    accumulate: true,
                    ..Default::default()
                };
                check(variant, layout, (9, n, 3), g);
            }
        }
    }
}

/// C [m, n] = X Y^T, no epilogue.
fn plain_nt<'a>(
    x: &'a wgpu::Buffer,
    y: &'a wgpu::Buffer,
    c: &'a wgpu::Buffer,
    (m, n, k): (usize, usize, usize),
) -> GemmArgs<'a> {
    GemmArgs {
        a: x.into(),
        b: y.into(),
        c: c.into(),
        m,
        n,
        k,
        layout: Layout::NT,
        bias: None,
        slope: None,
        activation: Activation::None,
        act_grad: None,
        accumulate: false,
    }
}

/// Texture copies of GEMM operands are shared along one command list until a command
/// writes the operand's buffer: a second GEMM on the same A and B copies nothing, after a
/// GEMM overwrites A the next one reads the new A through a fresh copy (B still shared), and
/// a whole-buffer copy of A is read through A's texture.
#[test]
fn texture_copies_are_shared_until_the_buffer_is_written() {
    use vit_wgpu::gpu::{Command, Record};
    // k and inner multiples of 64: every operand is texture-eligible.
    let (m, n, k, inner) = (65, 64, 128, 64);
    for variant in Variant::ALL {
        if !runs(variant) {
            continue;
        }
        let g = gpu();
        let mut r = rng();
        let a = random(&mut r, m * k);
        let b = random(&mut r, n * k);
        let d = random(&mut r, m * inner);
        let e = random(&mut r, k * inner);
        let (ba, bb, bd, be) = (
            g.upload("a", &a),
            g.upload("b", &b),
            g.upload("d", &d),
            g.upload("e", &e),
        );
        let (c1, c2, c3, c4) = (
            poisoned(m * n),
            poisoned(m * n),
            poisoned(m * n),
            poisoned(m * n),
        );
        let a_copy = poisoned(m * k);
        let gemm = gemm(variant);
        let mut list: Vec<Command> = Vec::new();
        // texture copies one GEMM appends to `list`
        let copies_of = |list: &mut Vec<Command>, args: GemmArgs| {
            let before = list.iter().filter(|c| !c.is_dispatch()).count();
            gemm.record(g, &args, list);
            list.iter().filter(|c| !c.is_dispatch()).count() - before
        };
        let copies = [
            copies_of(&mut list, plain_nt(&ba, &bb, &c1, (m, n, k))),
            copies_of(&mut list, plain_nt(&ba, &bb, &c2, (m, n, k))),
            // A = D E^T overwrites A's buffer
            copies_of(&mut list, plain_nt(&bd, &be, &ba, (m, k, inner))),
            copies_of(&mut list, plain_nt(&ba, &bb, &c3, (m, n, k))),
            {
                list.push(Command::CopyBuffer {
                    src: ba.clone(),
                    dst: a_copy.clone(),
                });
                copies_of(&mut list, plain_nt(&a_copy, &bb, &c4, (m, n, k)))
            },
        ];
        g.submit_commands(&list);

        let nt = |x: &[f32], y: &[f32], n: usize, k: usize| {
            let mut c = vec![0.0; m * n];
            reference::gemm(
                &mut c,
                None,
                x,
                y,
                m,
                n,
                k,
                Layout::NT,
                &Epilogue::NONE,
                0..m,
            );
            c
        };
        let (ab, new_a) = (nt(&a, &b, n, k), nt(&d, &e, k, inner));
        let name = variant.name();
        assert_close(&format!("{name} A B^T"), &read(&c1), &ab, TOLERANCE);
        assert_close(&format!("{name} A B^T again"), &read(&c2), &ab, TOLERANCE);
        assert_close(&format!("{name} new A"), &read(&ba), &new_a, TOLERANCE);
        let new_ab = nt(&new_a, &b, n, k);
        assert_close(&format!("{name} new A B^T"), &read(&c3), &new_ab, TOLERANCE);
        assert_close(
            &format!("{name} copied A B^T"),
            &read(&c4),
            &new_ab,
            TOLERANCE,
        );
        let expected = if variant == Variant::Lanes {
            [2, 0, 2, 1, 0]
        } else {
            [0; 5]
        };
        assert_eq!(copies, expected, "{name}: texture copies per GEMM");
    }
}

/// The portable GEMM runs at WebGPU's default limits: every entry point of gemm_tiled.wgsl
/// statically uses at most 7 storage buffers (the default allows 8 per stage; the auto
/// layout counts every binding an entry point reaches, override-dead branches included).
#[test]
fn portable_gemm_binds_at_most_seven_storage_buffers_per_entry_point() {
    use naga::valid::{Capabilities, GlobalUse, ValidationFlags, Validator};
    let shader = vit_wgpu::kernels::GEMM_TILED;
    let module = naga::front::wgsl::parse_str(shader.source).expect("gemm_tiled.wgsl parses");
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .expect("gemm_tiled.wgsl validates");
    for (index, entry) in module.entry_points.iter().enumerate() {
        let uses = info.get_entry_point(index);
        let storage: Vec<u32> = module
            .global_variables
            .iter()
            .filter(|(handle, var)| {
                matches!(var.space, naga::AddressSpace::Storage { .. })
                    && uses[*handle] != GlobalUse::empty()
            })
            .filter_map(|(_, var)| var.binding.as_ref().map(|b| b.binding))
            .collect();
        assert!(
            storage.len() <= 7,
            "{} entry point {} binds {} storage buffers (bindings {storage:?}), more than 7",
            shader.name,
            entry.name,
            storage.len()
        );
        eprintln!("{}: storage bindings {storage:?}", entry.name);
    }
}
