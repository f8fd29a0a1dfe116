//! The limits a device is created with (`--limits adapter|webgpu`) and the check of every
//! pipeline against what the device granted, so a kernel that does not fit fails with its
//! name and the limit, not with a wgpu validation panic.
//!
//! A pipeline's needs come from naga's reflection of its entry point (with its override
//! constants applied): only what the entry point reaches counts.

use std::fmt;

/// Which limits the device is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "native", derive(clap::ValueEnum))]
pub enum LimitsMode {
    /// Everything the adapter offers (most native adapters exceed WebGPU's defaults).
    #[default]
    Adapter,
    /// `wgpu::Limits::default()` and only features browsers have: what the portable path
    /// must fit, checked natively.
    Webgpu,
}

pub const LIMITS_ENV: &str = "VIT_LIMITS";

impl LimitsMode {
    /// `VIT_LIMITS` (`webgpu` or `adapter`), else `Adapter`; an unknown value is an error.
    pub fn from_env() -> Result<LimitsMode, String> {
        match std::env::var(LIMITS_ENV) {
            Err(_) => Ok(LimitsMode::Adapter),
            Ok(v) => match v.trim().to_lowercase().as_str() {
                "" | "adapter" => Ok(LimitsMode::Adapter),
                "webgpu" => Ok(LimitsMode::Webgpu),
                other => Err(format!(
                    "{LIMITS_ENV}={other}: expected 'webgpu' or 'adapter'"
                )),
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LimitsMode::Adapter => "adapter",
            LimitsMode::Webgpu => "webgpu",
        }
    }

    /// The features the device may ask for in this mode: subgroups feed the CPU GEMM
    /// variant, timestamps the benchmarks; natively also timestamps inside encoders
    /// (`profile_commands` times every command of a step in place). WebGPU has the first
    /// two and f16.
    pub fn features(self) -> wgpu::Features {
        match self {
            LimitsMode::Adapter => {
                wgpu::Features::SUBGROUP
                    | wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            }
            LimitsMode::Webgpu => {
                wgpu::Features::SUBGROUP
                    | wgpu::Features::TIMESTAMP_QUERY
                    | wgpu::Features::SHADER_F16
            }
        }
    }
}

/// What one pipeline's entry point uses, from naga's reflection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineNeeds {
    pub storage_buffers: u32,
    pub storage_textures: u32,
    pub uniform_buffers: u32,
    pub workgroup_bytes: u32,
    pub workgroup_size: [u32; 3],
    /// `@group(0)` bindings of read_write storage buffers (WebGPU forbids binding a buffer
    /// range there that another binding of the same dispatch also covers).
    pub writable: Vec<u32>,
}

impl PipelineNeeds {
    /// Reflect `entry` of the WGSL `source` with `constants` applied.
    pub fn reflect(source: &str, entry: &str, constants: &[(&str, f64)]) -> Result<Self, String> {
        let (module, info) = Self::parse(source)?;
        Self::reflect_parsed(&module, &info, entry, constants)
    }

    /// The WGSL `source` parsed and validated, to reflect several entry points of it.
    pub fn parse(source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
        Ok((module, info))
    }

