//! Image folders too large to hold in memory: only the file list is read at start, and
//! images are decoded and transformed per batch on N worker threads into a bounded queue.
//!
//! A batch is a pure function of (seed, epoch, batch index): the order is the epoch's
//! permutation and every random draw of a sample comes from a generator seeded by
//! (seed, epoch, the sample's position in the epoch), never from a worker's state. So any
//! number of workers, a resumed run, or (later) a shard of the epoch, sees the same images.

use super::augment::{sample_rng, Augment, Batch};
use super::transforms::{self, CropRange, Interpolation, Pixels};
use super::{DataError, Dataset};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How a streamed folder is decoded and transformed.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamOptions {
    /// Decoding threads.
    pub workers: usize,
    /// Batches decoded ahead of the consumer, at most (in progress + ready).
    pub queue_depth: usize,
    pub interpolation: Interpolation,
    /// Eval: resize to size/crop_pct, center-crop (timm). `None`: resize to the model's
    /// input exactly (what the in-memory folders do; `infer` on their checkpoints).
    pub crop_pct: Option<f64>,
    /// Eval: transformers' resize + center crop instead (model folders that have one).
    pub hf_crop: Option<super::preprocess::HfCrop>,
    pub crop: CropRange,
}

impl Default for StreamOptions {
    fn default() -> Self {
        let workers = default_workers();
        StreamOptions {
            workers,
            queue_depth: 2 * workers.max(1),
            interpolation: Interpolation::Bilinear,
            crop_pct: Some(0.875),
            hf_crop: None,
            crop: CropRange::default(),
        }
    }
}

/// The number of cores (the default for `--workers`).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// The file list of a streamed dataset: paths relative to `root` packed in one string (a
/// PathBuf per file would cost ~3x more for ImageNet's 1.28 M files).
#[derive(Debug, PartialEq)]
pub struct Stream {
    pub root: PathBuf,
    names: String,
    /// `names[ends[i-1]..ends[i]]` is file i.
    ends: Vec<usize>,
    pub options: StreamOptions,
}

