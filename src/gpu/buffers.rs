//! Buffers: storage, upload, uniform and read-back, and what a kernel binds (`View`,
//! `Bind`, `Out`).

use super::{Gpu, GpuError};
use wgpu::util::DeviceExt;

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

impl Gpu {
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
}
