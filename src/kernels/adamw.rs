//! AdamW over a parameter arena in chunks with global gradient-norm clipping, on the device.

use super::cpu::TryRecord;
use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Out, Record};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Meta {
    start: u32,
    end: u32,
    decay_end: u32,
    partials: u32,
    scale_at: u32,
    /// log2 of the texels per row of a CPU specialisation's gradient copy (0 here).
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
/// runs as 32 coroutines switched at each of the tree sum's 9 barriers, so a few
/// workgroups sum faster than many.
const CPU_PARTIALS: usize = 8;

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

/// One chunk's sum of squares of its gradients over `range`, into the `partials` partial
/// sums at the start of `stats` (added to them when `accumulate`).
pub struct ChunkSumOfSquares<'a> {
    pub chunk: &'a AdamWChunk<'a>,
    pub stats: &'a wgpu::Buffer,
    pub partials: usize,
    pub accumulate: bool,
}

/// One chunk's update over `range`, its gradients scaled by the clip scale in `stats`.
/// Recorded in the same list after the chunk's `ChunkSumOfSquares` and the clip scale.
pub struct ChunkUpdate<'a> {
    pub chunk: &'a AdamWChunk<'a>,
    pub hyper: &'a wgpu::Buffer,
    pub stats: &'a wgpu::Buffer,
    pub partials: usize,
}

pub struct AdamW {
    sum_squares: wgpu::ComputePipeline,
    clip_scale: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
    /// The same on a vec4 per invocation (see adamw.wgsl), used when every buffer holds
    /// whole vec4s.
    sum_squares4: wgpu::ComputePipeline,
    update4: wgpu::ComputePipeline,
    /// Workgroups of the sum of squares (at most MAX_PARTIALS).
    partials: usize,
    /// Offered every chunk's two passes first, where the adapter has one (`cpu::adamw`).
    cpu: Option<Box<dyn Specialisation>>,
}

/// A CPU-adapter specialisation of AdamW: it records the chunk passes it can take, and the
/// portable kernels run the others.
pub trait Specialisation:
    for<'a> TryRecord<ChunkSumOfSquares<'a>> + for<'a> TryRecord<ChunkUpdate<'a>>
{
}

impl<T> Specialisation for T where
    T: for<'a> TryRecord<ChunkSumOfSquares<'a>> + for<'a> TryRecord<ChunkUpdate<'a>>
{
}

impl AdamWChunk<'_> {
    /// Floats of each of the chunk's buffers.
    pub(super) fn floats(&self) -> usize {
        (self.params.size() / 4) as usize
    }

    /// Whether every buffer of the chunk holds whole vec4s (the vec4 kernels' condition).
    pub(super) fn whole_vec4s(&self) -> bool {
        self.floats().is_multiple_of(4)
    }

    /// Invocations of the vec4 update: the vec4s that hold a float of `range`.
    pub(super) fn vec4s(&self) -> usize {
        self.range.end.div_ceil(4) - self.range.start / 4
    }

    /// `texture_width`: texels per row of the CPU specialisation's gradient copy.
    pub(super) fn meta(
        &self,
        partials: usize,
        accumulate: bool,
        texture_width: Option<u32>,
    ) -> Meta {
        Meta {
            start: self.range.start as u32,
            end: self.range.end as u32,
            decay_end: self.decay_end as u32,
            partials: partials as u32,
            scale_at: MAX_PARTIALS as u32,
            texture_shift: texture_width.map_or(0, u32::trailing_zeros),
            accumulate: u32::from(accumulate),
            _pad: 0,
        }
    }
}

impl AdamW {
    /// The portable kernels, and `cpu` (`cpu::adamw::for_adapter`) offered every chunk
    /// first.
    pub fn new(gpu: &Gpu, cpu: Option<Box<dyn Specialisation>>) -> Self {
        let partials = if gpu.is_cpu() {
            CPU_PARTIALS
        } else {
            MAX_PARTIALS
        };
        Self::with_partials(gpu, partials, cpu)
    }

    /// With `partials` workgroups in the sum of squares (1..=256; `new` picks them for the
    /// adapter). The tests run the counts of both adapter kinds on every path.
    pub fn with_partials(gpu: &Gpu, partials: usize, cpu: Option<Box<dyn Specialisation>>) -> Self {
        assert!(
            (1..=MAX_PARTIALS).contains(&partials),
            "AdamW partial sums {partials} outside 1..={MAX_PARTIALS}"
        );
        let s = &super::ADAMW;
        AdamW {
            sum_squares: gpu.pipeline(s, "sum_squares"),
            clip_scale: gpu.pipeline(s, "clip_scale"),
            update: gpu.pipeline(s, "adamw_update"),
            sum_squares4: gpu.pipeline(s, "sum_squares4"),
            update4: gpu.pipeline(s, "adamw_update4"),
            partials,
            cpu,
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
        for (i, chunk) in a.chunks.iter().enumerate() {
            let floats = chunk.floats();
            let buffers = [chunk.grads, chunk.m, chunk.v, chunk.params];
            assert!(
                chunk.range.end <= floats
                    && buffers.iter().all(|b| b.size() == chunk.params.size()),
                "AdamW range {:?} outside a chunk of {floats} floats, or its roles differ in size",
                chunk.range
            );
            let sum = ChunkSumOfSquares {
                chunk,
                stats: a.stats,
                partials: self.partials,
                accumulate: i > 0,
            };
            self.record(gpu, &sum, out);
        }
        let meta = a.chunks[0].meta(self.partials, false, None);
        let clip_scale = gpu.dispatch(
            &self.clip_scale,
            &[(1, &Out(a.stats)), (2, a.hyper)],
            &meta,
            [1, 1, 1],
        );
        out.push(clip_scale.into());
        for chunk in &a.chunks {
            let update = ChunkUpdate {
                chunk,
                hyper: a.hyper,
                stats: a.stats,
                partials: self.partials,
            };
            self.record(gpu, &update, out);
        }
    }
}

impl Record<ChunkSumOfSquares<'_>> for AdamW {
    fn record(&self, gpu: &Gpu, a: &ChunkSumOfSquares, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let c = a.chunk;
        // The vec4 kernel binds the gradients as a vec4 array (7).
        let (pipeline, grads) = if c.whole_vec4s() {
            (&self.sum_squares4, 7)
        } else {
            (&self.sum_squares, 0)
        };
        let d = gpu.dispatch(
            pipeline,
            &[(grads, c.grads), (1, &Out(a.stats))],
            &c.meta(a.partials, a.accumulate, None),
            [a.partials as u32, 1, 1],
        );
        out.push(d.into());
    }
}

impl Record<ChunkUpdate<'_>> for AdamW {
    fn record(&self, gpu: &Gpu, a: &ChunkUpdate, out: &mut Vec<Command>) {
        if self.cpu.as_ref().is_some_and(|c| c.try_record(gpu, a, out)) {
            return;
        }
        let c = a.chunk;
        // The vec4 kernel binds the gradients, values and moments as vec4 arrays (7..10).
        let (pipeline, [grads, params, m, v], threads) = if c.whole_vec4s() {
            (&self.update4, [7, 8, 9, 10], c.vec4s())
        } else {
            (&self.update, [0, 4, 5, 6], c.range.len())
        };
        let d = gpu.dispatch(
            pipeline,
            &[
                (grads, c.grads),
                (2, a.hyper),
                (3, a.stats),
                (params, &Out(c.params)),
                (m, &Out(c.m)),
                (v, &Out(c.v)),
            ],
            &c.meta(a.partials, false, None),
            grid_1d(div_ceil(threads, 256)),
        );
        out.push(d.into());
    }
}
