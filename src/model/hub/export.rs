//! Writing a model back as the folder it came from: a timm hub folder (`config.json` with
//! `architecture`, `num_classes`, `label_names`, `model_args` and `pretrained_cfg`, and
//! `model.safetensors` under timm's names, which are ours) or a transformers folder
//! (`config.json` with `model_type`, `architectures`, `id2label`/`label2id`,
//! `model.safetensors` under transformers' names, `preprocessor_config.json`), so that
//! `timm.create_model("local-dir:DIR", pretrained=True)` and
//! `AutoModelForImageClassification.from_pretrained(DIR)` load it strictly. The source
//! folder's config is the template: keys we do not model (dropout rates, tags, licences)
//! are kept, and the ones the model decides (classes, names, image size) are rewritten.

use super::transformers::{self, Arch};
use super::{folder_err, read_json, weights_file, FolderKind};
use crate::model::checkpoint::{CheckpointError, TensorFile};
use crate::model::config::Config;
use crate::model::params::HostParams;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The folder a run writes its export to, beside its checkpoints.
pub const RUN_EXPORT_DIR: &str = "hub";

/// Writes `cfg`/`params` with `class_names` to `out` in the format of model folder `source`.
pub fn write_like(
    source: &Path,
    out: &Path,
    cfg: &Config,
    params: &HostParams,
    class_names: &[String],
) -> Result<FolderKind, CheckpointError> {
    let config_path = source.join("config.json");
    let config = read_json(&config_path)?;
    if class_names.len() != cfg.classes {
        return Err(folder_err(
            out,
            format!(
                "{} class names for a head of {} classes",
                class_names.len(),
                cfg.classes
            ),
        ));
    }
    std::fs::create_dir_all(out).map_err(|source| CheckpointError::Io {
        path: out.into(),
        source,
    })?;
    if config.get("architecture").is_some() {
        write_timm(&config, out, cfg, params, class_names)?;
        Ok(FolderKind::Timm)
    } else {
        write_transformers(source, &config, out, cfg, params, class_names)?;
        Ok(FolderKind::Transformers)
    }
}

/// After `train --init SOURCE`: the run's weights as a folder like SOURCE in
/// `<run>/hub/`, reported on stderr. A model the format cannot hold is a warning, not an
/// error: the run's own checkpoints are already written.
pub fn after_training(
    source: &Path,
    run: &Path,
    cfg: &Config,
    params: &HostParams,
    class_names: &[String],
) -> Option<PathBuf> {
    let out = run.join(RUN_EXPORT_DIR);
    match write_like(source, &out, cfg, params, class_names) {
        Ok(_) => {
            eprintln!(
                "wrote {} in the format of {}",
                out.display(),
                source.display()
            );
            Some(out)
        }
        Err(e) => {
            eprintln!(
                "warning: the run is not written back in the format of {}: {e}",
                source.display()
            );
            None
        }
    }
}

fn write_json(path: &Path, v: &Value) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    crate::model::checkpoint::write_atomic(path, text.as_bytes())
}

/// Weights under the given names with the metadata the hubs write.
fn write_weights(out: &Path, tensors: TensorFile) -> Result<(), CheckpointError> {
    let mut file = tensors;
    file.metadata = [("format".to_string(), "pt".to_string())].into();
    file.write(&out.join("model.safetensors"))
}

fn tensor_map(params: &HostParams) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    params
        .specs
        .iter()
        .zip(&params.values)
        .map(|(s, v)| (s.name.clone(), (s.shape.clone(), v.clone())))
        .collect()
}

fn image_size_value(cfg: &Config) -> Value {
    match cfg.image_h == cfg.image_w {
        true => json!(cfg.image_h),
        false => json!([cfg.image_h, cfg.image_w]),
    }
}

