//! Kernel benchmarks: every case is validated against the CPU reference once, warmed up,
//! then timed with GPU timestamps (median of several runs), and printed as a Markdown
//! table against the adapter's arithmetic ceiling (shaders/peak_fma.wgsl) and the CPU's
//! sgemm (matrixmultiply, 2 threads) on the same shape, both measured in the same run.
//!
//!     cargo bench --bench kernels                  # everything
//!     cargo bench --bench kernels -- gemm tiny     # cases whose name has every word
//!     cargo bench --bench kernels -- 'tiny qkv fwd' 'lanes$'   # a GEMM's names end in `$`
//!     VIT_BENCH_QUICK=1 cargo bench --bench kernels   # smoke run: fewer shapes and runs
//!     VIT_BENCH_RUNS=30 cargo bench --bench kernels   # more runs per case
//!
//! Adding a case: build its commands once, then `bench.run(Case { .. }, check)` where
//! `check` reads the outputs back and returns the relative error against the reference.

use pollster::block_on;
use std::time::Instant;

use rand::SeedableRng;
use vit_wgpu::gpu::{Command, Gpu, GpuOptions, PassTimer};
use vit_wgpu::kernels::cpu::gemm_lanes::{LanesPlan, WIDE_TILE};
use vit_wgpu::kernels::gemm::{ActGrad, Activation, Gemm, GemmArgs, Layout, Variant};
use vit_wgpu::reference::gemm::{self as reference_gemm, Epilogue};
use vit_wgpu::reference::{random_vec, relative_error};

const TOLERANCE: f64 = 1e-4;

/// One row of the table.
struct Case {
    /// What the kernel computes, e.g. "tiny fc1 fwd".
    name: String,
    /// e.g. "4160x768x192 NT"
    shape: String,
    variant: String,
    /// FLOPs of one launch (for GFLOP/s).
    flops: f64,
    /// CPU sgemm time for the same shape, when there is one to compare with.
    cpu_seconds: Option<f64>,
    /// Bytes moved, for memory-bound kernels: the rate column then shows GB/s.
    bytes: Option<f64>,
    /// A GEMM's C [m, n], whether it also stores a slope and whether the `lanes` kernel
    /// stores it in 16x64 tiles (else 32x32), for the store-bound column.
    stored: Option<(usize, usize, bool, bool)>,
    commands: Vec<Command>,
}

struct Bench {
    gpu: Gpu,
    timer: Option<PassTimer>,
    quick: bool,
    filters: Vec<String>,
    /// The adapter's measured arithmetic ceiling, FLOP/s.
    peak: f64,
    /// A plain copy kernel's bytes per second (read + write), the memory-bound rows' ceiling.
    copy_bandwidth: f64,
    /// A plain store kernel's floats per second (each invocation writes one vec4).
    store_rate: f64,
    /// Seconds to store C (and a slope) of a shape as the `lanes` epilogue does, by shape.
    tile_store_seconds: std::collections::HashMap<(usize, usize, bool, bool), f64>,
    rows: Vec<String>,
    rng: rand::rngs::StdRng,
}

impl Bench {
    /// `measure_tile_stores` once per shape.
    fn tile_stores(&mut self, shape: (usize, usize, bool, bool)) -> f64 {
        if let Some(&seconds) = self.tile_store_seconds.get(&shape) {
            return seconds;
        }
        let seconds = measure_tile_stores(self, shape);
        self.tile_store_seconds.insert(shape, seconds);
        seconds
    }

