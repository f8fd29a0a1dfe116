//! Row-major matrices as rgba32float textures: on CPU adapters (llvmpipe) a texel fetch is
//! a few vector instructions where a storage load is a per-lane loop, so read-only operands
//! are copied into a texture before the kernel that reads them. They are bound as read-only
//! storage textures (see `supported`).

use crate::gpu::{Command, Gpu, View};

fn descriptor(label: &str, width: u32, height: u32) -> wgpu::TextureDescriptor<'_> {
    wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    }
}

/// Texels past each row of a matrix's texture, never written or read: rows of 2^j bytes
/// map a kernel's column strip onto a few cache sets, evicting each other. One texel more
/// ran labml's fc2 weight gradient (rows of 8 KiB) 1.4x faster on llvmpipe, tiny's 1.2x,
/// labml's other GEMMs 1.05-1.14x, and the rest the same (2026-12-02, two runs each).
const ROW_PAD_TEXELS: u32 = 1;

/// Whether kernels should read their read-only inputs through textures on this adapter:
/// on CPU adapters, where a storage load is a per-lane loop, when it binds enough of them.
/// Never in a browser: its CPU adapter is SwiftShader, not llvmpipe, and every browser user
/// gets the portable kernels.
pub fn preferred(gpu: &Gpu) -> bool {
    gpu.is_cpu() && !cfg!(target_arch = "wasm32") && supported(gpu).is_ok()
}

/// `preferred`, and every entry point of the specialisation's `shader` fits the device's
/// limits (under `--limits webgpu` some do not, and the portable kernels run).
pub fn preferred_for(gpu: &Gpu, shader: &crate::gpu::Shader) -> bool {
    preferred(gpu) && gpu.fits_limits(shader).is_ok()
}

/// The most textures one kernel reads (the GEMM's A, B, aux and C; LayerNorm's x, gamma,
/// dy and old dx, or x, dy and the row statistics).
pub const TEXTURES_PER_KERNEL: u32 = 4;

/// Ok when the adapter binds `TEXTURES_PER_KERNEL` read-only storage textures per stage.
/// They are storage textures, not sampled ones: llvmpipe (Mesa 22.3) reads a
/// `texture_storage_2d<rgba32float, read>` texel inline, 2.3x faster than a
/// `texture_2d` texel through its sampling function.
pub fn supported(gpu: &Gpu) -> Result<(), String> {
    let have = gpu.limits.max_storage_textures_per_shader_stage;
    if have < TEXTURES_PER_KERNEL {
        return Err(format!(
            "binds {have} storage textures per shader stage, {TEXTURES_PER_KERNEL} needed"
        ));
    }
    Ok(())
}

/// A 1x1 texture to bind where a kernel's texture operand is not used.
pub fn placeholder(gpu: &Gpu) -> wgpu::TextureView {
    gpu.device
        .create_texture(&descriptor("placeholder", 1, 1))
        .create_view(&Default::default())
}

/// A row-major [rows, cols] matrix as a texture (texel = 4 consecutive floats of a row) and
/// the copy that fills it, to record before its use; `None` when the shape doesn't allow it
/// and the kernel reads the buffer instead: a buffer-to-texture copy needs rows of a
/// multiple of 256 bytes (cols % 64 == 0), both sides must fit the adapter's texture
/// dimension, and the buffer must be a copy source.
///
/// `recorded` is the command list the use will be appended to: when it already copies the
/// same matrix and no later command writes the matrix's buffer, that texture is returned
/// with no copy (a weight read by the forward and the input-gradient GEMM, an activation
/// read by the forward and the weight-gradient GEMM). The list must then always run whole
/// and in order, as the step's lists do.
pub fn rows_of(
    gpu: &Gpu,
    matrix: View,
    rows: usize,
    cols: usize,
    recorded: &[Command],
) -> Option<(wgpu::TextureView, Option<Command>)> {
    let max = gpu.limits.max_texture_dimension_2d as usize;
    let bytes_per_row = cols * 4;
    if !bytes_per_row.is_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as usize)
        || cols / 4 + ROW_PAD_TEXELS as usize > max
        || rows > max
        || !matrix.buffer.usage().contains(wgpu::BufferUsages::COPY_SRC)
    {
        return None;
    }
    let extent = wgpu::Extent3d {
        width: (cols / 4) as u32,
        height: rows as u32,
        depth_or_array_layers: 1,
    };
    let desc = descriptor(
        "matrix as texture",
        (cols / 4) as u32 + ROW_PAD_TEXELS,
        rows as u32,
    );
    if let Some(texture) = earlier_copy(extent, matrix, recorded) {
        return Some((texture.create_view(&Default::default()), None));
    }
    let texture = gpu.device.create_texture(&desc);
    let view = texture.create_view(&Default::default());
    let copy = Command::CopyBufferToTexture {
        buffer: matrix.buffer.clone(),
        offset: matrix.offset,
        texture,
        bytes_per_row: bytes_per_row as u32,
        size: extent,
        origin_y: 0,
    };
    Some((view, Some(copy)))
}

