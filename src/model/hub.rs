//! Model folders as the hubs lay them out, read with no flags:
//! - timm: `config.json` with `architecture`, optional `model_args`, `num_classes`,
//!   `label_names` and `pretrained_cfg` (the eval preprocessing), and `model.safetensors`
//!   under timm's own tensor names;
//! - transformers: `config.json` with `model_type` and `architectures`
//!   (`ViTForImageClassification`), `model.safetensors` under transformers' names (mapped
//!   here to timm's: q, k and v are concatenated into `qkv`), `preprocessor_config.json`.
//!
//! The result is what `checkpoint::load_any` returns for a file: the config, the parameters
//! and a `TensorFile` whose metadata carries the eval preprocessing and class names under the
//! keys `eval` and `infer` already read (`interpolation`, `crop_pct`, `norm_mean`,
//! `norm_std`, `class_names`). Hints (flags) override the folder; each one that contradicts
//! it is reported on stderr.

use super::arch::{self, TimmArgs};
use super::checkpoint::{load_params_resampling, CheckpointError, ConfigHints, TensorFile};
use super::config::{Act, Config};
use super::params::HostParams;
use crate::data::preprocess::EvalPreprocess;
use serde_json::Value;
use std::path::Path;

/// A folder holding a model config (`config.json`) rather than one of our run folders.
pub fn is_model_folder(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// Which library wrote the folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolderKind {
    Timm,
    Transformers,
}

/// Everything a model folder says.
#[derive(Clone, Debug)]
pub struct FolderModel {
    pub kind: FolderKind,
    pub cfg: Config,
    pub params: HostParams,
    pub preprocess: EvalPreprocess,
    pub class_names: Vec<String>,
    /// The weights as read (timm's names), with the metadata `load_any` callers read.
    pub file: TensorFile,
}

fn folder_err(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Folder {
        path: path.into(),
        message: message.into(),
    }
}

fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| folder_err(path, format!("not valid JSON: {e}")))
}

fn weights_file(dir: &Path) -> Result<std::path::PathBuf, CheckpointError> {
    let st = dir.join("model.safetensors");
    if st.is_file() {
        return Ok(st);
    }
    let hint = if dir.join("pytorch_model.bin").is_file()
        || dir.join("pytorch_model.bin.index.json").is_file()
    {
        " (this folder has pytorch_model.bin: convert it with safetensors' \
         `save_file(torch.load(...), 'model.safetensors')`)"
    } else {
        ""
    };
    Err(folder_err(
        dir,
        format!("no model.safetensors in the folder{hint}"),
    ))
}

/// `load_any` for a folder: config, parameters (position embeddings resampled when
/// `hints.image_size` changes the grid), and the file with the preprocessing metadata.
pub fn load_folder(
    dir: &Path,
    hints: &ConfigHints,
) -> Result<(Config, HostParams, TensorFile), CheckpointError> {
    let m = read_folder(dir, hints)?;
    Ok((m.cfg, m.params, m.file))
}

/// Reads a timm hub or transformers folder.
pub fn read_folder(dir: &Path, hints: &ConfigHints) -> Result<FolderModel, CheckpointError> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let (kind, mut cfg, preprocess, class_names, mut file) = if config.get("architecture").is_some()
    {
        let (cfg, pre, names) = timm_config(&config_path, &config)?;
        let weights = weights_file(dir)?;
        let file = TensorFile::read(&weights)?;
        (FolderKind::Timm, cfg, pre, names, file)
    } else if config.get("model_type").is_some() {
        let (cfg, names) = transformers_config(&config_path, &config)?;
        let pre_path = dir.join("preprocessor_config.json");
        let pre_json = match pre_path.is_file() {
            true => read_json(&pre_path)?,
            // ViTImageProcessor's defaults.
            false => serde_json::json!({}),
        };
        let pre = EvalPreprocess::from_transformers(
            &pre_path.display().to_string(),
            &pre_json,
            (cfg.channels, cfg.image_h, cfg.image_w),
        )
        .map_err(|e| folder_err(&pre_path, e.to_string()))?;
        let weights = weights_file(dir)?;
        let file = map_transformers_names(&weights, &TensorFile::read(&weights)?, &cfg)?;
        (FolderKind::Transformers, cfg, pre, names, file)
    } else {
        return Err(folder_err(
            &config_path,
            "has neither 'architecture' (a timm hub folder) nor 'model_type' (a transformers \
             folder)",
        ));
    };
    // Every tensor must belong to the model: a stray one means a config we misread.
    let specs = super::params::param_specs(&cfg);
    if let Some(extra) = file
        .tensors
        .keys()
        .find(|k| !specs.iter().any(|s| &s.name == *k))
    {
        return Err(folder_err(
            dir,
            format!(
                "tensor '{extra}' is not part of the model config.json describes ({cfg}); \
                 an option the folder's model uses and we do not read?"
            ),
        ));
    }
    let (gh, gw) = cfg.grid();
    file.metadata.insert("pos_grid_h".into(), gh.to_string());
    file.metadata.insert("pos_grid_w".into(), gw.to_string());
    apply_hints(dir, &mut cfg, hints)?;
    let params = load_params_resampling(dir, &file, &cfg)?;
    for (k, v) in preprocess.to_metadata() {
        file.metadata.insert(k, v);
    }
    if class_names.len() == cfg.classes {
        file.metadata.insert(
            "class_names".into(),
            serde_json::to_string(&class_names).unwrap_or_default(),
        );
    }
    file.metadata.insert(
        "source".into(),
        match kind {
            FolderKind::Timm => "timm",
            FolderKind::Transformers => "transformers",
        }
        .into(),
    );
    let mut preprocess = preprocess;
    preprocess.input_size = (cfg.channels, cfg.image_h, cfg.image_w);
    Ok(FolderModel {
        kind,
        cfg,
        params,
        preprocess,
        class_names,
        file,
    })
}

