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
//! VIT_GEMM_VARIANT=tiled|registers|lanes|lanes-storage|lanes4):
//! - `Tiled` for GPUs: workgroup memory, 8x8 (or 4x4) register blocks, vec4 loads, split-K
//!   where a shape has few tiles (shaders/gemm_tiled.wgsl);
//! - `Registers` for CPU adapters without 8-lane subgroups (llvmpipe on GL, SwiftShader in
//!   Chrome): no workgroup memory, no barriers, register blocks read straight from storage:
//!   12x8 with a branch-free k loop when C rows are on 16 bytes, else 4x4;
//! - `Lanes` / `LanesStorage`, the CPU-adapter specialisation (lavapipe: subgroups of
//!   exactly 8 lanes, texture operands), in `kernels::cpu::gemm_lanes`, reached through one
//!   seam: a `Specialisation` that `Gemm` holds when chosen (`kernels::variants` chooses)
//!   and hands every `record`;
//! - `Lanes4`, the specialisation for CPU adapters with 4-lane subgroups (SwiftShader):
//!   `Registers` with 20x8 blocks whose A loads are shared across a quad, in
//!   `kernels::cpu::gemm_lanes4`, through the same seam.
//!
//! The portable path (Tiled, Registers) binds storage buffers only, uses no subgroups and
//! fits `wgpu::Limits::default()`.

use super::{PipelineSpec, GEMM_TILED};
use crate::gpu::{div_ceil, grid_1d, Bind, Command, Gpu, Record, View};

pub use crate::ops::{ActGrad, Activation, Layout};

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::NN, Layout::NT, Layout::TN];

    pub(crate) fn index(self) -> usize {
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
    pub(crate) fn code(self) -> u32 {
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
    /// For CPU adapters with 4-lane subgroups: `Registers` with 20x8 blocks whose A loads are
    /// shared across a quad by quad swaps.
    Lanes4,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Tiled,
        Variant::Lanes,
        Variant::LanesStorage,
        Variant::Registers,
        Variant::Lanes4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Tiled => "tiled",
            Variant::Lanes => "lanes",
            Variant::LanesStorage => "lanes-storage",
            Variant::Registers => "registers",
            Variant::Lanes4 => "lanes4",
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

/// The shape record, shared by both GEMM shaders (each names the fields it does not read
/// as padding).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Meta {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub has_bias: u32,
    pub has_slope: u32,
    pub activation: u32,
    pub act_grad: u32,
    pub accumulate: u32,
    pub k_chunk: u32,
    pub splits: u32,
    /// `Lanes`: the first row of C this launch's tiles start at.
    pub row_base: u32,
    /// `Lanes`: the first k of this launch's chunk (`k_chunk` long).
    pub k_begin: u32,
    /// Portable: A's (B's) contiguous axis is a multiple of 4 (vec4 global loads).
    pub a_vec4: u32,
    pub b_vec4: u32,
    /// Portable: floats per row of the split-K partial sums (n rounded up to 4).
    pub partial_cols: u32,
    /// `Lanes`: workgroup x walks the row tiles (a weight gradient with the wider B).
    pub rows_fast: u32,
    /// `Lanes`: column tiles per band (0: none).
    pub band: u32,
    pub _pad: u32,
}

/// Tiles of C: Tiled 64 BLOCKS square (16x16 invocations), Registers 32x32 (8x8
/// invocations of 4x4).
const TILED_TILE: usize = 64;
const TILED_TK: usize = 16;
const REGISTERS_TILE: usize = 32;
/// `gemm_registers_aligned`'s block of C per invocation (scripts/gen_gemm_registers.py), in
/// 8x8 invocations; `gemm_lanes4`'s blocks are as wide.
const BLOCK_ROWS: usize = 12;
pub(crate) const BLOCK_COLS: usize = 8;
/// Tiled's workgroup: 256 invocations, two [16][32] vec4 tiles in workgroup memory.
const TILED_INVOCATIONS: u32 = 256;
const TILED_WORKGROUP_BYTES: u32 = 2 * 16 * 32 * 16;
/// Workgroups that keep a large GPU busy: WebGPU hides the SM count, and an H100 (132 SMs)
/// holds two of these 256-invocation workgroups per SM, so ~264 fill one wave and 512 leave
/// little idle in the last.
const TARGET_WORKGROUPS: usize = 512;
/// Split-K never makes a split shorter than this many k (32 k-tiles: the prologue and the
/// partial sums' traffic stay small against the arithmetic).
const MIN_SPLIT_K: usize = 512;
const MAX_SPLITS: usize = 32;

/// How `Tiled` runs one shape: `blocks` 4x4 blocks per invocation per axis (1: 64x64
/// tiles, 2: 128x128) and `splits` of k (1: no split-K).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub blocks: u32,
    pub splits: u32,
}

