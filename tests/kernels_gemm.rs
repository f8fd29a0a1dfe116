mod common;
use common::*;
use std::sync::OnceLock;
use vit_wgpu::kernels::gemm::*;
use vit_wgpu::reference::gemm::{self as cpu, Epilogue};

/// One `Gemm` per variant for the whole test binary: pipelines compile once.
fn gemm(variant: Variant) -> &'static Gemm {
    static GEMMS: [OnceLock<Gemm>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = Variant::ALL.iter().position(|&v| v == variant).unwrap();
    GEMMS[i].get_or_init(|| Gemm::with_variant(gpu(), variant))
}

/// Shapes that are not tile multiples (tiles are 32 and 64), including 1-sized ones, the
/// ViT token count (5 images x 197 tokens) and both texture-eligible widths (multiples of
/// 64) and storage-only ones, for every operand of every layout.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 64, 64),
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
];

#[derive(Clone, Copy, Default)]
struct Flags {
    bias: bool,
    pre: bool,
    activation: Option<Activation>,
    act_grad: Option<Activation>,
    accumulate: bool,
}

/// Run one GEMM on the device and on the CPU, compare C (and the pre-activation).
/// Returns the largest relative error.
fn check(variant: Variant, layout: Layout, shape: (usize, usize, usize), f: Flags) -> f64 {
    check_kernel(gemm(variant), variant.name(), layout, shape, f)
}

fn check_kernel(
    kernel: &Gemm,
    label: &str,
    layout: Layout,
    (m, n, k): (usize, usize, usize),
    f: Flags,
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
        act_grad_of: f.act_grad.map(|act| (&aux[..], act)),
        accumulate: f.accumulate,
    };
    let mut c = c0.clone();
    let mut pre = vec![0.0; m * n];
    cpu::gemm(
        &mut c,
        Some(&mut pre),
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
    let bpre = poisoned(m * n);
    let commands = kernel.record(
        g,
        &GemmArgs {
            a: (&ba).into(),
            b: (&bb).into(),
            c: (&bc).into(),
            m,
            n,
            k,
            layout,
            bias: f.bias.then(|| (&bbias).into()),
            pre_activation: f.pre.then_some(&bpre),
            activation,
            act_grad_of: f.act_grad.map(|act| (&baux, act)),
            accumulate: f.accumulate,
        },
    );
    g.submit_commands(&commands);
    let what = format!(
        "{label} {layout:?} {m}x{n}x{k} bias={} pre={} act={activation:?} act_grad={:?} accumulate={}",
        f.bias,
        f.pre,
        f.act_grad,
        f.accumulate
    );
    let mut err = assert_close(&what, &read(&bc), &c, TOLERANCE);
    if f.pre {
        err = err.max(assert_close(
            &format!("{what} pre-activation"),
            &read(&bpre),
            &pre,
            TOLERANCE,
        ));
    }
    err
}

fn every_layout_on_odd_shapes(variant: Variant) {
    for layout in Layout::ALL {
        let mut worst: f64 = 0.0;
        for &shape in SHAPES {
            worst = worst.max(check(variant, layout, shape, Flags::default()));
        }
        eprintln!(
            "SUMMARY {} {layout:?}: {} shapes, largest relative error {worst:.2e}",
            variant.name(),
            SHAPES.len()
        );
    }
}

