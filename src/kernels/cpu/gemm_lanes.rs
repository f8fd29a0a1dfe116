//! The GEMM for CPU adapters with subgroups of exactly 8 lanes (lavapipe): register blocks
//! whose A loads are shared with `subgroupBroadcast`, operands read through rgba32float
//! textures where their shape allows (shaders/cpu/gemm_lanes.wgsl). On llvmpipe every storage
//! load is a per-lane loop, so loads per multiply-add set the speed; the plan below trades
//! them against cache footprint and store cost. `kernels::gemm::Gemm` reaches this through
//! one seam (`gemm::Specialisation`); measurements behind the constants: docs/benchmarks.md.

use super::texture;
use crate::gpu::{div_ceil, Command, Gpu};
use crate::kernels::gemm::{
    check_args, check_groups, entry, GemmArgs, Layout, Meta, Specialisation,
};
use crate::kernels::{PipelineSpec, GEMM_LANES};

/// A subgroup owns a 32x32 tile of C.
const TILE: usize = 32;
const LANES: u32 = 8;
/// A weight gradient's k runs in chunks reading at most this many bytes of A and B, so the
/// strips the chunk's tiles share stay in cache (4-6 MB measured best on llvmpipe).
const CHUNK_BYTES: usize = 6 << 20;
const MIN_CHUNK_K: usize = 256;
/// B past this runs in column bands (`LanesPlan::for_shape`): a core's L2 on the machines measured.
const BAND_B_BYTES: usize = 2 << 20;
/// 16x64 tiles (rows, columns): the same 128 accumulators per lane as 32x32, stored as 16
/// rows of 256 bytes rather than 32 of 128 (cheaper once C outgrows the caches), at the
/// price of more B loads; so only where stores weigh as much as the arithmetic: k at most
/// 96 per float the epilogue moves, C past a core's L2.
pub const WIDE_TILE: (usize, usize) = (16, 64);
const WIDE_MAX_K_PER_FLOAT: usize = 96;
const WIDE_MIN_C_BYTES: usize = 2 << 20;
/// Steps of 4 k per loop trip (`K_STEPS` in the shader): llvmpipe blends every accumulator
/// with the execution mask once per trip, so two steps halve that (four gained nothing).
const K_STEPS: usize = 2;

/// Whether the step may run a C of `n` columns as 16x64 tiles: whole 64-column tiles, and
/// not a weight gradient (TN; there the extra B loads of a 16x64 tile cost more than its
/// stores save).
fn wide_tiles_fit(n: usize, layout: Layout) -> bool {
    layout != Layout::TN && n.is_multiple_of(WIDE_TILE.1)
}

/// How the lanes kernel runs one shape: `splits` k-chunks run one after another (1: none),
/// `band` column tiles run as one band over every row tile (0: row tile by row tile), and
/// `wide`: 16x64 tiles of C instead of 32x32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LanesPlan {
    pub splits: u32,
    pub band: u32,
    pub wide: bool,
}

impl LanesPlan {
    /// This GEMM's plan: its epilogue moves C, plus a saved slope, an act'(pre) read and
    /// C's old value when it has them.
    pub fn for_args(args: &GemmArgs) -> LanesPlan {
        let epilogue_floats = 1
            + args.slope.is_some() as usize
            + args.act_grad.is_some() as usize
            + args.accumulate as usize;
        LanesPlan::for_shape(args.m, args.n, args.k, args.layout, epilogue_floats)
    }

