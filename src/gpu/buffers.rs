//! Buffers: storage, upload, uniform and read-back, and what a kernel binds (`View`,
//! `Bind`, `Out`).

use super::future::{oneshot, Receiver};
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

    /// Copy a buffer back to the host once the work submitted before is done: for tests,
    /// evaluation and occasional read-back, never inside a training step.
    pub async fn read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer) -> Result<Vec<T>, GpuError> {
        self.read_range(buffer, 0, buffer.size()).await
    }

    /// `size` bytes of `buffer` from byte `offset`.
    pub async fn read_range<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<T>, GpuError> {
        let view = View {
            buffer,
            offset,
            len: (size / 4) as usize,
        };
        let mut out = self.record_and_read(|_| {}, &[view]).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Record → submit → read, the one read-back: `record` fills an encoder, each of `reads`
    /// is copied into a staging buffer after it in the same submission, and the copies come
    /// back (as `T`s) once the device is done with them.
    pub async fn record_and_read<T: bytemuck::Pod>(
        &self,
        record: impl FnOnce(&mut wgpu::CommandEncoder),
        reads: &[View<'_>],
    ) -> Result<Vec<Vec<T>>, GpuError> {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        record(&mut encoder);
        // MAP_READ staging buffers: storage buffers cannot be mapped directly.
        let staging: Vec<wgpu::Buffer> = reads
            .iter()
            .map(|v| {
                let s = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: v.bytes(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(v.buffer, v.offset, &s, 0, v.bytes());
                s
            })
            .collect();
        self.queue.submit([encoder.finish()]);
        let maps: Vec<_> = staging.iter().map(start_map).collect();
        self.drive(None, "read-back")?;
        let mut out = Vec::with_capacity(staging.len());
        for (buffer, map) in staging.iter().zip(maps) {
            mapped(map.await, "read-back")?;
            out.push(take_mapped(buffer, "read-back")?);
        }
        Ok(out)
    }

    /// Map `staging` (a MAP_READ buffer something was copied into) once the work submitted
    /// before is done, and return its contents as `T`s (the buffer is unmapped again).
    pub async fn read_staging<T: bytemuck::Pod>(
        &self,
        staging: &wgpu::Buffer,
        context: &str,
    ) -> Result<Vec<T>, GpuError> {
        let map = start_map(staging);
        self.drive(None, context)?;
        mapped(map.await, context)?;
        take_mapped(staging, context)
    }

    /// Resolves when all work submitted so far is done.
    pub async fn idle(&self, context: &str) -> Result<(), GpuError> {
        let (tx, rx) = oneshot();
        self.queue.on_submitted_work_done(move || tx.send(()));
        self.drive(None, context)?;
        rx.await
            .ok_or_else(|| device_error(context, "the device was lost".into()))
    }

    /// Lets the device finish `submission` (all submitted work if `None`) and run its
    /// callbacks. Natively a poll that waits; in the browser the event loop does this and
    /// the poll returns at once, so the futures above stay pending until it has.
    pub fn drive(
        &self,
        submission: Option<wgpu::SubmissionIndex>,
        context: &str,
    ) -> Result<(), GpuError> {
        let poll = wgpu::PollType::Wait {
            submission_index: submission,
            timeout: None,
        };
        self.device
            .poll(poll)
            .map(|_| ())
            .map_err(|e| device_error(context, e.to_string()))
    }
}

/// A map result on its way from wgpu's callback.
pub type MapReceiver = Receiver<Result<(), wgpu::BufferAsyncError>>;

/// Start mapping a MAP_READ buffer; the receiver resolves when it is mapped.
pub fn start_map(buffer: &wgpu::Buffer) -> MapReceiver {
    let (tx, rx) = oneshot();
    buffer.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
    rx
}

/// A map's result (from a [`MapReceiver`]) as our error.
pub fn mapped(
    result: Option<Result<(), wgpu::BufferAsyncError>>,
    context: &str,
) -> Result<(), GpuError> {
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(device_error(context, e.to_string())),
        None => Err(device_error(context, "the map callback was dropped".into())),
    }
}

/// A mapped buffer's contents as `T`s; unmaps it.
pub fn take_mapped<T: bytemuck::Pod>(
    buffer: &wgpu::Buffer,
    context: &str,
) -> Result<Vec<T>, GpuError> {
    let out = {
        let view = buffer
            .get_mapped_range(..)
            .map_err(|e| device_error(context, e.to_string()))?;
        bytemuck::cast_slice(&view).to_vec()
    };
    buffer.unmap();
    Ok(out)
}

fn device_error(context: &str, message: String) -> GpuError {
    GpuError::Device {
        context: context.into(),
        message,
    }
}