impl Plan {
    /// Sized for resident workgroups: the 128 tile (twice the 64's arithmetic per byte)
    /// when it gives half of `TARGET_WORKGROUPS` alone or with k split; else the 64 tile,
    /// split as far as k allows. Any layout splits (the reduction runs the epilogue).
    pub fn for_shape(m: usize, n: usize, k: usize, _layout: Layout) -> Plan {
        let tiles = |t: usize| m.div_ceil(t) * n.div_ceil(t);
        let splits_for = |tiles: usize| {
            TARGET_WORKGROUPS
                .div_ceil(tiles)
                .min(k / MIN_SPLIT_K)
                .clamp(1, MAX_SPLITS)
        };
        let enough = TARGET_WORKGROUPS / 2;
        let large = tiles(2 * TILED_TILE);
        let (blocks, splits) = if large >= enough {
            (2, 1)
        } else if large * splits_for(large) >= enough {
            (2, splits_for(large))
        } else {
            (1, splits_for(tiles(TILED_TILE)))
        };
        Plan {
            blocks,
            splits: splits as u32,
        }
    }

    /// k per split, a multiple of the k-tile, and the number of splits that gives.
    fn chunk(self, k: usize) -> (usize, usize) {
        let chunk = k.div_ceil(self.splits as usize).div_ceil(TILED_TK) * TILED_TK;
        (chunk, k.div_ceil(chunk))
    }
}

/// The epilogue `gemm_registers_aligned` compiles into a pipeline: the activation, whether
/// its slope is saved, and whether C (accumulate) or aux (act_grad) may be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AlignedEpilogue {
    pub activation: Activation,
    pub slope: bool,
    pub reads: bool,
}

impl AlignedEpilogue {
    /// Those it has pipelines for in each layout, the ones the model runs: no activation,
    /// reading C or aux or not (every layout); in the forward (NT) also an activation, its
    /// slope saved or not, nothing read.
    const FORWARD: [AlignedEpilogue; 6] = [
        AlignedEpilogue::new(Activation::None, false, false),
        AlignedEpilogue::new(Activation::None, false, true),
        AlignedEpilogue::new(Activation::Relu, false, false),
        AlignedEpilogue::new(Activation::Relu, true, false),
        AlignedEpilogue::new(Activation::Gelu, false, false),
        AlignedEpilogue::new(Activation::Gelu, true, false),
    ];

    pub(crate) fn compiled(layout: Layout) -> &'static [AlignedEpilogue] {
        match layout {
            Layout::NT => &AlignedEpilogue::FORWARD,
            Layout::NN | Layout::TN => &AlignedEpilogue::FORWARD[..2],
        }
    }

    /// The override constants that compile it in, with the layout's.
    pub(crate) fn constants(self, layout: Layout) -> Vec<(&'static str, f64)> {
        vec![
            ("LAYOUT", layout.index() as f64),
            ("ACTIVATION", self.activation.code() as f64),
            ("SAVE_SLOPE", self.slope as u32 as f64),
            ("EPILOGUE_READS", self.reads as u32 as f64),
        ]
    }

    const fn new(activation: Activation, slope: bool, reads: bool) -> AlignedEpilogue {
        AlignedEpilogue {
            activation,
            slope,
            reads,
        }
    }

    pub(crate) fn of(
        activation: Activation,
        slope: bool,
        act_grad: bool,
        accumulate: bool,
    ) -> AlignedEpilogue {
        AlignedEpilogue::new(activation, slope, act_grad || accumulate)
    }
}

