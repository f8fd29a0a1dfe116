//! GEMM C [m, n] = op(A) op(B) with a fused epilogue, in the three layouts a linear layer
//! with PyTorch-style [out, in] weights needs:
//!
//! | layout | A | B | C | use |
//! |---|---|---|---|---|
//! | `NT` | [m, k] | [n, k] | A B^T | forward, Y = X W^T |
//! | `NN` | [m, k] | [k, n] | A B | input gradient, dX = dY W |
//! | `TN` | [k, m] | [k, n] | A^T B | weight gradient, dW = dY^T X |
//!
//! Epilogue, in this order: `+ bias[n]`; write the pre-activation to a second buffer;
//! activation; multiply by the derivative of an activation at `act_grad_of` (backward
//! through it); then C = result, or C += result when `accumulate`.
//!
//! Two kernels: `Variant::Tiled` (workgroup memory, barriers, 4x4 register blocks) for real
//! GPUs and `Variant::Cpu` for CPU adapters like lavapipe, where every storage load is a
//! per-lane loop and loads per multiply-add set the speed (see shaders/gemm_cpu.wgsl).

use std::sync::OnceLock;

use crate::gpu::{div_ceil, Bind, Command, Gpu, View};

pub use crate::ops::{Activation, Layout};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Workgroup-memory tiling with register blocking, for real GPUs.
    Tiled,
    /// For CPU adapters with 8-wide subgroups: register blocks, loads shared with
    /// `subgroupBroadcast`, operands read through rgba32float textures where their shape
    /// allows (else storage buffers).
    Cpu,
    /// `Cpu` with both operands always read from storage buffers (for comparison).
    CpuStorage,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Tiled, Variant::Cpu, Variant::CpuStorage];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Tiled => "tiled",
            Variant::Cpu => "cpu",
            Variant::CpuStorage => "cpu-storage",
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
    pub bias: Option<View<'a>>,                   // [n]
    pub pre_activation: Option<&'a wgpu::Buffer>, // [m, n] out: result + bias before activation
    pub activation: Activation,
    pub act_grad_of: Option<(&'a wgpu::Buffer, Activation)>, // [m, n]: result *= act'(this)
    pub accumulate: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    has_pre: u32,
    activation: u32,
    act_grad: u32,
    accumulate: u32,
}

/// Rows and columns of C per tile: Tiled 64x64 per workgroup, Cpu (4 x row blocks) x 32
/// per 8-lane subgroup.
const TILED_TILE: usize = 64;
const CPU_TILE: usize = 32;

/// Blocks of 4 rows per lane of the CPU variant. Measured with `cargo bench` (tiny shapes,
/// row blocks 8/4/2 side by side): 8 is best without an epilogue or with bias/ReLU, but a
/// GELU or GELU' epilogue inlined for 8 blocks spills so much that 2 runs ~1.7x faster.
fn cpu_row_blocks(activation: u32, act_grad: u32) -> u32 {
    let gelu = Activation::Gelu.code();
    if activation == gelu || act_grad == gelu {
        2
    } else {
        8
    }
}
const CPU_LANES: u32 = 8;

/// What a CPU-variant pipeline is specialised on (override constants of gemm_cpu.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuKey {
    layout: Layout,
    a_tex: bool,
    b_tex: bool,
    vec4: bool,
    row_blocks: u32,
    bias: bool,
    pre: bool,
    activation: u32,
    act_grad: u32,
    accumulate: bool,
}

pub struct Gemm {
    variant: Variant,
    /// Tiled: one per layout. Built on first use and kept: a pipeline costs an LLVM compile
    /// on lavapipe.
    pipelines: [OnceLock<wgpu::ComputePipeline>; 3],
    /// Cpu: rows of 4 per lane, when set (benchmarks compare); else `cpu_row_blocks`.
    row_blocks: Option<u32>,
    /// Bound where an optional operand is absent (4 floats: also bound as `array<vec4<f32>>`) (read-only and read-write apart: wgpu
    /// forbids one buffer in both roles in a dispatch).
    dummy_read: wgpu::Buffer,
    dummy_write: wgpu::Buffer,
    dummy_texture: wgpu::TextureView,
}

impl Gemm {
    /// The variant for this adapter: `Cpu` on a CPU adapter with 8-wide subgroups.
    pub fn new(gpu: &Gpu) -> Gemm {
        Gemm::with_variant(gpu, Gemm::variant_for(gpu))
    }

    pub fn variant_for(gpu: &Gpu) -> Variant {
        if gpu.is_cpu() && Gemm::cpu_variant_supported(gpu) {
            Variant::Cpu
        } else {
            Variant::Tiled
        }
    }

    /// The CPU kernel shares loads across a subgroup of exactly 8 lanes.
    pub fn cpu_variant_supported(gpu: &Gpu) -> bool {
        gpu.has_subgroups()
            && gpu.info.subgroup_min_size <= CPU_LANES
            && gpu.info.subgroup_max_size >= CPU_LANES
    }