impl Stream {
    pub fn new(root: PathBuf, files: &[PathBuf], options: StreamOptions) -> Stream {
        let mut names = String::new();
        let mut ends = Vec::with_capacity(files.len());
        for f in files {
            let rel = f.strip_prefix(&root).unwrap_or(f);
            names.push_str(&rel.to_string_lossy());
            ends.push(names.len());
        }
        Stream {
            root,
            names,
            ends,
            options,
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The path of file `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.root.join(&self.names[start..self.ends[i]])
    }

    /// The first `n` files.
    pub fn truncated(&self, n: usize) -> Stream {
        let n = n.min(self.len());
        let end = if n == 0 { 0 } else { self.ends[n - 1] };
        Stream {
            root: self.root.clone(),
            names: self.names[..end].to_string(),
            ends: self.ends[..n].to_vec(),
            options: self.options.clone(),
        }
    }
}

/// A streamed dataset over `files` (labels parallel to them): nothing is decoded yet.
pub fn dataset(
    name: String,
    root: PathBuf,
    files: &[PathBuf],
    labels: Vec<u32>,
    class_names: Vec<String>,
    (height, width, channels): (usize, usize, usize),
    options: StreamOptions,
) -> Dataset {
    Dataset {
        name,
        images: Vec::new(),
        len: labels.len(),
        labels,
        channels,
        height,
        width,
        class_names,
        mean: vec![0.5; channels],
        std: vec![0.5; channels],
        allow_flip: true,
        stream: Some(Arc::new(Stream::new(root, files, options))),
    }
}

/// Decodes an image file to HWC u8 with `channels` (1: luma, 3: RGB) channels.
pub fn decode(path: &Path, channels: usize) -> Result<Pixels, DataError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                hint: "no such image file".to_string(),
            }
        } else {
            DataError::io(path, e)
        }
    })?;
    let img = image::load_from_memory(&bytes).map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if channels == 1 {
        img.into_luma8().into_raw()
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(Pixels {
        width,
        height,
        channels,
        data,
    })
}

/// Image `index` of a streamed dataset, transformed to the model's input and normalised
/// into `out` (CHW). `rng` is the sample's own generator when augmenting.
pub fn load_sample(
    ds: &Dataset,
    stream: &Stream,
    index: usize,
    augment: Option<(&Augment, &mut StdRng)>,
    out: &mut [f32],
) -> Result<(), DataError> {
    let (aug, rng) = match augment {
        Some((a, r)) => (Some(a), Some(r)),
        None => (None, None),
    };
    let (pixels, flip) = transformed(ds, stream, index, aug, rng)?;
    transforms::normalise_chw(&pixels, flip, &ds.mean, &ds.std, out);
    Ok(())
}

/// The u8 image the model sees (before normalisation), and whether to mirror it.
fn transformed(
    ds: &Dataset,
    stream: &Stream,
    index: usize,
    augment: Option<&Augment>,
    rng: Option<&mut StdRng>,
) -> Result<(Pixels, bool), DataError> {
    let path = stream.path(index);
    let img = decode(&path, ds.channels)?;
    if img.width == 0 || img.height == 0 {
        return Err(DataError::Decode {
            path,
            message: "the image is empty (0 pixels)".into(),
        });
    }
    let o = &stream.options;
    let (w, h) = (ds.width, ds.height);
    match (augment, rng) {
        (Some(aug), Some(rng)) => {
            let crop = transforms::random_resized_crop_box(img.width, img.height, &o.crop, rng);
            let flip = aug.flip && ds.allow_flip && rng.random_bool(0.5);
            let window = transforms::CropBox { x: 0, y: 0, w, h };
            let out = transforms::resize_crop(&img, crop, w, h, window, o.interpolation);
            Ok((out, flip))
        }
        _ => {
            let out = match (o.hf_crop, o.crop_pct) {
                (Some(hc), _) if hc.crop == (h, w) => hc.apply(&img, o.interpolation),
                (_, Some(pct)) => transforms::eval_resize_crop(&img, w, h, pct, o.interpolation),
                (_, None) => transforms::resize(&img, w, h, o.interpolation),
            };
            Ok((out, false))
        }
    }
}

/// Positions `[lo, hi)` of a streamed dataset's epoch `order` (a batch or a rank's slice).
pub(crate) fn make_batch(
    ds: &Dataset,
    stream: &Stream,
    order: &[usize],
    (lo, hi): (usize, usize),
    augment: Option<Augment>,
    seed: u64,
    epoch: u64,
) -> Result<Batch, DataError> {
    let (start, idx) = (lo, &order[lo..hi]);
    let size = ds.image_size();
    let mut images = vec![0f32; idx.len() * size];
    for (k, (out, &i)) in images.chunks_exact_mut(size).zip(idx).enumerate() {
        match &augment {
            Some(aug) => {
                let mut rng = sample_rng(seed, epoch, start + k);
                load_sample(ds, stream, i, Some((aug, &mut rng)), out)?
            }
            None => load_sample(ds, stream, i, None, out)?,
        }
    }
    Ok(Batch {
        images,
        labels: idx.iter().map(|&i| ds.labels[i]).collect(),
        len: idx.len(),
    })
}

type Job = dyn Fn(usize) -> Result<Batch, DataError> + Send + Sync;

struct PoolState {
    /// Next batch index a worker will claim.
    next_claim: usize,
    /// Next batch index the consumer takes.
    next_take: usize,
    end: usize,
    ready: BTreeMap<usize, Result<Batch, DataError>>,
    stop: bool,
    alive: usize,
    /// Most batches ever held at once (claimed and not yet taken).
    peak_held: usize,
}

struct Shared {
    state: Mutex<PoolState>,
    cond: Condvar,
}

/// Worker threads building batches `start..end` in any order, handed out in order; a worker
/// claims batch b only while b < (next batch to take) + depth, which bounds memory.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    depth: usize,
    workers: Vec<JoinHandle<()>>,
}

/// Decrements the live-worker count even when a worker panics, so the consumer never waits
/// for a batch nobody will build.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.state.lock() {
            st.alive -= 1;
        }
        self.0.cond.notify_all();
    }
}

impl Pool {
    pub(crate) fn new(
        job: Arc<Job>,
        start: usize,
        end: usize,
        workers: usize,
        depth: usize,
    ) -> Pool {
        let workers = workers.max(1);
        let depth = depth.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(PoolState {
                next_claim: start,
                next_take: start,
                end,
                ready: BTreeMap::new(),
                stop: false,
                alive: workers,
                peak_held: 0,
            }),
            cond: Condvar::new(),
        });
        let handles = (0..workers)
            .map(|_| {
                let shared = Arc::clone(&shared);
                let job = Arc::clone(&job);
                std::thread::spawn(move || {
                    let _guard = AliveGuard(Arc::clone(&shared));
                    while let Some(b) = claim(&shared, depth) {
                        let result = job(b);
                        let Ok(mut st) = shared.state.lock() else {
                            return;
                        };
                        st.ready.insert(b, result);
                        drop(st);
                        shared.cond.notify_all();
                    }
                })
            })
            .collect();
        Pool {
            shared,
            depth,
            workers: handles,
        }
    }

    /// Batch `b` (the next in order), waiting for it. `None` when the workers died.
    pub(crate) fn take(&mut self, b: usize) -> Option<Result<Batch, DataError>> {
        let mut st = self.shared.state.lock().ok()?;
        loop {
            if let Some(r) = st.ready.remove(&b) {
                st.next_take = b + 1;
                drop(st);
                self.shared.cond.notify_all();
                return Some(r);
            }
            if st.alive == 0 {
                return None;
            }
            st = self.shared.cond.wait(st).ok()?;
        }
    }

    pub(crate) fn peak_held(&self) -> usize {
        self.shared.state.lock().map(|s| s.peak_held).unwrap_or(0)
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Stops the workers and returns the first panic, if any.
    pub(crate) fn shutdown(&mut self) -> Option<Box<dyn std::any::Any + Send>> {
        if let Ok(mut st) = self.shared.state.lock() {
            st.stop = true;
        }
        self.shared.cond.notify_all();
        let mut panic = None;
        for h in self.workers.drain(..) {
            if let Err(p) = h.join() {
                panic.get_or_insert(p);
            }
        }
        panic
    }
}

fn claim(shared: &Shared, depth: usize) -> Option<usize> {
    let mut st = shared.state.lock().ok()?;
    loop {
        if st.stop || st.next_claim >= st.end {
            return None;
        }
        if st.next_claim < st.next_take + depth {
            let b = st.next_claim;
            st.next_claim += 1;
            st.peak_held = st.peak_held.max(st.next_claim - st.next_take);
            return Some(b);
        }
        st = shared.cond.wait(st).ok()?;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
