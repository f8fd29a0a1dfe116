//! One parameter arena per role (values, gradients, Adam's m and v): every tensor of the
//! model in one buffer, each at an offset aligned for binding alone, the same layout in all
//! four. The optimizer then runs over the whole arena in a few launches, and reading or
//! writing every parameter is one copy.
//!
//! Layout: weight-decayed tensors first (body, then head), then the others (head, then
//! body), so weight decay is the prefix `[0, decay_end)` and the head is one range (for
//! `--freeze-body`). The padding between tensors is zero in every role.

use super::params::ParamSpec;
use crate::gpu::{Gpu, View};

/// Where one tensor lives in the arena (floats); the same in every role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub offset: usize,
    pub len: usize,
}

impl Tensor {
    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    /// This tensor inside one of the arena's buffers.
    pub fn view<'a>(&self, buffer: &'a wgpu::Buffer) -> View<'a> {
        View {
            buffer,
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
    /// Floats in each arena buffer, padding included.
    pub len: usize,
    /// Elements below this get weight decay.
    pub decay_end: usize,
}

impl Layout {
    /// `align` in floats (the adapter's storage offset alignment / 4).
    pub fn new(specs: &[ParamSpec], align: usize) -> Layout {
        let head = |s: &ParamSpec| s.name.starts_with("head.");
        let order: Vec<usize> = (0..specs.len())
            .filter(|&i| specs[i].decay && !head(&specs[i]))
            .chain((0..specs.len()).filter(|&i| specs[i].decay && head(&specs[i])))
            .chain((0..specs.len()).filter(|&i| !specs[i].decay && head(&specs[i])))
            .chain((0..specs.len()).filter(|&i| !specs[i].decay && !head(&specs[i])))
            .collect();
        let mut tensors = vec![Tensor { offset: 0, len: 0 }; specs.len()];
        let (mut at, mut decay_end) = (0, 0);
        for i in order {
            let len = specs[i].len();
            tensors[i] = Tensor { offset: at, len };
            if specs[i].decay {
                decay_end = at + len;
            }
            at = (at + len).div_ceil(align) * align;
        }
        Layout {
            specs: specs.to_vec(),
            tensors,
            len: at.max(align),
            decay_end,
        }
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

    /// One host image of the whole arena from per-tensor data (in spec order).
    pub fn pack<T: AsRef<[f32]>>(&self, tensors: &[T]) -> Vec<f32> {
        let mut out = vec![0f32; self.len];
        for (t, data) in self.tensors.iter().zip(tensors) {
            out[t.offset..t.end()].copy_from_slice(&data.as_ref()[..t.len]);
        }
        out
    }

    /// Per-tensor data (in spec order) from a host image of the arena.
    pub fn unpack(&self, arena: &[f32]) -> Vec<Vec<f32>> {
        self.tensors
            .iter()
            .map(|t| arena[t.offset..t.end()].to_vec())
            .collect()
    }

    /// The smallest range holding every tensor `keep` accepts, or `None` when another
    /// tensor lies inside it (the range would train it too).
    pub fn range_of(&self, keep: impl Fn(&ParamSpec) -> bool) -> Option<std::ops::Range<usize>> {
        let chosen: Vec<bool> = self.specs.iter().map(keep).collect();
        let start = (0..self.specs.len())
            .filter(|&i| chosen[i])
            .map(|i| self.tensors[i].offset)
            .min()?;
        let end = (0..self.specs.len())
            .filter(|&i| chosen[i])
            .map(|i| self.tensors[i].end())
            .max()?;
        let clean = (0..self.specs.len())
            .all(|i| chosen[i] || self.tensors[i].end() <= start || self.tensors[i].offset >= end);
        clean.then_some(start..end)
    }
}

/// The arena's buffers; gradients and moments only when training.
pub struct Arena {
    pub layout: Layout,
    pub values: wgpu::Buffer,
    pub grads: Option<wgpu::Buffer>,
    pub m: Option<wgpu::Buffer>,
    pub v: Option<wgpu::Buffer>,
}

impl Arena {
    /// `values` per tensor in the layout's spec order.
    pub fn new(gpu: &Gpu, layout: Layout, values: &[&[f32]], train: bool) -> Arena {
        let values = gpu.upload("parameters", &layout.pack(values));
        let zeros = |label: &str| train.then(|| gpu.upload(label, &vec![0f32; layout.len]));
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

    pub fn value(&self, t: Tensor) -> View<'_> {
        t.view(&self.values)
    }

    /// The gradient of `t`; only asked for when training.
    pub fn grad(&self, t: Tensor) -> View<'_> {
        match &self.grads {
            Some(g) => t.view(g),
            None => panic!("internal: gradient asked of an inference model"),
        }
    }
}
