//! GEMM C [m, n] = op(A) op(B) with a fused epilogue, in the three layouts a linear layer
//! with PyTorch-style [out, in] weights needs:
//!
//! | layout | A | B | C | use |
//! |---|---|---|---|---|
//! | `NT` | [m, k] | [n, k] | A B^T | forward, Y = X W^T |
//! | `NN` | [m, k] | [k, n] | A B | input gradient, dX = dY W |
//! | `TN` | [k, m] | [k, n] | A^T B | weight gradient, dW = dY^T X |
//!
//! Epilogue, in this order: `+ bias[n]`; write the activation's slope act'(pre-activation)
//! to a second buffer (`slope`, saved for the backward); activation; multiply by act'(pre)
//! of a later layer, from what its forward saved (`act_grad`: the backward through it);
//! then C = result, or C += result when `accumulate`.
//!
//! Variants (chosen once per device by capability, see `Gemm::choose`; overridden with
//! VIT_GEMM_VARIANT=tiled|registers|lanes|lanes-storage):
//! - `Tiled` for GPUs: workgroup memory, 8x8 (or 4x4) register blocks, vec4 loads, split-K
//!   for weight gradients (shaders/gemm_tiled.wgsl);
//! - `Lanes` / `LanesStorage` for CPU adapters with subgroups of exactly 8 lanes (lavapipe),
//!   where every storage load is a per-lane loop and loads per multiply-add set the speed
//!   (shaders/gemm_lanes.wgsl);
//! - `Registers` for CPU adapters without them (llvmpipe on GL): no workgroup memory, no
//!   barriers, 4x4 register blocks read straight from storage.

use super::cpu::texture;
use super::{PipelineSpec, GEMM_LANES, GEMM_TILED};
use crate::gpu::caps::{self, Choice};
use crate::gpu::{div_ceil, grid_1d, Bind, Command, Gpu, Record, View};

pub use crate::ops::{ActGrad, Activation, Layout};

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::NN, Layout::NT, Layout::TN];

    fn index(self) -> usize {
        match self {
            Layout::NN => 0,
            Layout::NT => 1,
            Layout::TN => 2,
        }
    }

    /// (rows, cols) of the row-major A and B buffers.
    pub fn shapes(self, m: usize, n: usize, k: usize) -> ((usize, usize), (usize, usize)) {
        match self {
            Layout::NN => ((m, k), (k, n)),
            Layout::NT => ((m, k), (n, k)),
            Layout::TN => ((k, m), (k, n)),
        }
    }
}

impl Activation {
    fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
        }
    }
}

impl ActGrad {
    /// The shaders' ACT_GRAD / `act_grad` (0 is none).
    fn code(self) -> u32 {
        match self {
            ActGrad::ReluOutput => 1,
            ActGrad::Slope => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Workgroup-memory tiling with 8x8 register blocks and split-K, for GPUs.
    Tiled,
    /// For CPU adapters with 8-wide subgroups: register blocks, loads shared with
    /// `subgroupBroadcast`, operands read through rgba32float textures where their shape
    /// allows (else storage buffers).
    Lanes,
    /// `Lanes` with both operands always read from storage buffers (for comparison).
    LanesStorage,
    /// For CPU adapters without 8-lane subgroups: 4x4 register blocks, no workgroup memory.
    Registers,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Tiled,
        Variant::Lanes,
        Variant::LanesStorage,
        Variant::Registers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Tiled => "tiled",
            Variant::Lanes => "lanes",
            Variant::LanesStorage => "lanes-storage",
            Variant::Registers => "registers",
        }
    }
}

pub struct GemmArgs<'a> {
    pub a: View<'a>, // [m, k] (NN, NT) or [k, m] (TN)
    pub b: View<'a>, // [k, n] (NN, TN) or [n, k] (NT)
    pub c: View<'a>, // [m, n], = or += (accumulate); never also bound as a, b or aux
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub layout: Layout,
    pub bias: Option<View<'a>>,          // [n]
    pub slope: Option<&'a wgpu::Buffer>, // [m, n] out: act'(result + bias)
    pub activation: Activation,
    pub act_grad: Option<(&'a wgpu::Buffer, ActGrad)>, // [m, n]: result *= act'(pre) from it
    pub accumulate: bool,
}

impl GemmArgs<'_> {
    /// `Plan::for_cpu` for this GEMM: its epilogue moves C, plus a saved slope, an
    /// act'(pre) read and C's old value when it has them.
    pub fn cpu_plan(&self) -> Plan {
        let epilogue_floats = 1
            + self.slope.is_some() as usize
            + self.act_grad.is_some() as usize
            + self.accumulate as usize;
        Plan::for_cpu(self.m, self.n, self.k, self.layout, epilogue_floats)
    }
}

