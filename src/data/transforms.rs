//! timm's image transforms for photos, pixel-exact with PIL (which torchvision and timm call):
//! RandomResizedCrop (+ horizontal flip) for training, resize-shorter-side + center crop for
//! evaluation, then ToTensor + Normalize. Resampling reproduces Pillow's `Image.resize`
//! (Resample.c): separable antialiased filters, horizontal pass first, 8-bit fixed-point
//! coefficients with 22 fractional bits, so the numbers match PIL's bit for bit.

use rand::Rng;

/// An 8-bit image, interleaved HWC (1 or 3 channels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// A rectangle in pixels: left, top, width, height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// PIL's resampling filters (the two timm uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

impl std::str::FromStr for Interpolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            _ => Err(format!(
                "'{s}' is not an interpolation: expected bilinear or bicubic"
            )),
        }
    }
}

impl std::fmt::Display for Interpolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
        })
    }
}

impl Interpolation {
    fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One output coordinate's taps: first input index and fixed-point weights.
struct Taps {
    ksize: usize,
    /// (first input index, number of taps) per output coordinate.
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `in_size` -> `out_size`.
fn taps(in_size: usize, out_size: usize, filter: Interpolation) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let one = (1u32 << PRECISION_BITS) as f64;
        for x in 0..xmax {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + w * one) as i32
            } else {
                (0.5 + w * one) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Taps {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes the `crop` of `src` to `out_w` x `out_h` as PIL's `img.crop(box).resize(...)`
/// does, returning only the `window` of that output (a center crop needs no more).
pub fn resize_crop(
    src: &Pixels,
    crop: CropBox,
    out_w: usize,
    out_h: usize,
    window: CropBox,
    filter: Interpolation,
) -> Pixels {
    let c = src.channels;
    let row_stride = src.width * c;
    let horiz = taps(crop.w, out_w, filter);
    let vert = taps(crop.h, out_h, filter);
    let rows = &vert.bounds[window.y..window.y + window.h];
    // Input rows (relative to the crop) any output row of the window reads.
    let first = rows.iter().map(|b| b.0).min().unwrap_or(0);
    let last = rows.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
    // Horizontal pass: rows first..last of the crop, only the window's columns.
    let tw = window.w;
    let mut temp = vec![0u8; (last - first) * tw * c];
    let half = 1i32 << (PRECISION_BITS - 1);
    for (ty, y) in (first..last).enumerate() {
        let src_row = &src.data[(crop.y + y) * row_stride..(crop.y + y + 1) * row_stride];
        for ox in 0..tw {
            let xx = window.x + ox;
            let (xmin, n) = horiz.bounds[xx];
            let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
            for ch in 0..c {
                let mut ss = half;
                for (i, &w) in k.iter().enumerate() {
                    ss += src_row[(crop.x + xmin + i) * c + ch] as i32 * w;
                }
                temp[(ty * tw + ox) * c + ch] = clip8(ss);
            }
        }
    }
    // Vertical pass over the window's rows.
    let mut out = vec![0u8; window.h * tw * c];
    for (oy, &(ymin, n)) in rows.iter().enumerate() {
        let yy = window.y + oy;
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for i in 0..tw * c {
            let mut ss = half;
            for (j, &w) in k.iter().enumerate() {
                ss += temp[(ymin - first + j) * tw * c + i] as i32 * w;
            }
            out[oy * tw * c + i] = clip8(ss);
        }
    }
    Pixels {
        width: tw,
        height: window.h,
        channels: c,
        data: out,
    }
}

/// The whole image resized to `out_w` x `out_h` (PIL's `img.resize((out_w, out_h))`).
pub fn resize(src: &Pixels, out_w: usize, out_h: usize, filter: Interpolation) -> Pixels {
    let all = CropBox {
        x: 0,
        y: 0,
        w: src.width,
        h: src.height,
    };
    let window = CropBox {
        x: 0,
        y: 0,
        w: out_w,
        h: out_h,
    };
    resize_crop(src, all, out_w, out_h, window, filter)
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`.
pub fn shorter_side_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    }
}

/// torchvision's `CenterCrop`: offsets `int(round((in - out) / 2))`, Python's round (half to even).
pub fn center_crop_box(w: usize, h: usize, out_w: usize, out_h: usize) -> CropBox {
    let off =
        |a: usize, b: usize| ((a as f64 - b as f64) / 2.0).round_ties_even().max(0.0) as usize;
    CropBox {
        x: off(w, out_w),
        y: off(h, out_h),
        w: out_w,
        h: out_h,
    }
}

/// timm's eval transform: `Resize(floor(size / crop_pct))` (shorter side for a square
/// target, both sides otherwise), `CenterCrop(size)`. Output `out_w` x `out_h`.
pub fn eval_resize_crop(
    src: &Pixels,
    out_w: usize,
    out_h: usize,
    crop_pct: f64,
    filter: Interpolation,
) -> Pixels {
    let (rw, rh) = if out_w == out_h {
        shorter_side_size(
            src.width,
            src.height,
            (out_w as f64 / crop_pct).floor() as usize,
        )
    } else {
        (
            (out_w as f64 / crop_pct).floor() as usize,
            (out_h as f64 / crop_pct).floor() as usize,
        )
    };
    let all = CropBox {
        x: 0,
        y: 0,
        w: src.width,
        h: src.height,
    };
    let window = center_crop_box(rw, rh, out_w, out_h);
    resize_crop(src, all, rw, rh, window, filter)
}

/// RandomResizedCrop's range of area fractions and of aspect ratios (timm's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropRange {
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

impl Default for CropRange {
    fn default() -> Self {
        CropRange {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// timm's `RandomResizedCropAndInterpolation.get_params`: ten tries at an area fraction
/// uniform in `scale` and an aspect ratio log-uniform in `ratio`, then a central fallback.
pub fn random_resized_crop_box<R: Rng + ?Sized>(
    w: usize,
    h: usize,
    range: &CropRange,
    rng: &mut R,
) -> CropBox {
    let area = (w * h) as f64;
    let (lr0, lr1) = (range.ratio.0.ln(), range.ratio.1.ln());
    for _ in 0..10 {
        let target = rng.random_range(range.scale.0..=range.scale.1) * area;
        let aspect = rng.random_range(lr0..=lr1).exp();
        let cw = (target * aspect).sqrt().round_ties_even() as usize;
        let ch = (target / aspect).sqrt().round_ties_even() as usize;
        if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
            let y = rng.random_range(0..=h - ch);
            let x = rng.random_range(0..=w - cw);
            return CropBox { x, y, w: cw, h: ch };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < range.ratio.0 {
        (
            w,
            ((w as f64 / range.ratio.0).round_ties_even() as usize).max(1),
        )
    } else if in_ratio > range.ratio.1 {
        (
            ((h as f64 * range.ratio.1).round_ties_even() as usize).max(1),
            h,
        )
    } else {
        (w, h)
    };
    CropBox {
        x: (w - cw) / 2,
        y: (h - ch) / 2,
        w: cw,
        h: ch,
    }
}

/// ToTensor + Normalize: HWC u8 -> CHW `(x/255 - mean) / std` in f32 (torch's order of
/// operations), mirrored left-right when `flip`.
pub fn normalise_chw(p: &Pixels, flip: bool, mean: &[f32], std: &[f32], out: &mut [f32]) {
    let (w, h, c) = (p.width, p.height, p.channels);
    let plane = w * h;
    for ch in 0..c {
        let (m, s) = (mean[ch], std[ch]);
        for y in 0..h {
            let row = &mut out[ch * plane + y * w..ch * plane + (y + 1) * w];
            for (x, d) in row.iter_mut().enumerate() {
                let sx = if flip { w - 1 - x } else { x };
                *d = (p.data[(y * w + sx) * c + ch] as f32 / 255.0 - m) / s;
            }
        }
    }
}

/// HWC u8 -> CHW u8 (the layout the in-memory datasets keep).
pub fn to_chw(p: &Pixels) -> Vec<u8> {
    let plane = p.width * p.height;
    let mut out = vec![0u8; plane * p.channels];
    for (i, px) in p.data.chunks_exact(p.channels).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * plane + i] = v;
        }
    }
    out
}