/// Whether `Registers` runs `gemm_registers_aligned` (and `Lanes4` `gemm_lanes4`): C rows
/// on 16 bytes (n % 4 == 0), C at least one block, and a pipeline for the epilogue; else
/// `gemm_registers`.
pub(crate) fn registers_aligned(
    m: usize,
    n: usize,
    layout: Layout,
    epilogue: AlignedEpilogue,
) -> bool {
    n.is_multiple_of(4)
        && m >= BLOCK_ROWS
        && n >= BLOCK_COLS
        && AlignedEpilogue::compiled(layout).contains(&epilogue)
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

/// The portable pipelines: `gemm_tiled` per (layout, tile, split), `gemm_reduce`, and
/// `gemm_registers` and `gemm_registers_aligned` per layout. `gemm_tiled` reads operand
/// alignment from the shape record (a uniform branch over 2-4 loads per k-tile costs
/// nothing measurable on a GPU); the registers GEMM has an entry point for aligned shapes:
/// CPU adapters pay for every branch in its k loop.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Tiled {
        blocks: u32,
        split: bool,
    },
    Reduce,
    Registers,
    /// The epilogue is compiled in.
    RegistersAligned(AlignedEpilogue),
}

fn spec(layout: Layout, entry: Entry) -> PipelineSpec {
    let l = layout.index() as f64;
    let (entry, constants) = match entry {
        Entry::Tiled { blocks, split } => (
            "gemm_tiled",
            vec![
                ("LAYOUT", l),
                ("BLOCKS", blocks as f64),
                ("SPLIT", split as u32 as f64),
            ],
        ),
        Entry::Reduce => ("gemm_reduce", vec![]),
        Entry::Registers => ("gemm_registers", vec![("LAYOUT", l)]),
        Entry::RegistersAligned(e) => ("gemm_registers_aligned", e.constants(layout)),
    };
    PipelineSpec {
        shader: GEMM_TILED,
        entry,
        constants,
    }
}

/// Every pipeline a portable variant can build (`kernels::variants::gemm_pipeline_specs`
/// adds the CPU specialisation's; the translation test compiles each for Metal, DX12 and
/// Vulkan).
pub fn portable_pipeline_specs(variant: Variant) -> Vec<PipelineSpec> {
    let mut specs = Vec::new();
    for layout in Layout::ALL {
        match variant {
            Variant::Registers => {
                specs.push(spec(layout, Entry::Registers));
                for &epilogue in AlignedEpilogue::compiled(layout) {
                    specs.push(spec(layout, Entry::RegistersAligned(epilogue)));
                }
            }
            Variant::Tiled => {
                for blocks in [1, 2] {
                    for split in [false, true] {
                        specs.push(spec(layout, Entry::Tiled { blocks, split }));
                    }
                }
            }
            Variant::Lanes | Variant::LanesStorage | Variant::Lanes4 => {}
        }
    }
    if variant == Variant::Tiled {
        specs.push(spec(Layout::TN, Entry::Reduce));
    }
    specs
}

/// A CPU-adapter GEMM (`kernels::cpu::gemm_lanes`), given at construction: it records
/// every GEMM in the portable kernel's place. `recorded` is the list its commands will be
/// appended to (it may reuse that list's texture copies).
pub trait Specialisation: std::any::Any + wgpu::WasmNotSendSync {
    fn record(&self, gpu: &Gpu, args: &GemmArgs, recorded: &[Command]) -> Vec<Command>;
}

pub struct Gemm {
    variant: Variant,
    reason: String,
    /// Bound where an optional operand is absent (4 floats: also bound as
    /// `array<vec4<f32>>`), read-only and read-write apart (wgpu forbids one buffer in both
    /// roles in a dispatch).
    dummy_read: wgpu::Buffer,
    dummy_write: wgpu::Buffer,
    /// A second write placeholder: WebGPU forbids one buffer at two writable bindings of a
    /// dispatch (Dawn rejects it; wgpu-core does not check).
    dummy_write2: wgpu::Buffer,
    /// Split-K partial sums, shared by every GEMM recorded here (they run one after
    /// another), grown to the largest.
    partial: std::sync::Mutex<Option<wgpu::Buffer>>,
    /// The CPU-adapter specialisation, when `variant` is `Lanes` or `LanesStorage`.
    cpu: Option<Box<dyn Specialisation>>,
}