/// The shape record; gemm_lanes.wgsl reads the first eight fields.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    has_slope: u32,
    activation: u32,
    act_grad: u32,
    accumulate: u32,
    k_chunk: u32,
    splits: u32,
    /// `Lanes`: the first row of C this launch's tiles start at.
    row_base: u32,
    /// `Lanes`: the first k of this launch's chunk (`k_chunk` long).
    k_begin: u32,
}

/// Tiles of C: Tiled 64 BLOCKS square (16x16 invocations), Registers 32x32 (8x8
/// invocations of 4x4), Lanes 32x32 per 8-lane subgroup.
const TILED_TILE: usize = 64;
const TILED_TK: usize = 16;
const REGISTERS_TILE: usize = 32;
const CPU_TILE: usize = 32;
const CPU_LANES: u32 = 8;
/// Tiled's workgroup: 256 invocations, two [16][32] vec4 tiles in workgroup memory.
const TILED_INVOCATIONS: u32 = 256;
const TILED_WORKGROUP_BYTES: u32 = 2 * 16 * 32 * 16;
/// Enough workgroups to fill a large GPU (an RTX 4090 has 128 SMs; an H100 132).
const TARGET_WORKGROUPS: usize = 128;
/// Split-K never makes a split shorter than this many k.
const MIN_SPLIT_K: usize = 256;
const MAX_SPLITS: usize = 32;
/// `Lanes`: the most A and B bytes a k-chunk reads. Weight gradients walk k through A's
/// and B's column strips; in chunks of 4-6 MB the strips a chunk's tiles share stay in the
/// core's 2 MiB L2 and the last-level cache. Measured on llvmpipe (2026-12-02, a lab binary
/// timing 1-8 chunks of one shape interleaved, five rounds): tiny's qkv dW (12.8 MB) 1.04x
/// in 2 chunks, 1.10x in 3, fc1 and fc2 dW (16 MB) 1.04-1.24x in 3-4; labml's batch-16 qkv,
/// fc1 and fc2 dW (8.5-10.6 MB) 1.10-1.14x in 2; at batch 64 (34-43 MB) 6-8 chunks ran
/// 1.12-1.23x faster than the 3 a 16 MiB bound gave. Small ones lose: labml's proj dW
/// (4.3 MB, one chunk) ran 0.94x in 2, tiny's (6.4 MB, just over the bound: 2) 0.97x (each
/// chunk's pass over C paid over fewer k).
const CPU_CHUNK_BYTES: usize = 6 << 20;
const MIN_CPU_CHUNK_K: usize = 256;
/// B past this runs in column bands (`Plan::for_cpu`): a core's L2 on the machines measured.
const CPU_BAND_B_BYTES: usize = 2 << 20;
/// `Lanes` 16x64 tiles (rows, columns): the same 128 accumulators per lane as 16 rows x 8
/// columns, so a tile stores 16 rows of 256 bytes rather than 32 of 128. On llvmpipe a C
/// stored in 32x32 tiles cost 2.2-2.7x a plain contiguous store per float once it outgrew
/// the caches (3.7-4.4 ns per float against 1.4-2.0 for 16x64 tiles into buffers not in
/// cache, a lab kernel, 2026-12-03), but a 16x64 tile loads 2 vec4 of A and 8 of B per 4 k
/// for the same products (against 4 and 4), so it wins only where the stores weigh as much
/// as the arithmetic: k at most 96 per float the epilogue moves, C past a core's L2.
/// Measured in one process alternating the two, 15 rounds per shape, two runs: micro's k =
/// 64 forwards and fc2 dX 1.15-1.28x, tiny's fc1 forward (GELU + slope) 1.19-1.31x and fc2
/// dX (x slope) 1.20-1.22x, tiny's proj forward adding into C 0.99-1.17x; not taken: tiny's
/// qkv forward (k = 192, C alone) 1.02-1.05x, 0.82-0.93x at k >= 256 (labml's, tiny's fc2
/// forward, micro's fc2 forward), 0.88-0.95x for C of 0.8 MB (micro's n = 64), 0.90-0.92x for
/// tiny's proj dX. In place (`bench --profile`, alternated): tiny's n = 768 launches
/// 1.15-1.28x, micro's n = 256 1.12-1.34x.
pub const WIDE_TILE: (usize, usize) = (16, 64);
const WIDE_MAX_K_PER_FLOAT: usize = 96;
const WIDE_MIN_C_BYTES: usize = 2 << 20;

/// Whether the step may run a C of `n` columns as 16x64 tiles: whole 64-column tiles, and
/// not a weight gradient (TN; the kernel runs TN, and the tests check it, but there the
/// extra B loads of a 16x64 tile cost more than its stores save).
fn wide_tiles_fit(n: usize, layout: Layout) -> bool {
    layout != Layout::TN && n.is_multiple_of(WIDE_TILE.1)
}

