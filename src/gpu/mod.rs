//! The device runtime: adapter choice, device creation with the adapter's own limits,
//! buffer helpers and the `Dispatch` every kernel records into a compute pass.
//!
//! Getting the device (`Gpu::new`) is separate from running kernels on it, so tests,
//! benches and the CLI share one `Gpu`.

pub mod caps;
mod timer;

pub use caps::Caps;

pub use timer::{profile_commands, PassTimer};

use std::fmt::Write as _;
use wgpu::util::DeviceExt;

/// Which graphics API to use. `Auto` takes `WGPU_BACKEND` from the environment if set,
/// otherwise every backend wgpu was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
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

/// How to pick the adapter.
#[derive(Clone, Copy, Debug, Default)]
pub struct GpuOptions {
    pub backend: BackendChoice,
    /// Index into the adapter list printed by `vit-wgpu info`; `None` picks the best one
    /// (discrete, then integrated, then virtual, then CPU).
    pub adapter: Option<usize>,
}

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
    #[error("GPU error during {context}: {message}")]
    Device { context: String, message: String },
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
    /// The shader file and the writable bindings of every pipeline built here, so a
    /// `Dispatch` can say which kernel family it belongs to (per-family timing) and which
    /// buffers it writes (a texture copy is reused until its buffer is written).
    pipeline_info: std::sync::Mutex<std::collections::HashMap<wgpu::ComputePipeline, PipelineInfo>>,
    /// Every pipeline built here, keyed by (shader, entry point, override constants): a
    /// pipeline costs an LLVM compile on lavapipe, so no two kernels build the same one.
    pipelines: std::sync::Mutex<std::collections::HashMap<String, wgpu::ComputePipeline>>,
}

/// A WGSL source embedded at compile time (the constants live in `kernels`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// `len` floats of a buffer from byte `offset` (a multiple of the adapter's
/// `min_storage_buffer_offset_alignment`): one tensor of a parameter arena, bound alone.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub len: usize,
}

impl<'a> View<'a> {
    pub fn bytes(&self) -> u64 {
        4 * self.len as u64
    }
}

impl<'a> From<&'a wgpu::Buffer> for View<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> View<'a> {
        View {
            buffer,
            offset: 0,
            len: (buffer.size() / 4) as usize,
        }
    }
}

/// What a kernel can bind as a storage buffer: a whole buffer or a view into one.
pub trait Bind {
    fn resource(&self) -> wgpu::BindingResource<'_>;
    /// The buffer this binding stores to, when it is an output (see [`Out`]).
    fn output(&self) -> Option<&wgpu::Buffer> {
        None
    }
}

/// An output binding: kernel wrappers mark what a dispatch stores to with `Out(&buffer)`,
/// so a command list knows which buffers each command writes (a texture copy of a buffer
/// that was written since is stale) without reading the shader.
pub struct Out<B>(pub B);

impl<B: Bind> Bind for Out<&B> {
    fn resource(&self) -> wgpu::BindingResource<'_> {
        self.0.resource()
    }
    fn output(&self) -> Option<&wgpu::Buffer> {
        match self.0.resource() {
            wgpu::BindingResource::Buffer(b) => Some(b.buffer),
            _ => None,
        }
    }
}

impl Bind for Out<View<'_>> {
    fn resource(&self) -> wgpu::BindingResource<'_> {
        self.0.resource()
    }
    fn output(&self) -> Option<&wgpu::Buffer> {
        Some(self.0.buffer)
    }
}

impl Bind for wgpu::Buffer {
    fn resource(&self) -> wgpu::BindingResource<'_> {
        self.as_entire_binding()
    }
}

impl Bind for wgpu::TextureView {
    fn resource(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::TextureView(self)
    }
}

impl Bind for View<'_> {
    fn resource(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes()),
        })
    }
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
pub fn enumerate_adapters(backend: BackendChoice) -> Vec<wgpu::Adapter> {
    let backends = backend.backends();
    if backend == BackendChoice::Auto && wgpu::Backends::from_env().is_none() {
        let primary = wgpu::Backends::PRIMARY;
        let found = pollster::block_on(instance(primary).enumerate_adapters(primary));
        if !found.is_empty() {
            return found;
        }
    }
    pollster::block_on(instance(backends).enumerate_adapters(backends))
}