    pub fn with_variant(gpu: &Gpu, variant: Variant) -> Gemm {
        if variant != Variant::Tiled {
            assert!(
                Gemm::cpu_variant_supported(gpu),
                "GEMM variant {variant:?} needs subgroups of {CPU_LANES} lanes; adapter '{}' has \
                 subgroups: {} (size {}..{}). Use Variant::Tiled.",
                gpu.info.name,
                gpu.has_subgroups(),
                gpu.info.subgroup_min_size,
                gpu.info.subgroup_max_size
            );
        }
        let dummy_texture = gpu
            .device
            .create_texture(&texture_descriptor("gemm dummy", 1, 1))
            .create_view(&Default::default());
        Gemm {
            variant,
            pipelines: Default::default(),
            row_blocks: None,
            dummy_read: gpu.storage("gemm dummy read", 4),
            dummy_write: gpu.storage("gemm dummy write", 4),
            dummy_texture,
        }
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The CPU variant with `row_blocks` blocks of 4 rows per lane (2, 4, 6 or 8) in every
    /// layout, instead of the measured default; for benchmarks.
    pub fn with_row_blocks(mut self, row_blocks: u32) -> Gemm {
        assert!(
            [2, 4, 6, 8].contains(&row_blocks),
            "row blocks must be 2, 4, 6 or 8, not {row_blocks}"
        );
        self.row_blocks = Some(row_blocks);
        self
    }

    fn tiled_pipeline(&self, gpu: &Gpu, layout: Layout) -> wgpu::ComputePipeline {
        let l = layout.index();
        self.pipelines[l]
            .get_or_init(|| {
                gpu.pipeline_with(&super::GEMM_TILED, "gemm_tiled", &[("LAYOUT", l as f64)])
            })
            .clone()
    }

    /// One pipeline per specialisation in use (Gpu::pipeline_with caches them).
    fn cpu_pipeline(&self, gpu: &Gpu, key: CpuKey) -> wgpu::ComputePipeline {
        let flag = |b: bool| b as u32 as f64;
        gpu.pipeline_with(
            &super::GEMM_CPU,
            "gemm_cpu",
            &[
                ("LAYOUT", key.layout.index() as f64),
                ("A_TEXTURE", flag(key.a_tex)),
                ("B_TEXTURE", flag(key.b_tex)),
                ("VEC4", flag(key.vec4)),
                ("ROW_BLOCKS", key.row_blocks as f64),
                // Two steps of 4 k per loop trip pay for NN and TN; NT, which transposes its
                // B block, spills more and runs best with one.
                ("K_STEPS", if key.layout == Layout::NT { 1.0 } else { 2.0 }),
                ("HAS_BIAS", flag(key.bias)),
                ("HAS_PRE", flag(key.pre)),
                ("ACTIVATION", key.activation as f64),
                ("ACT_GRAD", key.act_grad as f64),
                ("ACCUMULATE", flag(key.accumulate)),
            ],
        )
    }

    /// The commands for one GEMM. Bind groups, textures and the shape record are made here,
    /// once; the commands are recorded every step without allocating. With textures, the
    /// copy of the operand into its texture is a command before the dispatch.
    pub fn record(&self, gpu: &Gpu, args: &GemmArgs) -> Vec<Command> {
        let (m, n, k) = (args.m, args.n, args.k);
        assert!(
            m > 0 && n > 0 && k > 0,
            "GEMM with an empty dimension: m={m} n={n} k={k}"
        );
        let ((a_rows, a_cols), (b_rows, b_cols)) = args.layout.shapes(m, n, k);
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
        if let Some(pre) = args.pre_activation {
            check("pre_activation", pre.into(), m * n);
        }
        if let Some((aux, _)) = args.act_grad_of {
            check("act_grad_of", aux.into(), m * n);
        }

        let meta = Meta {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            has_bias: args.bias.is_some() as u32,
            has_pre: args.pre_activation.is_some() as u32,
            activation: args.activation.code(),
            act_grad: args.act_grad_of.map_or(0, |(_, act)| match act {
                Activation::None => 0,
                a => a.code(),
            }),
            accumulate: args.accumulate as u32,
        };
        let row_blocks = self
            .row_blocks
            .unwrap_or(cpu_row_blocks(meta.activation, meta.act_grad));
        let (tile_rows, tile_cols) = match self.variant {
            Variant::Tiled => (TILED_TILE, TILED_TILE),
            _ => (4 * row_blocks as usize, CPU_TILE),
        };
        let groups = [div_ceil(n, tile_cols), div_ceil(m, tile_rows), 1];
        let max_groups = gpu.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups[0] <= max_groups && groups[1] <= max_groups,
            "GEMM m={m} n={n} needs {groups:?} workgroups, over the adapter's {max_groups} per dimension"
        );

        let mut commands = Vec::new();
        let use_textures = self.variant == Variant::Cpu;
        let a_tex = use_textures
            .then(|| texture_operand(gpu, args.a, a_rows, a_cols))
            .flatten();
        let b_tex = use_textures
            .then(|| texture_operand(gpu, args.b, b_rows, b_cols))
            .flatten();
        let a_view = a_tex.as_ref().map(|(view, copy)| {
            commands.push(copy.clone_command());
            view
        });
        let b_view = b_tex.as_ref().map(|(view, copy)| {
            commands.push(copy.clone_command());
            view
        });
        // Rows of C (and of pre and aux) start on 16-byte boundaries: vec4 epilogue.
        let vec4 = n.is_multiple_of(4);
        let pipeline = match self.variant {
            Variant::Tiled => self.tiled_pipeline(gpu, args.layout),
            Variant::Cpu | Variant::CpuStorage => self.cpu_pipeline(
                gpu,
                CpuKey {
                    layout: args.layout,
                    a_tex: a_view.is_some(),
                    b_tex: b_view.is_some(),
                    vec4,
                    row_blocks,
                    bias: meta.has_bias != 0,
                    pre: meta.has_pre != 0,
                    activation: meta.activation,
                    act_grad: meta.act_grad,
                    accumulate: meta.accumulate != 0,
                },
            ),
        };

        let dummy_read = View::from(&self.dummy_read);
        let mut entries = vec![
            buffer_entry(0, &args.a),
            buffer_entry(1, &args.b),
            buffer_entry(2, &args.c),
            buffer_entry(3, args.bias.as_ref().unwrap_or(&dummy_read)),
            buffer_entry(4, args.pre_activation.unwrap_or(&self.dummy_write)),
            buffer_entry(5, args.act_grad_of.map_or(&self.dummy_read, |(aux, _)| aux)),
        ];
        if self.variant != Variant::Tiled {
            // The same buffers again as arrays of vec4, used when n % 4 == 0; otherwise
            // placeholders (a vec4 binding needs 16 bytes, more than e.g. a 3-class bias).
            if vec4 {
                entries.extend([
                    buffer_entry(8, &args.c),
                    buffer_entry(9, args.bias.as_ref().unwrap_or(&dummy_read)),
                    buffer_entry(10, args.pre_activation.unwrap_or(&self.dummy_write)),
                    buffer_entry(
                        11,
                        args.act_grad_of.map_or(&self.dummy_read, |(aux, _)| aux),
                    ),
                ]);
            } else {
                entries.extend([
                    buffer_entry(8, &self.dummy_write),
                    buffer_entry(9, &self.dummy_read),
                    buffer_entry(10, &self.dummy_write),
                    buffer_entry(11, &self.dummy_read),
                ]);
            }
            entries.push(wgpu::BindGroupEntry {
                binding: 6,
                resource: wgpu::BindingResource::TextureView(a_view.unwrap_or(&self.dummy_texture)),
            });
            entries.push(wgpu::BindGroupEntry {
                binding: 7,
                resource: wgpu::BindingResource::TextureView(b_view.unwrap_or(&self.dummy_texture)),
            });
        }
        commands.push(Command::Dispatch(
            gpu.dispatch_with(&pipeline, &entries, &meta, groups),
        ));
        commands
    }
}