/// Flags override the folder; a flag that contradicts it is reported.
fn apply_hints(dir: &Path, cfg: &mut Config, hints: &ConfigHints) -> Result<(), CheckpointError> {
    let note = |flag: &str, folder: String, given: String| {
        eprintln!(
            "note: {flag} {given} overrides {} ({folder} there)",
            dir.display()
        )
    };
    if let Some(h) = hints.heads.filter(|&h| h != cfg.heads) {
        note("--heads", cfg.heads.to_string(), h.to_string());
        cfg.heads = h;
    }
    if let Some(a) = hints.act.filter(|&a| a != cfg.act) {
        note("--act", format!("{:?}", cfg.act), format!("{a:?}"));
        cfg.act = a;
    }
    if let Some(e) = hints.ln_eps.filter(|&e| e != cfg.ln_eps) {
        note("--ln-eps", cfg.ln_eps.to_string(), e.to_string());
        cfg.ln_eps = e;
    }
    if let Some((h, w)) = hints.image_size {
        // A new resolution is a request, not a contradiction: positions are resampled.
        cfg.image_h = h;
        cfg.image_w = w;
    }
    cfg.validate().map_err(|source| CheckpointError::Config {
        path: dir.into(),
        source,
    })
}

/// A timm hub config: the architecture's arguments, `model_args` over them, `num_classes`,
/// the eval preprocessing of `pretrained_cfg` (else the architecture's default tag's) and
/// the class names.
fn timm_config(
    path: &Path,
    config: &Value,
) -> Result<(Config, EvalPreprocess, Vec<String>), CheckpointError> {
    let context = path.display().to_string();
    let name = config
        .get("architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| folder_err(path, "'architecture' is not a string"))?;
    let (mut args, mut pre) = arch::lookup(name).map_err(|e| folder_err(path, e.to_string()))?;
    if let Some(k) = config.get("num_classes").and_then(Value::as_u64) {
        args.num_classes = k as usize;
    }
    if let Some(model_args) = config.get("model_args") {
        args.apply_model_args(&context, model_args)
            .map_err(|e| folder_err(path, e.to_string()))?;
    }
    if let Some(p) = config.get("pretrained_cfg") {
        pre =
            EvalPreprocess::from_timm(&context, p).map_err(|e| folder_err(path, e.to_string()))?;
    }
    let cfg = args
        .to_config(&format!("{context} ({name})"), None)
        .map_err(|e| folder_err(path, e.to_string()))?;
    let names = config
        .get("label_names")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((cfg, pre, names))
}

/// A transformers config of a model we can run, and its class names (`id2label`).
fn transformers_config(path: &Path, c: &Value) -> Result<(Config, Vec<String>), CheckpointError> {
    let context = path.display().to_string();
    let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("");
    let architecture = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    if model_type != "vit" || architecture != "ViTForImageClassification" {
        return Err(folder_err(
            path,
            format!(
                "model_type '{model_type}' with architecture '{architecture}' is not supported \
                 yet; supported: model_type 'vit' with ViTForImageClassification"
            ),
        ));
    }
    let int = |k: &str, default: usize| -> Result<usize, CheckpointError> {
        match c.get(k) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| {
                folder_err(
                    path,
                    format!("'{k}' is {v}, expected a non-negative integer"),
                )
            }),
        }
    };
    let image = int("image_size", 224)?;
    let dim = int("hidden_size", 768)?;
    let mut names: Vec<(usize, String)> = match c.get("id2label").and_then(Value::as_object) {
        Some(m) => m
            .iter()
            .map(|(k, v)| {
                let name = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                k.parse::<usize>().map(|i| (i, name)).map_err(|_| {
                    folder_err(path, format!("id2label key '{k}' is not a class index"))
                })
            })
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    names.sort();
    let classes = int("num_labels", names.len())?;
    let act = match c
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu")
    {
        "gelu" => Act::Gelu,
        "relu" => Act::Relu,
        other => {
            return Err(folder_err(
                path,
                format!(
                    "hidden_act '{other}' is not supported yet; supported: 'gelu' (exact) and \
                     'relu'"
                ),
            ))
        }
    };
    let args = TimmArgs {
        img_size: (image, image),
        patch_size: int("patch_size", 16)?,
        in_chans: int("num_channels", 3)?,
        num_classes: classes,
        embed_dim: dim,
        depth: int("num_hidden_layers", 12)?,
        num_heads: int("num_attention_heads", 12)?,
        qkv_bias: c.get("qkv_bias").and_then(Value::as_bool).unwrap_or(true),
        norm_eps: c
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-12),
        ..TimmArgs::default()
    };
    let mut cfg = args
        .to_config(&format!("{context} (transformers {architecture})"), None)
        .map_err(|e| folder_err(path, e.to_string()))?;
    cfg.act = act;
    cfg.mlp_hidden = int("intermediate_size", 4 * dim)?;
    Ok((cfg, names.into_iter().map(|(_, n)| n).collect()))
}