/// The features we use when the adapter has them. Subgroups feed the CPU GEMM variant;
/// timestamps feed the benchmarks.
pub fn wanted_features() -> wgpu::Features {
    // Timestamps inside encoders: `profile_commands` times every command of a step in place.
    wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
}

impl Gpu {
    pub fn new(opts: &GpuOptions) -> Result<Gpu, GpuError> {
        let backends = opts.backend.backends();
        let mut adapters = enumerate_adapters(opts.backend);
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
        Self::from_adapter(adapter)
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu, GpuError> {
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
        // Ask for the adapter's own limits: the defaults cap storage bindings at 128 MiB
        // and workgroup memory at 16 KiB, less than most adapters give.
        let limits = adapter.limits();
        if limits.max_storage_buffers_per_shader_stage < 8 {
            return Err(GpuError::TooSmall {
                adapter: info.name.clone(),
                what: "storage buffers per shader stage".into(),
                needed: 8,
                limit: limits.max_storage_buffers_per_shader_stage as u64,
            });
        }
        let features = adapter.features() & wanted_features();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vit-wgpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|source| GpuError::RequestDevice {
            adapter: info.name.clone(),
            source,
        })?;
        let caps = Caps::new(&info, &limits, features, adapter.features());
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            features,
            caps,
            pipeline_info: Default::default(),
            pipelines: Default::default(),
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

    /// A storage buffer that kernels read and write and the host can copy to and from.
    pub fn storage(&self, label: &str, floats: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (floats.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer initialised from host data (f32 or u32).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let contents = if bytes.is_empty() {
            &[0u8; 4][..]
        } else {
            bytes
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A uniform buffer holding a kernel's shape record, written once.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, meta: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(meta),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    pub fn write<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, data: &[T]) {
        self.queue
            .write_buffer(buffer, 0, bytemuck::cast_slice(data));
    }

    /// Fill a buffer with NaN (tests poison outputs so an element never written fails).
    pub fn poison(&self, buffer: &wgpu::Buffer) {
        let n = (buffer.size() / 4) as usize;
        self.write(buffer, &vec![f32::NAN; n]);
    }

    /// Copy a buffer back to the host. Waits for the device: for tests, evaluation and
    /// occasional loss read-back, never inside a training step.
    pub fn read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer) -> Result<Vec<T>, GpuError> {
        self.read_range(buffer, 0, buffer.size())
    }

    pub fn read_range<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<T>, GpuError> {
        // A MAP_READ staging buffer: storage buffers cannot be mapped directly.
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait("read-back")?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(GpuError::Device {
                    context: "read-back".into(),
                    message: e.to_string(),
                })
            }
            Err(e) => {
                return Err(GpuError::Device {
                    context: "read-back".into(),
                    message: e.to_string(),
                })
            }
        }
        let view = staging.get_mapped_range(..).map_err(|e| GpuError::Device {
            context: "read-back".into(),
            message: e.to_string(),
        })?;
        let out = bytemuck::cast_slice(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Block until all submitted work is done.
    pub fn wait(&self, context: &str) -> Result<(), GpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::Device {
                context: context.into(),
                message: e.to_string(),
            })
    }