/// The texture of the last copy of `matrix` (same buffer, offset and shape) in `recorded`,
/// if no command after it writes the buffer. A whole-buffer copy into the buffer (the
/// residual stream copied before a GEMM adds to it) is followed back to its source: a texture
/// of the source's same region holds the same values.
fn earlier_copy<'a>(
    extent: wgpu::Extent3d,
    matrix: View,
    recorded: &'a [Command],
) -> Option<&'a wgpu::Texture> {
    let mut source = matrix.buffer;
    let end = matrix.offset + 16 * u64::from(extent.width) * u64::from(extent.height);
    for command in recorded.iter().rev() {
        match command {
            Command::CopyBufferToTexture {
                buffer,
                offset,
                texture,
                size,
                origin_y: 0,
                ..
            } if buffer == source && *offset == matrix.offset && *size == extent => {
                return Some(texture);
            }
            Command::CopyBuffer { src, dst }
                if dst == source && end <= src.size().min(dst.size()) =>
            {
                source = src;
            }
            _ if command.writes(source) => return None,
            _ => {}
        }
    }
    None
}

/// A whole buffer of vec4s as a texture `width` texels wide (vec4 j at (j % width,
/// j / width)) and the copies that fill it (the whole rows, then the last partial row), to
/// record before its use; `None` when the buffer is not a copy source of whole vec4s or
/// does not fit the adapter's texture height. The texture is as large as the buffer (AdamW's
/// gradients of labml's 80 MB arena: 80 MB more host memory on lavapipe).
pub fn flat(
    gpu: &Gpu,
    buffer: &wgpu::Buffer,
    width: u32,
) -> Option<(wgpu::TextureView, Vec<Command>)> {
    let texels = buffer.size() / 16;
    let bytes_per_row = 16 * u64::from(width);
    let (rows, rest) = (texels / u64::from(width), texels % u64::from(width));
    let height = rows + u64::from(rest > 0);
    if !buffer.size().is_multiple_of(16)
        || !bytes_per_row.is_multiple_of(u64::from(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT))
        || width > gpu.limits.max_texture_dimension_2d
        || height > u64::from(gpu.limits.max_texture_dimension_2d)
        || !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC)
    {
        return None;
    }
    let texture = gpu
        .device
        .create_texture(&descriptor("buffer as texture", width, height as u32));
    let view = texture.create_view(&Default::default());
    let mut copies = Vec::new();
    let copy = |offset: u64, width: u32, rows: u64, origin_y: u32| Command::CopyBufferToTexture {
        buffer: buffer.clone(),
        offset,
        texture: texture.clone(),
        bytes_per_row: bytes_per_row as u32,
        size: wgpu::Extent3d {
            width,
            height: rows as u32,
            depth_or_array_layers: 1,
        },
        origin_y,
    };
    if rows > 0 {
        copies.push(copy(0, width, rows, 0));
    }
    if rest > 0 {
        copies.push(copy(rows * bytes_per_row, rest as u32, 1, rows as u32));
    }
    Some((view, copies))
}

/// `rows_of` for every (matrix, rows) of `matrices` (cols wide), the copies appended to
/// `out` (or shared with an earlier one there): their textures, or `None` (nothing appended,
/// the kernel reads storage) unless every one can be a texture.
pub fn all_rows_of(
    gpu: &Gpu,
    matrices: &[(View, usize)],
    cols: usize,
    out: &mut Vec<Command>,
) -> Option<Vec<wgpu::TextureView>> {
    let made: Option<Vec<_>> = matrices
        .iter()
        .map(|&(m, rows)| rows_of(gpu, m, rows, cols, out))
        .collect();
    let (views, copies): (Vec<_>, Vec<_>) = made?.into_iter().unzip();
    out.extend(copies.into_iter().flatten());
    Some(views)
}

/// `flat` for every buffer: their textures and copies, or `None` unless every one can be.
pub fn all_flat(
    gpu: &Gpu,
    buffers: &[&wgpu::Buffer],
    width: u32,
) -> Option<(Vec<wgpu::TextureView>, Vec<Command>)> {
    let made: Option<Vec<_>> = buffers.iter().map(|b| flat(gpu, b, width)).collect();
    let (views, copies): (Vec<_>, Vec<_>) = made?.into_iter().unzip();
    Some((views, copies.into_iter().flatten().collect()))
}
