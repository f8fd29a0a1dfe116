//! transformers folders: `ViTForImageClassification`, `DeiTForImageClassification` (a
//! distillation token in the sequence, one head on the class token),
//! `DeiTForImageClassificationWithTeacher` (timm's distilled DeiT: two heads, their logits
//! averaged) and `Dinov2ForImageClassification` (LayerScale, a head on [class token ; mean
//! of the patch tokens]). Their tensors are renamed to timm's (q, k and v concatenated into
//! `qkv`); `names` gives the pairs, which the writer (`export`) uses the other way round.

use super::{apply_hints, folder_err, interp, read_json, weights_file};
use crate::data::preprocess::EvalPreprocess;
use crate::model::arch::TimmArgs;
use crate::model::checkpoint::{CheckpointError, ConfigHints, TensorFile};
use crate::model::config::{Act, Config, Pool};
use serde_json::Value;
use std::path::Path;

/// The model classes we run, by `architectures[0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Vit,
    Deit,
    DeitWithTeacher,
    Dinov2,
}

const SUPPORTED: &str = "model_type 'vit' with ViTForImageClassification, 'deit' with \
    DeiTForImageClassification or DeiTForImageClassificationWithTeacher, 'dinov2' with \
    Dinov2ForImageClassification";

impl Arch {
    pub fn of(model_type: &str, architecture: &str) -> Option<Arch> {
        match (model_type, architecture) {
            ("vit", "ViTForImageClassification") => Some(Arch::Vit),
            ("deit", "DeiTForImageClassification") => Some(Arch::Deit),
            ("deit", "DeiTForImageClassificationWithTeacher") => Some(Arch::DeitWithTeacher),
            ("dinov2", "Dinov2ForImageClassification") => Some(Arch::Dinov2),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Vit => "vit",
            Arch::Deit | Arch::DeitWithTeacher => "deit",
            Arch::Dinov2 => "dinov2",
        }
    }

    pub fn architecture(self) -> &'static str {
        match self {
            Arch::Vit => "ViTForImageClassification",
            Arch::Deit => "DeiTForImageClassification",
            Arch::DeitWithTeacher => "DeiTForImageClassificationWithTeacher",
            Arch::Dinov2 => "Dinov2ForImageClassification",
        }
    }

    /// Which class a config of ours is written back as (`None`: no transformers class
    /// has its options).
    pub fn for_config(cfg: &Config) -> Option<Arch> {
        let o = &cfg.options;
        let plain = o.class_token
            && !o.no_embed_class
            && !o.fc_norm
            && !o.pre_norm
            && !o.qk_norm
            && cfg.head == crate::model::config::Head::Linear
            && matches!(cfg.act, Act::Gelu | Act::Relu);
        if !plain {
            return None;
        }
        match (o.pool, o.layer_scale.is_some(), o.distilled, o.reg_tokens) {
            (Pool::Token, false, false, 0) => Some(Arch::Vit),
            (Pool::Token, false, false, 1) => Some(Arch::Deit),
            (Pool::Token, false, true, 0) => Some(Arch::DeitWithTeacher),
            (Pool::ClsAvg, true, false, 0) => Some(Arch::Dinov2),
            _ => None,
        }
    }

    /// The prefix of the body's tensors.
    fn base(self) -> &'static str {
        match self {
            Arch::Vit => "vit",
            Arch::Deit | Arch::DeitWithTeacher => "deit",
            Arch::Dinov2 => "dinov2",
        }
    }
}

/// What a transformers folder gives `read_folder`.
pub struct Read {
    pub cfg: Config,
    pub preprocess: EvalPreprocess,
    pub class_names: Vec<String>,
    /// Under timm's names, positions already on the model's grid (`pos_grid_*` metadata).
    pub file: TensorFile,
}