impl Gemm {
    /// `variant`, run by `cpu` when given, else by the portable kernel (the constructors
    /// that choose are in `kernels::variants`).
    pub(crate) fn assemble(
        gpu: &Gpu,
        variant: Variant,
        reason: String,
        cpu: Option<Box<dyn Specialisation>>,
    ) -> Gemm {
        Gemm {
            variant,
            reason,
            dummy_read: gpu.storage("gemm dummy read", 4),
            dummy_write: gpu.storage("gemm dummy write", 4),
            dummy_write2: gpu.storage("gemm dummy write 2", 4),
            partial: std::sync::Mutex::new(None),
            cpu,
        }
    }

    /// Ok when the adapter runs the portable `variant`, else why not.
    pub(crate) fn supports_portable(gpu: &Gpu, variant: Variant) -> Result<(), String> {
        match variant {
            Variant::Tiled => gpu.caps.workgroup(TILED_INVOCATIONS, TILED_WORKGROUP_BYTES),
            Variant::Registers => gpu.caps.workgroup(64, 0),
            Variant::Lanes | Variant::LanesStorage | Variant::Lanes4 => {
                Err(format!("{} is not a portable GEMM", variant.name()))
            }
        }
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Why this variant runs here.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub(crate) fn set_reason(&mut self, reason: String) {
        self.reason = reason;
    }

    /// The CPU-adapter specialisation, when it runs (`Lanes`, `LanesStorage`).
    pub fn specialisation(&self) -> Option<&dyn Specialisation> {
        self.cpu.as_deref()
    }

    /// Built on first use; `Gpu::pipeline_with` keeps one per (shader, entry, constants).
    fn pipeline(&self, gpu: &Gpu, layout: Layout, entry: Entry) -> wgpu::ComputePipeline {
        spec(layout, entry).build(gpu)
    }

    /// `record` with the tile size and split-K of `Tiled` given (tests cover each);
    /// `Registers` has no plan, and a CPU specialisation plans its own.
    pub fn record_with_plan(&self, gpu: &Gpu, args: &GemmArgs, plan: Plan) -> Vec<Command> {
        if let Some(cpu) = &self.cpu {
            return cpu.record(gpu, args, &[]);
        }
        let meta = check_args(gpu, args);
        match self.variant {
            Variant::Tiled => self.record_tiled(gpu, args, meta, plan),
            _ => self.record_registers(gpu, args, meta),
        }
    }

    /// The buffers a portable dispatch stores to: C and the slope when saved.
    pub(crate) fn outputs(args: &GemmArgs) -> Vec<wgpu::Buffer> {
        let mut outputs = vec![args.c.buffer.clone()];
        outputs.extend(args.slope.cloned());
        outputs
    }

    /// The shared partial-sum buffer, at least `floats` long.
    fn partial_sums(&self, gpu: &Gpu, floats: usize) -> wgpu::Buffer {
        let mut shared = match self.partial.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match shared.as_ref() {
            Some(buffer) if buffer.size() >= 4 * floats as u64 => buffer.clone(),
            _ => {
                let buffer = gpu.storage("gemm split-k partial sums", floats);
                *shared = Some(buffer.clone());
                buffer
            }
        }
    }

    fn record_tiled(&self, gpu: &Gpu, args: &GemmArgs, mut meta: Meta, plan: Plan) -> Vec<Command> {
        let (m, n, k) = (args.m, args.n, args.k);
        let (a_vec4, b_vec4) = vec4_operands(args.layout, m, n, k);
        meta.a_vec4 = a_vec4 as u32;
        meta.b_vec4 = b_vec4 as u32;
        let partial_cols = n.div_ceil(4) * 4;
        meta.partial_cols = partial_cols as u32;
        // no more splits than one binding of partial sums holds
        let limit = gpu.limits.max_storage_buffer_binding_size as usize;
        let fit = (limit / (4 * m * partial_cols)).max(1) as u32;
        let plan = Plan {
            splits: plan.splits.min(fit),
            ..plan
        };
        let (chunk, splits) = plan.chunk(k);
        // C rows off 16-byte bounds are stored through the partial sums too (one split)
        let split = splits > 1 || !n.is_multiple_of(4);
        meta.k_chunk = chunk as u32;
        meta.splits = splits as u32;
        let tile = TILED_TILE * plan.blocks as usize;
        let groups = [div_ceil(n, tile), div_ceil(m, tile), splits as u32];
        check_groups(gpu, groups, m, n);
        let pipeline = self.pipeline(
            gpu,
            args.layout,
            Entry::Tiled {
                blocks: plan.blocks,
                split,
            },
        );
        let partial = split.then(|| self.partial_sums(gpu, splits * m * partial_cols));
        // not the slope's placeholder (binding 10): two writable bindings of one buffer
        let partial = partial.as_ref().unwrap_or(&self.dummy_write2);
        let mut commands = Vec::new();
        let (padded_a, padded_b) = (padded(gpu, args.a), padded(gpu, args.b));
        for (operand, copy) in [(args.a, &padded_a), (args.b, &padded_b)] {
            if let Some(copy) = copy {
                commands.push(Command::CopyBuffer {
                    src: operand.buffer.clone(),
                    dst: copy.clone(),
                });
            }
        }
        let a4 = vec4_view(args.a, padded_a.as_ref());
        let b4 = vec4_view(args.b, padded_b.as_ref());
        let mut entries = vec![entry(0, &a4), entry(1, &b4), entry(7, partial)];
        if split {
            // unused by a SPLIT pipeline but bound all the same
            entries.extend([
                entry(8, &self.dummy_write),
                entry(9, &self.dummy_read),
                entry(10, &self.dummy_write2),
                entry(11, &self.dummy_read),
            ]);
        } else {
            entries.extend(self.epilogue_entries(args, [8, 9, 10, 11]));
        }
        // split-K stores only partial sums; the reduction then stores C (and the slope)
        let outputs = if split {
            vec![partial.clone()]
        } else {
            Gemm::outputs(args)
        };
        commands.push(Command::Dispatch(
            gpu.dispatch_with(&pipeline, &entries, &outputs, &meta, groups),
        ));
        if split {
            let pipeline = self.pipeline(gpu, Layout::TN, Entry::Reduce);
            let mut entries = self.epilogue_entries(args, [2, 3, 4, 5]);
            entries.push(entry(6, partial));
            let groups = grid_1d(div_ceil(m * n, 256));
            commands.push(Command::Dispatch(gpu.dispatch_with(
                &pipeline,
                &entries,
                &Gemm::outputs(args),
                &meta,
                groups,
            )));
        }
        commands
    }

    fn record_registers(&self, gpu: &Gpu, args: &GemmArgs, mut meta: Meta) -> Vec<Command> {
        let (m, n, k) = (args.m, args.n, args.k);
        let epilogue = AlignedEpilogue::of(
            args.activation,
            args.slope.is_some(),
            args.act_grad.is_some(),
            args.accumulate,
        );
        if registers_aligned(m, n, args.layout, epilogue) {
            // operands read a float at a time: bound as they are
            let groups = [div_ceil(n, 8 * BLOCK_COLS), div_ceil(m, 8 * BLOCK_ROWS), 1];
            check_groups(gpu, groups, m, n);
            let pipeline = self.pipeline(gpu, args.layout, Entry::RegistersAligned(epilogue));
            let mut entries = self.epilogue_entries(args, [8, 9, 10, 11]);
            entries.extend([entry(12, &args.a), entry(13, &args.b)]);
            let dispatch =
                gpu.dispatch_with(&pipeline, &entries, &Gemm::outputs(args), &meta, groups);
            return vec![Command::Dispatch(dispatch)];
        }
        let (a_vec4, b_vec4) = vec4_operands(args.layout, m, n, k);
        meta.a_vec4 = a_vec4 as u32;
        meta.b_vec4 = b_vec4 as u32;
        let groups = [div_ceil(n, REGISTERS_TILE), div_ceil(m, REGISTERS_TILE), 1];
        check_groups(gpu, groups, m, n);
        let pipeline = self.pipeline(gpu, args.layout, Entry::Registers);
        let mut commands = Vec::new();
        let (padded_a, padded_b) = (padded(gpu, args.a), padded(gpu, args.b));
        for (operand, copy) in [(args.a, &padded_a), (args.b, &padded_b)] {
            if let Some(copy) = copy {
                commands.push(Command::CopyBuffer {
                    src: operand.buffer.clone(),
                    dst: copy.clone(),
                });
            }
        }
        let a4 = vec4_view(args.a, padded_a.as_ref());
        let b4 = vec4_view(args.b, padded_b.as_ref());
        let mut entries = self.epilogue_entries(args, [2, 3, 4, 5]);
        entries.extend([entry(0, &a4), entry(1, &b4)]);
        commands.push(Command::Dispatch(gpu.dispatch_with(
            &pipeline,
            &entries,
            &Gemm::outputs(args),
            &meta,
            groups,
        )));
        commands
    }

    /// C, bias, slope and aux at the given bindings, placeholders where absent.
    pub(crate) fn epilogue_entries<'s>(
        &'s self,
        args: &'s GemmArgs<'_>,
        [c, bias, slope, aux]: [u32; 4],
    ) -> Vec<wgpu::BindGroupEntry<'s>> {
        vec![
            entry(c, &args.c),
            match &args.bias {
                Some(b) => entry(bias, b),
                None => entry(bias, &self.dummy_read),
            },
            entry(slope, args.slope.unwrap_or(&self.dummy_write)),
            entry(aux, args.act_grad.map_or(&self.dummy_read, |(a, _)| a)),
        ]
    }
}

