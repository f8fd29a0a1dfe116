//! Which kernel runs the GEMMs and the attention on a device: the portable kernel, or the
//! CPU-adapter specialisation in `kernels::cpu`, chosen once from the adapter's
//! capabilities (or VIT_GEMM_VARIANT / VIT_ATTENTION_VARIANT). The constructors that choose
//! live here, above both, so the portable families never name `kernels::cpu`.

use std::any::Any;

use super::attention::{self, Attention};
use super::cpu::attention_lanes::{self, LanesAttention};
use super::cpu::attention_lanes4::{self, LanesAttention4};
use super::cpu::gemm_lanes::{self, GemmLanes, LanesPlan};
use super::cpu::gemm_lanes4::{self, GemmLanes4};
use super::gemm::{self, Gemm, GemmArgs};
use super::PipelineSpec;
use crate::gpu::caps::{self, Choice};
use crate::gpu::{Command, Gpu};

/// Every pipeline a GEMM variant can build (the translation test compiles each for Metal,
/// DX12 and Vulkan).
pub fn gemm_pipeline_specs(variant: gemm::Variant) -> Vec<PipelineSpec> {
    match variant {
        gemm::Variant::Lanes => gemm_lanes::pipeline_specs(true),
        gemm::Variant::LanesStorage => gemm_lanes::pipeline_specs(false),
        gemm::Variant::Lanes4 => gemm_lanes4::pipeline_specs(),
        portable => gemm::portable_pipeline_specs(portable),
    }
}

/// Every pipeline an attention variant can build (with the probabilities, which every
/// variant runs portably).
pub fn attention_pipeline_specs(variant: attention::Variant) -> Vec<PipelineSpec> {
    let mut specs = match variant {
        attention::Variant::Lanes => attention_lanes::pipeline_specs(),
        attention::Variant::Lanes4 => attention_lanes4::pipeline_specs(),
        _ => Vec::new(),
    };
    specs.extend(attention::portable_pipeline_specs(variant));
    specs
}

impl Gemm {
    /// The variant `choose` picks for this adapter.
    pub fn new(gpu: &Gpu) -> Gemm {
        let choice = Gemm::choose(gpu);
        let mut gemm = Gemm::with_variant(gpu, choice.variant);
        gemm.set_reason(choice.reason);
        gemm
    }

    /// The variant for this adapter and why: on a CPU adapter `Lanes` with 8-lane subgroups,
    /// else `Lanes4` with 4-lane ones (it runs on wider subgroups too, but there its
    /// 4-invocation workgroups leave lanes idle), else `Registers`; on a GPU `Tiled` when its
    /// workgroup fits, else `Registers`. VIT_GEMM_VARIANT forces one the adapter supports.
    pub fn choose(gpu: &Gpu) -> Choice<gemm::Variant> {
        use gemm::Variant;
        let four_lanes = gpu.caps.exact_subgroups(4);
        let preferred: &[(Variant, &str)] = if gpu.caps.cpu {
            &[
                (
                    Variant::Lanes,
                    "CPU adapter with 8-lane subgroups: loads shared by subgroupBroadcast",
                ),
                (
                    Variant::Lanes4,
                    "CPU adapter with 4-lane subgroups: register blocks sharing A loads by quad swaps",
                ),
                (
                    Variant::Registers,
                    "CPU adapter where the lanes kernels cannot run: register blocks, no workgroup memory",
                ),
            ]
        } else {
            &[
                (
                    Variant::Tiled,
                    "GPU: workgroup-memory tiles, 8x8 register blocks, split-K where tiles are few",
                ),
                (Variant::Registers, "register blocks, no workgroup memory"),
            ]
        };
        let forced = caps::overrides().gemm.as_deref();
        caps::choose(
            caps::GEMM_VARIANT_ENV,
            forced,
            &Variant::ALL,
            Variant::name,
            |v| match v {
                Variant::Lanes4 if forced != Some(v.name()) => {
                    four_lanes.clone().and_then(|()| Gemm::supports(gpu, v))
                }
                _ => Gemm::supports(gpu, v),
            },
            preferred,
        )
    }

    pub fn variant_for(gpu: &Gpu) -> gemm::Variant {
        Gemm::choose(gpu).variant
    }

    /// Ok when the adapter runs `variant`, else why not.
    pub fn supports(gpu: &Gpu, variant: gemm::Variant) -> Result<(), String> {
        match variant {
            gemm::Variant::Lanes | gemm::Variant::LanesStorage => gemm_lanes::supports(gpu),
            gemm::Variant::Lanes4 => gemm_lanes4::supports(gpu),
            portable => Gemm::supports_portable(gpu, portable),
        }
    }

    /// The CPU kernel shares loads across a subgroup of exactly 8 lanes.
    pub fn lanes_variant_supported(gpu: &Gpu) -> bool {
        Gemm::supports(gpu, gemm::Variant::Lanes).is_ok()
    }

