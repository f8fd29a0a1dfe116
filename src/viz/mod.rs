//! Pictures of a model: attention rollout and per-head attention maps drawn over the input
//! image (from the attention probabilities the device computes, `Vit::attention_maps`), and
//! training curves (`curves`).
//!
//! Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"):
//! per layer, average the probabilities over the heads, add the identity for the residual
//! connection and re-normalise the rows, Â_l = norm(mean_a P_l + I); multiply through the
//! layers, R = Â_L · … · Â_1; the CLS row of R over the patch tokens, laid out on the patch
//! grid, says how much each patch flows into the classification token. A model that pools
//! the patch tokens instead (no class token, or `global_pool` avg) reads the mean of the
//! patch rows. The maps' math builds for the browser too (the page's rollout); the files
//! need the operating system.

#[cfg(feature = "native")]
pub mod curves;
#[cfg(feature = "native")]
pub mod render;

use std::path::PathBuf;

use crate::model::Config;

#[derive(thiserror::Error, Debug)]
pub enum VizError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write the image: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("drawing {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("attention maps: {0}")]
    Shape(String),
}

/// The layout of a model's attention maps: per layer [batch, heads, tokens, tokens], with
/// tokens = `prefix` (class, distillation, register tokens; 1 for the original ViT) +
/// grid_h * grid_w patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub batch: usize,
    pub heads: usize,
    pub tokens: usize,
    pub grid_h: usize,
    pub grid_w: usize,
    pub prefix: usize,
    /// The head reads the class token (token 0); otherwise the mean of the patch tokens,
    /// and the rollout reads the mean of the patch rows.
    pub class_readout: bool,
}

impl MapShape {
    /// The maps of `cfg` run at batch size `batch`.
    pub fn of(cfg: &Config, batch: usize) -> MapShape {
        let (grid_h, grid_w) = cfg.grid();
        let o = &cfg.options;
        MapShape {
            batch,
            heads: cfg.heads,
            tokens: cfg.tokens(),
            grid_h,
            grid_w,
            prefix: cfg.prefix_tokens(),
            class_readout: o.class_token && o.pool == crate::model::config::Pool::Token,
        }
    }

    /// The rows the readout takes, each with its weight (row 0, or the patch rows' mean).
    fn readout_rows(&self) -> Vec<(usize, f64)> {
        if self.class_readout {
            vec![(0, 1.0)]
        } else {
            let patches = self.tokens - self.prefix;
            (self.prefix..self.tokens)
                .map(|i| (i, 1.0 / patches as f64))
                .collect()
        }
    }

    /// Floats in one layer's map.
    pub fn layer_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.tokens
    }

    fn check(&self, layer: &[f32], image: usize) -> Result<(), VizError> {
        if self.tokens != self.prefix + self.grid_h * self.grid_w || self.tokens == self.prefix {
            return Err(VizError::Shape(format!(
                "{} tokens do not make {} prefix tokens and a {}x{} patch grid",
                self.tokens, self.prefix, self.grid_h, self.grid_w
            )));
        }
        if layer.len() != self.layer_len() {
            return Err(VizError::Shape(format!(
                "a layer has {} values, expected {} ([{}, {}, {}, {}])",
                layer.len(),
                self.layer_len(),
                self.batch,
                self.heads,
                self.tokens,
                self.tokens
            )));
        }
        if image >= self.batch {
            return Err(VizError::Shape(format!(
                "image {image} is outside the batch of {}",
                self.batch
            )));
        }
        Ok(())
    }

    /// Probability P[image, head, i, j] of one layer.
    fn at(&self, layer: &[f32], image: usize, head: usize, i: usize, j: usize) -> f64 {
        let n = self.tokens;
        layer[((image * self.heads + head) * n + i) * n + j] as f64
    }
}