fn write_timm(
    config: &Value,
    out: &Path,
    cfg: &Config,
    params: &HostParams,
    class_names: &[String],
) -> Result<(), CheckpointError> {
    let mut c = config.clone();
    c["num_classes"] = json!(cfg.classes);
    c["label_names"] = json!(class_names);
    if let Some(args) = c.get_mut("model_args").and_then(Value::as_object_mut) {
        if args.contains_key("num_classes") {
            args.insert("num_classes".into(), json!(cfg.classes));
        }
    }
    let name = c["architecture"].as_str().unwrap_or_default().to_string();
    // The architecture (with model_args) gives an image size; a run at another writes it.
    let mut args = crate::model::arch::lookup(&name)
        .map(|(a, _)| a)
        .map_err(|e| folder_err(out, e.to_string()))?;
    if let Some(model_args) = c.get("model_args") {
        args.apply_model_args(&name, model_args)
            .map_err(|e| folder_err(out, e.to_string()))?;
    }
    if args.img_size != (cfg.image_h, cfg.image_w) {
        if !c.get("model_args").is_some_and(Value::is_object) {
            c["model_args"] = json!({});
        }
        c["model_args"]["img_size"] = json!([cfg.image_h, cfg.image_w]);
    }
    if let Some(p) = c.get_mut("pretrained_cfg").and_then(Value::as_object_mut) {
        p.insert("num_classes".into(), json!(cfg.classes));
        p.insert(
            "input_size".into(),
            json!([cfg.channels, cfg.image_h, cfg.image_w]),
        );
    }
    write_json(&out.join("config.json"), &c)?;
    write_weights(
        out,
        TensorFile {
            tensors: tensor_map(params),
            ..Default::default()
        },
    )
}

fn write_transformers(
    source: &Path,
    config: &Value,
    out: &Path,
    cfg: &Config,
    params: &HostParams,
    class_names: &[String],
) -> Result<(), CheckpointError> {
    let Some(arch) = Arch::for_config(cfg) else {
        return Err(folder_err(
            out,
            format!("no transformers image classifier has this model's options ({cfg})"),
        ));
    };
    let mut c = config.clone();
    c["model_type"] = json!(arch.model_type());
    c["architectures"] = json!([arch.architecture()]);
    let id2label: serde_json::Map<String, Value> = class_names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), json!(n)))
        .collect();
    let label2id: serde_json::Map<String, Value> = class_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), json!(i)))
        .collect();
    c["id2label"] = Value::Object(id2label);
    c["label2id"] = Value::Object(label2id);
    if let Some(o) = c.as_object_mut() {
        o.remove("num_labels");
    }
    // The positions are stored for the model's grid (Dinov2's were interpolated to it).
    c["image_size"] = image_size_value(cfg);
    write_json(&out.join("config.json"), &c)?;

    let pre_path = source.join("preprocessor_config.json");
    if pre_path.is_file() {
        let mut pre = read_json(&pre_path)?;
        let same = crate::data::preprocess::EvalPreprocess::from_transformers(
            "",
            &pre,
            (cfg.channels, cfg.image_h, cfg.image_w),
        )
        .is_ok_and(|p| (p.input_size.1, p.input_size.2) == (cfg.image_h, cfg.image_w));
        // Dinov2 interpolates its positions to whatever size the processor gives: kept.
        if !same && arch != Arch::Dinov2 {
            // The model now runs at another size: a plain resize to it.
            pre["size"] = json!({"height": cfg.image_h, "width": cfg.image_w});
            pre["do_center_crop"] = json!(false);
        }
        write_json(&out.join("preprocessor_config.json"), &pre)?;
    }

    let names = transformers::names(arch, cfg);
    let ours = tensor_map(params);
    let mut file = TensorFile::default();
    let missing = |name: &str| CheckpointError::MissingTensor {
        path: out.into(),
        name: name.into(),
    };
    for (theirs, mine) in &names.pairs {
        let t = ours.get(mine).ok_or_else(|| missing(mine))?;
        file.tensors.insert(theirs.clone(), t.clone());
    }
    for (mine, parts) in &names.qkv {
        let (shape, values) = ours.get(mine).ok_or_else(|| missing(mine))?;
        let rows = shape[0] / 3;
        let per = values.len() / 3;
        for (i, part) in parts.iter().enumerate() {
            let mut s = shape.clone();
            s[0] = rows;
            file.tensors
                .insert(part.clone(), (s, values[i * per..(i + 1) * per].to_vec()));
        }
    }
    // Tensors transformers has and we do not use (Dinov2's mask token): the source's.
    let src = TensorFile::read(&weights_file(source)?)?;
    for name in &names.unused {
        let t = match src.tensors.get(name) {
            Some(t) => t.clone(),
            None => (vec![1, cfg.dim], vec![0.0; cfg.dim]),
        };
        file.tensors.insert(name.clone(), t);
    }
    write_weights(out, file)
}
