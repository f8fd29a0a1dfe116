//! AdamW over a parameter arena in chunks with global gradient-norm clipping, on the device.

use super::cpu::texture;
use crate::gpu::{div_ceil, grid_1d, Command, Dispatch, Gpu, Out, Record};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    start: u32,
    end: u32,
    decay_end: u32,
    partials: u32,
    scale_at: u32,
    texture_shift: u32,
    /// 1: add this chunk's sums of squares to the partial sums of the chunks before it.
    accumulate: u32,
    _pad: u32,
}

/// Most workgroups of the sum of squares (its first pass): enough to keep every core of a
/// GPU busy, few enough for one workgroup to add them up. The clip scale and the norm
/// follow the partial sums at this index whatever their count.
const MAX_PARTIALS: usize = 256;

/// Workgroups of the sum of squares on a CPU adapter. There a 256-invocation workgroup
/// runs as 32 coroutines switched at each of the tree sum's 9 barriers: with 256
/// workgroups that pass took 2.9 ms of a 105 ms micro step, with 8 it takes 0.3 ms.
const CPU_PARTIALS: usize = 8;

/// Texels per row of the texture path's textures: 8192 (128 KiB rows) holds labml's 20M
/// floats in 611 rows, and a 8192-texel dimension is every adapter's default limit.
const TEXTURE_WIDTH: u32 = 8192;

/// The per-step hyper-parameters, written to a uniform buffer before each step's submit.
pub use crate::ops::Hyper;

/// One chunk of a parameter arena: the values, gradients and both moments of its tensors,
/// one buffer per role with the same layout. The optimizer updates `range` (floats of
/// the chunk); elements below `decay_end` get weight decay.
pub struct AdamWChunk<'a> {
    pub params: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub range: std::ops::Range<usize>,
    pub decay_end: usize,
}

/// A parameter arena in chunks (each bound whole: at most one binding's size), clipped by
/// the gradient norm over all of them.
pub struct AdamWArgs<'a> {
    pub chunks: Vec<AdamWChunk<'a>>,
    pub hyper: &'a wgpu::Buffer,
    /// `AdamW::stats_len()` floats: partial sums, then the clip scale and the norm.
    pub stats: &'a wgpu::Buffer,
}

pub struct AdamW {
    sum_squares: wgpu::ComputePipeline,
    clip_scale: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
    /// The same on a vec4 per invocation (see adamw.wgsl), used when every buffer holds
    /// whole vec4s.
    sum_squares4: wgpu::ComputePipeline,
    update4: wgpu::ComputePipeline,
    /// The vec4 kernels reading the gradients from an rgba32float copy (CPU adapters).
    sum_squares_texture: wgpu::ComputePipeline,
    update_texture: wgpu::ComputePipeline,
    /// Texels per row (a power of two) of those copies, when the texture path is on.
    texture_width: Option<u32>,
    /// Workgroups of the sum of squares (at most MAX_PARTIALS).
    partials: usize,
}

impl AdamW {
    pub fn new(gpu: &Gpu) -> Self {
        let partials = if gpu.is_cpu() {
            CPU_PARTIALS
        } else {
            MAX_PARTIALS
        };
        Self::with_partials(gpu, partials)
    }

    /// With `partials` workgroups in the sum of squares (1..=256; `new` picks them for the
    /// adapter). The tests run the counts of both adapter kinds.
    pub fn with_partials(gpu: &Gpu, partials: usize) -> Self {
        assert!(
            (1..=MAX_PARTIALS).contains(&partials),
            "AdamW partial sums {partials} outside 1..={MAX_PARTIALS}"
        );
        let s = &super::ADAMW;
        AdamW {
            partials,
            sum_squares: gpu.pipeline(s, "sum_squares"),
            clip_scale: gpu.pipeline(s, "clip_scale"),
            update: gpu.pipeline(s, "adamw_update"),
            sum_squares4: gpu.pipeline(s, "sum_squares4"),
            update4: gpu.pipeline(s, "adamw_update4"),
            sum_squares_texture: gpu.pipeline(s, "sum_squares_texture"),
            update_texture: gpu.pipeline(s, "adamw_update_texture"),
            texture_width: texture::preferred(gpu).then_some(TEXTURE_WIDTH),
        }
    }

    /// The same with the texture path off (`None`) or on with rows of `width` texels (a
    /// power of two), whatever the adapter: the tests cover every path.
    pub fn with_texture_width(gpu: &Gpu, partials: usize, width: Option<u32>) -> Self {
        assert!(
            width.is_none_or(|w| w.is_power_of_two()),
            "AdamW texture width {width:?} is not a power of two"
        );
        AdamW {
            texture_width: width,
            ..Self::with_partials(gpu, partials)
        }
    }

    /// Floats of the `stats` buffer: the partial sums of squares, the clip scale, the norm.
    pub fn stats_len() -> usize {
        MAX_PARTIALS + 2
    }

    /// Index in `stats` of the clip scale; the gradient norm before clipping follows it.
    pub fn scale_index() -> usize {
        MAX_PARTIALS
    }

