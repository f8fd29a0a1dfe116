//! The parameter arena: every tensor of the model in a few large buffers per role (values,
//! gradients, Adam's m and v), the same layout in all four. The optimizer then runs over
//! each buffer in a few launches, and reading or writing every parameter is a few copies.
//!
//! A role is split into chunks, each one buffer no larger than the adapter lets one binding
//! be (WebGPU's default: 128 MiB, 32M floats; ViT-B/16 has 86M parameters), so every chunk
//! binds whole. A tensor never straddles two chunks and starts at an offset aligned for
//! binding alone.
//!
//! Layout: weight-decayed tensors first (body, then head), then the others (head, then
//! body), so in the flat order (chunk after chunk) weight decay is the prefix
//! `[0, decay_end)` and the head is one range (for `--freeze-body`). The padding between
//! tensors and at the end of a chunk is zero in every role.

use super::params::ParamSpec;
use crate::gpu::{Gpu, View};
use std::ops::Range;

/// Caps the bytes of one arena chunk below the adapter's limits: tests and `verify` run
/// small models in several chunks with it.
pub const CHUNK_BYTES_ENV: &str = "VIT_ARENA_CHUNK_BYTES";

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum ArenaError {
    #[error(
        "parameter '{name}' needs {bytes} bytes ({mib:.2} MiB) but one arena buffer may hold \
         at most {limit} bytes ({limit_mib:.2} MiB: the adapter's largest storage binding, or \
         {CHUNK_BYTES_ENV} when lower); a tensor is never split across buffers, so this model \
         cannot run here",
        mib = *bytes as f64 / (1u64 << 20) as f64,
        limit_mib = *limit as f64 / (1u64 << 20) as f64
    )]
    TensorTooLarge {
        name: String,
        bytes: u64,
        limit: u64,
    },
    #[error("{CHUNK_BYTES_ENV}='{value}' is not a number of bytes of at least {minimum}")]
    BadChunkBytes { value: String, minimum: u64 },
}

/// Where one tensor lives: its chunk and its place in it (floats); the same in every role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub chunk: usize,
    pub offset: usize,
    pub len: usize,
}

impl Tensor {
    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    /// This tensor inside its chunk's buffer.
    pub fn view<'a>(&self, chunk: &'a wgpu::Buffer) -> View<'a> {
        View {
            buffer: chunk,
            offset: 4 * self.offset as u64,
            len: self.len,
        }
    }
}

/// The layout: every spec (in `param_specs` order) with its place.
#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<ParamSpec>,
    pub tensors: Vec<Tensor>,
    /// Floats in each chunk, padding included.
    pub chunks: Vec<usize>,
    /// Flat positions below this get weight decay.
    pub decay_end: usize,
}

