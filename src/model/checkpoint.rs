//! Checkpoints: safetensors files whose tensor names and shapes are timm's (design.md
//! section 2), with the model config in the metadata. Optimiser state and the training
//! position go in a second file beside it. Files are written to a temporary name and
//! renamed, so a crash never destroys the last good checkpoint.

use super::config::{Config, ConfigError};
use super::params::{param_specs, HostParams};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

// Checkpoint files on disk; the rest of this module works on bytes and builds anywhere.
#[cfg(feature = "native")]
mod files;
#[cfg(feature = "native")]
pub use files::*;

#[derive(thiserror::Error, Debug)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tensor '{name}' is missing (the model with this config needs it)")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor '{name}' has shape {found:?}, the model needs {expected:?} (a checkpoint of another model shape?)")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor '{name}' has dtype {found}, expected F32 (or F64/F16/BF16)")]
    DType {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error("{path}: tensor '{name}' holds a non-finite value ({value}) at element {index}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    /// A timm hub or transformers model folder that does not describe a model we can run.
    #[error("{path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("{path}: training state field '{field}' {problem}")]
    State {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// A safetensors file read into memory as f32 tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    pub metadata: HashMap<String, String>,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Integer tensors (e.g. labels), kept as i64.
    pub int_tensors: BTreeMap<String, (Vec<usize>, Vec<i64>)>,
}

impl TensorFile {
    /// Decode safetensors bytes (`path` only names the file in errors).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<TensorFile, CheckpointError> {
        let format = |message: String| CheckpointError::Format {
            path: path.into(),
            message,
        };
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
        let mut out = TensorFile {
            metadata: meta.metadata().clone().unwrap_or_default(),
            ..Default::default()
        };
        for (name, view) in st.tensors() {
            use safetensors::Dtype;
            let data = view.data();
            let shape = view.shape().to_vec();
            let floats: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                Dtype::I64 => {
                    let ints = data
                        .chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect();
                    out.int_tensors.insert(name, (shape, ints));
                    continue;
                }
                other => {
                    return Err(CheckpointError::DType {
                        path: path.into(),
                        name,
                        found: format!("{other:?}"),
                    })
                }
            };
            out.tensors.insert(name, (shape, floats));
        }
        Ok(out)
    }

    /// The safetensors encoding (`path` only names the file in errors).
    pub fn to_bytes(&self, path: &Path) -> Result<Vec<u8>, CheckpointError> {
        let bytes_f: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = self
            .tensors
            .iter()
            .map(|(n, (s, v))| {
                (
                    n.clone(),
                    s.clone(),
                    bytemuck::cast_slice(v).to_vec(),
                    safetensors::Dtype::F32,
                )
            })
            .chain(self.int_tensors.iter().map(|(n, (s, v))| {
                (
                    n.clone(),
                    s.clone(),
                    bytemuck::cast_slice(v).to_vec(),
                    safetensors::Dtype::I64,
                )
            }))
            .collect();
        let format = |message: String| CheckpointError::Format {
            path: path.into(),
            message,
        };
        let mut views = Vec::with_capacity(bytes_f.len());
        for (n, s, b, dt) in &bytes_f {
            let view = safetensors::tensor::TensorView::new(*dt, s.clone(), b)
                .map_err(|e| format(e.to_string()))?;
            views.push((n.clone(), view));
        }
        let meta = if self.metadata.is_empty() {
            None
        } else {
            Some(self.metadata.clone())
        };
        safetensors::serialize(views, meta).map_err(|e| format(e.to_string()))
    }

    /// A float tensor with the expected shape, or a clear error.
    pub fn take(
        &self,
        path: &Path,
        name: &str,
        expected: &[usize],
    ) -> Result<Vec<f32>, CheckpointError> {
        let values = shaped(&self.tensors, path, name, expected)?;
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(CheckpointError::NonFinite {
                path: path.into(),
                name: name.into(),
                index,
                value: values[index],
            });
        }
        Ok(values.clone())
    }

    /// An integer tensor (e.g. labels) with the expected shape, or a clear error.
    pub fn take_int(
        &self,
        path: &Path,
        name: &str,
        expected: &[usize],
    ) -> Result<Vec<i64>, CheckpointError> {
        shaped(&self.int_tensors, path, name, expected).cloned()
    }
}