    /// Record with a closure into one compute pass, submit, and return.
    pub fn run(&self, record: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            record(&mut pass);
        }
        self.queue.submit([encoder.finish()]);
    }

    /// Build a compute pipeline from WGSL with a layout derived from the entry point.
    pub fn pipeline(&self, shader: &Shader, entry: &str) -> wgpu::ComputePipeline {
        self.pipeline_with(shader, entry, &[])
    }

    /// The pipeline for (shader, entry point, override constants), built on first request
    /// and shared after.
    pub fn pipeline_with(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        let key = format!("{}:{entry}:{constants:?}", shader.name);
        if let Some(p) = self
            .pipelines
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return p;
        }
        let pipeline = self.build_pipeline(shader, entry, constants);
        if let Ok(mut c) = self.pipelines.lock() {
            c.insert(key, pipeline.clone());
        }
        pipeline
    }

    fn build_pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        let module = self.module(shader);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let info = PipelineInfo {
            family: shader.name,
            writable: writable_bindings(shader.source),
        };
        if let Ok(mut f) = self.pipeline_info.lock() {
            f.insert(pipeline.clone(), info);
        }
        pipeline
    }

    pub fn module(&self, shader: &Shader) -> wgpu::ShaderModule {
        self.device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            })
    }

    /// A `Dispatch` with storage buffers (or textures) in `@group(0)` at the given bindings
    /// and a shape record in `@group(1) @binding(0)`. Bind groups are built here, once.
    pub fn dispatch<T: bytemuck::Pod>(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &dyn Bind)],
        meta: &T,
        workgroups: [u32; 3],
    ) -> Dispatch {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: buffer.resource(),
            })
            .collect();
        let outputs: Vec<wgpu::Buffer> = buffers
            .iter()
            .filter_map(|(_, b)| b.output().cloned())
            .collect();
        self.dispatch_with(pipeline, &entries, &outputs, meta, workgroups)
    }

    /// Like `dispatch`, with `@group(0)`'s entries already made and the buffers they
    /// store to (`outputs`) listed.
    pub fn dispatch_with<T: bytemuck::Pod>(
        &self,
        pipeline: &wgpu::ComputePipeline,
        entries: &[wgpu::BindGroupEntry],
        outputs: &[wgpu::Buffer],
        meta: &T,
        workgroups: [u32; 3],
    ) -> Dispatch {
        let label = "dispatch";
        let meta_buffer = self.uniform(label, meta);
        let group0 = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries,
        });
        let group1 = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(1),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: meta_buffer.as_entire_binding(),
            }],
        });
        let info = self
            .pipeline_info
            .lock()
            .ok()
            .and_then(|f| f.get(pipeline).cloned());
        let family = info.as_ref().map_or("other", |i| i.family);
        // Unknown writable bindings (a pipeline not built here): every buffer counts as
        // written, which only costs a texture copy.
        let writable = |binding: u32| {
            info.as_ref()
                .and_then(|i| i.writable.as_ref())
                .is_none_or(|w| w.contains(&binding))
        };
        // Transition: declared outputs plus what the shader's source says (to be removed
        // once every family declares its outputs with `Out`).
        let mut writes: Vec<wgpu::Buffer> = entries
            .iter()
            .filter(|e| writable(e.binding))
            .filter_map(|e| match &e.resource {
                wgpu::BindingResource::Buffer(b) => Some(b.buffer.clone()),
                _ => None,
            })
            .collect();
        writes.extend(outputs.iter().cloned());
        Dispatch {
            family,
            pipeline: pipeline.clone(),
            groups: vec![group0, group1],
            workgroups,
            writes,
            _meta: meta_buffer,
        }
    }

    /// A one-paragraph description of the adapter for logs and `info`.
    pub fn describe(&self) -> String {
        describe_adapter(&self.info, &self.limits, self.features)
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

#[derive(Clone)]
struct PipelineInfo {
    family: &'static str,
    /// `@group(0)` bindings the shader may store to; `None` if its source did not parse.
    writable: Option<Vec<u32>>,
}

/// The `@group(0)` bindings a WGSL module declares `var<storage, read_write>`.
fn writable_bindings(source: &str) -> Option<Vec<u32>> {
    let module = naga::front::wgsl::parse_str(source).ok()?;
    let writable = module
        .global_variables
        .iter()
        .filter_map(|(_, var)| match (var.space, &var.binding) {
            (naga::AddressSpace::Storage { access }, Some(b))
                if b.group == 0 && access.contains(naga::StorageAccess::STORE) =>
            {
                Some(b.binding)
            }
            _ => None,
        })
        .collect();
    Some(writable)
}

/// One kernel launch with its bind groups built: recording it costs no allocation.
pub struct Dispatch {
    /// The shader file this launch comes from, e.g. "gemm_lanes.wgsl".
    pub family: &'static str,
    pipeline: wgpu::ComputePipeline,
    groups: Vec<wgpu::BindGroup>,
    workgroups: [u32; 3],
    /// The buffers bound where the shader may store.
    writes: Vec<wgpu::Buffer>,
    _meta: wgpu::Buffer,
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        for (i, g) in self.groups.iter().enumerate() {
            pass.set_bind_group(i as u32, g, &[]);
        }
        let [x, y, z] = self.workgroups;
        if x > 0 && y > 0 && z > 0 {
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// One recorded GPU command. Kernel launches group into compute passes; copies (e.g. a
/// weight matrix into a texture for the CPU GEMM variant) sit between passes.
pub enum Command {
    Dispatch(Dispatch),
    CopyBufferToTexture {
        buffer: wgpu::Buffer,
        /// Byte offset of the operand in `buffer` (a tensor of a parameter arena).
        offset: u64,
        texture: wgpu::Texture,
        bytes_per_row: u32,
        size: wgpu::Extent3d,
        /// The first texture row written (a partial last row lands below the whole ones).
        origin_y: u32,
    },
    ClearBuffer(wgpu::Buffer),
    /// A whole-buffer copy (the residual stream saved before an accumulating GEMM).
    CopyBuffer {
        src: wgpu::Buffer,
        dst: wgpu::Buffer,
    },
}

impl Command {
    pub fn is_dispatch(&self) -> bool {
        matches!(self, Command::Dispatch(_))
    }

    /// Whether this command may change `buffer`'s contents.
    pub fn writes(&self, buffer: &wgpu::Buffer) -> bool {
        match self {
            Command::Dispatch(d) => d.writes.contains(buffer),
            Command::CopyBufferToTexture { .. } => false,
            Command::ClearBuffer(b) => b == buffer,
            Command::CopyBuffer { dst, .. } => dst == buffer,
        }
    }
}

impl From<Dispatch> for Command {
    fn from(d: Dispatch) -> Self {
        Command::Dispatch(d)
    }
}

/// Record a list of commands into an encoder, opening as few compute passes as possible.
pub fn record_commands(encoder: &mut wgpu::CommandEncoder, commands: &[Command]) {
    let mut i = 0;
    while i < commands.len() {
        match &commands[i] {
            Command::Dispatch(_) => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
                while let Some(Command::Dispatch(d)) = commands.get(i) {
                    d.record(&mut pass);
                    i += 1;
                }
                continue;
            }
            Command::CopyBufferToTexture {
                buffer,
                offset,
                texture,
                bytes_per_row,
                size,
                origin_y,
            } => encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: *offset,
                        bytes_per_row: Some(*bytes_per_row),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: *origin_y,
                        z: 0,
                    },
                    ..texture.as_image_copy()
                },
                *size,
            ),
            Command::ClearBuffer(buffer) => encoder.clear_buffer(buffer, 0, None),
            Command::CopyBuffer { src, dst } => {
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, src.size().min(dst.size()))
            }
        }
        i += 1;
    }
}

