//! Attention maps as PNG files: the input image beside the same image with the attention
//! rollout laid over it as a heat map, and the last layer's per-head CLS attention as a grid
//! of small heat maps.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::{cls_attention_per_head, rollout, MapShape, VizError};

/// Pixels between panels and tiles (white).
pub const GAP: u32 = 8;
/// The shorter side of a displayed image is at least this many pixels.
pub const MIN_DISPLAY: usize = 224;
/// A per-head tile's longer side is at least this many pixels.
pub const MIN_TILE: usize = 96;
/// Weight of the heat map over the image.
const ALPHA: f64 = 0.5;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// The integer upscale that makes an `h` x `w` image at least `MIN_DISPLAY` on its shorter side.
pub fn display_scale(h: usize, w: usize) -> usize {
    MIN_DISPLAY.div_ceil(h.min(w).max(1)).max(1)
}

/// Size (width, height) of `<stem>_attention.png` for an `h` x `w` input.
pub fn attention_png_size(h: usize, w: usize) -> (u32, u32) {
    let s = display_scale(h, w);
    ((2 * w * s) as u32 + GAP, (h * s) as u32)
}

/// Pixels per patch cell in a per-head tile of a `gh` x `gw` grid.
fn cell(gh: usize, gw: usize) -> usize {
    MIN_TILE.div_ceil(gh.max(gw).max(1)).max(1)
}

/// (columns, rows) of the per-head tile grid.
fn tile_layout(heads: usize) -> (usize, usize) {
    let cols = (1..=heads.max(1)).find(|c| c * c >= heads).unwrap_or(1);
    (cols, heads.max(1).div_ceil(cols))
}

/// Size (width, height) of `<stem>_heads.png`.
pub fn heads_png_size(heads: usize, gh: usize, gw: usize) -> (u32, u32) {
    let c = cell(gh, gw);
    let (cols, rows) = tile_layout(heads);
    let g = GAP as usize;
    (
        (cols * gw * c + (cols + 1) * g) as u32,
        (rows * gh * c + (rows + 1) * g) as u32,
    )
}

