//! The GEMM for CPU adapters with 4-lane subgroups (SwiftShader, Chrome's WebGPU on a
//! machine without a GPU): `gemm_registers_aligned`'s register blocks made 20x8, a workgroup
//! of one subgroup (a quad) whose four lanes share their rows of A by quad swaps
//! (shaders/cpu/gemm_lanes4.wgsl). There every storage load is a gather of one float per
//! lane, and a quad swap one register swizzle: 13 loads per 160 multiply-adds, against 20
//! per 96.
//! Shapes and epilogues the block kernel does not take run the portable `Registers` GEMM.

use crate::gpu::{div_ceil, Command, Gpu};
use crate::kernels::gemm::{
    check_args, check_groups, entry, registers_aligned, AlignedEpilogue, Gemm, GemmArgs, Layout,
    Plan, Specialisation, Variant, BLOCK_COLS,
};
use crate::kernels::{PipelineSpec, GEMM_LANES4};

const LANES: u32 = 4;
/// A lane's block of C is LANES4_ROWS x BLOCK_COLS (scripts/gen_gemm_registers.py).
const LANES4_ROWS: usize = 20;

/// The layouts it runs: the forward (NT) and the input gradients (NN). Weight gradients
/// (TN) stay on `gemm_registers_aligned`, which keeps the program under 200 pipelines.
const LAYOUTS: [Layout; 2] = [Layout::NT, Layout::NN];

fn spec(layout: Layout, epilogue: AlignedEpilogue) -> PipelineSpec {
    PipelineSpec {
        shader: GEMM_LANES4,
        entry: "gemm_lanes4",
        constants: compiled_as(layout, epilogue).constants(layout),
    }
}

/// The pipeline an epilogue runs in: its own, except that input gradients (NN) without
/// reads run the one that reads the flags (one pipeline fewer; the k loop is the same).
fn compiled_as(layout: Layout, epilogue: AlignedEpilogue) -> AlignedEpilogue {
    match layout {
        Layout::NN => AlignedEpilogue {
            reads: true,
            ..epilogue
        },
        _ => epilogue,
    }
}

/// Every pipeline it can build: its own per (layout, compiled epilogue), and the portable
/// `Registers` GEMM's for the rest.
pub fn pipeline_specs() -> Vec<PipelineSpec> {
    let mut specs = Vec::new();
    for layout in LAYOUTS {
        for &epilogue in AlignedEpilogue::compiled(layout) {
            let s = spec(layout, epilogue);
            if !specs.contains(&s) {
                specs.push(s);
            }
        }
    }
    specs.extend(crate::kernels::gemm::portable_pipeline_specs(
        Variant::Registers,
    ));
    specs
}

/// Ok when the adapter runs it: subgroups of at least 4 lanes (a workgroup of 4 is then one
/// subgroup, lanes 0-3), and the portable `Registers` GEMM for the rest.
pub fn supports(gpu: &Gpu) -> Result<(), String> {
    gpu.caps.subgroups_of_at_least(LANES)?;
    Gemm::supports_portable(gpu, Variant::Registers)?;
    gpu.fits_limits(&GEMM_LANES4)
}

/// Whether `gemm_lanes4` runs this GEMM (else the portable `Registers` kernels): a layout
/// it has pipelines for, and a C `gemm_registers_aligned` takes at least one block tall.
pub(crate) fn runs_blocks(m: usize, n: usize, layout: Layout, epilogue: AlignedEpilogue) -> bool {
    LAYOUTS.contains(&layout) && m >= LANES4_ROWS && registers_aligned(m, n, layout, epilogue)
}

pub struct GemmLanes4 {
    /// `Registers`, for the shapes and layouts the block kernel does not take; its
    /// placeholder buffers also stand in for absent epilogue operands here.
    portable: Gemm,
}

impl GemmLanes4 {
    /// Panics if the adapter cannot run it (check `supports` first).
    pub fn new(gpu: &Gpu) -> GemmLanes4 {
        if let Err(why) = supports(gpu) {
            panic!("lanes4 GEMM on adapter '{}': {why}", gpu.info.name);
        }
        GemmLanes4 {
            portable: Gemm::assemble(gpu, Variant::Registers, "lanes4 fallback".into(), None),
        }
    }
}

impl Specialisation for GemmLanes4 {
    fn record(&self, gpu: &Gpu, args: &GemmArgs, _recorded: &[Command]) -> Vec<Command> {
        let (m, n) = (args.m, args.n);
        let epilogue = AlignedEpilogue::of(
            args.activation,
            args.slope.is_some(),
            args.act_grad.is_some(),
            args.accumulate,
        );
        if !runs_blocks(m, n, args.layout, epilogue) {
            let plan = Plan {
                blocks: 1,
                splits: 1,
            };
            return self.portable.record_with_plan(gpu, args, plan);
        }
        let meta = check_args(gpu, args);
        let groups = [
            div_ceil(n, LANES as usize * BLOCK_COLS),
            div_ceil(m, LANES4_ROWS),
            1,
        ];
        check_groups(gpu, groups, m, n);
        let pipeline = spec(args.layout, epilogue).build(gpu);
        let mut entries = self.portable.epilogue_entries(args, [8, 9, 10, 11]);
        entries.extend([entry(12, &args.a), entry(13, &args.b)]);
        let dispatch = gpu.dispatch_with(&pipeline, &entries, &Gemm::outputs(args), &meta, groups);
        vec![Command::Dispatch(dispatch)]
    }
}