fn buffer_entry(binding: u32, buffer: &dyn Bind) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.resource(),
    }
}

fn texture_descriptor(label: &str, width: u32, height: u32) -> wgpu::TextureDescriptor<'_> {
    wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    }
}

/// The copy that refreshes an operand's texture each step.
struct TextureCopy {
    buffer: wgpu::Buffer,
    offset: u64,
    texture: wgpu::Texture,
    bytes_per_row: u32,
    size: wgpu::Extent3d,
}

impl TextureCopy {
    fn clone_command(&self) -> Command {
        Command::CopyBufferToTexture {
            buffer: self.buffer.clone(),
            offset: self.offset,
            texture: self.texture.clone(),
            bytes_per_row: self.bytes_per_row,
            size: self.size,
        }
    }
}

/// A row-major [rows, cols] operand as an rgba32float texture (texel = 4 floats of a row),
/// or `None` when the shape doesn't allow it and the kernel reads the buffer instead: a
/// buffer-to-texture copy needs rows of a multiple of 256 bytes (cols % 64 == 0), and both
/// sides must fit the adapter's texture dimension.
fn texture_operand(
    gpu: &Gpu,
    buffer: View,
    rows: usize,
    cols: usize,
) -> Option<(wgpu::TextureView, TextureCopy)> {
    let max = gpu.limits.max_texture_dimension_2d as usize;
    let bytes_per_row = cols * 4;
    if !bytes_per_row.is_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as usize)
        || cols / 4 > max
        || rows > max
        || !buffer.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC)
    {
        return None;
    }
    let desc = texture_descriptor("gemm operand", (cols / 4) as u32, rows as u32);
    let texture = gpu.device.create_texture(&desc);
    let view = texture.create_view(&Default::default());
    Some((
        view,
        TextureCopy {
            buffer: buffer.buffer.clone(),
            offset: buffer.offset,
            texture,
            bytes_per_row: bytes_per_row as u32,
            size: desc.size,
        },
    ))
}