    /// k-chunks for weight gradients whose operands outgrow the cache, each chunk at most
    /// `CHUNK_BYTES` of operands. Bands of 2 column tiles for an input gradient (NN) whose
    /// B outgrows a core's cache, so every tile's 32 columns of B come from the last-level
    /// cache. 16x64 tiles where the epilogue's stores weigh as much as the arithmetic (see
    /// `WIDE_TILE`); `epilogue_floats` is the floats the epilogue moves per element of C.
    pub fn for_shape(
        m: usize,
        n: usize,
        k: usize,
        layout: Layout,
        epilogue_floats: usize,
    ) -> LanesPlan {
        let operand_bytes = 4 * k * (m + n);
        let splits = if layout == Layout::TN {
            operand_bytes
                .div_ceil(CHUNK_BYTES)
                .min(k / MIN_CHUNK_K)
                .max(1)
        } else {
            1
        };
        let band = if layout == Layout::NN && 4 * k * n > BAND_B_BYTES {
            2
        } else {
            0
        };
        let wide = wide_tiles_fit(n, layout)
            && k <= WIDE_MAX_K_PER_FLOAT * epilogue_floats
            && 4 * m * n >= WIDE_MIN_C_BYTES;
        LanesPlan {
            splits: splits as u32,
            band,
            wide,
        }
    }
}

/// The choices a lanes pipeline is specialised on. Only what plausibly moves a whole
/// training step by 5% or more on lavapipe is compiled in (docs/benchmarks.md lists
/// what was dropped): the layout, textures, the model's epilogues, unchecked bounds and the
/// 16x64 tiles. The tile order (`rows_fast`, `band`) is read from the shape record, once
/// per workgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Options {
    /// A, B and (when read) aux from textures.
    textures: bool,
    /// C, bias, slope and aux also as vec4 (n % 4 == 0).
    vec4: bool,
    /// `None`: the epilogue's flags are read from the shape record.
    epilogue: Option<Epilogue>,
    /// C's old value from a texture (an accumulating epilogue).
    c_tex: bool,
    aligned: bool,
    wide: bool,
}

/// An epilogue compiled into a pipeline.
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

    /// The epilogues the model asks for in each layout, compiled in: forwards with a bias
    /// (ReLU, GELU, GELU saving its slope, or added into the residual stream); input
    /// gradients plain or times act'(pre); weight gradients plain (and their later k-chunks
    /// adding into C).
    fn compiled(layout: Layout) -> Vec<Epilogue> {
        let plain = Epilogue::default();
        let bias = Epilogue {
            bias: true,
            ..plain
        };
        match layout {
            Layout::NT => vec![
                bias,
                Epilogue {
                    activation: 1,
                    ..bias
                },
                Epilogue {
                    activation: 2,
                    ..bias
                },
                Epilogue {
                    activation: 2,
                    slope: true,
                    ..bias
                },
                Epilogue {
                    accumulate: true,
                    ..bias
                },
            ],
            Layout::NN => vec![
                plain,
                Epilogue {
                    act_grad: 1,
                    ..plain
                },
                Epilogue {
                    act_grad: 2,
                    ..plain
                },
            ],
            Layout::TN => vec![
                plain,
                Epilogue {
                    accumulate: true,
                    ..plain
                },
            ],
        }
    }
}

fn spec(layout: Layout, o: Options) -> PipelineSpec {
    let flag = |b: bool| b as u32 as f64;
    let e = o.epilogue.unwrap_or_default();
    PipelineSpec {
        shader: GEMM_LANES,
        entry: if o.wide { "gemm_cpu_wide" } else { "gemm_cpu" },
        constants: vec![
            ("LAYOUT", layout.index() as f64),
            ("TEXTURES", flag(o.textures)),
            ("VEC4", flag(o.vec4)),
            ("EPILOGUE_FROM_SHAPE", flag(o.epilogue.is_none())),
            ("HAS_BIAS", flag(e.bias)),
            ("HAS_SLOPE", flag(e.slope)),
            ("ACTIVATION", e.activation as f64),
            ("ACT_GRAD", e.act_grad as f64),
            ("ACCUMULATE", flag(e.accumulate)),
            ("C_TEXTURE", flag(o.c_tex)),
            ("ALIGNED", flag(o.aligned)),
        ],
    }
}