/// Reads config.json, preprocessor_config.json and model.safetensors; flags (`hints`)
/// applied.
pub fn read(
    dir: &Path,
    config_path: &Path,
    config: &Value,
    hints: &ConfigHints,
) -> Result<Read, CheckpointError> {
    let Parsed {
        arch,
        mut cfg,
        names: class_names,
        image: config_image,
    } = config_of(config_path, config)?;
    let pre_path = dir.join("preprocessor_config.json");
    let pre_json = match pre_path.is_file() {
        true => read_json(&pre_path)?,
        // ViTImageProcessor's defaults.
        false => serde_json::json!({}),
    };
    let preprocess = EvalPreprocess::from_transformers(
        &pre_path.display().to_string(),
        &pre_json,
        (cfg.channels, config_image.0, config_image.1),
    )
    .map_err(|e| folder_err(&pre_path, e.to_string()))?;
    let (_, h, w) = preprocess.input_size;
    if arch != Arch::Dinov2 && (h, w) != config_image {
        // ViT and DeiT refuse another size unless told to interpolate.
        return Err(folder_err(
            &pre_path,
            format!(
                "gives {h}x{w} inputs, but config.json says image_size {}x{} ({} runs only at \
                 its image_size)",
                config_image.0,
                config_image.1,
                arch.architecture()
            ),
        ));
    }
    cfg.image_h = h;
    cfg.image_w = w;
    let weights = weights_file(dir)?;
    let stored_grid = (config_image.0 / cfg.patch, config_image.1 / cfg.patch);
    let mut file = to_timm_names(&weights, &TensorFile::read(&weights)?, &cfg, arch)?;
    apply_hints(dir, &mut cfg, hints)?;
    let mut grid = stored_grid;
    if arch == Arch::Dinov2 {
        // Dinov2 interpolates its positions to the input's grid itself (bicubic, no
        // antialiasing), unless the patch count and the aspect are the ones it stores.
        let same = cfg.patches() == stored_grid.0 * stored_grid.1 && cfg.image_h == cfg.image_w;
        if let (false, Some((shape, pos))) = (same, file.tensors.get_mut("pos_embed")) {
            *pos = interp::bicubic_with_prefix(pos, cfg.dim, 1, stored_grid, cfg.grid());
            shape[1] = 1 + cfg.patches();
        }
        if !same {
            grid = cfg.grid();
        }
    }
    file.metadata
        .insert("pos_grid_h".into(), grid.0.to_string());
    file.metadata
        .insert("pos_grid_w".into(), grid.1.to_string());
    Ok(Read {
        cfg,
        preprocess,
        class_names,
        file,
    })
}

/// A transformers config.json as we run it.
struct Parsed {
    arch: Arch,
    cfg: Config,
    /// `id2label` in index order.
    names: Vec<String>,
    /// The image size its positions were stored for (`image_size`).
    image: (usize, usize),
}

/// The config of a transformers model we can run, its class names (`id2label`) and the
/// image size its positions were stored for.
fn config_of(path: &Path, c: &Value) -> Result<Parsed, CheckpointError> {
    let context = path.display().to_string();
    let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or("");
    let architecture = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(arch) = Arch::of(model_type, architecture) else {
        return Err(folder_err(
            path,
            format!(
                "model_type '{model_type}' with architecture '{architecture}' is not supported \
                 yet; supported: {SUPPORTED}"
            ),
        ));
    };
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
    let image = match c.get("image_size") {
        Some(Value::Array(a)) if a.len() == 2 => {
            let side = |v: &Value| v.as_u64().map(|x| x as usize);
            match (side(&a[0]), side(&a[1])) {
                (Some(h), Some(w)) => (h, w),
                _ => return Err(folder_err(path, "'image_size' is not [height, width]")),
            }
        }
        _ => {
            let default = if arch == Arch::Dinov2 { 518 } else { 224 };
            let s = int("image_size", default)?;
            (s, s)
        }
    };
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
    let flag = |k: &str| c.get(k).and_then(Value::as_bool);
    if arch == Arch::Dinov2 && flag("use_swiglu_ffn") == Some(true) {
        return Err(folder_err(
            path,
            "use_swiglu_ffn is true: only Dinov2's plain MLP (use_swiglu_ffn false) is supported \
             yet",
        ));
    }
    let eps_default = if arch == Arch::Dinov2 { 1e-6 } else { 1e-12 };
    let mut args = TimmArgs {
        img_size: image,
        patch_size: int("patch_size", if arch == Arch::Dinov2 { 14 } else { 16 })?,
        in_chans: int("num_channels", 3)?,
        num_classes: classes,
        embed_dim: dim,
        depth: int("num_hidden_layers", 12)?,
        num_heads: int("num_attention_heads", 12)?,
        qkv_bias: flag("qkv_bias").unwrap_or(true),
        norm_eps: c
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(eps_default),
        ..TimmArgs::default()
    };
    match arch {
        Arch::Vit => {}
        // The distillation token sits in the sequence like one register token with a
        // position; only the class token's head reads out.
        Arch::Deit => args.reg_tokens = 1,
        Arch::DeitWithTeacher => args.distilled = true,
        Arch::Dinov2 => {
            args.init_values = Some(
                c.get("layerscale_value")
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0),
            );
            args.global_pool = "avg".into();
            args.fc_norm = Some(false);
        }
    }
    let mut cfg = args
        .to_config(&format!("{context} (transformers {architecture})"), None)
        .map_err(|e| folder_err(path, e.to_string()))?;
    cfg.act = act;
    cfg.mlp_hidden = match arch {
        // Dinov2's MLP width comes from mlp_ratio; its config has no intermediate_size.
        Arch::Dinov2 => {
            let ratio = c.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
            (dim as f64 * ratio) as usize
        }
        _ => int("intermediate_size", 4 * dim)?,
    };
    if arch == Arch::Dinov2 {
        cfg.options.pool = Pool::ClsAvg;
    }
    cfg.validate()
        .map_err(|e| folder_err(path, format!("describes a model we cannot run: {e}")))?;
    let names = names.into_iter().map(|(_, n)| n).collect();
    Ok(Parsed {
        arch,
        cfg,
        names,
        image,
    })
}