/// The values of tensor `name` if it is there with the `expected` shape.
fn shaped<'a, T>(
    tensors: &'a BTreeMap<String, (Vec<usize>, Vec<T>)>,
    path: &Path,
    name: &str,
    expected: &[usize],
) -> Result<&'a Vec<T>, CheckpointError> {
    let (shape, values) = tensors
        .get(name)
        .ok_or_else(|| CheckpointError::MissingTensor {
            path: path.into(),
            name: name.into(),
        })?;
    if shape.as_slice() != expected {
        return Err(CheckpointError::Shape {
            path: path.into(),
            name: name.into(),
            expected: expected.to_vec(),
            found: shape.clone(),
        });
    }
    Ok(values)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // subnormal: normalise
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        31 => sign | 0x7f80_0000 | (frac << 13),
        e => sign | (((e - 15 + 127) as u32) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// The checkpoint file of a model: its tensors, the config and `extra` in the metadata.
pub fn model_file(cfg: &Config, params: &HostParams, extra: &[(&str, String)]) -> TensorFile {
    let mut file = TensorFile {
        metadata: cfg.to_metadata(),
        ..Default::default()
    };
    file.metadata.insert("format".into(), "vit-wgpu".into());
    for (k, v) in extra {
        file.metadata.insert((*k).into(), v.clone());
    }
    for (spec, values) in params.specs.iter().zip(&params.values) {
        file.tensors
            .insert(spec.name.clone(), (spec.shape.clone(), values.clone()));
    }
    file
}

/// The model parameters for `cfg` out of a tensor file, each checked for shape and finiteness.
pub fn params_from_file(
    path: &Path,
    file: &TensorFile,
    cfg: &Config,
) -> Result<HostParams, CheckpointError> {
    let specs = param_specs(cfg);
    let mut values = Vec::with_capacity(specs.len());
    for s in &specs {
        values.push(file.take(path, &s.name, &s.shape)?);
    }
    Ok(HostParams { specs, values })
}

/// A checkpoint whose metadata carries the config (`path` names it in errors).
pub fn model_from_file(
    path: &Path,
    file: TensorFile,
) -> Result<(Config, HostParams, TensorFile), CheckpointError> {
    let cfg = Config::from_metadata(&file.metadata).map_err(|source| CheckpointError::Config {
        path: path.into(),
        source,
    })?;
    let params = params_from_file(path, &file, &cfg)?;
    Ok((cfg, params, file))
}

/// Where a run stands, saved beside the weights so `--resume` continues exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Optimiser steps taken so far.
    pub step: u64,
    /// The epoch in progress and the batches of it already done.
    pub epoch: u64,
    pub batch_in_epoch: u64,
    pub best_accuracy: f64,
    /// The running sums of the epoch in progress (a mid-epoch checkpoint).
    pub totals: EpochTotals,
    /// Adam moments per parameter, in `param_specs` order.
    pub moments: Vec<(Vec<f32>, Vec<f32>)>,
}

/// Training loss and accuracy summed over the steps of an epoch so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochTotals {
    pub loss_sum: f64,
    pub accuracy_sum: f64,
    pub steps: u64,
    pub images: u64,
    pub seconds: f64,
}

/// The training-state file: position and running sums in the metadata (floats in Rust's
/// shortest round-trip form, so a resume reads back the same bits), moments as tensors.
pub fn state_file(params: &HostParams, state: &TrainState) -> TensorFile {
    let mut file = TensorFile::default();
    let t = &state.totals;
    for (k, v) in [
        ("step", state.step.to_string()),
        ("epoch", state.epoch.to_string()),
        ("batch_in_epoch", state.batch_in_epoch.to_string()),
        ("best_accuracy", state.best_accuracy.to_string()),
        ("epoch_loss_sum", t.loss_sum.to_string()),
        ("epoch_accuracy_sum", t.accuracy_sum.to_string()),
        ("epoch_steps", t.steps.to_string()),
        ("epoch_images", t.images.to_string()),
        ("epoch_seconds", t.seconds.to_string()),
    ] {
        file.metadata.insert(k.into(), v);
    }
    for (spec, (m, v)) in params.specs.iter().zip(&state.moments) {
        file.tensors.insert(
            format!("adam_m.{}", spec.name),
            (spec.shape.clone(), m.clone()),
        );
        file.tensors.insert(
            format!("adam_v.{}", spec.name),
            (spec.shape.clone(), v.clone()),
        );
    }
    file
}