/// `view` bound as `array<vec4<f32>>`: its floats rounded up to whole vec4s, so the last
/// ones are readable; from `padded` (see `padded`) when given.
fn vec4_view<'v>(view: View<'v>, padded: Option<&'v wgpu::Buffer>) -> View<'v> {
    View {
        buffer: padded.unwrap_or(view.buffer),
        offset: view.offset,
        len: view.len.div_ceil(4) * 4,
    }
}

/// A buffer for a copy of `view`'s buffer with room for the view's last vec4, when its own
/// buffer has none. The parameter arena pads every tensor, so only a buffer whose size is
/// not a multiple of 16 bytes needs it (then copied before each use).
fn padded(gpu: &Gpu, view: View) -> Option<wgpu::Buffer> {
    let len = view.len.div_ceil(4) * 4;
    let end = view.offset as usize / 4 + len;
    (4 * end as u64 > view.buffer.size()).then(|| {
        let floats = end.max(view.buffer.size() as usize / 4);
        gpu.storage("gemm operand padded to whole vec4s", floats)
    })
}

pub(crate) fn check_groups(gpu: &Gpu, groups: [u32; 3], m: usize, n: usize) {
    let max_groups = gpu.limits.max_compute_workgroups_per_dimension;
    assert!(
        groups.iter().all(|&g| g <= max_groups),
        "GEMM m={m} n={n} needs {groups:?} workgroups, over the adapter's {max_groups} per dimension"
    );
}

/// Check the buffers against the shape and make the shape record.
pub(crate) fn check_args(gpu: &Gpu, args: &GemmArgs) -> Meta {
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
        a_vec4: 0,
        b_vec4: 0,
        partial_cols: 0,
        rows_fast: 0,
        band: 0,
        _pad: 0,
    }
}

/// A buffer or texture at a binding of `@group(0)`.
pub(crate) fn entry(binding: u32, resource: &dyn Bind) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: resource.resource(),
    }
}

/// The commands for one GEMM. Bind groups, textures and the shape record are made here,
/// once; the commands are recorded every step without allocating. The lanes kernel's
/// texture copies are commands before its dispatch.
impl Record<GemmArgs<'_>> for Gemm {
    fn record(&self, gpu: &Gpu, args: &GemmArgs, out: &mut Vec<Command>) {
        let commands = match &self.cpu {
            Some(cpu) => cpu.record(gpu, args, out),
            None => {
                let plan = Plan::for_shape(args.m, args.n, args.k, args.layout);
                self.record_with_plan(gpu, args, plan)
            }
        };
        out.extend(commands);
    }
}