    fn runs(&self) -> usize {
        // VIT_BENCH_RUNS=N: more runs per case (steadier medians, or a long run to profile).
        if let Some(n) = std::env::var("VIT_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
        {
            return n;
        }
        if self.quick {
            3
        } else {
            7
        }
    }

    fn selected(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.filters.iter().all(|f| name.contains(f.as_str()))
    }

    /// Median seconds of `runs` launches after one warm-up: GPU timestamps around the
    /// dispatches when the adapter has them (copies into textures run before, untimed,
    /// and are in the wall-clock column), else wall time.
    fn time(&self, commands: &[Command]) -> (f64, f64) {
        let mut kernel = Vec::new();
        let mut wall = Vec::new();
        for run in 0..=self.runs() {
            let t0 = Instant::now();
            self.gpu.submit_commands(commands);
            block_on(self.gpu.idle("bench")).expect("device");
            let w = t0.elapsed().as_secs_f64();
            let k = match &self.timer {
                Some(timer) => {
                    let copies: Vec<&Command> = commands
                        .iter()
                        .filter(|c| !matches!(c, Command::Dispatch(_)))
                        .collect();
                    if !copies.is_empty() {
                        let mut encoder =
                            self.gpu.device.create_command_encoder(&Default::default());
                        for c in copies {
                            vit_wgpu::gpu::record_commands(&mut encoder, std::slice::from_ref(c));
                        }
                        self.gpu.queue.submit([encoder.finish()]);
                    }
                    block_on(timer.time(&self.gpu, |pass| {
                        for c in commands {
                            if let Command::Dispatch(d) = c {
                                d.record(pass);
                            }
                        }
                    }))
                    .expect("timestamps")
                }
                None => w,
            };
            if run > 0 {
                kernel.push(k);
                wall.push(w);
            }
        }
        (median(&mut kernel), median(&mut wall))
    }

    /// Validate (`check` returns the relative error after one launch), time, add a row.
    fn run(&mut self, case: Case, check: impl FnOnce(&Gpu) -> f64) {
        self.gpu.submit_commands(&case.commands);
        let err = check(&self.gpu);
        assert!(
            err < TOLERANCE,
            "{} {} {}: relative error {err:.2e} against the CPU reference",
            case.name,
            case.shape,
            case.variant
        );
        let (seconds, wall) = self.time(&case.commands);
        let rate = match case.bytes {
            Some(b) => format!("{:.1} GB/s", b / seconds * 1e-9),
            None => format!("{:.1}", case.flops / seconds * 1e-9),
        };
        // FLOP rate / the FMA ceiling, or for memory-bound kernels GB/s / the copy's GB/s.
        let of_ceiling = match case.bytes {
            Some(b) => format!("{:.2} of copy", b / seconds / self.copy_bandwidth),
            None => format!("{:.2}", case.flops / seconds / self.peak),
        };
        // The share of the ceiling left when the arithmetic runs at the ceiling and C (and
        // the slope) are stored as the `lanes` epilogue stores them, its tiles row by row,
        // timed alone for this shape, one after the other (on llvmpipe each store is a
        // scalar loop over the lanes, which no multiply-add overlaps).
        let store_bound = case.stored.map_or("-".to_string(), |shape| {
            let arithmetic = case.flops / self.peak;
            let stores = self.tile_stores(shape);
            format!("{:.2}", arithmetic / (arithmetic + stores))
        });
        let vs_cpu = case
            .cpu_seconds
            .map_or("-".to_string(), |c| format!("{:.2}x", c / seconds));
        let row = format!(
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {:.1e} |",
            case.name,
            case.shape,
            case.variant,
            seconds * 1e3,
            wall * 1e3,
            rate,
            of_ceiling,
            store_bound,
            vs_cpu,
            err
        );
        println!("{row}");
        self.rows.push(row);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The memory references, measured in the same run: a plain copy kernel (one vec4 read and
/// written per invocation), the memory-bound kernels' reference; a plain store kernel (one
/// vec4 of values that differ per lane written, nothing read), the rate GEMM epilogues store
/// at, at best.
const MEMORY: vit_wgpu::kernels::Shader = vit_wgpu::kernels::Shader {
    name: "memory references (bench)",
    source: "
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst2: array<vec4<f32>>;
// copy and store: len4 vec4; tile_store: C [m = len4, n], a second output when two != 0,
// 16x64 tiles when wide != 0
struct Meta { len4: u32, n: u32, two: u32, wide: u32 }
@group(1) @binding(0) var<uniform> shape: Meta;
@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i < shape.len4) { dst[i] = src[i]; }
}
@compute @workgroup_size(64)
fn store(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let x = f32(i);
    if (i < shape.len4) { dst[i] = vec4<f32>(x, x + 1.0, x * 2.0, x - 3.0); }
}
// The `lanes` GEMM epilogue's store pattern: an 8-lane workgroup per 32x32 tile of C, each
// lane 4 columns of its 32 rows, or per 16x64 tile, each lane columns 4 lane.. and
// 32 + 4 lane.. of its 16 rows, row by row (n % 4 == 0).
@compute @workgroup_size(8)
fn tile_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let rows = select(32u, 16u, shape.wide != 0u);
    let groups = select(1u, 2u, shape.wide != 0u);
    let x = f32(lane) + f32(wid.x);
    for (var r = 0u; r < rows; r++) {
        let row = wid.y * rows + r;
        for (var g = 0u; g < groups; g++) {
            let col = wid.x * 32u * groups + g * 32u + lane * 4u;
            if (row < shape.len4 && col < shape.n) {
                let v = vec4<f32>(x, x + f32(r), x * 2.0, x - 3.0);
                dst[(row * shape.n + col) / 4u] = v;
                if (shape.two != 0u) { dst2[(row * shape.n + col) / 4u] = v * 0.5; }
            }
        }
    }
}
",
};

/// Floats per second of the store kernel over `floats` floats.
fn measure_store(bench: &Bench, floats: usize) -> f64 {
    let g = &bench.gpu;
    let pipeline = g.pipeline(&MEMORY, "store");
    let dst = g.storage("store dst", floats);
    let len4 = (floats / 4) as u32;
    let dispatch = g.dispatch(
        &pipeline,
        &[(1, &dst)],
        &[len4, 0, 0, 0],
        vit_wgpu::gpu::grid_1d(len4.div_ceil(64)),
    );
    let (seconds, _) = bench.time(&[Command::Dispatch(dispatch)]);
    floats as f64 / seconds
}

/// Seconds to store C [m, n] (and a second output) in the `lanes` GEMM epilogue's pattern.
fn measure_tile_stores(bench: &Bench, (m, n, two, wide): (usize, usize, bool, bool)) -> f64 {
    let g = &bench.gpu;
    if !n.is_multiple_of(4) {
        // no GEMM case has such an n; the plain rate stands in
        return (m * n) as f64 * if two { 2.0 } else { 1.0 } / bench.store_rate;
    }
    let pipeline = g.pipeline(&MEMORY, "tile_store");
    let dst = g.storage("tile store C", m * n);
    let dst2 = g.storage("tile store slope", if two { m * n } else { 4 });
    let dispatch = g.dispatch(
        &pipeline,
        &[(1, &dst), (2, &dst2)],
        &[m as u32, n as u32, two as u32, wide as u32],
        if wide {
            let (rows, cols) = WIDE_TILE;
            [n.div_ceil(cols) as u32, m.div_ceil(rows) as u32, 1]
        } else {
            [n.div_ceil(32) as u32, m.div_ceil(32) as u32, 1]
        },
    );
    bench.time(&[Command::Dispatch(dispatch)]).0
}

/// Bytes per second of the copy kernel over `floats` floats (read + write counted).
fn measure_copy(bench: &Bench, floats: usize) -> f64 {
    let g = &bench.gpu;
    let pipeline = g.pipeline(&MEMORY, "copy");
    let src = g.upload("copy src", &vec![1.0f32; floats]);
    let dst = g.storage("copy dst", floats);
    let len4 = (floats / 4) as u32;
    let groups = len4.div_ceil(64);
    let dispatch = g.dispatch(
        &pipeline,
        &[(0, &src), (1, &dst)],
        &[len4, 0, 0, 0],
        vit_wgpu::gpu::grid_1d(groups),
    );
    let (seconds, _) = bench.time(&[Command::Dispatch(dispatch)]);
    2.0 * 4.0 * floats as f64 / seconds
}

/// CPU sgemm (matrixmultiply) seconds for the same layout and shape: median of a few.
fn cpu_sgemm_seconds(layout: Layout, m: usize, n: usize, k: usize, runs: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0.0f32; m * n];
    // strides of op(A) [m, k] and op(B) [k, n] as stored
    let (rsa, csa) = match layout {
        Layout::NN | Layout::NT => (k as isize, 1),
        Layout::TN => (1, m as isize),
    };
    let (rsb, csb) = match layout {
        Layout::NN | Layout::TN => (n as isize, 1),
        Layout::NT => (1, k as isize),
    };
    let mut times: Vec<f64> = (0..=runs)
        .map(|_| {
            let t0 = Instant::now();
            // SAFETY: the pointers cover m*k, k*n and m*n floats with the strides above.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    rsa,
                    csa,
                    b.as_ptr(),
                    rsb,
                    csb,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            t0.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    median(&mut times)
}

struct Preset {
    name: &'static str,
    /// tokens per image (batch 64)
    tokens: usize,
    d: usize,
    f: usize,
    act: Activation,
}

/// One GEMM of a ViT layer: what it is, its shape and its epilogue.
struct GemmShape {
    what: &'static str,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    bias: bool,
    activation: Activation,
    /// saves act'(pre) as training's GELU forward does
    slope: bool,
    act_grad: Option<ActGrad>,
    accumulate: bool,
}

fn layer_gemms(p: &Preset, tokens: usize, quick: bool) -> Vec<GemmShape> {
    let (d, f, m) = (p.d, p.f, tokens);
    let g = |what, layout, m, n, k| GemmShape {
        what,
        layout,
        m,
        n,
        k,
        bias: false,
        activation: Activation::None,
        slope: false,
        act_grad: None,
        accumulate: false,
    };
    let mut v = vec![
        GemmShape {
            bias: true,
            ..g("qkv fwd", Layout::NT, m, 3 * d, d)
        },
        // as in training: GELU saves its slope, ReLU's backward reads the output
        GemmShape {
            bias: true,
            activation: p.act,
            slope: p.act == Activation::Gelu,
            ..g("fc1 fwd", Layout::NT, m, f, d)
        },
    ];
    if !quick {
        v.extend([
            GemmShape {
                bias: true,
                accumulate: true,
                ..g("proj fwd", Layout::NT, m, d, d)
            },
            GemmShape {
                bias: true,
                accumulate: true,
                ..g("fc2 fwd", Layout::NT, m, d, f)
            },
        ]);
    }
    // gradients: dX = dY W (NN), dW = dY^T X (TN, m = out features, k = tokens)
    v.extend([
        g("qkv dX", Layout::NN, m, d, 3 * d),
        g("qkv dW", Layout::TN, 3 * d, d, m),
        GemmShape {
            act_grad: Some(match p.act {
                Activation::Gelu => ActGrad::Slope,
                _ => ActGrad::ReluOutput,
            }),
            ..g("fc2 dX", Layout::NN, m, f, d)
        },
        g("fc1 dW", Layout::TN, f, d, m),
    ]);
    if !quick {
        v.extend([
            g("fc1 dX", Layout::NN, m, d, f),
            g("fc2 dW", Layout::TN, d, f, m),
            g("proj dX", Layout::NN, m, d, d),
            g("proj dW", Layout::TN, d, d, m),
        ]);
    }
    v
}

fn bench_gemm(bench: &mut Bench) {
    let batch = 64;
    let presets = [
        Preset {
            name: "micro",
            tokens: 50,
            d: 64,
            f: 256,
            act: Activation::Gelu,
        },
        Preset {
            name: "tiny",
            tokens: 65,
            d: 192,
            f: 768,
            act: Activation::Gelu,
        },
        Preset {
            name: "labml",
            tokens: 65,
            d: 512,
            f: 2048,
            act: Activation::Relu,
        },
    ];
    // every variant the adapter runs (one line for each it does not)
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|&v| match Gemm::supports(&bench.gpu, v) {
            Ok(()) => true,
            Err(why) => {
                println!("GEMM variant {} not run: {why}", v.name());
                false
            }
        })
        .collect();
    let gemms: Vec<(Gemm, String)> = variants
        .iter()
        .map(|&v| (Gemm::with_variant(&bench.gpu, v), v.name().to_string()))
        .collect();
    for preset in &presets {
        for s in layer_gemms(preset, batch * preset.tokens, bench.quick) {
            let name = format!("{} {}", preset.name, s.what);
            let selected: Vec<&(Gemm, String)> = gemms
                .iter()
                .filter(|(g, label)| {
                    // The tiled (GPU) and registers kernels run at a few GFLOP/s or less on
                    // a CPU adapter; where they are not the variant in use, time them on the
                    // smaller preset's forward only (they are still validated there).
                    let slow = matches!(g.variant(), Variant::Tiled | Variant::Registers)
                        && g.variant() != Gemm::variant_for(&bench.gpu)
                        && bench.gpu.is_cpu()
                        && !(preset.name == "tiny" && s.layout == Layout::NT);
                    !slow && bench.selected(&format!("gemm {name} {label}$"))
                })
                .collect();
            if selected.is_empty() {
                continue;
            }
            let cpu_seconds = cpu_sgemm_seconds(s.layout, s.m, s.n, s.k, bench.runs());
            for (gemm, label) in selected {
                bench_one_gemm(bench, gemm, label, &name, &s, cpu_seconds);
            }
        }
    }
}

fn bench_one_gemm(
    bench: &mut Bench,
    gemm: &Gemm,
    label: &str,
    name: &str,
    s: &GemmShape,
    cpu_seconds: f64,
) {
    let (m, n, k) = (s.m, s.n, s.k);
    let a = random_vec(&mut bench.rng, m * k, 1.0);
    let b = random_vec(&mut bench.rng, n * k, 1.0);
    let bias = random_vec(&mut bench.rng, n, 1.0);
    let aux = random_vec(&mut bench.rng, m * n, 1.0);
    let c0 = random_vec(&mut bench.rng, m * n, 1.0);
    let g = &bench.gpu;
    let (ba, bb, bbias, baux, bc) = (
        g.upload("a", &a),
        g.upload("b", &b),
        g.upload("bias", &bias),
        g.upload("aux", &aux),
        g.upload("c", &c0),
    );
    let bslope = g.storage("slope", m * n);
    let args = GemmArgs {
        a: (&ba).into(),
        b: (&bb).into(),
        c: (&bc).into(),
        m,
        n,
        k,
        layout: s.layout,
        bias: s.bias.then(|| (&bbias).into()),
        slope: s.slope.then_some(&bslope),
        activation: s.activation,
        act_grad: s.act_grad.map(|grad| (&baux, grad)),
        accumulate: s.accumulate,
    };
    let commands = g.commands(gemm, &args);
    // the tiles the `lanes` kernel stores C in for this shape and epilogue
    let wide = LanesPlan::for_args(&args).wide;
    // Validate the first and last 32 rows (every column) against the f64 reference.
    let check = |gpu: &Gpu| {
        let ours: Vec<f32> = block_on(gpu.read(&bc)).expect("read-back");
        let mut reference = c0.clone();
        let epilogue = Epilogue {
            bias: s.bias.then_some(&bias[..]),
            activation: s.activation,
            act_grad: s.act_grad.map(|grad| (&aux[..], grad)),
            accumulate: s.accumulate,
        };
        let rows: Vec<usize> = (0..m.min(32))
            .chain(m.saturating_sub(32).max(32)..m)
            .collect();
        for range in [0..m.min(32), m.saturating_sub(32).max(32)..m] {
            reference_gemm::gemm(
                &mut reference,
                None,
                &a,
                &b,
                m,
                n,
                k,
                s.layout,
                &epilogue,
                range,
            );
        }
        let pick = |v: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| v[r * n..(r + 1) * n].to_vec())
                .collect()
        };
        relative_error(&pick(&ours), &pick(&reference)).0
    };
    let mut epilogue = Vec::new();
    if s.bias {
        epilogue.push("+bias".to_string());
    }
    if s.activation != Activation::None {
        epilogue.push(format!("{:?}", s.activation).to_lowercase());
    }
    if s.slope {
        epilogue.push("+slope".into());
    }
    match s.act_grad {
        Some(ActGrad::Slope) => epilogue.push("*slope".into()),
        Some(ActGrad::ReluOutput) => epilogue.push("*relu'".into()),
        None => {}
    }
    if s.accumulate {
        epilogue.push("+=".into());
    }
    let case = Case {
        name: format!("{name} {}", epilogue.join(" ")).trim().to_string(),
        shape: format!("{m}x{n}x{k} {:?}", s.layout),
        variant: if wide && label.starts_with("lanes") {
            format!("{label} 16x64")
        } else {
            label.to_string()
        },
        flops: 2.0 * (m * n * k) as f64,
        cpu_seconds: Some(cpu_seconds),
        bytes: None,
        stored: Some((m, n, s.slope, wide)),
        commands,
    };
    bench.run(case, check);
}