/// The training state in a state file (`path` names it in errors).
pub fn train_state_from_file(
    path: &Path,
    file: &TensorFile,
    params: &HostParams,
) -> Result<TrainState, CheckpointError> {
    fn field<T: std::str::FromStr>(
        path: &Path,
        file: &TensorFile,
        k: &str,
    ) -> Result<T, CheckpointError> {
        let v = file.metadata.get(k).ok_or_else(|| CheckpointError::State {
            path: path.into(),
            field: k.into(),
            problem: "is missing".into(),
        })?;
        v.parse().map_err(|_| CheckpointError::State {
            path: path.into(),
            field: k.into(),
            problem: format!("has unreadable value '{v}'"),
        })
    }
    // Files from before mid-epoch checkpoints have no running sums: start them at zero.
    let optional = |k: &str| -> Result<f64, CheckpointError> {
        match file.metadata.contains_key(k) {
            true => field(path, file, k),
            false => Ok(0.0),
        }
    };
    let mut moments = Vec::with_capacity(params.specs.len());
    for s in &params.specs {
        let m = file.take(path, &format!("adam_m.{}", s.name), &s.shape)?;
        let v = file.take(path, &format!("adam_v.{}", s.name), &s.shape)?;
        moments.push((m, v));
    }
    let totals = EpochTotals {
        loss_sum: optional("epoch_loss_sum")?,
        accuracy_sum: optional("epoch_accuracy_sum")?,
        steps: optional("epoch_steps")? as u64,
        images: optional("epoch_images")? as u64,
        seconds: optional("epoch_seconds")?,
    };
    let state = TrainState {
        step: field(path, file, "step")?,
        epoch: field(path, file, "epoch")?,
        batch_in_epoch: field(path, file, "batch_in_epoch")?,
        best_accuracy: field(path, file, "best_accuracy")?,
        totals,
        moments,
    };
    let finite = [
        state.best_accuracy,
        totals.loss_sum,
        totals.accuracy_sum,
        totals.seconds,
    ];
    if finite.iter().any(|v| !v.is_finite()) {
        return Err(CheckpointError::State {
            path: path.into(),
            field: "best_accuracy / epoch sums".into(),
            problem: format!("holds a non-finite value: {finite:?}"),
        });
    }
    Ok(state)
}

/// What the tensors cannot tell about a model (timm's defaults when `None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigHints {
    pub heads: Option<usize>,
    pub act: Option<super::config::Act>,
    pub ln_eps: Option<f32>,
    /// Needed when the position grid is not square.
    pub image_size: Option<(usize, usize)>,
}

