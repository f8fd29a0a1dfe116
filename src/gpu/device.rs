//! Adapter choice, device creation with the adapter's own limits, and what the device
//! granted (limits, features, capabilities).

use super::limits::LimitsMode;
use super::pipelines::PipelineInfo;
use super::{Caps, GpuError};
use std::fmt::Write as _;

/// Which graphics API to use. `Auto` takes `WGPU_BACKEND` from the environment if set,
/// otherwise every backend wgpu was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "native", derive(clap::ValueEnum))]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

/// How to pick the adapter and which limits to create the device with.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    /// `None`: `VIT_LIMITS` from the environment, else the adapter's own.
    pub limits: Option<LimitsMode>,
    pub backend: BackendChoice,
    /// Index into the adapter list printed by `vit-wgpu info`; `None` picks the best one
    /// (discrete, then integrated, then virtual, then CPU).
    pub adapter: Option<usize>,
}

/// A device and queue plus what the kernels need to know about the adapter.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// What the kernels' variant choice depends on, read once here.
    pub caps: Caps,
    /// The limits the device was created with (`limits` holds their values).
    pub mode: LimitsMode,
    /// Pipelines and bindings that exceeded the device's limits (see `check_limits`).
    pub(super) violations: std::sync::Mutex<Vec<super::limits::Violation>>,
    /// The do-nothing pipeline handed out for a pipeline that does not fit.
    pub(super) placeholder: std::sync::OnceLock<wgpu::ComputePipeline>,
    /// The shader file and entry point of every pipeline built here, so a `Dispatch` can
    /// say which kernel family it belongs to (per-family timing, limit errors).
    pub(super) pipeline_info:
        std::sync::Mutex<std::collections::HashMap<wgpu::ComputePipeline, PipelineInfo>>,
    /// Every pipeline built here, keyed by (shader, entry point, override constants): a
    /// pipeline costs an LLVM compile on lavapipe, so no two kernels build the same one.
    pub(super) pipelines:
        std::sync::Mutex<std::collections::HashMap<String, wgpu::ComputePipeline>>,
    /// `fits_limits` per shader name.
    pub(super) limits_fit:
        std::sync::Mutex<std::collections::HashMap<&'static str, Result<(), String>>>,
}

/// Preference of an adapter type when none is chosen: lower is better.
pub fn type_rank(device_type: wgpu::DeviceType) -> u32 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter the chosen backends expose, in the order `--adapter N` indexes them.
/// `auto` without WGPU_BACKEND looks at Vulkan, Metal and DX12 first and at GL only when
/// they have nothing (probing GL also spams the terminal on headless Linux).
pub async fn enumerate_adapters(backend: BackendChoice) -> Vec<wgpu::Adapter> {
    let backends = backend.backends();
    if backend == BackendChoice::Auto && wgpu::Backends::from_env().is_none() {
        let primary = wgpu::Backends::PRIMARY;
        let found = instance(primary).enumerate_adapters(primary).await;
        if !found.is_empty() {
            return found;
        }
    }
    instance(backends).enumerate_adapters(backends).await
}

/// The features we use natively when the adapter has them (see [`LimitsMode::features`]).
pub fn wanted_features() -> wgpu::Features {
    LimitsMode::Adapter.features()
}