fn every_epilogue(variant: Variant) {
    let relu = Some(Activation::Relu);
    let gelu = Some(Activation::Gelu);
    let cases = [
        // forward of a linear layer: bias, activation, saved pre-activation
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
                pre: true,
                activation: gelu,
                ..Default::default()
            },
        ),
        (
            Layout::NT,
            Flags {
                pre: true,
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
        // backward through the MLP activation: dH = (dA W2) * act'(pre)
        (
            Layout::NN,
            Flags {
                act_grad: relu,
                ..Default::default()
            },
        ),
        (
            Layout::NN,
            Flags {
                act_grad: gelu,
                ..Default::default()
            },
        ),
        (
            Layout::NN,
            Flags {
                act_grad: gelu,
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
        for shape in [(65, 96, 64), (985, 33, 17), (17, 192, 192)] {
            check(variant, layout, shape, flags);
        }
    }
}

#[test]
fn tiled_gemm_matches_cpu_in_every_layout_on_odd_shapes() {
    every_layout_on_odd_shapes(Variant::Tiled);
}

#[test]
fn cpu_gemm_matches_cpu_in_every_layout_on_odd_shapes() {
    every_layout_on_odd_shapes(Variant::Cpu);
}

#[test]
fn cpu_gemm_from_storage_matches_cpu_in_every_layout_on_odd_shapes() {
    every_layout_on_odd_shapes(Variant::CpuStorage);
}

#[test]
fn cpu_gemm_matches_cpu_with_other_row_block_counts_in_every_layout() {
    let relu = Some(Activation::Relu);
    let epilogues = [
        Flags::default(),
        Flags {
            bias: true,
            pre: true,
            activation: Some(Activation::Gelu),
            ..Flags::default()
        },
        Flags {
            act_grad: relu,
            accumulate: true,
            ..Flags::default()
        },
    ];
    // 8 (no GELU) and 2 (GELU epilogues) are the defaults the other tests run.
    for row_blocks in [4, 6] {
        let kernel = Gemm::with_variant(gpu(), Variant::Cpu).with_row_blocks(row_blocks);
        let label = format!("cpu row blocks {row_blocks}");
        for layout in Layout::ALL {
            let mut worst: f64 = 0.0;
            // tile edges in both directions, texture and storage operands
            let shapes = [(17, 96, 17), (65, 192, 96), (985, 33, 64), (64, 96, 65)];
            for (i, &shape) in shapes.iter().enumerate() {
                let f = epilogues[i % epilogues.len()];
                worst = worst.max(check_kernel(&kernel, &label, layout, shape, f));
            }
            eprintln!("SUMMARY {label} {layout:?}: largest relative error {worst:.2e}");
        }
    }
}

#[test]
fn tiled_gemm_applies_every_epilogue() {
    every_epilogue(Variant::Tiled);
}

#[test]
fn cpu_gemm_applies_every_epilogue() {
    every_epilogue(Variant::Cpu);
}

#[test]
fn cpu_gemm_from_storage_applies_every_epilogue() {
    every_epilogue(Variant::CpuStorage);
}

#[test]
fn gemm_new_picks_the_cpu_variant_on_cpu_adapters() {
    let g = gpu();
    let expected = if g.is_cpu() && Gemm::cpu_variant_supported(g) {
        Variant::Cpu
    } else {
        Variant::Tiled
    };
    assert_eq!(Gemm::new(g).variant(), expected);
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
        let got = cpu::erf(x);
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
        let fd = (cpu::gelu(x + h) - cpu::gelu(x - h)) / (2.0 * h);
        let grad = cpu::gelu_grad(x);
        assert!(
            (fd - grad).abs() < 1e-8,
            "gelu'({x}): analytic {grad} vs finite difference {fd}"
        );
        x += 0.0625;
    }
    // and relu's, away from the kink
    for x in [-2.0, -0.3, 0.3, 2.0] {
        let fd = (cpu::relu(x + h) - cpu::relu(x - h)) / (2.0 * h);
        assert!((fd - cpu::relu_grad(x)).abs() < 1e-9, "relu'({x})");
    }
}

/// Classifier heads have few columns (3 classes): every epilogue buffer is then smaller
/// than one vec4, which the vectorised epilogue must not bind.
#[test]
fn every_variant_handles_fewer_than_four_columns_with_all_epilogues() {
    for variant in [Variant::Tiled, Variant::Cpu, Variant::CpuStorage] {
        for layout in Layout::ALL {
            for n in [1, 2, 3] {
                let f = Flags {
                    bias: true,
                    pre: true,
                    activation: Some(Activation::Gelu),
                    ..Default::default()
                };
                check(variant, layout, (5, n, 7), f);
                let g = Flags {
                    act_grad: Some(Activation::Relu),
                    accumulate: true,
                    ..Default::default()
                };
                check(variant, layout, (9, n, 3), g);
            }
        }
    }
}