/// The jet colormap: 0 dark blue, 0.5 green-yellow, 1 dark red.
pub fn jet(v: f64) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let ch = |centre: f64| ((1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [ch(3.0), ch(2.0), ch(1.0)]
}

/// Values rescaled to [0, 1] by their minimum and maximum (all 0.5 when constant).
pub fn normalise(values: &[f64]) -> Vec<f64> {
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !(hi - lo).is_finite() || hi - lo <= 0.0 {
        return vec![0.5; values.len()];
    }
    values.iter().map(|v| (v - lo) / (hi - lo)).collect()
}

/// A `gh` x `gw` grid sampled bilinearly at pixel centres of an `h` x `w` image (edges
/// clamped), [h * w] row-major.
pub fn upsample_bilinear(grid: &[f64], gh: usize, gw: usize, h: usize, w: usize) -> Vec<f64> {
    let coord = |p: usize, from: usize, to: usize| -> (usize, usize, f64) {
        let x = ((p as f64 + 0.5) * from as f64 / to as f64 - 0.5).clamp(0.0, (from - 1) as f64);
        let i0 = x.floor() as usize;
        let i1 = (i0 + 1).min(from - 1);
        (i0, i1, x - i0 as f64)
    };
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let (y0, y1, fy) = coord(y, gh, h);
        for x in 0..w {
            let (x0, x1, fx) = coord(x, gw, w);
            let top = grid[y0 * gw + x0] * (1.0 - fx) + grid[y0 * gw + x1] * fx;
            let bottom = grid[y1 * gw + x0] * (1.0 - fx) + grid[y1 * gw + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The input (CHW u8, 1 or 3 channels) as RGB, upscaled by `scale` (nearest).
fn upscale(pixels: &[u8], channels: usize, h: usize, w: usize, scale: usize) -> RgbImage {
    let plane = h * w;
    RgbImage::from_fn((w * scale) as u32, (h * scale) as u32, |x, y| {
        let i = (y as usize / scale) * w + x as usize / scale;
        let c = |k: usize| pixels[(k.min(channels - 1)) * plane + i];
        Rgb([c(0), c(1), c(2)])
    })
}

/// The input image (upscaled) beside it with the rollout grid (gh x gw) over it as a heat map.
pub fn attention_image(
    pixels: &[u8],
    channels: usize,
    h: usize,
    w: usize,
    grid: &[f64],
    gh: usize,
    gw: usize,
) -> RgbImage {
    let s = display_scale(h, w);
    let base = upscale(pixels, channels, h, w, s);
    let (dw, dh) = base.dimensions();
    let heat = upsample_bilinear(&normalise(grid), gh, gw, dh as usize, dw as usize);
    let (width, height) = attention_png_size(h, w);
    let mut out = RgbImage::from_pixel(width, height, WHITE);
    let right = dw + GAP;
    for (x, y, p) in base.enumerate_pixels() {
        out.put_pixel(x, y, *p);
        let colour = jet(heat[y as usize * dw as usize + x as usize]);
        let mix =
            |k: usize| ((1.0 - ALPHA) * p.0[k] as f64 + ALPHA * colour[k] as f64).round() as u8;
        out.put_pixel(right + x, y, Rgb([mix(0), mix(1), mix(2)]));
    }
    out
}

/// One heat-map tile per head (each scaled to its own minimum and maximum), nearest
/// upscaling so each patch is a visible square.
pub fn heads_image(heads: &[Vec<f64>], gh: usize, gw: usize) -> RgbImage {
    let (width, height) = heads_png_size(heads.len(), gh, gw);
    let c = cell(gh, gw);
    let (cols, _) = tile_layout(heads.len());
    let mut out = RgbImage::from_pixel(width, height, WHITE);
    for (k, values) in heads.iter().enumerate() {
        let v = normalise(values);
        let (col, row) = (k % cols, k / cols);
        let x0 = GAP as usize + col * (gw * c + GAP as usize);
        let y0 = GAP as usize + row * (gh * c + GAP as usize);
        for y in 0..gh * c {
            for x in 0..gw * c {
                let colour = jet(v[(y / c) * gw + x / c]);
                out.put_pixel((x0 + x) as u32, (y0 + y) as u32, Rgb(colour));
            }
        }
    }
    out
}

fn save(img: &RgbImage, path: &Path) -> Result<(), VizError> {
    img.save(path).map_err(|source| VizError::Image {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `dir/<stem>_attention.png` and `dir/<stem>_heads.png` for image `index` of the
/// batch whose attention maps are `layers` (per layer [B, A, N, N]); `pixels` is that
/// image as the model saw it (CHW u8, `cfg`'s size). Returns the paths written.
pub fn write_attention_pngs(
    dir: &Path,
    stem: &str,
    cfg: &crate::model::Config,
    pixels: &[u8],
    layers: &[Vec<f32>],
    shape: MapShape,
    index: usize,
) -> Result<Vec<PathBuf>, VizError> {
    let (h, w, c) = (cfg.image_h, cfg.image_w, cfg.channels);
    if pixels.len() != c * h * w || !(c == 1 || c == 3) {
        return Err(VizError::Shape(format!(
            "image has {} values, expected {c}x{h}x{w} with 1 or 3 channels",
            pixels.len()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| VizError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let grid = rollout(layers, shape, index)?;
    let last = layers
        .last()
        .ok_or_else(|| VizError::Shape("no layers".into()))?;
    let heads = cls_attention_per_head(last, shape, index)?;
    let attention = dir.join(format!("{stem}_attention.png"));
    save(
        &attention_image(pixels, c, h, w, &grid, shape.grid_h, shape.grid_w),
        &attention,
    )?;
    let heads_path = dir.join(format!("{stem}_heads.png"));
    save(
        &heads_image(&heads, shape.grid_h, shape.grid_w),
        &heads_path,
    )?;
    Ok(vec![attention, heads_path])
}

/// For `infer --attention DIR`: the PNGs of the first `paths.len()` images of a batch
/// (`images` CHW u8 as the model saw them). File names come from each input's stem.
pub fn write_batch(
    dir: &Path,
    cfg: &crate::model::Config,
    batch: usize,
    layers: &[Vec<f32>],
    paths: &[PathBuf],
    images: &[Vec<u8>],
) -> Result<Vec<PathBuf>, VizError> {
    let shape = MapShape::of(cfg, batch);
    let mut written = Vec::new();
    for (i, (path, pixels)) in paths.iter().zip(images).enumerate() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("image{i}"));
        written.extend(write_attention_pngs(
            dir, &stem, cfg, pixels, layers, shape, i,
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_ends_and_middle() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(0.5)[1], 255);
    }

    #[test]
    fn bilinear_keeps_constants_and_corners() {
        let g = [0.0, 1.0, 2.0, 3.0];
        let up = upsample_bilinear(&g, 2, 2, 8, 8);
        assert_eq!(up.len(), 64);
        assert_eq!(up[0], 0.0);
        assert_eq!(up[63], 3.0);
        assert!(up.iter().all(|v| (0.0..=3.0).contains(v)));
        let flat = upsample_bilinear(&[2.0; 6], 2, 3, 5, 7);
        assert!(flat.iter().all(|&v| (v - 2.0).abs() < 1e-12));
    }

    #[test]
    fn sizes() {
        assert_eq!(display_scale(28, 28), 8);
        assert_eq!(attention_png_size(28, 28), (2 * 224 + GAP, 224));
        assert_eq!(display_scale(512, 300), 1);
        assert_eq!(tile_layout(4), (2, 2));
        assert_eq!(tile_layout(3), (2, 2));
        assert_eq!(tile_layout(8), (3, 3));
        let img = heads_image(&vec![vec![0.1; 12]; 3], 3, 4);
        assert_eq!(img.dimensions(), heads_png_size(3, 3, 4));
        let img = attention_image(&[7u8; 3 * 8 * 12], 3, 8, 12, &[0.5; 6], 2, 3);
        assert_eq!(img.dimensions(), attention_png_size(8, 12));
    }
}