impl Gpu {
    pub async fn new(opts: &GpuOptions) -> Result<Gpu, GpuError> {
        let backends = opts.backend.backends();
        let mut adapters = enumerate_adapters(opts.backend).await;
        if adapters.is_empty() {
            return Err(GpuError::NoAdapter { backends });
        }
        let adapter = match opts.adapter {
            Some(index) => {
                let count = adapters.len();
                if index >= count {
                    return Err(GpuError::BadAdapterIndex { index, count });
                }
                adapters.swap_remove(index)
            }
            None => {
                adapters.sort_by_key(|a| type_rank(a.get_info().device_type));
                adapters.swap_remove(0)
            }
        };
        let mode = match opts.limits {
            Some(mode) => mode,
            None => LimitsMode::from_env().map_err(GpuError::Options)?,
        };
        Self::from_adapter(adapter, mode).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter, mode: LimitsMode) -> Result<Gpu, GpuError> {
        let info = adapter.get_info();
        let downlevel = adapter.get_downlevel_capabilities();
        if !downlevel
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(GpuError::NoCompute {
                adapter: info.name.clone(),
            });
        }
        // Natively ask for the adapter's own limits: the defaults cap storage bindings at
        // 128 MiB and workgroup memory at 16 KiB, less than most adapters give.
        let limits = match mode {
            LimitsMode::Adapter => adapter.limits(),
            LimitsMode::Webgpu => {
                let webgpu = wgpu::Limits::default();
                let mut short = Vec::new();
                webgpu.check_limits_with_fail_fn(&adapter.limits(), false, |name, needed, has| {
                    short.push(format!("{name} {has} < {needed}"))
                });
                if !short.is_empty() {
                    return Err(GpuError::BelowWebgpu {
                        adapter: info.name.clone(),
                        short: short.join(", "),
                    });
                }
                webgpu
            }
        };
        if limits.max_storage_buffers_per_shader_stage < 8 {
            return Err(GpuError::TooSmall {
                adapter: info.name.clone(),
                what: "storage buffers per shader stage".into(),
                needed: 8,
                limit: limits.max_storage_buffers_per_shader_stage as u64,
            });
        }
        let features = adapter.features() & mode.features();
        #[cfg(all(target_arch = "wasm32", feature = "web"))]
        super::web_subgroups::install();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("vit-wgpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|source| GpuError::RequestDevice {
                adapter: info.name.clone(),
                source,
            })?;
        #[allow(unused_mut)]
        let mut caps = Caps::new(&info, &limits, features, adapter.features());
        #[cfg(all(target_arch = "wasm32", feature = "web"))]
        {
            caps.subgroups = super::web_subgroups::granted();
        }
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            caps,
            mode,
            violations: Default::default(),
            placeholder: Default::default(),
            pipeline_info: Default::default(),
            pipelines: Default::default(),
            limits_fit: Default::default(),
        })
    }

    /// True on a CPU adapter such as lavapipe, where the kernels take their CPU variants.
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP)
    }

    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// A one-paragraph description of the adapter for logs and `info`.
    pub fn describe(&self) -> String {
        describe_adapter(&self.info, &self.limits, self.features)
    }

    /// Ok if every pipeline built and every binding made so far fits the device; else the
    /// first that does not, naming the pipeline (shader file and entry point) and the limit.
    /// Kernels and models are built without failing; call this before running them.
    pub fn check_limits(&self) -> Result<(), GpuError> {
        let v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        match v.first() {
            None => Ok(()),
            Some(first) => Err(GpuError::Limit {
                pipeline: first.pipeline.clone(),
                detail: first.detail.clone(),
                mode: self.mode.name(),
                others: v.len() - 1,
            }),
        }
    }
}

/// Adapter facts that matter to the kernels.
pub fn describe_adapter(
    info: &wgpu::AdapterInfo,
    limits: &wgpu::Limits,
    features: wgpu::Features,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({:?}, {:?}) driver: {} {}",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    );
    let _ = writeln!(
        s,
        "  storage binding: {} MiB, buffer: {} MiB, workgroup memory: {} KiB, invocations/workgroup: {}, workgroups/dim: {}",
        limits.max_storage_buffer_binding_size >> 20,
        limits.max_buffer_size >> 20,
        limits.max_compute_workgroup_storage_size >> 10,
        limits.max_compute_invocations_per_workgroup,
        limits.max_compute_workgroups_per_dimension,
    );
    let yes = |f: wgpu::Features| if features.contains(f) { "yes" } else { "no" };
    let _ = writeln!(
        s,
        "  subgroups: {} (size {}..{}), f16: {}, timestamps: {}, storage buffers/stage: {}, storage textures/stage: {}",
        yes(wgpu::Features::SUBGROUP),
        info.subgroup_min_size,
        info.subgroup_max_size,
        yes(wgpu::Features::SHADER_F16),
        yes(wgpu::Features::TIMESTAMP_QUERY),
        limits.max_storage_buffers_per_shader_stage,
        limits.max_storage_textures_per_shader_stage,
    );
    s
}
