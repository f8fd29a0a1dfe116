//! AdamW over a whole parameter arena with global gradient-norm clipping, on the device.

use crate::gpu::{div_ceil, grid_1d, Command, Gpu, Record};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    start: u32,
    end: u32,
    decay_end: u32,
    partials: u32,
}

/// Workgroups of the sum of squares (its first pass): enough to keep every core busy,
/// few enough for one workgroup to add them up.
const PARTIALS: usize = 256;

/// The per-step hyper-parameters, written to a uniform buffer before each step's submit.
pub use crate::ops::Hyper;

/// A parameter arena: the values, gradients and both moments of every tensor, one buffer
/// per role with the same layout. The optimizer updates `range` (floats); elements below
/// `decay_end` get weight decay.
pub struct AdamWArgs<'a> {
    pub params: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub range: std::ops::Range<usize>,
    pub decay_end: usize,
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
}

impl AdamW {
    pub fn new(gpu: &Gpu) -> Self {
        let s = &super::ADAMW;
        AdamW {
            sum_squares: gpu.pipeline(s, "sum_squares"),
            clip_scale: gpu.pipeline(s, "clip_scale"),
            update: gpu.pipeline(s, "adamw_update"),
            sum_squares4: gpu.pipeline(s, "sum_squares4"),
            update4: gpu.pipeline(s, "adamw_update4"),
        }
    }

    /// Floats of the `stats` buffer: the partial sums of squares, the clip scale, the norm.
    pub fn stats_len() -> usize {
        PARTIALS + 2
    }

    /// Index in `stats` of the clip scale; the gradient norm before clipping follows it.
    pub fn scale_index() -> usize {
        PARTIALS
    }

    pub fn hyper_buffer(gpu: &Gpu, hyper: &Hyper) -> wgpu::Buffer {
        gpu.uniform("adamw hyper", hyper)
    }

    pub fn write_hyper(gpu: &Gpu, buffer: &wgpu::Buffer, hyper: &Hyper) {
        gpu.queue.write_buffer(buffer, 0, bytemuck::bytes_of(hyper));
    }
}

/// The whole update in three launches: the sum of squares in `PARTIALS` grid-strided
/// workgroups, their sum with the clip scale, then one thread per element.
impl Record<AdamWArgs<'_>> for AdamW {
    fn record(&self, gpu: &Gpu, a: &AdamWArgs, out: &mut Vec<Command>) {
        assert!(
            a.range.end <= (a.params.size() / 4) as usize
                && a.stats.size() >= 4 * Self::stats_len() as u64,
            "AdamW range {:?} outside the arena of {} floats, or stats too small",
            a.range,
            a.params.size() / 4
        );
        let meta = Meta {
            start: a.range.start as u32,
            end: a.range.end as u32,
            decay_end: a.decay_end as u32,
            partials: PARTIALS as u32,
        };
        let vec4 = [a.params, a.grads, a.m, a.v]
            .iter()
            .all(|b| b.size().is_multiple_of(16));
        // The vec4 kernels bind the gradients, values and moments as vec4 arrays (7..10).
        let (sum_squares, update, [grads, params, m, v], threads) = if vec4 {
            let vec4s = a.range.end.div_ceil(4) - a.range.start / 4;
            (&self.sum_squares4, &self.update4, [7, 8, 9, 10], vec4s)
        } else {
            (&self.sum_squares, &self.update, [0, 4, 5, 6], a.range.len())
        };
        let sum_squares = gpu.dispatch(
            sum_squares,
            &[(grads, a.grads), (1, a.stats)],
            &meta,
            [PARTIALS as u32, 1, 1],
        );
        let clip_scale = gpu.dispatch(
            &self.clip_scale,
            &[(1, a.stats), (2, a.hyper)],
            &meta,
            [1, 1, 1],
        );
        let update = gpu.dispatch(
            update,
            &[
                (grads, a.grads),
                (2, a.hyper),
                (3, a.stats),
                (params, a.params),
                (m, a.m),
                (v, a.v),
            ],
            &meta,
            grid_1d(div_ceil(threads, 256)),
        );
        let launches = [sum_squares, clip_scale, update];
        out.extend(launches.map(Command::from));
    }
}