/// The config of a state_dict without our metadata (e.g. a timm `VisionTransformer` saved
/// with `safetensors.torch.save_file`): width, depth, MLP width, patch, channels, classes
/// and (square) grid are read off the tensor shapes; heads (default D/64, timm's ViT
/// convention), activation (GELU) and LayerNorm eps (1e-6) come from the hints. timm's
/// options are read off the tensor names (cls/dist/reg tokens, norm_pre, fc_norm,
/// LayerScale, qk-norm, qkv bias; positions on the patches only when pos_embed's rows are
/// the image's grid, or a square grid without the prefix tokens in a LayerScale model);
/// pooling is the class token's when there is one
/// and no fc_norm, else the patch mean.
pub fn infer_config(
    path: &Path,
    file: &TensorFile,
    hints: &ConfigHints,
) -> Result<Config, CheckpointError> {
    use super::config::{Act, Head};
    let shape = |name: &str| -> Result<Vec<usize>, CheckpointError> {
        file.tensors
            .get(name)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: path.into(),
                name: name.into(),
            })
    };
    let pe = shape("patch_embed.proj.weight")?;
    if pe.len() != 4 || pe[2] != pe[3] {
        return Err(CheckpointError::Shape {
            path: path.into(),
            name: "patch_embed.proj.weight".into(),
            expected: vec![0, 0, 0, 0],
            found: pe,
        });
    }
    let (dim, channels, patch) = (pe[0], pe[1], pe[2]);
    let depth = (0..)
        .take_while(|i| {
            file.tensors
                .contains_key(&format!("blocks.{i}.attn.qkv.weight"))
        })
        .count();
    let mlp_hidden = shape("blocks.0.mlp.fc1.weight")?[0];
    let pos = shape("pos_embed")?;
    let rows = pos.get(1).copied().unwrap_or(1);
    let options = infer_options(file, hints, patch, rows);
    let prefix = options.class_token as usize + options.distilled as usize + options.reg_tokens;
    let no_embed_class = options.no_embed_class;
    let patches = if no_embed_class {
        rows
    } else {
        rows.saturating_sub(prefix)
    };
    // The grid pos_embed was learned on: square (timm's assumption), else the image size
    // given must be the checkpoint's own.
    let side = (patches as f64).sqrt().round() as usize;
    let (image_h, image_w) = if side * side == patches {
        (side * patch, side * patch)
    } else if let Some(size) = hints.image_size {
        size
    } else {
        return Err(CheckpointError::State {
            path: path.into(),
            field: "pos_embed".into(),
            problem: format!("covers {patches} patches, not a square grid: give --image-size HxW"),
        });
    };
    let (head, classes) = if let Some((s, _)) = file.tensors.get("head.weight") {
        (Head::Linear, s[0])
    } else {
        let h1 = shape("head.fc1.weight")?;
        let h2 = shape("head.fc2.weight")?;
        (Head::Mlp { hidden: h1[0] }, h2[0])
    };
    let cfg = Config {
        image_h,
        image_w,
        channels,
        patch,
        dim,
        depth,
        heads: hints.heads.unwrap_or((dim / 64).max(1)),
        mlp_hidden,
        act: hints.act.unwrap_or(Act::Gelu),
        head,
        dropout: 0.0,
        ln_eps: hints.ln_eps.unwrap_or(1e-6),
        classes,
        options,
    };
    cfg.validate().map_err(|source| CheckpointError::Config {
        path: path.into(),
        source,
    })?;
    Ok(cfg)
}

/// The structural options a bare timm state_dict's tensor names and `pos_embed` rows imply.
fn infer_options(
    file: &TensorFile,
    hints: &ConfigHints,
    patch: usize,
    rows: usize,
) -> super::config::Options {
    use super::config::{Options, Pool};
    let has = |name: &str| file.tensors.contains_key(name);
    let class_token = has("cls_token");
    let distilled = has("dist_token");
    let reg_tokens = file.tensors.get("reg_token").map_or(0, |(s, _)| s[1]);
    let prefix = class_token as usize + distilled as usize + reg_tokens;
    let fc_norm = has("fc_norm.weight");
    let square = |n: usize| {
        let side = (n as f64).sqrt().round() as usize;
        side * side == n
    };
    let grid_of = |(h, w): (usize, usize)| (h / patch) * (w / patch);
    let no_embed_class = prefix > 0
        && match hints.image_size {
            Some(size) if rows == grid_of(size) => true,
            Some(size) if rows == grid_of(size) + prefix => false,
            // A square grid either way round is ambiguous (1 + 15 = 16): timm puts the
            // positions on the patches only in LayerScale families (DeiT-III, DINOv2 with
            // registers), so without LayerScale the prefix tokens have positions.
            _ => {
                rows <= prefix
                    || (square(rows) && !square(rows - prefix) && has("blocks.0.ls1.gamma"))
            }
        };
    Options {
        class_token,
        pool: if class_token && !fc_norm {
            Pool::Token
        } else {
            Pool::Avg
        },
        fc_norm,
        no_embed_class,
        // Only LayerScale's initial value: the loaded gammas replace it.
        layer_scale: has("blocks.0.ls1.gamma").then_some(1e-5),
        reg_tokens,
        distilled,
        pre_norm: has("norm_pre.weight"),
        qk_norm: has("blocks.0.attn.q_norm.weight"),
        qkv_bias: has("blocks.0.attn.qkv.bias"),
    }
}