/// The one verb of every kernel family: append the launches `args` describe to `out`. Each
/// entry point has its own args struct (`LayerNormForward`, `GemmArgs`, ...), so
/// `kernel.record(gpu, &args, out)` picks the entry point from the args. Bind groups are built
/// here, once; the commands are then recorded every step without allocating.
pub trait Record<Args> {
    fn record(&self, gpu: &Gpu, args: &Args, out: &mut Vec<Command>);
}

impl Gpu {
    /// One kernel call as its own command list.
    pub fn commands<A>(&self, kernel: &impl Record<A>, args: &A) -> Vec<Command> {
        let mut out = Vec::new();
        kernel.record(self, args, &mut out);
        out
    }

    /// Record one kernel call and submit it alone (tests, benchmarks, evaluation).
    pub fn launch<A>(&self, kernel: &impl Record<A>, args: &A) {
        self.submit_commands(&self.commands(kernel, args));
    }

    /// Record, submit, return (tests and benches; the trainer records many in one encoder).
    pub fn submit_commands(&self, commands: &[Command]) {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        record_commands(&mut encoder, commands);
        self.queue.submit([encoder.finish()]);
    }
}

/// Ceiling division for dispatch sizes.
pub fn div_ceil(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}

/// Spread `groups` workgroups over x and y so no dimension passes the 65535 limit;
/// shaders using it compute their linear group id as `wid.x + wid.y * nwg.x`.
pub fn grid_1d(groups: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if groups <= MAX {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(MAX);
        [groups.div_ceil(y), y, 1]
    }
}
