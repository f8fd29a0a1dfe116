//! What a batch is and how one image becomes model input: normalisation, and the training
//! augmentation whose random draws depend only on (seed, epoch, the sample's position), so
//! any loader, thread count or shard sees the same images.

use super::Dataset;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A batch ready for upload: images `[len, C, H, W]` normalised, labels as class indices.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub len: usize,
}

/// Training-time augmentation as in torchvision's `RandomCrop(size, padding=crop_pad)` and
/// `RandomHorizontalFlip()`. Flips apply only where the dataset allows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    pub crop_pad: usize,
    pub flip: bool,
}

impl Augment {
    /// The seed's recipe: pad 4, random crop, horizontal flip.
    pub fn standard() -> Augment {
        Augment {
            crop_pad: 4,
            flip: true,
        }
    }
}

/// Writes image `index` of `ds` into `out` (C*H*W) as `(x/255 - mean[c]) / std[c]`.
pub fn normalise_into(ds: &Dataset, index: usize, out: &mut [f32]) {
    let plane = ds.height * ds.width;
    let img = ds.image(index);
    for c in 0..ds.channels {
        let (mean, std) = (ds.mean[c], ds.std[c]);
        let src = &img[c * plane..(c + 1) * plane];
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s as f32 / 255.0 - mean) / std;
        }
    }
}

/// Like [`normalise_into`], after a random crop of the image zero-padded by `crop_pad`
/// (padding is pixel value 0, before normalisation, as torchvision does) and a horizontal
/// flip with probability 0.5 when `aug.flip && ds.allow_flip`.
pub fn augment_into<R: Rng + ?Sized>(
    ds: &Dataset,
    index: usize,
    aug: &Augment,
    rng: &mut R,
    out: &mut [f32],
) {
    let (h, w) = (ds.height, ds.width);
    let pad = aug.crop_pad;
    // Offsets of the crop window in the padded image, minus the padding: in -pad..=pad.
    let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
    let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
    let flip = aug.flip && ds.allow_flip && rng.random_bool(0.5);
    let plane = h * w;
    let img = ds.image(index);
    for c in 0..ds.channels {
        let zero = (0.0 - ds.mean[c]) / ds.std[c];
        let (mean, std) = (ds.mean[c], ds.std[c]);
        let src = &img[c * plane..(c + 1) * plane];
        for y in 0..h {
            let sy = y as isize + dy;
            let row = &mut out[c * plane + y * w..c * plane + (y + 1) * w];
            if sy < 0 || sy >= h as isize {
                row.fill(zero);
                continue;
            }
            let srow = &src[sy as usize * w..(sy as usize + 1) * w];
            for (x, d) in row.iter_mut().enumerate() {
                let x = if flip { w - 1 - x } else { x };
                let sx = x as isize + dx;
                *d = if sx < 0 || sx >= w as isize {
                    zero
                } else {
                    (srow[sx as usize] as f32 / 255.0 - mean) / std
                };
            }
        }
    }
}

/// SplitMix64 finaliser: turns nearby (seed, epoch, batch) tuples into unrelated seeds.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generator of the sample at `position` in `epoch`'s order.
pub fn sample_rng(seed: u64, epoch: u64, position: usize) -> StdRng {
    StdRng::seed_from_u64(mix(
        mix(seed ^ 0x5bd1_e995_9e37_79b9, epoch),
        position as u64,
    ))
}

/// An epoch's image order: a permutation fixed by (seed, epoch) when `shuffle`, else the
/// dataset order. The loader's, and the browser's training session's.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch)));
    }
    order
}

/// The images at positions `[lo, hi)` of the epoch's order (a batch, or one rank's slice
/// of it). Each sample's draws come from its own generator, seeded by its position in the
/// epoch, so a slice holds exactly what the same positions of the whole batch hold.
pub fn make_batch(
    ds: &Dataset,
    order: &[usize],
    (lo, hi): (usize, usize),
    augment: Option<Augment>,
    seed: u64,
    epoch: u64,
) -> Batch {
    let idx = &order[lo..hi];
    let size = ds.image_size();
    let mut images = vec![0f32; idx.len() * size];
    for (k, (out, &i)) in images.chunks_exact_mut(size).zip(idx).enumerate() {
        match &augment {
            Some(aug) => {
                let mut rng = sample_rng(seed, epoch, lo + k);
                augment_into(ds, i, aug, &mut rng, out)
            }
            None => normalise_into(ds, i, out),
        }
    }
    Batch {
        images,
        labels: idx.iter().map(|&i| ds.labels[i]).collect(),
        len: idx.len(),
    }
}