/// Load weights for inference or fine-tuning: our checkpoints (config in the metadata) or a
/// plain timm state_dict (config from the tensors and `hints`). With `hints.image_size`
/// different from the checkpoint's, the position embeddings are resampled to the new grid.
pub fn any_from_file(
    path: &Path,
    file: TensorFile,
    hints: &ConfigHints,
) -> Result<(Config, HostParams, TensorFile), CheckpointError> {
    let mut cfg = if file.metadata.contains_key("dim") {
        Config::from_metadata(&file.metadata).map_err(|source| CheckpointError::Config {
            path: path.into(),
            source,
        })?
    } else {
        infer_config(path, &file, hints)?
    };
    // The grid the stored pos_embed was learned on, for the resampling below.
    let mut file = file;
    let (gh, gw) = cfg.grid();
    file.metadata
        .entry("pos_grid_h".into())
        .or_insert_with(|| gh.to_string());
    file.metadata
        .entry("pos_grid_w".into())
        .or_insert_with(|| gw.to_string());
    if let Some((h, w)) = hints.image_size {
        cfg.image_h = h;
        cfg.image_w = w;
        cfg.validate().map_err(|source| CheckpointError::Config {
            path: path.into(),
            source,
        })?;
    }
    let params = load_params_resampling(path, &file, &cfg)?;
    Ok((cfg, params, file))
}

/// The grid a stored pos_embed was learned on: from `pos_grid_h`/`pos_grid_w` metadata, or
/// square (timm's assumption) when the file does not say.
/// `prefix`: the rows before the grid (1, the class token's, for the original ViT).
fn stored_grid_after(file: &TensorFile, tokens: usize, prefix: usize) -> Option<(usize, usize)> {
    let meta = |k: &str| file.metadata.get(k).and_then(|v| v.parse::<usize>().ok());
    if let (Some(h), Some(w)) = (meta("pos_grid_h"), meta("pos_grid_w")) {
        if h * w + prefix == tokens {
            return Some((h, w));
        }
    }
    let patches = tokens.checked_sub(prefix)?;
    let side = (patches as f64).sqrt().round() as usize;
    (side * side == patches).then_some((side, side))
}

/// The parameters for `cfg` out of a tensor file; a `pos_embed` learned on another patch
/// grid is resampled to the config's grid. Every other tensor must match exactly.
pub fn load_params_resampling(
    path: &Path,
    file: &TensorFile,
    cfg: &Config,
) -> Result<HostParams, CheckpointError> {
    let mut file = file.clone();
    let grid = cfg.grid();
    if let Some((shape, values)) = file.tensors.get("pos_embed").cloned() {
        let wanted = vec![1, cfg.pos_tokens(), cfg.dim];
        let prefix = cfg.pos_tokens() - cfg.patches();
        let stored_grid_meta = stored_grid_after(&file, shape.get(1).copied().unwrap_or(0), prefix);
        let differs = shape != wanted || stored_grid_meta.is_some_and(|g| g != grid);
        if differs && shape.len() == 3 && shape[0] == 1 && shape[2] == cfg.dim {
            if let Some(old) = stored_grid_meta {
                let resampled =
                    super::pos_embed::resample_with_prefix(&values, cfg.dim, prefix, old, grid);
                file.tensors.insert("pos_embed".into(), (wanted, resampled));
            }
        }
    }
    let specs = param_specs(cfg);
    let mut values = Vec::with_capacity(specs.len());
    for s in &specs {
        values.push(file.take(path, &s.name, &s.shape)?);
    }
    Ok(HostParams { specs, values })
}