/// (transformers name, timm name) of every tensor that maps one to one, and for each
/// block the q/k/v triples that make `attn.qkv`.
pub struct Names {
    pub pairs: Vec<(String, String)>,
    /// (timm `blocks.i.attn.qkv.{weight,bias}`, [query, key, value] transformers names).
    pub qkv: Vec<(String, [String; 3])>,
    /// transformers tensors with no counterpart in our model (kept by the writer).
    pub unused: Vec<String>,
}

/// The renaming between transformers' `arch` of `cfg` and timm's names.
pub fn names(arch: Arch, cfg: &Config) -> Names {
    let base = arch.base();
    let e = format!("{base}.embeddings.");
    let mut pairs: Vec<(String, String)> = vec![
        (format!("{e}cls_token"), "cls_token".into()),
        (format!("{e}position_embeddings"), "pos_embed".into()),
    ];
    let mut unused = Vec::new();
    match arch {
        Arch::Deit => pairs.push((format!("{e}distillation_token"), "reg_token".into())),
        Arch::DeitWithTeacher => {
            pairs.push((format!("{e}distillation_token"), "dist_token".into()))
        }
        Arch::Dinov2 => unused.push(format!("{e}mask_token")),
        Arch::Vit => {}
    }
    let biases = |pairs: &mut Vec<(String, String)>, theirs: &str, ours: &str| {
        for p in ["weight", "bias"] {
            pairs.push((format!("{theirs}.{p}"), format!("{ours}.{p}")));
        }
    };
    biases(
        &mut pairs,
        &format!("{e}patch_embeddings.projection"),
        "patch_embed.proj",
    );
    let renames: &[(&str, &str)] = match arch {
        Arch::Dinov2 => &[
            ("norm1", "norm1"),
            ("attention.output.dense", "attn.proj"),
            ("norm2", "norm2"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ],
        _ => &[
            ("layernorm_before", "norm1"),
            ("attention.output.dense", "attn.proj"),
            ("layernorm_after", "norm2"),
            ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2"),
        ],
    };
    let mut qkv = Vec::new();
    for i in 0..cfg.depth {
        let l = format!("{base}.encoder.layer.{i}.");
        let b = format!("blocks.{i}.");
        for (theirs, ours) in renames {
            biases(&mut pairs, &format!("{l}{theirs}"), &format!("{b}{ours}"));
        }
        if arch == Arch::Dinov2 {
            for (n, ls) in [(1, "ls1"), (2, "ls2")] {
                pairs.push((
                    format!("{l}layer_scale{n}.lambda1"),
                    format!("{b}{ls}.gamma"),
                ));
            }
        }
        let parts = if cfg.options.qkv_bias {
            &["weight", "bias"][..]
        } else {
            &["weight"][..]
        };
        for p in parts {
            qkv.push((
                format!("{b}attn.qkv.{p}"),
                ["query", "key", "value"].map(|q| format!("{l}attention.attention.{q}.{p}")),
            ));
        }
    }
    biases(&mut pairs, &format!("{base}.layernorm"), "norm");
    match arch {
        Arch::Vit | Arch::Deit | Arch::Dinov2 => biases(&mut pairs, "classifier", "head"),
        Arch::DeitWithTeacher => {
            biases(&mut pairs, "cls_classifier", "head");
            biases(&mut pairs, "distillation_classifier", "head_dist");
        }
    }
    Names { pairs, qkv, unused }
}

/// transformers' tensors under timm's names; a tensor of neither list is an error.
fn to_timm_names(
    path: &Path,
    file: &TensorFile,
    cfg: &Config,
    arch: Arch,
) -> Result<TensorFile, CheckpointError> {
    let map = names(arch, cfg);
    let mut out = TensorFile {
        metadata: file.metadata.clone(),
        ..Default::default()
    };
    let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
        file.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: path.into(),
                name: name.into(),
            })
    };
    for (theirs, ours) in &map.pairs {
        out.tensors.insert(ours.clone(), get(theirs)?);
    }
    for (ours, parts) in &map.qkv {
        // timm's qkv is q, k and v stacked along the output dimension.
        let mut shape = Vec::new();
        let mut qkv = Vec::new();
        for part in parts {
            let (s, v) = get(part)?;
            shape = s;
            qkv.extend(v);
        }
        if let Some(rows) = shape.first_mut() {
            *rows *= 3;
        }
        out.tensors.insert(ours.clone(), (shape, qkv));
    }
    let known = |k: &str| {
        map.pairs.iter().any(|(t, _)| t == k)
            || map.qkv.iter().any(|(_, p)| p.iter().any(|t| t == k))
            || map.unused.iter().any(|t| t == k)
            || k.starts_with(&format!("{}.pooler.", arch.base()))
    };
    if let Some(extra) = file.tensors.keys().find(|k| !known(k)) {
        return Err(folder_err(
            path,
            format!(
                "tensor '{extra}' is not part of a {} of this config ({cfg})",
                arch.architecture()
            ),
        ));
    }
    Ok(out)
}