    pub fn hyper_buffer(gpu: &Gpu, hyper: &Hyper) -> wgpu::Buffer {
        gpu.uniform("adamw hyper", hyper)
    }

    pub fn write_hyper(gpu: &Gpu, buffer: &wgpu::Buffer, hyper: &Hyper) {
        gpu.queue.write_buffer(buffer, 0, bytemuck::bytes_of(hyper));
    }
}

/// The whole update: per chunk the sum of squares in `partials` grid-strided workgroups
/// (the chunks after the first add to the same partial sums), then their sum with the clip
/// scale, then per chunk one thread per element (or vec4).
impl Record<AdamWArgs<'_>> for AdamW {
    fn record(&self, gpu: &Gpu, a: &AdamWArgs, out: &mut Vec<Command>) {
        assert!(
            !a.chunks.is_empty() && a.stats.size() >= 4 * Self::stats_len() as u64,
            "AdamW needs at least one chunk and a stats buffer of {} floats",
            Self::stats_len()
        );
        let mut sums = Vec::new();
        let mut updates = Vec::new();
        for (i, chunk) in a.chunks.iter().enumerate() {
            let (sum, update) = self.record_chunk(gpu, a, chunk, i > 0, out);
            sums.push(sum);
            updates.push(update);
        }
        let meta = self.meta(&a.chunks[0], false);
        let clip_scale = gpu.dispatch(
            &self.clip_scale,
            &[(1, &Out(a.stats)), (2, a.hyper)],
            &meta,
            [1, 1, 1],
        );
        out.extend(sums.into_iter().map(Command::from));
        out.push(Command::from(clip_scale));
        out.extend(updates.into_iter().map(Command::from));
    }
}

impl AdamW {
    fn meta(&self, c: &AdamWChunk, accumulate: bool) -> Meta {
        Meta {
            start: c.range.start as u32,
            end: c.range.end as u32,
            decay_end: c.decay_end as u32,
            partials: self.partials as u32,
            scale_at: MAX_PARTIALS as u32,
            texture_shift: self.texture_width.map_or(0, u32::trailing_zeros),
            accumulate: u32::from(accumulate),
            _pad: 0,
        }
    }

    /// One chunk's sum of squares (added to the partial sums when `accumulate`) and update;
    /// texture copies, when the texture path is taken, go to `out` first.
    fn record_chunk(
        &self,
        gpu: &Gpu,
        a: &AdamWArgs,
        c: &AdamWChunk,
        accumulate: bool,
        out: &mut Vec<Command>,
    ) -> (Dispatch, Dispatch) {
        let floats = (c.params.size() / 4) as usize;
        let buffers = [c.grads, c.m, c.v, c.params];
        assert!(
            c.range.end <= floats && buffers.iter().all(|b| b.size() == c.params.size()),
            "AdamW range {:?} outside a chunk of {floats} floats, or its roles differ in size",
            c.range
        );
        let meta = self.meta(c, accumulate);
        let vec4 = floats.is_multiple_of(4);
        let vec4s = c.range.end.div_ceil(4) - c.range.start / 4;
        // The gradients as a texture, not to update a small part (a head alone) of a large
        // chunk, whose copy would cost more than it saves.
        let texture = self
            .texture_width
            .filter(|_| vec4 && 2 * c.range.len() >= floats)
            .and_then(|w| texture::flat(gpu, c.grads, w));
        if let Some((grads, copies)) = texture {
            out.extend(copies);
            let sum_squares = gpu.dispatch(
                &self.sum_squares_texture,
                &[(11, &grads), (1, &Out(a.stats))],
                &meta,
                [self.partials as u32, 1, 1],
            );
            let update = gpu.dispatch(
                &self.update_texture,
                &[
                    (11, &grads),
                    (2, a.hyper),
                    (3, a.stats),
                    (8, &Out(c.params)),
                    (9, &Out(c.m)),
                    (10, &Out(c.v)),
                ],
                &meta,
                grid_1d(div_ceil(vec4s, 256)),
            );
            return (sum_squares, update);
        }
        // The vec4 kernels bind the gradients, values and moments as vec4 arrays (7..10).
        let (sum_squares, update, [grads, params, m, v], threads) = if vec4 {
            (&self.sum_squares4, &self.update4, [7, 8, 9, 10], vec4s)
        } else {
            (&self.sum_squares, &self.update, [0, 4, 5, 6], c.range.len())
        };
        let sum_squares = gpu.dispatch(
            sum_squares,
            &[(grads, c.grads), (1, &Out(a.stats))],
            &meta,
            [self.partials as u32, 1, 1],
        );
        let update = gpu.dispatch(
            update,
            &[
                (grads, c.grads),
                (2, a.hyper),
                (3, a.stats),
                (params, &Out(c.params)),
                (m, &Out(c.m)),
                (v, &Out(c.v)),
            ],
            &meta,
            grid_1d(div_ceil(threads, 256)),
        );
        (sum_squares, update)
    }
}