/// How `Tiled` runs one shape: `blocks` 4x4 blocks per invocation per axis (1: 64x64
/// tiles, 2: 128x128) and `splits` of k (1: no split-K); `Lanes` reads `splits`, `band`,
/// the column tiles it runs as one band over every row tile (0: row tile by row tile), and
/// `wide`: 16x64 tiles of C instead of 32x32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub blocks: u32,
    pub splits: u32,
    pub band: u32,
    pub wide: bool,
}

impl Plan {
    /// The large tile when the shape still gives `TARGET_WORKGROUPS` of them; split-K for
    /// weight gradients (TN) whose tiles alone would leave most of a GPU idle.
    pub fn for_shape(m: usize, n: usize, k: usize, layout: Layout) -> Plan {
        let tiles = |t: usize| m.div_ceil(t) * n.div_ceil(t);
        let blocks = if tiles(2 * TILED_TILE) >= TARGET_WORKGROUPS / 2 {
            2
        } else {
            1
        };
        let count = tiles(TILED_TILE * blocks as usize);
        let mut splits = 1;
        if layout == Layout::TN && count < TARGET_WORKGROUPS {
            splits = TARGET_WORKGROUPS
                .div_ceil(count)
                .min(k / MIN_SPLIT_K)
                .clamp(1, MAX_SPLITS);
        }
        Plan {
            blocks,
            splits: splits as u32,
            band: 0,
            wide: false,
        }
    }

    /// `Lanes` (CPU adapters): split-K for weight gradients whose operands outgrow the
    /// cache, as chunks of k run one after another, each adding into C, every chunk at most
    /// `CPU_CHUNK_BYTES` of operands (measurements there). Bands of 2 column
    /// tiles for an input gradient (NN) whose B outgrows a core's cache: row by row, every
    /// tile's 32 columns of B come from the last-level cache, a k-row apart each (labml's fc2
    /// dX 1.06-1.2x in four runs, qkv and fc1 dX 0.9-1.1x; the forward's B, a weight read
    /// along its rows, gained nothing). 16x64 tiles (`wide`) where the epilogue's stores
    /// weigh as much as the arithmetic (see `WIDE_TILE`); `epilogue_floats` is the floats
    /// the epilogue moves per element of C: 1 for C alone, one more for a saved slope, an
    /// act'(pre) read or C's old value read to accumulate into.
    pub fn for_cpu(m: usize, n: usize, k: usize, layout: Layout, epilogue_floats: usize) -> Plan {
        let operand_bytes = 4 * k * (m + n);
        let splits = if layout == Layout::TN {
            operand_bytes
                .div_ceil(CPU_CHUNK_BYTES)
                .min(k / MIN_CPU_CHUNK_K)
                .max(1)
        } else {
            1
        };
        let band = if layout == Layout::NN && 4 * k * n > CPU_BAND_B_BYTES {
            2
        } else {
            0
        };
        let wide = wide_tiles_fit(n, layout)
            && k <= WIDE_MAX_K_PER_FLOAT * epilogue_floats
            && 4 * m * n >= WIDE_MIN_C_BYTES;
        Plan {
            blocks: 1,
            splits: splits as u32,
            band,
            wide,
        }
    }

    /// k per split, a multiple of the k-tile, and the number of splits that gives.
    fn chunk(self, k: usize) -> (usize, usize) {
        let chunk = k.div_ceil(self.splits as usize).div_ceil(TILED_TK) * TILED_TK;
        (chunk, k.div_ceil(chunk))
    }
}

/// Which operands are read as vec4: their contiguous axis is a multiple of 4.
fn vec4_operands(layout: Layout, m: usize, n: usize, k: usize) -> (bool, bool) {
    let a = match layout {
        Layout::TN => m,
        _ => k,
    };
    let b = match layout {
        Layout::NT => k,
        _ => n,
    };
    (a.is_multiple_of(4), b.is_multiple_of(4))
}