/// Every pipeline the lanes kernel can build, reading operands through textures where it
/// can (`textures`) or always from storage. With textures: the compiled epilogues with and
/// without bounds checks, in 32x32 and (not for weight gradients) 16x64 tiles. Any other
/// epilogue, n % 4 != 0, or operands from storage: one checked 32x32 pipeline reading its
/// epilogue from the shape (storage operands serve only the small GEMMs of odd widths,
/// and batches with more rows than a texture: docs/benchmarks.md).
pub fn pipeline_specs(textures: bool) -> Vec<PipelineSpec> {
    let mut specs = Vec::new();
    let bools = [false, true];
    let textures = if textures { &bools[..] } else { &bools[..1] };
    for layout in Layout::ALL {
        for &tex in textures {
            let compiled = if tex {
                Epilogue::compiled(layout)
            } else {
                Vec::new()
            };
            for epilogue in compiled {
                let c_tex = if tex && epilogue.accumulate {
                    &bools[..]
                } else {
                    &bools[..1]
                };
                for &c_tex in c_tex {
                    for aligned in bools {
                        for wide in bools {
                            if wide && layout == Layout::TN {
                                continue;
                            }
                            let o = Options {
                                textures: tex,
                                vec4: true,
                                epilogue: Some(epilogue),
                                c_tex,
                                aligned,
                                wide,
                            };
                            specs.push(spec(layout, o));
                        }
                    }
                }
            }
            for vec4 in bools {
                let o = Options {
                    textures: tex,
                    vec4,
                    ..Default::default()
                };
                specs.push(spec(layout, o));
            }
        }
    }
    specs
}

/// Ok when the adapter runs the lanes kernel: subgroups of exactly 8 lanes, and the four
/// texture operands gemm_lanes.wgsl declares (in both variants).
pub fn supports(gpu: &Gpu) -> Result<(), String> {
    gpu.caps.exact_subgroups(LANES)?;
    texture::supported(gpu)?;
    gpu.fits_limits(&crate::kernels::GEMM_LANES)
}

/// One launch of the lanes kernel over some row tiles of C (all its column tiles).
struct RowLaunch {
    /// Every fetch and store in bounds: no checks (override ALIGNED).
    aligned: bool,
    /// 16x64 tiles (else 32x32).
    wide: bool,
    /// The first row of C its tiles start at.
    row_base: usize,
    row_tiles: usize,
}

/// The lanes GEMM, with operands through textures (`Lanes`) or from storage only
/// (`LanesStorage`).
pub struct GemmLanes {
    textures: bool,
    dummy_read: wgpu::Buffer,
    dummy_write: wgpu::Buffer,
    dummy_texture: wgpu::TextureView,
}

impl GemmLanes {
    /// Panics if the adapter cannot run it (check `supports` first).
    pub fn new(gpu: &Gpu, textures: bool) -> GemmLanes {
        if let Err(why) = supports(gpu) {
            panic!("lanes GEMM on adapter '{}': {why}", gpu.info.name);
        }
        GemmLanes {
            textures,
            dummy_read: gpu.storage("gemm lanes dummy read", 4),
            dummy_write: gpu.storage("gemm lanes dummy write", 4),
            dummy_texture: texture::placeholder(gpu),
        }
    }