    /// A given variant; panics if the adapter cannot run it (check `supports` first).
    pub fn with_variant(gpu: &Gpu, variant: gemm::Variant) -> Gemm {
        if let Err(why) = Gemm::supports(gpu, variant) {
            panic!(
                "GEMM variant {} on adapter '{}': {why}",
                variant.name(),
                gpu.info.name
            );
        }
        let cpu: Option<Box<dyn gemm::Specialisation>> = match variant {
            gemm::Variant::Lanes => Some(Box::new(GemmLanes::new(gpu, true))),
            gemm::Variant::LanesStorage => Some(Box::new(GemmLanes::new(gpu, false))),
            gemm::Variant::Lanes4 => Some(Box::new(GemmLanes4::new(gpu))),
            gemm::Variant::Tiled | gemm::Variant::Registers => None,
        };
        Gemm::assemble(gpu, variant, "chosen by the caller".into(), cpu)
    }

    /// `record` through the lanes kernel with its plan given (tests cover each).
    pub fn record_with_lanes_plan(
        &self,
        gpu: &Gpu,
        args: &GemmArgs,
        plan: LanesPlan,
    ) -> Vec<Command> {
        let lanes = self
            .specialisation()
            .and_then(|s| (s as &dyn Any).downcast_ref::<GemmLanes>());
        match lanes {
            Some(lanes) => lanes.record_planned(gpu, args, gemm::check_args(gpu, args), plan, &[]),
            None => panic!(
                "record_with_lanes_plan on the {} GEMM (lanes or lanes-storage only)",
                self.variant().name()
            ),
        }
    }
}

impl Attention {
    /// The variant `choose` picks for this adapter.
    pub fn new(gpu: &Gpu) -> Attention {
        let choice = Attention::choose(gpu);
        let mut attention = Attention::with_variant(gpu, choice.variant);
        attention.set_reason(choice.reason);
        attention
    }

    /// On a CPU adapter `Lanes` with 8-lane subgroups, else `Lanes4` with 4-lane ones (it
    /// runs on wider subgroups too, with lanes idle), else `Rows`; on a GPU `Tiled` when its
    /// workgroup fits, else `Rows`. VIT_ATTENTION_VARIANT forces one the adapter runs.
    pub fn choose(gpu: &Gpu) -> Choice<attention::Variant> {
        use attention::Variant;
        let four_lanes = gpu.caps.exact_subgroups(4);
        let preferred: &[(Variant, &str)] = if gpu.caps.cpu {
            &[
                (
                    Variant::Lanes,
                    "CPU adapter with 8-lane subgroups: streamed rows shared by subgroupBroadcast",
                ),
                (
                    Variant::Lanes4,
                    "CPU adapter with 4-lane subgroups: the forward's streamed rows shared by quad swaps",
                ),
                (
                    Variant::Rows,
                    "CPU adapter where the lanes kernel cannot run: one row per invocation, no workgroup memory",
                ),
            ]
        } else {
            &[
                (
                    Variant::Tiled,
                    "GPU: K/V tiles in workgroup memory shared by 64 or 128 query rows",
                ),
                (Variant::Rows, "one row per invocation, no workgroup memory"),
            ]
        };
        let forced = caps::overrides().attention.as_deref();
        caps::choose(
            caps::ATTENTION_VARIANT_ENV,
            forced,
            &Variant::ALL,
            Variant::name,
            |v| match v {
                Variant::Lanes4 if forced != Some(v.name()) => four_lanes
                    .clone()
                    .and_then(|()| Attention::supports(gpu, v)),
                _ => Attention::supports(gpu, v),
            },
            preferred,
        )
    }

    /// Ok when the adapter runs `variant`, else why not.
    pub fn supports(gpu: &Gpu, variant: attention::Variant) -> Result<(), String> {
        match variant {
            attention::Variant::Lanes => LanesAttention::supports(gpu),
            attention::Variant::Lanes4 => LanesAttention4::supports(gpu),
            portable => Attention::supports_portable(gpu, portable),
        }
    }

    /// `Lanes` needs subgroups of exactly 8 lanes.
    pub fn lanes_supported(gpu: &Gpu) -> bool {
        Attention::supports(gpu, attention::Variant::Lanes).is_ok()
    }

    /// A given variant; panics if the adapter cannot run it (check `supports` first).
    pub fn with_variant(gpu: &Gpu, variant: attention::Variant) -> Attention {
        if let Err(why) = Attention::supports(gpu, variant) {
            panic!(
                "attention variant {} on adapter '{}': {why}",
                variant.name(),
                gpu.info.name
            );
        }
        let cpu: Option<Box<dyn attention::Specialisation>> = match variant {
            attention::Variant::Lanes => Some(Box::new(LanesAttention::new(gpu))),
            attention::Variant::Lanes4 => Some(Box::new(LanesAttention4::new(gpu))),
            attention::Variant::Tiled | attention::Variant::Rows => None,
        };
        Attention::assemble(variant, "chosen by the caller".into(), cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct = unique (shader, entry point, override constants): what the program can
    /// compile. The whole program stays under 200 (issue 31).
    #[test]
    fn the_family_builds_at_most_80_distinct_pipelines() {
        let mut distinct: Vec<PipelineSpec> = Vec::new();
        for v in attention::Variant::ALL {
            let specs = attention_pipeline_specs(v);
            eprintln!("attention {}: {} pipelines", v.name(), specs.len());
            for spec in specs {
                if !distinct.contains(&spec) {
                    distinct.push(spec);
                }
            }
        }
        eprintln!("attention: {} distinct pipelines", distinct.len());
        assert!(
            distinct.len() <= 80,
            "attention builds {} distinct pipelines",
            distinct.len()
        );
    }
}