impl Layout {
    /// `align` in floats (the adapter's storage offset alignment / 4); chunks of at most
    /// `max_chunk` floats (a multiple of `align`).
    pub fn new(specs: &[ParamSpec], align: usize, max_chunk: usize) -> Result<Layout, ArenaError> {
        let max_chunk = max_chunk / align * align;
        let head = |s: &ParamSpec| s.name.starts_with("head.");
        let order: Vec<usize> = (0..specs.len())
            .filter(|&i| specs[i].decay && !head(&specs[i]))
            .chain((0..specs.len()).filter(|&i| specs[i].decay && head(&specs[i])))
            .chain((0..specs.len()).filter(|&i| !specs[i].decay && head(&specs[i])))
            .chain((0..specs.len()).filter(|&i| !specs[i].decay && !head(&specs[i])))
            .collect();
        let mut tensors = vec![
            Tensor {
                chunk: 0,
                offset: 0,
                len: 0
            };
            specs.len()
        ];
        let mut chunks = vec![0usize];
        let mut decay_end = 0;
        for i in order {
            let len = specs[i].len();
            if len > max_chunk {
                return Err(ArenaError::TensorTooLarge {
                    name: specs[i].name.clone(),
                    bytes: 4 * len as u64,
                    limit: 4 * max_chunk as u64,
                });
            }
            let mut at = *chunks.last().unwrap_or(&0);
            if at + len > max_chunk {
                chunks.push(0);
                at = 0;
            }
            let chunk = chunks.len() - 1;
            tensors[i] = Tensor {
                chunk,
                offset: at,
                len,
            };
            chunks[chunk] = (at + len).div_ceil(align) * align;
            if specs[i].decay {
                decay_end = chunks[..chunk].iter().sum::<usize>() + at + len;
            }
        }
        for c in &mut chunks {
            *c = (*c).max(align);
        }
        Ok(Layout {
            specs: specs.to_vec(),
            tensors,
            chunks,
            decay_end,
        })
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// The tensor named `name`; every name the model asks for comes from `param_specs`.
    pub fn tensor(&self, name: &str) -> Tensor {
        match self.index(name) {
            Some(i) => self.tensors[i],
            None => panic!("internal: the parameter layout has no tensor '{name}'"),
        }
    }

    /// Flat position of the start of each chunk (chunk after chunk), and of the end.
    fn chunk_starts(&self) -> Vec<usize> {
        let mut starts = vec![0];
        for len in &self.chunks {
            starts.push(starts[starts.len() - 1] + len);
        }
        starts
    }

    /// Floats in all chunks together (padding included).
    pub fn len(&self) -> usize {
        self.chunks.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flat range of tensor `t`.
    pub fn flat(&self, t: Tensor) -> Range<usize> {
        let start = self.chunk_starts()[t.chunk] + t.offset;
        start..start + t.len
    }

    /// The parts of a flat range in each chunk: (chunk, range inside the chunk), empty
    /// parts left out.
    pub fn pieces(&self, range: Range<usize>) -> Vec<(usize, Range<usize>)> {
        let starts = self.chunk_starts();
        (0..self.chunks.len())
            .filter_map(|c| {
                let (lo, hi) = (starts[c], starts[c + 1]);
                let (a, b) = (range.start.clamp(lo, hi), range.end.clamp(lo, hi));
                (a < b).then(|| (c, a - lo..b - lo))
            })
            .collect()
    }

    /// One host image per chunk from per-tensor data (in spec order).
    pub fn pack<T: AsRef<[f32]>>(&self, tensors: &[T]) -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = self.chunks.iter().map(|&n| vec![0f32; n]).collect();
        for (t, data) in self.tensors.iter().zip(tensors) {
            out[t.chunk][t.offset..t.end()].copy_from_slice(&data.as_ref()[..t.len]);
        }
        out
    }

    /// Per-tensor data (in spec order) from host images of the chunks.
    pub fn unpack<T: AsRef<[f32]>>(&self, chunks: &[T]) -> Vec<Vec<f32>> {
        self.tensors
            .iter()
            .map(|t| chunks[t.chunk].as_ref()[t.offset..t.end()].to_vec())
            .collect()
    }

    /// The smallest flat range holding every tensor `keep` accepts, or `None` when another
    /// tensor lies inside it (the range would train it too).
    pub fn range_of(&self, keep: impl Fn(&ParamSpec) -> bool) -> Option<Range<usize>> {
        let chosen: Vec<bool> = self.specs.iter().map(keep).collect();
        let flat: Vec<Range<usize>> = self.tensors.iter().map(|&t| self.flat(t)).collect();
        let start = (0..self.specs.len())
            .filter(|&i| chosen[i])
            .map(|i| flat[i].start)
            .min()?;
        let end = (0..self.specs.len())
            .filter(|&i| chosen[i])
            .map(|i| flat[i].end)
            .max()?;
        let clean = (0..self.specs.len())
            .all(|i| chosen[i] || flat[i].end <= start || flat[i].start >= end);
        clean.then_some(start..end)
    }
}

/// The arena's buffers, one per chunk in each role; gradients and moments only when
/// training.
pub struct Arena {
    pub layout: Layout,
    pub values: Vec<wgpu::Buffer>,
    pub grads: Option<Vec<wgpu::Buffer>>,
    pub m: Option<Vec<wgpu::Buffer>>,
    pub v: Option<Vec<wgpu::Buffer>>,
}

impl Arena {
    /// `values` per tensor in the layout's spec order.
    pub fn new(gpu: &Gpu, layout: Layout, values: &[&[f32]], train: bool) -> Arena {
        let values = layout
            .pack(values)
            .iter()
            .map(|chunk| gpu.upload("parameters", chunk))
            .collect();
        let zeros = |label: &str| {
            train.then(|| {
                let chunks = layout.chunks.iter();
                chunks.map(|&n| gpu.upload(label, &vec![0f32; n])).collect()
            })
        };
        Arena {
            values,
            grads: zeros("gradients"),
            m: zeros("adam m"),
            v: zeros("adam v"),
            layout,
        }
    }

