//! The device runtime, by role: `device` (adapter choice, device creation, limits),
//! `buffers` (storage, upload, uniform, read-back; `View`, `Bind`, `Out`), `pipelines`
//! (build and cache) and `commands` (`Dispatch`, `Command`, `Record`, recording).
//!
//! Getting the device (`Gpu::new`) is separate from running kernels on it, so tests,
//! benches and the CLI share one `Gpu`.

mod buffers;
pub mod caps;
mod commands;
mod device;
pub mod future;
pub mod limits;
mod pipelines;
mod timer;
#[cfg(all(target_arch = "wasm32", feature = "web"))]
mod web_subgroups;

pub use buffers::{mapped, start_map, take_mapped, Bind, MapReceiver, Out, View};
pub use caps::Caps;
pub use commands::{div_ceil, grid_1d, record_commands, Command, Dispatch, Record};
pub use device::{
    describe_adapter, enumerate_adapters, type_rank, wanted_features, BackendChoice, Gpu,
    GpuOptions,
};
pub use limits::LimitsMode;
pub use pipelines::Shader;
pub use timer::{profile_commands, PassTimer};

#[derive(thiserror::Error, Debug)]
pub enum GpuError {
    #[error(
        "no GPU adapter found for backend(s) {backends:?}.\n\
         On a machine without a GPU install Mesa's software Vulkan driver (lavapipe):\n    \
         sudo apt-get install mesa-vulkan-drivers\n\
         and check with `vit-wgpu info`."
    )]
    NoAdapter { backends: wgpu::Backends },
    #[error(
        "adapter index {index} does not exist: {count} adapter(s) found (see `vit-wgpu info`)"
    )]
    BadAdapterIndex { index: usize, count: usize },
    #[error(
        "adapter '{adapter}' lacks compute shaders or storage buffers (downlevel backend); \
         choose another with --backend/--adapter (see `vit-wgpu info`)"
    )]
    NoCompute { adapter: String },
    #[error("could not create a device on '{adapter}': {source}")]
    RequestDevice {
        adapter: String,
        source: wgpu::RequestDeviceError,
    },
    #[error(
        "adapter '{adapter}' is too small: {what} needs {needed} but the adapter allows {limit}"
    )]
    TooSmall {
        adapter: String,
        what: String,
        needed: u64,
        limit: u64,
    },
    #[error(
        "adapter '{adapter}' does not reach WebGPU's default limits ({short}); use --limits adapter"
    )]
    BelowWebgpu { adapter: String, short: String },
    #[error(
        "{pipeline} does not fit this device ({mode} limits): {detail}{}",
        if *others > 0 { format!(" (and {others} more)") } else { String::new() }
    )]
    Limit {
        pipeline: String,
        detail: String,
        mode: &'static str,
        others: usize,
    },
    #[error("{0}")]
    Options(String),
    #[error("GPU error during {context}: {message}")]
    Device { context: String, message: String },
}