/// The pipeline for one variant, layout and operand options.
fn spec(variant: Variant, layout: Layout, o: Options) -> PipelineSpec {
    let l = layout.index() as f64;
    let flag = |b: bool| b as u32 as f64;
    match variant {
        Variant::Tiled if o.reduce => PipelineSpec {
            shader: GEMM_TILED,
            entry: "gemm_reduce",
            constants: vec![],
        },
        Variant::Tiled => PipelineSpec {
            shader: GEMM_TILED,
            entry: "gemm_tiled",
            constants: vec![
                ("LAYOUT", l),
                ("BLOCKS", o.blocks as f64),
                ("A_VEC4", flag(o.a_vec4)),
                ("B_VEC4", flag(o.b_vec4)),
                ("SPLIT", flag(o.split)),
            ],
        },
        Variant::Registers => PipelineSpec {
            shader: GEMM_TILED,
            entry: "gemm_registers",
            constants: vec![
                ("LAYOUT", l),
                ("A_VEC4", flag(o.a_vec4)),
                ("B_VEC4", flag(o.b_vec4)),
            ],
        },
        Variant::Lanes | Variant::LanesStorage => PipelineSpec {
            shader: GEMM_LANES,
            entry: if o.wide { "gemm_cpu_wide" } else { "gemm_cpu" },
            constants: vec![
                ("LAYOUT", l),
                ("A_TEXTURE", flag(o.a_tex)),
                ("B_TEXTURE", flag(o.b_tex)),
                ("VEC4", flag(o.vec4)),
                ("K_STEPS", K_STEPS as f64),
                ("HAS_BIAS", flag(o.epilogue.bias)),
                ("HAS_SLOPE", flag(o.epilogue.slope)),
                ("ACTIVATION", o.epilogue.activation as f64),
                ("ACT_GRAD", o.epilogue.act_grad as f64),
                ("ACCUMULATE", flag(o.epilogue.accumulate)),
                ("AUX_TEXTURE", flag(o.aux_tex)),
                ("C_TEXTURE", flag(o.c_tex)),
                ("ALIGNED", flag(o.aligned)),
                ("ROWS_FAST", flag(o.rows_fast)),
                ("BAND", o.band as f64),
            ],
        },
    }
}

/// Steps of 4 k per loop trip of the `Lanes` kernel. llvmpipe blends every accumulator with
/// the execution mask once per trip (one vblendvps per value), so two steps halve that.
/// Measured with three orders of 1 and 2 alternated (`cargo bench --bench kernels -- gemm`,
/// 2026-12-02): two ran NT forwards 1.1-1.18x faster at labml's shapes and 1.02-1.2x at
/// tiny's and micro's, NN input gradients 1.05-1.1x (labml's fc1 and proj the same), TN as
/// before; tiny's whole step 1.04x (median of five pairs). Four ran no faster at tiny's and
/// micro's shapes (TN slower).
const K_STEPS: usize = 2;

/// The choices a pipeline is specialised on (each variant reads the ones it has).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Options {
    blocks: u32,
    a_vec4: bool,
    b_vec4: bool,
    split: bool,
    reduce: bool,
    a_tex: bool,
    b_tex: bool,
    vec4: bool,
    epilogue: Epilogue,
    aux_tex: bool,
    c_tex: bool,
    aligned: bool,
    rows_fast: bool,
    band: u32,
    wide: bool,
}

/// The epilogue as the `Lanes` kernels take it: override constants, one pipeline each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Epilogue {
    bias: bool,
    slope: bool,
    activation: u32,
    act_grad: u32,
    accumulate: bool,
}

impl Epilogue {
    fn of(meta: &Meta) -> Epilogue {
        Epilogue {
            bias: meta.has_bias != 0,
            slope: meta.has_slope != 0,
            activation: meta.activation,
            act_grad: meta.act_grad,
            accumulate: meta.accumulate != 0,
        }
    }

    /// Every epilogue `GemmArgs` can ask for.
    fn all() -> Vec<Epilogue> {
        let mut all = Vec::new();
        for bias in [false, true] {
            for slope in [false, true] {
                for activation in 0..3 {
                    for act_grad in 0..3 {
                        for accumulate in [false, true] {
                            all.push(Epilogue {
                                bias,
                                slope,
                                activation,
                                act_grad,
                                accumulate,
                            });
                        }
                    }
                }
            }
        }
        all
    }
}