fn main() {
    // matrixmultiply reads this once; the comparison is with 2 threads like the adapter.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "2");
    }
    let quick = std::env::var("VIT_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    // `cargo bench` passes `--bench`; everything else not starting with `-` filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.to_lowercase())
        .collect();
    let gpu = block_on(Gpu::new(&GpuOptions::default())).unwrap_or_else(|e| panic!("{e}"));
    let timer = PassTimer::new(&gpu);
    let peak = block_on(vit_wgpu::kernels::peak::measure_fma_ceiling(
        &gpu,
        timer.as_ref(),
        if quick { 256 } else { 1024 },
    ))
    .expect("peak_fma launch");
    println!("adapter: {}", gpu.describe().trim_end());
    println!(
        "arithmetic ceiling (peak_fma.wgsl): {:.1} GFLOP/s; timing: {}; CPU sgemm: matrixmultiply, {} threads\n",
        peak * 1e-9,
        if timer.is_some() { "GPU timestamps, median" } else { "wall clock, median" },
        std::env::var("MATMUL_NUM_THREADS").unwrap_or_default()
    );
    let mut bench = Bench {
        gpu,
        timer,
        quick,
        filters,
        peak,
        copy_bandwidth: 0.0,
        store_rate: 0.0,
        tile_store_seconds: Default::default(),
        rows: Vec::new(),
        rng: rand::rngs::StdRng::seed_from_u64(1),
    };
    // LayerNorm's rows are 64*65 x 512 floats at most: copy that much.
    bench.copy_bandwidth = measure_copy(&bench, 64 * 65 * 512);
    bench.store_rate = measure_store(&bench, 64 * 65 * 512);
    println!(
        "memory reference (plain vec4 copy kernel, 64x65x512 floats): {:.1} GB/s; plain vec4 stores: {:.2} ns per float\n",
        bench.copy_bandwidth * 1e-9,
        1e9 / bench.store_rate
    );
    println!("| kernel | shape m x n x k | variant | ms | ms wall (+copies) | GFLOP/s or GB/s | of ceiling (FMA; copy for GB/s) | store-bound (FMA at ceiling + C stored in the lanes kernel's tiles) | vs CPU sgemm | rel. error |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // Kernel families; each filters its cases by name ("gemm tiny qkv fwd lanes").
    bench_gemm(&mut bench);
    bench_attention(&mut bench);
    bench_layernorm(&mut bench);
    if bench.rows.is_empty() {
        println!("(no case matches the filter {:?})", bench.filters);
        return;
    }
    // The ratios above use the ceiling measured at the start; on a shared machine it drifts.
    let end = block_on(vit_wgpu::kernels::peak::measure_fma_ceiling(
        &bench.gpu,
        bench.timer.as_ref(),
        if quick { 256 } else { 1024 },
    ))
    .expect("peak_fma launch");
    println!(
        "\narithmetic ceiling measured again at the end: {:.1} GFLOP/s (the ratios use the start's {:.1})",
        end * 1e-9,
        bench.peak * 1e-9
    );
}

/// Attention forward and backward at the tiny (3 heads) and labml (8 heads) shapes with 65
/// and 197 tokens, head dim 64, and micro's (4 heads of 16, 50 tokens); validated on the
/// first image of the batch (images are independent) against the f64 reference.
fn bench_attention(bench: &mut Bench) {
    use vit_wgpu::kernels::attention::{Attention, Variant};
    for v in Variant::ALL {
        match Attention::supports(&bench.gpu, v) {
            Ok(()) => bench_attention_variant(bench, Attention::with_variant(&bench.gpu, v)),
            Err(why) => println!("attention variant {} not run: {why}", v.name()),
        }
    }
}

fn bench_attention_variant(bench: &mut Bench, kernel: vit_wgpu::kernels::attention::Attention) {
    use vit_wgpu::kernels::attention::{
        bench_cases, Attention, AttentionBackward, AttentionForward,
    };
    use vit_wgpu::reference::attention as reference;
    let variant = kernel.variant().name().to_string();
    let mut cases = bench_cases();
    if bench.quick {
        // The variant in use: tiny at 65 and 197 tokens, and micro. The others (GPU kernels
        // on a CPU adapter run at well under 1 GFLOP/s): 65 tokens only.
        let in_use = kernel.variant() == Attention::new(&bench.gpu).variant();
        cases.truncate(if in_use { 3 } else { 1 });
    }
    for s in cases {
        let label = match s.heads {
            3 => "tiny",
            4 => "micro",
            _ => "labml",
        };
        let shape = format!("B{} N{} A{} d{}", s.batch, s.tokens, s.heads, s.head_dim);
        for pass in ["fwd", "bwd"] {
            let name = format!("{label} attention {pass}");
            if !bench.selected(&format!("attention {name} {variant}")) {
                continue;
            }
            let g = &bench.gpu;
            let qkv = random_vec(&mut bench.rng, s.qkv_len(), 1.0);
            let d_o = random_vec(&mut bench.rng, s.out_len(), 1.0);
            let bqkv = g.upload("qkv", &qkv);
            let bo = g.storage("o", s.out_len());
            let blse = g.storage("lse", s.lse_len());
            let bdo = g.upload("dO", &d_o);
            let bdqkv = g.storage("dqkv", s.qkv_len());
            let scratch = g.storage("scratch", Attention::scratch_len(s));
            // The forward's outputs feed the backward.
            let forward = AttentionForward {
                shape: s,
                qkv: &bqkv,
                o: &bo,
                lse: &blse,
            };
            g.launch(&kernel, &forward);
            let (commands, flops) = if pass == "fwd" {
                (g.commands(&kernel, &forward), Attention::flops_forward(s))
            } else {
                let backward = AttentionBackward {
                    shape: s,
                    qkv: &bqkv,
                    o: &bo,
                    lse: &blse,
                    d_o: &bdo,
                    dqkv: &bdqkv,
                    scratch: &scratch,
                };
                (g.commands(&kernel, &backward), Attention::flops_backward(s))
            };
            let one = vit_wgpu::kernels::attention::AttentionShape { batch: 1, ..s };
            let check = |g: &Gpu| {
                let q1 = &qkv[..one.qkv_len()];
                let mut o = vec![0.0; one.out_len()];
                let mut lse = vec![0.0; one.lse_len()];
                reference::forward(&mut o, &mut lse, q1, 1, s.tokens, s.heads, s.head_dim);
                if pass == "fwd" {
                    let ours: Vec<f32> = block_on(g.read(&bo)).expect("read");
                    relative_error(&ours[..one.out_len()], &o).0
                } else {
                    let mut dqkv = vec![0.0; one.qkv_len()];
                    reference::backward(
                        &mut dqkv,
                        &d_o[..one.out_len()],
                        q1,
                        &o,
                        &lse,
                        1,
                        s.tokens,
                        s.heads,
                        s.head_dim,
                    );
                    let ours: Vec<f32> = block_on(g.read(&bdqkv)).expect("read");
                    relative_error(&ours[..one.qkv_len()], &dqkv).0
                }
            };
            let case = Case {
                name,
                shape: shape.clone(),
                variant: variant.clone(),
                flops,
                cpu_seconds: None,
                bytes: None,
                stored: None,
                commands,
            };
            bench.run(case, check);
        }
    }
}

/// LayerNorm forward and backward at the tiny and labml widths, M = 64*65 rows; memory
/// bound, so reported in GB/s (bytes read and written once).
fn bench_layernorm(bench: &mut Bench) {
    use vit_wgpu::kernels::layernorm::{LayerNorm, LayerNormBackward, LayerNormForward};
    use vit_wgpu::reference::layernorm as reference;
    let cpu = vit_wgpu::kernels::cpu::layernorm::for_adapter(&bench.gpu);
    let kernel = LayerNorm::new(&bench.gpu, cpu);
    let widths: &[(&str, usize)] = if bench.quick {
        &[("tiny", 192)]
    } else {
        &[("tiny", 192), ("labml", 512)]
    };
    for &(label, cols) in widths {
        let rows = 64 * 65;
        for pass in ["fwd", "bwd"] {
            let name = format!("{label} layernorm {pass}");
            if !bench.selected(&name) {
                continue;
            }
            let g = &bench.gpu;
            let n = rows * cols;
            let x = random_vec(&mut bench.rng, n, 1.0);
            let dy = random_vec(&mut bench.rng, n, 1.0);
            let gamma = random_vec(&mut bench.rng, cols, 1.0);
            let beta = random_vec(&mut bench.rng, cols, 1.0);
            let (bx, bdy, bg, bb) = (
                g.upload("x", &x),
                g.upload("dy", &dy),
                g.upload("g", &gamma),
                g.upload("b", &beta),
            );
            let (by, bm, br) = (
                g.storage("y", n),
                g.storage("mean", rows),
                g.storage("rstd", rows),
            );
            let (bdx, bdg, bdb) = (
                g.storage("dx", n),
                g.storage("dg", cols),
                g.storage("db", cols),
            );
            let scratch = g.storage("scratch", LayerNorm::scratch_len(rows, cols));
            let fwd = LayerNormForward {
                x: &bx,
                gamma: (&bg).into(),
                beta: (&bb).into(),
                y: &by,
                mean: &bm,
                rstd: &br,
                rows,
                cols,
                eps: 1e-5,
            };
            g.launch(&kernel, &fwd);
            let (mut y, mut mean, mut rstd) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
            reference::forward(
                &mut y, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, 1e-5,
            );
            let (commands, bytes): (Vec<Command>, f64) = if pass == "fwd" {
                (g.commands(&kernel, &fwd), 2.0 * n as f64 * 4.0)
            } else {
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
                    // as in training, where dx is the residual stream's gradient
                    accumulate: true,
                };
                // dx pass reads dy, x and dx and writes dx; the parameter pass reads dy and x
                // again
                (g.commands(&kernel, &args), 6.0 * n as f64 * 4.0)
            };
            let check = |g: &Gpu| {
                if pass == "fwd" {
                    relative_error(&block_on(g.read::<f32>(&by)).expect("read"), &y).0
                } else {
                    let (mut dx, mut dg, mut db) = (vec![0.0; n], vec![0.0; cols], vec![0.0; cols]);
                    reference::backward(
                        &mut dx, &mut dg, &mut db, &dy, &x, &gamma, &mean, &rstd, rows, cols, true,
                    );
                    let e1 = relative_error(&block_on(g.read::<f32>(&bdx)).expect("read"), &dx).0;
                    let e2 = relative_error(&block_on(g.read::<f32>(&bdg)).expect("read"), &dg).0;
                    e1.max(e2)
                }
            };
            let case = Case {
                name,
                shape: format!("{rows}x{cols}"),
                variant: "-".into(),
                flops: 0.0,
                cpu_seconds: None,
                bytes: Some(bytes),
                stored: None,
                commands,
            };
            bench.run(case, check);
        }
    }
}