/// Attention rollout of one image: the readout row of Â_L · … · Â_1 (the CLS row, or the
/// mean of the patch rows) over the patch tokens, [grid_h * grid_w] row-major. `layers` holds each layer's probabilities in order (as
/// `Vit::attention_maps` returns them).
pub fn rollout(layers: &[Vec<f32>], shape: MapShape, image: usize) -> Result<Vec<f64>, VizError> {
    if layers.is_empty() {
        return Err(VizError::Shape("no layers".into()));
    }
    let n = shape.tokens;
    // R starts as the identity, then R <- Â_l R for l = 1..L.
    let mut r = vec![0.0f64; n * n];
    for i in 0..n {
        r[i * n + i] = 1.0;
    }
    let mut a_hat = vec![0.0f64; n * n];
    let mut next = vec![0.0f64; n * n];
    for layer in layers {
        shape.check(layer, image)?;
        for i in 0..n {
            let row = &mut a_hat[i * n..(i + 1) * n];
            for (j, v) in row.iter_mut().enumerate() {
                let mean = (0..shape.heads)
                    .map(|h| shape.at(layer, image, h, i, j))
                    .sum::<f64>()
                    / shape.heads as f64;
                *v = mean + if i == j { 1.0 } else { 0.0 };
            }
            let sum: f64 = row.iter().sum();
            if sum > 0.0 {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        next.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..n {
            for k in 0..n {
                let a = a_hat[i * n + k];
                if a == 0.0 {
                    continue;
                }
                for j in 0..n {
                    next[i * n + j] += a * r[k * n + j];
                }
            }
        }
        std::mem::swap(&mut r, &mut next);
    }
    let mut out = vec![0.0f64; n - shape.prefix];
    for (i, w) in shape.readout_rows() {
        for (o, v) in out.iter_mut().zip(&r[i * n + shape.prefix..(i + 1) * n]) {
            *o += w * v;
        }
    }
    Ok(out)
}

/// Per head, the readout's attention over the patch tokens in one layer (the CLS row, or
/// the mean of the patch rows; columns of the patches), each [grid_h * grid_w] row-major.
pub fn cls_attention_per_head(
    layer: &[f32],
    shape: MapShape,
    image: usize,
) -> Result<Vec<Vec<f64>>, VizError> {
    shape.check(layer, image)?;
    let rows = shape.readout_rows();
    Ok((0..shape.heads)
        .map(|h| {
            (shape.prefix..shape.tokens)
                .map(|j| {
                    rows.iter()
                        .map(|&(i, w)| w * shape.at(layer, image, h, i, j))
                        .sum()
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(heads: usize, gh: usize, gw: usize) -> MapShape {
        MapShape {
            batch: 1,
            heads,
            tokens: 1 + gh * gw,
            grid_h: gh,
            grid_w: gw,
            prefix: 1,
            class_readout: true,
        }
    }

    /// Uniform attention in every head: Â = (U + I)/2, and the CLS row of any power of it
    /// puts the same weight on every patch.
    #[test]
    fn rollout_of_uniform_attention_is_flat() {
        let s = shape(2, 2, 3);
        let n = s.tokens;
        let layer = vec![1.0 / n as f32; s.layer_len()];
        let r = rollout(&[layer.clone(), layer], s, 0).expect("rollout");
        assert_eq!(r.len(), 6);
        for v in &r {
            assert!((v - r[0]).abs() < 1e-12);
        }
        // One layer: row 0 of (U + I)/2 on a patch is (1/n)/2.
        let one = rollout(&[vec![1.0 / n as f32; s.layer_len()]], s, 0).expect("rollout");
        assert!((one[0] - 0.5 / n as f64).abs() < 1e-7, "{}", one[0]);
    }

    /// Every head looking only at itself (P = I): Â = I, so CLS keeps all its weight.
    #[test]
    fn identity_attention_rolls_out_to_zero_on_patches() {
        let s = shape(3, 2, 2);
        let n = s.tokens;
        let mut layer = vec![0.0f32; s.layer_len()];
        for h in 0..3 {
            for i in 0..n {
                layer[(h * n + i) * n + i] = 1.0;
            }
        }
        let r = rollout(&[layer.clone(), layer.clone(), layer], s, 0).expect("rollout");
        assert!(r.iter().all(|&v| v == 0.0));
    }

    /// Without a class-token readout: R = I under identity attention, and the mean of the
    /// patch rows puts 1/patches on every patch, none on the register tokens.
    #[test]
    fn pooled_rollout_averages_the_patch_rows() {
        let s = MapShape {
            prefix: 2,
            class_readout: false,
            tokens: 2 + 6,
            ..shape(2, 2, 3)
        };
        let n = s.tokens;
        let mut layer = vec![0.0f32; s.layer_len()];
        for h in 0..2 {
            for i in 0..n {
                layer[(h * n + i) * n + i] = 1.0;
            }
        }
        let r = rollout(&[layer.clone(), layer.clone()], s, 0).expect("rollout");
        assert_eq!(r.len(), 6);
        assert!(r.iter().all(|&v| (v - 1.0 / 6.0).abs() < 1e-12), "{r:?}");
        let heads = cls_attention_per_head(&layer, s, 0).expect("heads");
        assert!(heads
            .iter()
            .flatten()
            .all(|&v| (v - 1.0 / 6.0).abs() < 1e-12));
    }

    #[test]
    fn cls_per_head_reads_row_zero() {
        let s = shape(2, 1, 2);
        let n = s.tokens; // 3
        let layer: Vec<f32> = (0..s.layer_len()).map(|i| i as f32).collect();
        let heads = cls_attention_per_head(&layer, s, 0).expect("heads");
        assert_eq!(
            heads,
            vec![vec![1.0, 2.0], vec![(n * n + 1) as f64, (n * n + 2) as f64]]
        );
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let s = shape(2, 2, 2);
        assert!(rollout(&[vec![0.0; 3]], s, 0).is_err());
        assert!(rollout(&[], s, 0).is_err());
        assert!(cls_attention_per_head(&vec![0.0; s.layer_len()], s, 1).is_err());
    }
}