/// Every pipeline a variant can build (the translation test compiles each for Metal,
/// DX12 and Vulkan).
pub fn pipeline_specs(variant: Variant) -> Vec<PipelineSpec> {
    let mut specs = Vec::new();
    let bools = [false, true];
    for layout in Layout::ALL {
        for x in bools {
            for y in bools {
                let o = |more: Options| Options {
                    a_vec4: x,
                    b_vec4: y,
                    ..more
                };
                match variant {
                    Variant::Tiled => {
                        for blocks in [1, 2] {
                            for split in bools {
                                if split && layout != Layout::TN {
                                    continue;
                                }
                                let more = Options {
                                    blocks,
                                    split,
                                    ..Default::default()
                                };
                                specs.push(spec(variant, layout, o(more)));
                            }
                        }
                    }
                    Variant::Registers => specs.push(spec(variant, layout, o(Options::default()))),
                    Variant::Lanes | Variant::LanesStorage => {
                        if variant == Variant::LanesStorage && (x || y) {
                            continue;
                        }
                        // aux and C come from textures only with vec4 rows, in `Lanes`
                        let textures = |vec4: bool, wanted: bool| {
                            if vec4 && wanted && variant == Variant::Lanes {
                                vec![false, true]
                            } else {
                                vec![false]
                            }
                        };
                        for vec4 in bools {
                            for epilogue in Epilogue::all() {
                                for aux_tex in textures(vec4, epilogue.act_grad != 0) {
                                    for c_tex in textures(vec4, epilogue.accumulate) {
                                        for wide in bools {
                                            let more = Options {
                                                a_tex: x,
                                                b_tex: y,
                                                vec4,
                                                epilogue,
                                                aux_tex,
                                                c_tex,
                                                wide,
                                                ..Default::default()
                                            };
                                            specs.push(spec(variant, layout, more));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if variant == Variant::Tiled {
        let reduce = Options {
            reduce: true,
            ..Default::default()
        };
        specs.push(spec(variant, Layout::TN, reduce));
    }
    specs
}

pub struct Gemm {
    variant: Variant,
    reason: String,
    /// Bound where an optional operand is absent (4 floats: also bound as `array<vec4<f32>>`) (read-only and read-write apart: wgpu
    /// forbids one buffer in both roles in a dispatch).
    dummy_read: wgpu::Buffer,
    dummy_write: wgpu::Buffer,
    dummy_texture: wgpu::TextureView,
}

impl Gemm {
    /// The variant `choose` picks for this adapter.
    pub fn new(gpu: &Gpu) -> Gemm {
        let choice = Gemm::choose(gpu);
        let mut gemm = Gemm::with_variant(gpu, choice.variant);
        gemm.reason = choice.reason;
        gemm
    }

    /// The variant for this adapter and why: on a CPU adapter `Lanes` with 8-lane subgroups,
    /// else `Registers`; on a GPU `Tiled` when its workgroup fits, else `Registers`.
    /// VIT_GEMM_VARIANT forces one the adapter supports.
    pub fn choose(gpu: &Gpu) -> Choice<Variant> {
        let preferred: &[(Variant, &str)] = if gpu.caps.cpu {
            &[
                (
                    Variant::Lanes,
                    "CPU adapter with 8-lane subgroups: loads shared by subgroupBroadcast",
                ),
                (
                    Variant::Registers,
                    "CPU adapter without 8-lane subgroups: register blocks, no workgroup memory",
                ),
            ]
        } else {
            &[
                (
                    Variant::Tiled,
                    "GPU: workgroup-memory tiles, 8x8 register blocks, split-K for weight gradients",
                ),
                (Variant::Registers, "register blocks, no workgroup memory"),
            ]
        };
        caps::choose(
            caps::GEMM_VARIANT_ENV,
            caps::overrides().gemm.as_deref(),
            &Variant::ALL,
            Variant::name,
            |v| Gemm::supports(gpu, v),
            preferred,
        )
    }

    pub fn variant_for(gpu: &Gpu) -> Variant {
        Gemm::choose(gpu).variant
    }

    /// Ok when the adapter runs `variant`, else why not.
    pub fn supports(gpu: &Gpu, variant: Variant) -> Result<(), String> {
        match variant {
            Variant::Tiled => gpu.caps.workgroup(TILED_INVOCATIONS, TILED_WORKGROUP_BYTES),
            Variant::Registers => gpu.caps.workgroup(64, 0),
            // gemm_lanes.wgsl declares its four texture operands in both variants
            Variant::Lanes | Variant::LanesStorage => {
                gpu.caps.exact_subgroups(CPU_LANES)?;
                texture::supported(gpu)
            }
        }
    }

    /// The CPU kernel shares loads across a subgroup of exactly 8 lanes.
    pub fn lanes_variant_supported(gpu: &Gpu) -> bool {
        Gemm::supports(gpu, Variant::Lanes).is_ok()
    }

    /// A given variant; panics if the adapter cannot run it (check `supports` first).
    pub fn with_variant(gpu: &Gpu, variant: Variant) -> Gemm {
        if let Err(why) = Gemm::supports(gpu, variant) {
            panic!(
                "GEMM variant {} on adapter '{}': {why}",
                variant.name(),
                gpu.info.name
            );
        }
        let dummy_texture = texture::placeholder(gpu);
        Gemm {
            variant,
            reason: "chosen by the caller".into(),
            dummy_read: gpu.storage("gemm dummy read", 4),
            dummy_write: gpu.storage("gemm dummy write", 4),
            dummy_texture,
        }
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Why this variant runs here.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Built on first use; `Gpu::pipeline_with` keeps one per (shader, entry, constants).
    fn pipeline(&self, gpu: &Gpu, layout: Layout, o: Options) -> wgpu::ComputePipeline {
        spec(self.variant, layout, o).build(gpu)
    }

    /// `record` with the tile size and split-K of `Tiled` given (tests cover each).
    pub fn record_with_plan(&self, gpu: &Gpu, args: &GemmArgs, plan: Plan) -> Vec<Command> {
        self.record_after(gpu, args, plan, &[])
    }

    /// The commands of one GEMM to append to `recorded` (whose texture copies of the same
    /// operands it reuses, see `texture::rows_of`).
    fn record_after(
        &self,
        gpu: &Gpu,
        args: &GemmArgs,
        plan: Plan,
        recorded: &[Command],
    ) -> Vec<Command> {
        let meta = check_args(gpu, args);
        match self.variant {
            Variant::Tiled => self.record_tiled(gpu, args, meta, plan),
            Variant::Registers => self.record_registers(gpu, args, meta),
            Variant::Lanes | Variant::LanesStorage => {
                self.record_cpu(gpu, args, meta, plan, recorded)
            }
        }
    }

    fn record_tiled(&self, gpu: &Gpu, args: &GemmArgs, mut meta: Meta, plan: Plan) -> Vec<Command> {
        let (m, n, k) = (args.m, args.n, args.k);
        let (a_vec4, b_vec4) = vec4_operands(args.layout, m, n, k);
        // split-K is for weight gradients only (pipeline_specs lists no other)
        let plan = match args.layout {
            Layout::TN => plan,
            _ => Plan { splits: 1, ..plan },
        };
        let (chunk, splits) = plan.chunk(k);
        let split = splits > 1;
        meta.k_chunk = chunk as u32;
        meta.splits = splits as u32;
        let tile = TILED_TILE * plan.blocks as usize;
        let groups = [div_ceil(n, tile), div_ceil(m, tile), splits as u32];
        check_groups(gpu, groups, m, n);
        let o = Options {
            blocks: plan.blocks,
            a_vec4,
            b_vec4,
            split,
            ..Default::default()
        };
        let pipeline = self.pipeline(gpu, args.layout, o);
        let partial = split.then(|| gpu.storage("gemm split-k partial sums", splits * m * n));
        let partial = partial.as_ref().unwrap_or(&self.dummy_write);
        let mut entries = self.epilogue_entries(args);
        entries.extend([
            entry(0, &args.a),
            entry(1, &args.b),
            entry(6, if a_vec4 { &args.a } else { &self.dummy_read }),
            entry(7, if b_vec4 { &args.b } else { &self.dummy_read }),
            entry(8, partial),
        ]);
        let mut commands = vec![Command::Dispatch(gpu.dispatch_with(
            &pipeline,
            &entries,
            &[],
            &meta,
            groups,
        ))];
        if split {
            let reduce = Options {
                reduce: true,
                ..Default::default()
            };
            let pipeline = self.pipeline(gpu, Layout::TN, reduce);
            let mut entries = self.epilogue_entries(args);
            entries.push(entry(8, partial));
            let groups = grid_1d(div_ceil(m * n, 256));
            commands.push(Command::Dispatch(gpu.dispatch_with(
                &pipeline,
                &entries,
                &[],
                &meta,
                groups,
            )));
        }
        commands
    }

    fn record_registers(&self, gpu: &Gpu, args: &GemmArgs, meta: Meta) -> Vec<Command> {
        let (m, n, k) = (args.m, args.n, args.k);
        let (a_vec4, b_vec4) = vec4_operands(args.layout, m, n, k);
        let groups = [div_ceil(n, REGISTERS_TILE), div_ceil(m, REGISTERS_TILE), 1];
        check_groups(gpu, groups, m, n);
        let o = Options {
            a_vec4,
            b_vec4,
            ..Default::default()
        };
        let pipeline = self.pipeline(gpu, args.layout, o);
        let mut entries = self.epilogue_entries(args);
        entries.extend([
            entry(0, &args.a),
            entry(1, &args.b),
            entry(6, if a_vec4 { &args.a } else { &self.dummy_read }),
            entry(7, if b_vec4 { &args.b } else { &self.dummy_read }),
        ]);
        vec![Command::Dispatch(gpu.dispatch_with(
            &pipeline,
            &entries,
            &[],
            &meta,
            groups,
        ))]
    }

    /// C, bias, slope and aux (bindings 2..5), placeholders where absent.
    fn epilogue_entries<'s>(&'s self, args: &'s GemmArgs<'_>) -> Vec<wgpu::BindGroupEntry<'s>> {
        vec![
            entry(2, &args.c),
            match &args.bias {
                Some(bias) => entry(3, bias),
                None => entry(3, &self.dummy_read),
            },
            entry(4, args.slope.unwrap_or(&self.dummy_write)),
            entry(5, args.act_grad.map_or(&self.dummy_read, |(aux, _)| aux)),
        ]
    }

    /// `plan.splits` k-chunks (plain or accumulating epilogues only) run one after
    /// another: the first as asked, the others adding into C, read back from storage.
    fn record_cpu(
        &self,
        gpu: &Gpu,
        args: &GemmArgs,
        meta: Meta,
        plan: Plan,
        recorded: &[Command],
    ) -> Vec<Command> {
        let (m, n, k) = (args.m, args.n, args.k);
        let ((a_rows, a_cols), (b_rows, b_cols)) = args.layout.shapes(m, n, k);
        let wide = plan.wide;
        let (tile_rows, tile_cols) = if wide {
            WIDE_TILE
        } else {
            (CPU_TILE, CPU_TILE)
        };
        let groups = [div_ceil(n, tile_cols), div_ceil(m, tile_rows), 1];
        check_groups(gpu, groups, m, n);
        let mut commands = Vec::new();
        let use_textures = self.variant == Variant::Lanes;
        let mut as_texture = |wanted: bool, operand: View, rows: usize, cols: usize| {
            let (view, copy) = wanted
                .then(|| texture::rows_of(gpu, operand, rows, cols, recorded))
                .flatten()?;
            commands.extend(copy);
            Some(view)
        };
        let a_view = as_texture(use_textures, args.a, a_rows, a_cols);
        let b_view = as_texture(use_textures, args.b, b_rows, b_cols);
        // aux, and C's old value when accumulating, from textures copied before the
        // dispatch (their rows are then a multiple of 64 floats, so vec4 below too).
        let epilogue = Epilogue::of(&meta);
        let aux_view = match args.act_grad {
            Some((aux, _)) => as_texture(use_textures, aux.into(), m, n),
            None => None,
        };
        let c_view = as_texture(use_textures && epilogue.accumulate, args.c, m, n);
        // Rows of C (and of slope and aux) start on 16-byte boundaries: vec4 epilogue.
        let vec4 = n.is_multiple_of(4);
        let o = Options {
            a_tex: a_view.is_some(),
            b_tex: b_view.is_some(),
            vec4,
            epilogue,
            aux_tex: aux_view.is_some(),
            c_tex: c_view.is_some(),
            // a weight gradient with the wider B: 1.1-1.4x at fc2's (tiny, labml), 0.9x
            // when A is the wider (fc1's, qkv's), measured with and without padded rows
            rows_fast: args.layout == Layout::TN && n > m,
            band: plan.band,
            wide,
            ..Default::default()
        };
        let mut entries = self.epilogue_entries(args);
        entries.extend([entry(0, &args.a), entry(1, &args.b)]);
        // The same buffers again as arrays of vec4, used when n % 4 == 0; otherwise
        // placeholders (a vec4 binding needs 16 bytes, more than e.g. a 3-class bias).
        if vec4 {
            entries.extend([
                entry(8, &args.c),
                match &args.bias {
                    Some(bias) => entry(9, bias),
                    None => entry(9, &self.dummy_read),
                },
                entry(10, args.slope.unwrap_or(&self.dummy_write)),
                entry(11, args.act_grad.map_or(&self.dummy_read, |(aux, _)| aux)),
            ]);
        } else {
            entries.extend([
                entry(8, &self.dummy_write),
                entry(9, &self.dummy_read),
                entry(10, &self.dummy_write),
                entry(11, &self.dummy_read),
            ]);
        }
        for (binding, view) in [(6, &a_view), (7, &b_view), (12, &aux_view), (13, &c_view)] {
            entries.push(entry(binding, view.as_ref().unwrap_or(&self.dummy_texture)));
        }
        // When n and k are tile multiples, the whole row tiles run without bounds checks
        // (ALIGNED) and a last partial row tile, if any, in a second launch with them. A
        // remainder of at most 16 rows under 32x32 tiles runs as one row of 16x64 tiles
        // when n allows (labml's batch-16 m = 1040 = 32 x 32 + 16): half the work of a
        // 32-row tile, and none of it bounds-checked when the remainder is exactly 16.
        let full_tiles = m / tile_rows;
        let k_step = 4 * K_STEPS;
        let aligned_cols = n.is_multiple_of(tile_cols) && k.is_multiple_of(k_step);
        let remainder = m % tile_rows;
        let row_launches = if aligned_cols && full_tiles > 0 {
            let mut l = vec![RowLaunch {
                aligned: true,
                wide,
                row_base: 0,
                row_tiles: full_tiles,
            }];
            if remainder > 0 {
                let wide_rest = !wide && remainder <= WIDE_TILE.0 && wide_tiles_fit(n, args.layout);
                l.push(RowLaunch {
                    aligned: wide_rest && remainder == WIDE_TILE.0,
                    wide: wide || wide_rest,
                    row_base: full_tiles * tile_rows,
                    row_tiles: 1,
                });
            }
            l
        } else {
            vec![RowLaunch {
                aligned: false,
                wide,
                row_base: 0,
                row_tiles: m.div_ceil(tile_rows),
            }]
        };
        let plain = Epilogue {
            accumulate: false,
            ..epilogue
        } == Epilogue::default();
        let splits = if plain { plan.splits as usize } else { 1 };
        // chunks of whole loop trips, so a chunk's last step never reads the next one's k
        let chunk = k.div_ceil(splits.max(1)).div_ceil(k_step) * k_step;
        for (index, k_begin) in (0..k).step_by(chunk).enumerate() {
            let o = if index == 0 {
                o
            } else {
                Options {
                    epilogue: Epilogue {
                        accumulate: true,
                        ..epilogue
                    },
                    c_tex: false,
                    ..o
                }
            };
            for launch in &row_launches {
                let o = Options {
                    aligned: launch.aligned,
                    wide: launch.wide,
                    ..o
                };
                let pipeline = self.pipeline(gpu, args.layout, o);
                let col_tiles = n.div_ceil(if launch.wide { WIDE_TILE.1 } else { CPU_TILE }) as u32;
                let row_tiles = launch.row_tiles as u32;
                let meta = Meta {
                    row_base: launch.row_base as u32,
                    k_begin: k_begin as u32,
                    k_chunk: chunk as u32,
                    splits: k.div_ceil(chunk) as u32,
                    accumulate: o.epilogue.accumulate as u32,
                    ..meta
                };
                let groups = if o.rows_fast {
                    [row_tiles, col_tiles, 1]
                } else {
                    [col_tiles, row_tiles, 1]
                };
                commands.push(Command::Dispatch(gpu.dispatch_with(
                    &pipeline,
                    &entries,
                    &[],
                    &meta,
                    groups,
                )));
            }
        }
        commands
    }
}

/// One launch of the `Lanes` kernel over some row tiles of C (all its column tiles).
struct RowLaunch {
    /// Every fetch and store in bounds: no checks (override ALIGNED).
    aligned: bool,
    /// 16x64 tiles (else 32x32).
    wide: bool,
    /// The first row of C its tiles start at.
    row_base: usize,
    row_tiles: usize,
}

fn check_groups(gpu: &Gpu, groups: [u32; 3], m: usize, n: usize) {
    let max_groups = gpu.limits.max_compute_workgroups_per_dimension;
    assert!(
        groups.iter().all(|&g| g <= max_groups),
        "GEMM m={m} n={n} needs {groups:?} workgroups, over the adapter's {max_groups} per dimension"
    );
}

/// Check the buffers against the shape and make the shape record.
fn check_args(gpu: &Gpu, args: &GemmArgs) -> Meta {
    let (m, n, k) = (args.m, args.n, args.k);
    assert!(
        m > 0 && n > 0 && k > 0,
        "GEMM with an empty dimension: m={m} n={n} k={k}"
    );
    let limit = gpu.limits.max_storage_buffer_binding_size;
    let check = |what: &str, buffer: View, floats: usize| {
        let bytes = 4 * floats as u64;
        assert!(
            buffer.bytes() >= bytes,
            "GEMM {what}: buffer of {} bytes is smaller than the {bytes} the shape needs \
             (m={m} n={n} k={k} {:?})",
            buffer.bytes(),
            args.layout
        );
        assert!(
            buffer.bytes() <= limit,
            "GEMM {what}: buffer of {} MiB exceeds the adapter's storage binding limit of \
             {} MiB; use a smaller batch",
            buffer.bytes() >> 20,
            limit >> 20
        );
    };
    check("A", args.a, m * k);
    check("B", args.b, n * k);
    check("C", args.c, m * n);
    if let Some(bias) = args.bias {
        check("bias", bias, n);
    }
    if let Some(slope) = args.slope {
        check("slope", slope.into(), m * n);
    }
    if let Some((aux, _)) = args.act_grad {
        check("act_grad", aux.into(), m * n);
    }
    Meta {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        has_bias: args.bias.is_some() as u32,
        has_slope: args.slope.is_some() as u32,
        activation: args.activation.code(),
        act_grad: args.act_grad.map_or(0, |(_, grad)| grad.code()),
        accumulate: args.accumulate as u32,
        k_chunk: k as u32,
        splits: 1,
        row_base: 0,
        k_begin: 0,
    }
}

/// A buffer or texture at a binding of `@group(0)`.
fn entry(binding: u32, resource: &dyn Bind) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: resource.resource(),
    }
}

/// The commands for one GEMM. Bind groups, textures and the shape record are made here,
/// once; the commands are recorded every step without allocating. With textures, the copy
/// of the operand into its texture is a command before the dispatch.
impl Record<GemmArgs<'_>> for Gemm {
    fn record(&self, gpu: &Gpu, args: &GemmArgs, out: &mut Vec<Command>) {
        let plan = match self.variant {
            Variant::Lanes | Variant::LanesStorage => args.cpu_plan(),
            _ => Plan::for_shape(args.m, args.n, args.k, args.layout),
        };
        let commands = self.record_after(gpu, args, plan, out);
        out.extend(commands);
    }
}
