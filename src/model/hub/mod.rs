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

pub mod export;
mod interp;
pub mod transformers;

use super::arch;
use super::checkpoint::{load_params_resampling, CheckpointError, ConfigHints, TensorFile};
use super::config::Config;
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

pub(crate) fn folder_err(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError::Folder {
        path: path.into(),
        message: message.into(),
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| folder_err(path, format!("not valid JSON: {e}")))
}

pub(crate) fn weights_file(dir: &Path) -> Result<std::path::PathBuf, CheckpointError> {
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
        let t = transformers::read(dir, &config_path, &config, hints)?;
        (
            FolderKind::Transformers,
            t.cfg,
            t.preprocess,
            t.class_names,
            t.file,
        )
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
    if kind == FolderKind::Timm {
        let (gh, gw) = cfg.grid();
        file.metadata.insert("pos_grid_h".into(), gh.to_string());
        file.metadata.insert("pos_grid_w".into(), gw.to_string());
        apply_hints(dir, &mut cfg, hints)?;
    }
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
pub(crate) fn apply_hints(
    dir: &Path,
    cfg: &mut Config,
    hints: &ConfigHints,
) -> Result<(), CheckpointError> {
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
