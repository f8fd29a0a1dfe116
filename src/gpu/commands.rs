//! Command recording: `Dispatch` (one launch with its bind groups), `Command`, the
//! `Record` trait every kernel family implements, and recording into an encoder.

use super::limits::Violation;
use super::pipelines::PipelineInfo;
use super::{Bind, Gpu};

impl Gpu {
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
        let info = self
            .pipeline_info
            .lock()
            .ok()
            .and_then(|f| f.get(pipeline).cloned());
        let family = info.as_ref().map_or("other", |i| i.family);
        // The CPU specialisations (shaders/cpu/) run only natively, where aliasing is
        // allowed, and bind C both as floats and as vec4 on purpose.
        if let Some(info) = info.as_ref().filter(|i| !i.family.starts_with("cpu/")) {
            check_no_writable_aliasing(info, entries);
        }
        if self.is_placeholder(pipeline) || !self.bindings_fit(info.as_ref(), entries) {
            // Recorded as a violation: a launch that records nothing, never a wgpu panic.
            return Dispatch {
                family,
                pipeline: pipeline.clone(),
                groups: Vec::new(),
                workgroups: [0; 3],
                writes: outputs.to_vec(),
                _meta: meta_buffer,
            };
        }
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
        // What this launch stores to, as its kernel wrapper declared it (`Out`).
        let writes = outputs.to_vec();
        Dispatch {
            family,
            pipeline: pipeline.clone(),
            groups: vec![group0, group1],
            workgroups,
            writes,
            _meta: meta_buffer,
        }
    }
}

impl Gpu {
    /// Whether every buffer bound in `entries` fits `max_storage_buffer_binding_size`; records
    /// a violation naming the pipeline, the binding and its size when one does not.
    fn bindings_fit(&self, info: Option<&PipelineInfo>, entries: &[wgpu::BindGroupEntry]) -> bool {
        let limit = self.limits.max_storage_buffer_binding_size;
        let too_large = entries.iter().find_map(|e| match &e.resource {
            wgpu::BindingResource::Buffer(b) => {
                let bytes = b.size.map_or(b.buffer.size() - b.offset, |s| s.get());
                (bytes > limit).then_some((e.binding, bytes))
            }
            _ => None,
        });
        let Some((binding, bytes)) = too_large else {
            return true;
        };
        let pipeline = info.map_or("a pipeline built elsewhere".to_string(), |i| {
            format!("{}:{}", i.family, i.entry)
        });
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Violation {
                pipeline,
                detail: format!(
                    "the buffer at @binding({binding}) is {bytes} bytes ({} MiB), over \
                     max_storage_buffer_binding_size {limit} ({} MiB)",
                    bytes >> 20,
                    limit >> 20
                ),
            });
        false
    }
}

/// One kernel launch with its bind groups built: recording it costs no allocation.
pub struct Dispatch {
    /// The shader file this launch comes from, e.g. "cpu/gemm_lanes.wgsl".
    pub family: &'static str,
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) groups: Vec<wgpu::BindGroup>,
    pub(super) workgroups: [u32; 3],
    /// The buffers bound where the shader may store.
    pub(super) writes: Vec<wgpu::Buffer>,
    pub(super) _meta: wgpu::Buffer,
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.groups.is_empty() {
            return; // a pipeline or binding that does not fit (see `Gpu::check_limits`)
        }
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

    /// Record one kernel call and submit it alone (tests and benchmarks: a kernel that does
    /// not fit the device panics here with the pipeline and the limit).
    pub fn launch<A>(&self, kernel: &impl Record<A>, args: &A) {
        let commands = self.commands(kernel, args);
        if let Err(e) = self.check_limits() {
            panic!("{e}");
        }
        self.submit_commands(&commands);
    }

    /// The shader file and entry point a command launches (`None` for copies and clears):
    /// the kernel checks compare what ran with what they declare.
    pub fn launched(&self, command: &Command) -> Option<(&'static str, String)> {
        let Command::Dispatch(d) = command else {
            return None;
        };
        let infos = self.pipeline_info.lock().ok()?;
        infos.get(&d.pipeline).map(|i| (i.family, i.entry.clone()))
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

/// WebGPU forbids a buffer range bound at a writable binding that another binding of the
/// same dispatch overlaps (Dawn rejects the dispatch; wgpu-core does not check), so a
/// kernel wrapper that binds one placeholder twice fails here, natively, at record time.
fn check_no_writable_aliasing(info: &PipelineInfo, entries: &[wgpu::BindGroupEntry]) {
    fn range<'a>(e: &wgpu::BindGroupEntry<'a>) -> Option<(&'a wgpu::Buffer, u64, u64)> {
        match &e.resource {
            wgpu::BindingResource::Buffer(b) => {
                let end = b.size.map_or(b.buffer.size(), |s| b.offset + s.get());
                Some((b.buffer, b.offset, end))
            }
            _ => None,
        }
    }
    for (i, a) in entries.iter().enumerate() {
        let Some((buffer_a, start_a, end_a)) = range(a) else {
            continue;
        };
        for b in &entries[i + 1..] {
            let Some((buffer_b, start_b, end_b)) = range(b) else {
                continue;
            };
            let writable = info.writable.contains(&a.binding) || info.writable.contains(&b.binding);
            assert!(
                !(writable && buffer_a == buffer_b && start_a < end_b && start_b < end_a),
                "{}:{}: one buffer range at @binding({}) and @binding({}), one of them \
                 read_write: WebGPU rejects the dispatch (bind distinct placeholders)",
                info.family,
                info.entry,
                a.binding,
                b.binding
            );
        }
    }
}