    fn pipeline(&self, gpu: &Gpu, layout: Layout, o: Options) -> wgpu::ComputePipeline {
        spec(layout, o).build(gpu)
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

    /// The commands of one GEMM (its shape record `meta` checked by the caller) to append
    /// to `recorded`, whose texture copies of the same operands it reuses (see
    /// `texture::rows_of`). `plan.splits` k-chunks (plain or accumulating epilogues only)
    /// run one after another: the first as asked, the others adding into C, read back from
    /// storage.
    pub(crate) fn record_planned(
        &self,
        gpu: &Gpu,
        args: &GemmArgs,
        meta: Meta,
        plan: LanesPlan,
        recorded: &[Command],
    ) -> Vec<Command> {
        let (m, n, k) = (args.m, args.n, args.k);
        // Rows of C (and of slope and aux) start on 16-byte boundaries: vec4 epilogue.
        let vec4 = n.is_multiple_of(4);
        let epilogue = Epilogue::of(&meta);
        let plain = Epilogue {
            accumulate: false,
            ..epilogue
        } == Epilogue::default();
        let splits = if plain { plan.splits as usize } else { 1 };
        // The epilogue (and, in k-chunks, the later chunks' adding into C) compiled in, else
        // read from the shape record by one checked 32x32 pipeline
        let compiled = {
            let list = Epilogue::compiled(args.layout);
            let later = Epilogue {
                accumulate: true,
                ..epilogue
            };
            vec4 && list.contains(&epilogue) && (splits == 1 || list.contains(&later))
        };
        let mut commands = Vec::new();
        let views = self.texture_views(gpu, args, compiled, recorded, &mut commands);
        // Operands from storage (shapes a texture cannot hold: odd widths, or more rows
        // than a texture has) take the one checked pipeline: see `pipeline_specs`.
        let compiled = compiled && views[0].is_some();
        let wide = plan.wide && args.layout != Layout::TN && compiled;
        let (tile_rows, tile_cols) = if wide { WIDE_TILE } else { (TILE, TILE) };
        let groups = [div_ceil(n, tile_cols), div_ceil(m, tile_rows), 1];
        check_groups(gpu, groups, m, n);
        let o = Options {
            textures: views[0].is_some(),
            vec4,
            c_tex: views[3].is_some(),
            wide,
            ..Default::default()
        };
        let mut meta = meta;
        // a weight gradient with the wider B walks B's strips once
        meta.rows_fast = (args.layout == Layout::TN && n > m) as u32;
        meta.band = plan.band;
        let entries = self.entries(args, vec4, &views);
        let mut outputs = vec![args.c.buffer.clone()];
        outputs.extend(args.slope.cloned());
        let k_step = 4 * K_STEPS;
        let row_launches = row_launches(args, wide, compiled);
        // chunks of whole loop trips, so a chunk's last step never reads the next one's k
        let chunk = k.div_ceil(splits.max(1)).div_ceil(k_step) * k_step;
        for (index, k_begin) in (0..k).step_by(chunk).enumerate() {
            // later chunks add into C, read back from storage
            let chunk_epilogue = Epilogue {
                accumulate: epilogue.accumulate || index > 0,
                ..epilogue
            };
            for launch in &row_launches {
                let o = Options {
                    epilogue: compiled.then_some(chunk_epilogue),
                    c_tex: o.c_tex && index == 0,
                    aligned: launch.aligned,
                    wide: launch.wide,
                    ..o
                };
                let pipeline = self.pipeline(gpu, args.layout, o);
                let col_tiles = n.div_ceil(if launch.wide { WIDE_TILE.1 } else { TILE }) as u32;
                let row_tiles = launch.row_tiles as u32;
                let meta = Meta {
                    row_base: launch.row_base as u32,
                    k_begin: k_begin as u32,
                    k_chunk: chunk as u32,
                    splits: k.div_ceil(chunk) as u32,
                    accumulate: chunk_epilogue.accumulate as u32,
                    ..meta
                };
                let groups = if meta.rows_fast != 0 {
                    [row_tiles, col_tiles, 1]
                } else {
                    [col_tiles, row_tiles, 1]
                };
                commands.push(Command::Dispatch(
                    gpu.dispatch_with(&pipeline, &entries, &outputs, &meta, groups),
                ));
            }
        }
        commands
    }

    /// The textures of A, B, aux and C (in that order; `None`: read from storage) and the
    /// copies that fill them, appended to `commands`. A, B and aux (when read) come all
    /// from textures or all from storage; C's old value, when a compiled epilogue
    /// accumulates, from a texture too.
    fn texture_views(
        &self,
        gpu: &Gpu,
        args: &GemmArgs,
        compiled: bool,
        recorded: &[Command],
        commands: &mut Vec<Command>,
    ) -> [Option<wgpu::TextureView>; 4] {
        let (m, n) = (args.m, args.n);
        let ((a_rows, a_cols), (b_rows, b_cols)) = args.layout.shapes(m, n, args.k);
        let mut wanted = vec![(args.a, a_rows, a_cols), (args.b, b_rows, b_cols)];
        if let Some((aux, _)) = args.act_grad {
            wanted.push((aux.into(), m, n));
        }
        let made: Option<Vec<_>> = if self.textures {
            wanted
                .iter()
                .map(|&(matrix, rows, cols)| texture::rows_of(gpu, matrix, rows, cols, recorded))
                .collect()
        } else {
            None
        };
        let Some(made) = made else {
            return [None, None, None, None];
        };
        let mut views = made.into_iter().map(|(view, copy)| {
            commands.extend(copy);
            view
        });
        let (a, b, aux) = (views.next(), views.next(), views.next());
        let c = if args.accumulate && compiled {
            texture::rows_of(gpu, args.c, m, n, recorded).map(|(view, copy)| {
                commands.extend(copy);
                view
            })
        } else {
            None
        };
        [a, b, aux, c]
    }

    /// `@group(0)`: A and B (0, 1), the epilogue's buffers as floats (2..5) and, when
    /// n % 4 == 0, as vec4 (8..11; else placeholders: a vec4 binding needs 16 bytes, more
    /// than e.g. a 3-class bias), and the textures of A, B, aux and C (6, 7, 12, 13).
    fn entries<'s>(
        &'s self,
        args: &'s GemmArgs<'_>,
        vec4: bool,
        views: &'s [Option<wgpu::TextureView>; 4],
    ) -> Vec<wgpu::BindGroupEntry<'s>> {
        let mut entries = self.epilogue_entries(args);
        entries.extend([entry(0, &args.a), entry(1, &args.b)]);
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
        for (binding, view) in [6, 7, 12, 13].into_iter().zip(views) {
            entries.push(entry(binding, view.as_ref().unwrap_or(&self.dummy_texture)));
        }
        entries
    }
}

