//! Metal and DX12 proven as far as a Linux machine can: every pipeline the program builds
//! (shader x entry point x override constants) goes through naga's MSL, HLSL and SPIR-V
//! back ends, as wgpu does on Metal, DX12 and Vulkan. Needs no adapter.

use std::collections::HashMap;

use naga::back::{hlsl, msl, spv, PipelineConstants};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use vit_wgpu::kernels::{attention, gemm, variants, PipelineSpec, ALL_SHADERS};

/// GEMM and attention list their pipelines; every other shader's entry points are built
/// with their default constants.
fn every_pipeline() -> Vec<PipelineSpec> {
    let mut specs: Vec<PipelineSpec> = Vec::new();
    for v in gemm::Variant::ALL {
        specs.extend(variants::gemm_pipeline_specs(v));
    }
    for v in attention::Variant::ALL {
        specs.extend(variants::attention_pipeline_specs(v));
    }
    let families = [
        "gemm_tiled.wgsl",
        "cpu/gemm_lanes.wgsl",
        "cpu/gemm_lanes4.wgsl",
        "attention.wgsl",
        "cpu/attention_lanes.wgsl",
        "cpu/attention_lanes4.wgsl",
    ];
    for shader in ALL_SHADERS {
        if families.contains(&shader.name) {
            continue;
        }
        let module = naga::front::wgsl::parse_str(shader.source).expect("shader parses");
        for ep in &module.entry_points {
            specs.push(PipelineSpec {
                shader: *shader,
                entry: leak(&ep.name),
                constants: vec![],
            });
        }
    }
    specs
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// A shader parsed and validated, or why not.
type Parsed = Result<(naga::Module, naga::valid::ModuleInfo), String>;

fn parse(source: &str) -> Parsed {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| format!("parse: {e}"))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("validate: {e:?}"))?;
    Ok((module, info))
}

/// Translate one pipeline for each back end; the errors, named. `parsed` keeps each shader
/// parsed once (the GEMM has thousands of pipelines: one per epilogue).
fn translate(spec: &PipelineSpec, parsed: &mut HashMap<&'static str, Parsed>) -> Vec<String> {
    let name = format!(
        "{} entry {} constants {:?}",
        spec.shader.name, spec.entry, spec.constants
    );
    let (module, info) = match parsed
        .entry(spec.shader.name)
        .or_insert_with(|| parse(spec.shader.source))
    {
        Ok((m, i)) => (&*m, &*i),
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let mut constants = PipelineConstants::default();
    for (k, v) in &spec.constants {
        constants.insert(k.to_string(), *v);
    }
    let stage = naga::ShaderStage::Compute;
    let (module, info) = match naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((stage, spec.entry)),
        &constants,
    ) {
        Ok(x) => x,
        Err(e) => return vec![format!("{name}: override constants: {e}")],
    };
    let mut errors = Vec::new();
    // Metal: MSL 2.4 (macOS 12 / iOS 15, every Apple GPU wgpu supports) has simdgroup ops.
    let msl_options = msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let msl_pipeline = msl::PipelineOptions {
        entry_point: Some((stage, spec.entry.to_string())),
        ..Default::default()
    };
    if let Err(e) = msl::write_string(&module, &info, &msl_options, &msl_pipeline) {
        errors.push(format!("{name}: MSL: {e}"));
    }
    // DX12: shader model 6.0 (DXC), the first with wave (subgroup) operations.
    let hlsl_options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let hlsl_pipeline = hlsl::PipelineOptions {
        entry_point: Some((stage, spec.entry.to_string())),
    };
    let mut out = String::new();
    let mut writer = hlsl::Writer::new(&mut out, &hlsl_options, &hlsl_pipeline);
    if let Err(e) = writer.write(&module, &info, None) {
        errors.push(format!("{name}: HLSL: {e}"));
    }
    // Vulkan: SPIR-V 1.3, the first with subgroup operations.
    let spv_options = spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let spv_pipeline = spv::PipelineOptions {
        shader_stage: stage,
        entry_point: spec.entry.to_string(),
    };
    if let Err(e) = spv::write_vec(&module, &info, &spv_options, Some(&spv_pipeline)) {
        errors.push(format!("{name}: SPIR-V: {e}"));
    }
    errors
}

#[test]
fn every_pipeline_translates_to_msl_hlsl_and_spirv() {
    let specs = every_pipeline();
    let mut failures = Vec::new();
    let mut parsed = HashMap::new();
    for spec in &specs {
        failures.extend(translate(spec, &mut parsed));
    }
    eprintln!(
        "{} pipelines translated to MSL, HLSL and SPIR-V, {} failures",
        specs.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The list covers every entry point of every shader (none is left out by accident).
#[test]
fn the_translated_pipelines_cover_every_entry_point() {
    let specs = every_pipeline();
    for shader in ALL_SHADERS {
        let module = naga::front::wgsl::parse_str(shader.source).expect("shader parses");
        for ep in &module.entry_points {
            // a CPU-adapter module also holds the entry points of the shader it is appended
            // to (attention_lanes, attention_lanes4: attention.wgsl's; gemm_lanes4: gemm_tiled.wgsl's)
            let covered = specs.iter().any(|s| {
                s.entry == ep.name
                    && (s.shader.name == shader.name || shader.source.contains(s.shader.source))
            });
            assert!(
                covered,
                "{} entry point {} is built by no pipeline spec",
                shader.name, ep.name
            );
        }
    }
}

/// Entry points a CPU-adapter module ("cpu/X") inherits from the portable shader X it is
/// appended to: the program builds those from X, never from "cpu/X".
fn inherited(spec: &PipelineSpec) -> bool {
    let Some(portable) = spec.shader.name.strip_prefix("cpu/") else {
        return false;
    };
    ALL_SHADERS.iter().any(|s| {
        s.name == portable
            && naga::front::wgsl::parse_str(s.source)
                .map(|m| m.entry_points.iter().any(|ep| ep.name == spec.entry))
                .unwrap_or(false)
    })
}

/// Few pipelines, each kept for a measured reason (docs/benchmarks.md): the distinct
/// (shader, entry point, constants) the program can build (issue 31's goal: under 200).
#[test]
fn the_program_builds_fewer_than_200_distinct_pipelines() {
    let mut distinct: Vec<String> = every_pipeline()
        .iter()
        .filter(|s| !inherited(s))
        .map(|s| format!("{}:{}:{:?}", s.shader.name, s.entry, s.constants))
        .collect();
    distinct.sort();
    distinct.dedup();
    let mut per_shader: std::collections::BTreeMap<&str, usize> = Default::default();
    for d in &distinct {
        *per_shader
            .entry(d.split(':').next().unwrap_or(""))
            .or_default() += 1;
    }
    println!("{} distinct pipelines: {per_shader:?}", distinct.len());
    assert!(
        distinct.len() < 200,
        "{} distinct pipelines: {per_shader:?}",
        distinct.len()
    );
}