    /// `reflect` on a module from `parse`.
    pub fn reflect_parsed(
        module: &naga::Module,
        info: &naga::valid::ModuleInfo,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Self, String> {
        let constants: naga::back::PipelineConstants =
            constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            module,
            info,
            Some((naga::ShaderStage::Compute, entry)),
            &constants,
        )
        .map_err(|e| e.to_string())?;
        let (index, ep) = module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, ep)| ep.name == entry)
            .ok_or_else(|| format!("no entry point '{entry}'"))?;
        let uses = info.get_entry_point(index);
        let mut needs = PipelineNeeds {
            workgroup_size: ep.workgroup_size,
            ..Default::default()
        };
        for (handle, var) in module.global_variables.iter() {
            if uses[handle].is_empty() {
                continue;
            }
            match var.space {
                naga::AddressSpace::Storage { access } => {
                    needs.storage_buffers += 1;
                    if let (true, Some(b)) =
                        (access.contains(naga::StorageAccess::STORE), &var.binding)
                    {
                        if b.group == 0 {
                            needs.writable.push(b.binding);
                        }
                    }
                }
                naga::AddressSpace::Uniform => needs.uniform_buffers += 1,
                naga::AddressSpace::WorkGroup => {
                    needs.workgroup_bytes += module.types[var.ty].inner.size(module.to_ctx())
                }
                naga::AddressSpace::Handle => {
                    if let naga::TypeInner::Image {
                        class: naga::ImageClass::Storage { .. },
                        ..
                    } = module.types[var.ty].inner
                    {
                        needs.storage_textures += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(needs)
    }

    /// The first limit of `limits` this pipeline exceeds.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<(), LimitExceeded> {
        let [x, y, z] = self.workgroup_size;
        let checks = [
            (
                "max_storage_buffers_per_shader_stage",
                self.storage_buffers as u64,
                limits.max_storage_buffers_per_shader_stage as u64,
            ),
            (
                "max_storage_textures_per_shader_stage",
                self.storage_textures as u64,
                limits.max_storage_textures_per_shader_stage as u64,
            ),
            (
                "max_uniform_buffers_per_shader_stage",
                self.uniform_buffers as u64,
                limits.max_uniform_buffers_per_shader_stage as u64,
            ),
            (
                "max_compute_workgroup_storage_size (bytes)",
                self.workgroup_bytes as u64,
                limits.max_compute_workgroup_storage_size as u64,
            ),
            (
                "max_compute_invocations_per_workgroup",
                x as u64 * y as u64 * z as u64,
                limits.max_compute_invocations_per_workgroup as u64,
            ),
            (
                "max_compute_workgroup_size_x",
                x as u64,
                limits.max_compute_workgroup_size_x as u64,
            ),
            (
                "max_compute_workgroup_size_y",
                y as u64,
                limits.max_compute_workgroup_size_y as u64,
            ),
            (
                "max_compute_workgroup_size_z",
                z as u64,
                limits.max_compute_workgroup_size_z as u64,
            ),
        ];
        match checks.iter().find(|(_, needed, allowed)| needed > allowed) {
            Some(&(limit, needed, allowed)) => Err(LimitExceeded {
                limit,
                needed,
                allowed,
            }),
            None => Ok(()),
        }
    }
}

/// One limit a pipeline or binding exceeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitExceeded {
    pub limit: &'static str,
    pub needed: u64,
    pub allowed: u64,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "needs {} {}, the device allows {}",
            self.needed, self.limit, self.allowed
        )
    }
}

/// A pipeline or binding that does not fit, recorded when it was made.
#[derive(Clone, Debug)]
pub(crate) struct Violation {
    /// "shader.wgsl:entry_point".
    pub pipeline: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nine storage buffers, as `gemm_tiled` bound before it was fitted.
    const NINE: &str = "
        @group(0) @binding(0) var<storage, read> a0: array<f32>;
        @group(0) @binding(1) var<storage, read> a1: array<f32>;
        @group(0) @binding(2) var<storage, read> a2: array<f32>;
        @group(0) @binding(3) var<storage, read> a3: array<f32>;
        @group(0) @binding(4) var<storage, read> a4: array<f32>;
        @group(0) @binding(5) var<storage, read> a5: array<f32>;
        @group(0) @binding(6) var<storage, read> a6: array<f32>;
        @group(0) @binding(7) var<storage, read> a7: array<f32>;
        @group(0) @binding(8) var<storage, read_write> out: array<f32>;
        override WG: u32 = 64u;
        var<workgroup> tile: array<f32, WG>;
        @compute @workgroup_size(WG)
        fn nine(@builtin(local_invocation_index) i: u32) {
            tile[i] = a0[i] + a1[i] + a2[i] + a3[i] + a4[i] + a5[i] + a6[i] + a7[i];
            workgroupBarrier();
            out[i] = tile[i];
        }
        @compute @workgroup_size(1)
        fn two() { out[0] = a0[0]; }
    ";

    #[test]
    fn nine_storage_buffers_exceed_webgpu_defaults() {
        let needs = PipelineNeeds::reflect(NINE, "nine", &[]).expect("reflects");
        assert_eq!(needs.storage_buffers, 9);
        assert_eq!(needs.workgroup_bytes, 64 * 4);
        let err = needs.check(&wgpu::Limits::default()).expect_err("9 > 8");
        assert_eq!(err.limit, "max_storage_buffers_per_shader_stage");
        assert_eq!((err.needed, err.allowed), (9, 8));
    }

    #[test]
    fn only_what_the_entry_point_reaches_counts_and_overrides_apply() {
        let needs = PipelineNeeds::reflect(NINE, "two", &[]).expect("reflects");
        assert_eq!(needs.storage_buffers, 2);
        assert_eq!(needs.workgroup_bytes, 0);
        let needs = PipelineNeeds::reflect(NINE, "nine", &[("WG", 512.0)]).expect("reflects");
        assert_eq!(needs.workgroup_size, [512, 1, 1]);
        assert_eq!(needs.workgroup_bytes, 512 * 4);
        let limits = wgpu::Limits {
            max_storage_buffers_per_shader_stage: 16,
            ..Default::default()
        };
        let err = needs.check(&limits).expect_err("512 > 256");
        assert_eq!(err.limit, "max_compute_invocations_per_workgroup");
    }
}