/// Every GEMM through the lanes kernel, planned by `LanesPlan::for_args`.
impl Specialisation for GemmLanes {
    fn record(&self, gpu: &Gpu, args: &GemmArgs, recorded: &[Command]) -> Vec<Command> {
        let meta = check_args(gpu, args);
        self.record_planned(gpu, args, meta, LanesPlan::for_args(args), recorded)
    }
}

/// The launches over C's row tiles. When n and k are tile multiples (and the epilogue is
/// compiled in), the whole row tiles run without bounds checks (ALIGNED) and a last partial
/// row tile, if any, in a second launch with them. A remainder of at most 16 rows under
/// 32x32 tiles runs as one row of 16x64 tiles when n allows: half the work of a 32-row
/// tile, unchecked when it is exactly 16.
fn row_launches(args: &GemmArgs, wide: bool, compiled: bool) -> Vec<RowLaunch> {
    let (m, n, k) = (args.m, args.n, args.k);
    let (tile_rows, tile_cols) = if wide { WIDE_TILE } else { (TILE, TILE) };
    let full_tiles = m / tile_rows;
    let aligned_cols = compiled && n.is_multiple_of(tile_cols) && k.is_multiple_of(4 * K_STEPS);
    let remainder = m % tile_rows;
    if !aligned_cols || full_tiles == 0 {
        return vec![RowLaunch {
            aligned: false,
            wide,
            row_base: 0,
            row_tiles: m.div_ceil(tile_rows),
        }];
    }
    let mut launches = vec![RowLaunch {
        aligned: true,
        wide,
        row_base: 0,
        row_tiles: full_tiles,
    }];
    if remainder > 0 {
        let wide_rest = !wide && remainder <= WIDE_TILE.0 && wide_tiles_fit(n, args.layout);
        launches.push(RowLaunch {
            aligned: wide_rest && remainder == WIDE_TILE.0,
            wide: wide || wide_rest,
            row_base: full_tiles * tile_rows,
            row_tiles: 1,
        });
    }
    launches
}