/// transformers' `ViTForImageClassification` tensors under timm's names.
fn map_transformers_names(
    path: &Path,
    file: &TensorFile,
    cfg: &Config,
) -> Result<TensorFile, CheckpointError> {
    let mut out = TensorFile {
        metadata: file.metadata.clone(),
        ..Default::default()
    };
    let mut used = std::collections::HashSet::new();
    let mut get = |name: &str| -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
        used.insert(name.to_string());
        file.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: path.into(),
                name: name.into(),
            })
    };
    let mut put = |name: String, t: (Vec<usize>, Vec<f32>)| {
        out.tensors.insert(name, t);
    };
    let e = "vit.embeddings.";
    put("cls_token".into(), get(&format!("{e}cls_token"))?);
    put("pos_embed".into(), get(&format!("{e}position_embeddings"))?);
    for p in ["weight", "bias"] {
        put(
            format!("patch_embed.proj.{p}"),
            get(&format!("{e}patch_embeddings.projection.{p}"))?,
        );
    }
    for i in 0..cfg.depth {
        let l = format!("vit.encoder.layer.{i}.");
        let b = format!("blocks.{i}.");
        for p in ["weight", "bias"] {
            let renames = [
                ("layernorm_before", "norm1"),
                ("attention.output.dense", "attn.proj"),
                ("layernorm_after", "norm2"),
                ("intermediate.dense", "mlp.fc1"),
                ("output.dense", "mlp.fc2"),
            ];
            for (theirs, ours) in renames {
                put(format!("{b}{ours}.{p}"), get(&format!("{l}{theirs}.{p}"))?);
            }
            // timm's qkv is q, k and v stacked along the output dimension.
            let mut shape = Vec::new();
            let mut qkv = Vec::new();
            for part in ["query", "key", "value"] {
                let (s, v) = get(&format!("{l}attention.attention.{part}.{p}"))?;
                shape = s;
                qkv.extend(v);
            }
            if let Some(rows) = shape.first_mut() {
                *rows *= 3;
            }
            put(format!("{b}attn.qkv.{p}"), (shape, qkv));
        }
    }
    for p in ["weight", "bias"] {
        put(format!("norm.{p}"), get(&format!("vit.layernorm.{p}"))?);
        put(format!("head.{p}"), get(&format!("classifier.{p}"))?);
    }
    if let Some(extra) = file
        .tensors
        .keys()
        .find(|k| !used.contains(*k) && !k.starts_with("vit.pooler."))
    {
        return Err(folder_err(
            path,
            format!("tensor '{extra}' is not part of a ViTForImageClassification of this config"),
        ));
    }
    Ok(out)
}