    /// The adapter's storage offset alignment in floats (at least one 16-byte texel, for
    /// the copies of weights into textures).
    pub fn alignment(gpu: &Gpu) -> usize {
        (gpu.limits.min_storage_buffer_offset_alignment as usize).max(16) / 4
    }

    /// The most floats of one chunk: what one buffer may hold and one binding may see,
    /// capped by `bytes` when given (tests), else by `VIT_ARENA_CHUNK_BYTES` when set.
    pub fn max_chunk(gpu: &Gpu, bytes: Option<u64>) -> Result<usize, ArenaError> {
        let align = 4 * Self::alignment(gpu) as u64;
        let limits = &gpu.limits;
        let mut cap = limits
            .max_buffer_size
            .min(limits.max_storage_buffer_binding_size);
        let asked = match bytes {
            Some(b) => Some(b),
            None => match std::env::var(CHUNK_BYTES_ENV) {
                Ok(s) => Some(
                    s.trim()
                        .parse::<u64>()
                        .map_err(|_| ArenaError::BadChunkBytes {
                            value: s.clone(),
                            minimum: align,
                        })?,
                ),
                Err(_) => None,
            },
        };
        if let Some(b) = asked {
            if b < align {
                return Err(ArenaError::BadChunkBytes {
                    value: b.to_string(),
                    minimum: align,
                });
            }
            cap = cap.min(b);
        }
        Ok((cap / align * align / 4) as usize)
    }

    pub fn value(&self, t: Tensor) -> View<'_> {
        t.view(&self.values[t.chunk])
    }

    /// The gradient of `t`; only asked for when training.
    pub fn grad(&self, t: Tensor) -> View<'_> {
        match &self.grads {
            Some(g) => t.view(&g[t.chunk]),
            None => panic!("internal: gradient asked of an inference model"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Preset;
    use crate::model::params::param_specs;

    #[test]
    fn tensors_never_straddle_chunks_and_the_flat_order_keeps_decay_first_and_head_together() {
        let specs = param_specs(&Preset::Micro.config());
        let largest = specs.iter().map(ParamSpec::len).max().unwrap_or(0);
        let align = 64;
        for max_chunk in [usize::MAX / 2, 3 * largest, largest.next_multiple_of(align)] {
            let l = Layout::new(&specs, align, max_chunk).expect("layout");
            assert!(max_chunk > 1 << 30 || l.chunks.len() > 1);
            for (s, &t) in specs.iter().zip(&l.tensors) {
                assert_eq!(t.offset % align, 0, "{} unaligned", s.name);
                assert!(t.end() <= l.chunks[t.chunk], "{} straddles", s.name);
                let flat = l.flat(t);
                assert_eq!(flat.start < l.decay_end, s.decay, "{}", s.name);
            }
            assert!(l.chunks.iter().all(|&c| c <= max_chunk && c % align == 0));
            let head = l.range_of(|s| s.name.starts_with("head.")).expect("head");
            assert!(l.range_of(|s| s.name.starts_with("blocks.0.")).is_none());
            let pieces = l.pieces(head.clone());
            assert_eq!(
                pieces.iter().map(|(_, r)| r.len()).sum::<usize>(),
                head.len()
            );
            let data: Vec<Vec<f32>> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| (0..s.len()).map(|j| (i * 1000 + j) as f32).collect())
                .collect();
            assert_eq!(l.unpack(&l.pack(&data)), data);
        }
    }

    #[test]
    fn a_tensor_larger_than_a_chunk_is_an_error_naming_it() {
        let specs = param_specs(&Preset::Micro.config());
        let e = Layout::new(&specs, 4, 10_000).expect_err("too large");
        let text = e.to_string();
        assert!(text.contains("blocks.0.attn.qkv.weight"), "{text}");
        assert!(
            text.contains("49152 bytes") && text.contains("40000 bytes"),
            "{text}"
        );
    }
}
