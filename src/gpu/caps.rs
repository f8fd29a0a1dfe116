//! What the adapter can do for the kernels, read once when the device is made, and the
//! variant overrides from the environment, read once per process.
//!
//! Kernels pick their variant from these facts (not from the adapter's name or vendor), and
//! say why: the reason is printed by `info` and `bench --json`.

use std::sync::OnceLock;

/// The facts a kernel variant's choice depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// A CPU adapter (lavapipe, llvmpipe, WARP): every invocation is a SIMD lane, every
    /// storage or workgroup-memory load a per-lane loop, barriers are expensive.
    pub cpu: bool,
    /// `Features::SUBGROUP` on the device, and the subgroup size range the adapter reports.
    pub subgroups: bool,
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    /// Bytes of workgroup memory and invocations a workgroup may use.
    pub workgroup_memory: u32,
    pub invocations: u32,
    /// `Features::SHADER_F16` on the adapter (not used by the kernels yet).
    pub f16: bool,
}

impl Caps {
    pub fn new(
        info: &wgpu::AdapterInfo,
        limits: &wgpu::Limits,
        features: wgpu::Features,
        adapter_features: wgpu::Features,
    ) -> Caps {
        Caps {
            cpu: info.device_type == wgpu::DeviceType::Cpu,
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min: info.subgroup_min_size,
            subgroup_max: info.subgroup_max_size,
            workgroup_memory: limits.max_compute_workgroup_storage_size,
            invocations: limits.max_compute_invocations_per_workgroup,
            f16: adapter_features.contains(wgpu::Features::SHADER_F16),
        }
    }

    /// Ok when every subgroup has exactly `lanes` lanes (kernels that name lanes by a
    /// constant id), else why not. A range such as 32..64 (AMD) or 8..32 (Intel) does
    /// not do: the size a pipeline gets is not ours to choose.
    pub fn exact_subgroups(&self, lanes: u32) -> Result<(), String> {
        if !self.subgroups {
            return Err("the adapter has no subgroups".into());
        }
        if self.subgroup_min != lanes || self.subgroup_max != lanes {
            return Err(format!(
                "needs subgroups of exactly {lanes} lanes, the adapter's are {}..{}",
                self.subgroup_min, self.subgroup_max
            ));
        }
        Ok(())
    }

    /// Ok when subgroups have at least `lanes` lanes: a workgroup of `lanes` invocations is
    /// then lanes 0.. of one subgroup (4: one quad, for quad operations).
    pub fn subgroups_of_at_least(&self, lanes: u32) -> Result<(), String> {
        if !self.subgroups {
            return Err("the adapter has no subgroups".into());
        }
        if self.subgroup_min < lanes {
            return Err(format!(
                "needs subgroups of at least {lanes} lanes, the adapter's are {}..{}",
                self.subgroup_min, self.subgroup_max
            ));
        }
        Ok(())
    }

    /// Ok when a workgroup of `invocations` with `bytes` of workgroup memory fits.
    pub fn workgroup(&self, invocations: u32, bytes: u32) -> Result<(), String> {
        if self.invocations < invocations {
            return Err(format!(
                "needs {invocations} invocations per workgroup, the adapter allows {}",
                self.invocations
            ));
        }
        if self.workgroup_memory < bytes {
            return Err(format!(
                "needs {} KiB of workgroup memory, the adapter has {} KiB",
                bytes >> 10,
                self.workgroup_memory >> 10
            ));
        }
        Ok(())
    }
}

/// Variant overrides: `VIT_GEMM_VARIANT` and `VIT_ATTENTION_VARIANT` (names as printed by
/// `info`), read once. Tests, `bench` and `verify` use them to run a variant the adapter
/// would not get by default.
pub struct Overrides {
    pub gemm: Option<String>,
    pub attention: Option<String>,
}

pub const GEMM_VARIANT_ENV: &str = "VIT_GEMM_VARIANT";
pub const ATTENTION_VARIANT_ENV: &str = "VIT_ATTENTION_VARIANT";

pub fn overrides() -> &'static Overrides {
    static OVERRIDES: OnceLock<Overrides> = OnceLock::new();
    OVERRIDES.get_or_init(|| {
        let read = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_lowercase())
                .filter(|v| !v.is_empty())
        };
        Overrides {
            gemm: read(GEMM_VARIANT_ENV),
            attention: read(ATTENTION_VARIANT_ENV),
        }
    })
}

/// A kernel family's variant and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice<V> {
    pub variant: V,
    pub reason: String,
}

/// The variant for a family: the forced one (`env`, `forced`) when the adapter runs it,
/// else the first of `preferred` the adapter runs (each with why it suits), with the
/// reasons the others were passed over. `supports` says why a variant cannot run.
pub fn choose<V: Copy + PartialEq>(
    env: &str,
    forced: Option<&str>,
    all: &[V],
    name: impl Fn(V) -> &'static str,
    supports: impl Fn(V) -> Result<(), String>,
    preferred: &[(V, &str)],
) -> Choice<V> {
    let mut notes = Vec::new();
    if let Some(f) = forced {
        match all.iter().copied().find(|&v| name(v) == f) {
            Some(v) => match supports(v) {
                Ok(()) => {
                    return Choice {
                        variant: v,
                        reason: format!("forced by {env}={f}"),
                    }
                }
                Err(why) => notes.push(format!("{env}={f} ignored: {why}")),
            },
            None => {
                let names: Vec<&str> = all.iter().map(|&v| name(v)).collect();
                notes.push(format!(
                    "{env}={f} ignored: no such variant (expected one of {})",
                    names.join(", ")
                ));
            }
        }
    }
    for &(v, why) in preferred {
        match supports(v) {
            Ok(()) => {
                notes.insert(0, why.to_string());
                return Choice {
                    variant: v,
                    reason: notes.join("; "),
                };
            }
            Err(e) => notes.push(format!("not {}: {e}", name(v))),
        }
    }
    // The last preferred variant needs nothing an adapter with compute can lack.
    let (v, _) = preferred[preferred.len() - 1];
    Choice {
        variant: v,
        reason: notes.join("; "),
    }
}
