//! Writing model folders back (issue 33 item 5): a fixture folder read and written back
//! unchanged gives the fixture's tensors (names, shapes, dtypes, values) and config; a short
//! `train --init FOLDER` with a new head writes `<run>/hub/` in the folder's format with the
//! new classes. (scripts/check_writeback.py loads such a folder in timm or transformers.)

use std::path::{Path, PathBuf};
use vit_wgpu::model::checkpoint::{ConfigHints, TensorFile};
use vit_wgpu::model::hub::{self, export, FolderKind};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vit-hub-export-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// name -> (dtype, shape) from a safetensors header.
fn header(path: &Path) -> Vec<(String, String, Vec<usize>)> {
    let bytes = std::fs::read(path).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, format!("{:?}", t.dtype()), t.shape().to_vec()))
        .collect();
    v.sort();
    v
}

const TIMM: &[&str] = &[
    "timm_vit",
    "timm_deit3",
    "timm_dinov2",
    "timm_reg4",
    "timm_distilled",
    "timm_clip_quickgelu",
    "timm_gap",
];
const TRANSFORMERS: &[&str] = &["hf_vit", "hf_deit", "hf_deit_teacher", "hf_dinov2"];

#[test]
fn folders_written_back_unchanged_equal_the_fixtures() {
    for name in TIMM.iter().chain(TRANSFORMERS) {
        let src = fixtures().join(name);
        // Dinov2 at its stored size: its positions are then not interpolated.
        let hints = ConfigHints {
            image_size: (*name == "hf_dinov2").then_some((42, 42)),
            ..Default::default()
        };
        let m = hub::read_folder(&src, &hints).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = temp(name);
        let kind = export::write_like(&src, &out, &m.cfg, &m.params, &m.class_names)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kind, m.kind, "{name}");
        let (a, b) = (src.join("model.safetensors"), out.join("model.safetensors"));
        assert_eq!(
            header(&a),
            header(&b),
            "{name}: tensor names, dtypes, shapes"
        );
        let (fa, fb) = (
            TensorFile::read(&a).expect("read"),
            TensorFile::read(&b).expect("read"),
        );
        for (k, (_, va)) in &fa.tensors {
            assert!(fb.tensors[k].1 == *va, "{name}: values of {k} differ");
        }
        let (ca, cb) = (
            json(&src.join("config.json")),
            json(&out.join("config.json")),
        );
        let keys: &[&str] = match m.kind {
            FolderKind::Timm => &[
                "architecture",
                "num_classes",
                "label_names",
                "model_args",
                "pretrained_cfg",
                "global_pool",
            ],
            FolderKind::Transformers => &[
                "model_type",
                "architectures",
                "id2label",
                "label2id",
                "image_size",
                "patch_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "mlp_ratio",
                "layerscale_value",
                "layer_norm_eps",
                "hidden_act",
                "qkv_bias",
                "use_mask_token",
            ],
        };
        for k in keys {
            assert_eq!(ca.get(k), cb.get(k), "{name}: config.json '{k}'");
        }
        if m.kind == FolderKind::Transformers {
            let p = "preprocessor_config.json";
            assert_eq!(json(&src.join(p)), json(&out.join(p)), "{name}: {p}");
        }
        // And it reads back as the same model.
        let back = hub::read_folder(&out, &hints).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.cfg, m.cfg, "{name}");
        assert_eq!(back.params.values, m.params.values, "{name}");
        assert_eq!(back.class_names, m.class_names, "{name}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A tiny image folder: `split/<class>/i.png` for two classes.
fn image_folder(root: &Path) {
    for split in ["train", "val"] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).expect("temp dir");
            for i in 0..2u32 {
                let img = image::RgbImage::from_fn(37 + 3 * i, 29 + 5 * i, |x, y| {
                    let v = (x * 7 + y * 13 + i * 31) as u8;
                    image::Rgb([v, v.wrapping_mul(3), if c == 0 { 40 } else { 220 }])
                });
                img.save(dir.join(format!("{i}.png"))).expect("write png");
            }
        }
    }
}

/// `train --init FOLDER` with a new 2-class head writes `<run>/hub/` like FOLDER: its
/// config names the 2 classes and reads back as the run's last checkpoint.
#[test]
fn fine_tuning_a_folder_writes_it_back_with_the_new_classes() {
    let root = temp("train");
    let data = root.join("data");
    image_folder(&data);
    let runs: &[(&str, bool)] = &[
        ("hf_dinov2", true),
        ("hf_deit", false),
        ("hf_deit_teacher", false),
        ("timm_dinov2", true),
        ("timm_reg4", false),
        ("timm_distilled", false),
        ("timm_clip_quickgelu", false),
        ("timm_gap", false),
        ("timm_deit3", false),
    ];
    for &(name, freeze) in runs {
        let run = root.join(name);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
        cmd.arg("train")
            .arg("--init")
            .arg(fixtures().join(name))
            .args(["--dataset", "folder", "--epochs", "1", "--batch-size", "2"])
            .args(["--quiet", "--data-dir"])
            .arg(&data)
            .arg("--out")
            .arg(&run);
        if freeze {
            cmd.arg("--freeze-body");
        }
        let out = cmd.output().expect("run vit-wgpu");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let hub_dir = run.join(export::RUN_EXPORT_DIR);
        assert!(stderr.contains("in the format of"), "{name}: {stderr}");
        let m = hub::read_folder(&hub_dir, &ConfigHints::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.class_names, ["cat", "dog"], "{name}");
        assert_eq!(m.cfg.classes, 2, "{name}");
        let config = json(&hub_dir.join("config.json"));
        let head = match m.kind {
            FolderKind::Timm => {
                assert_eq!(config["num_classes"], 2, "{name}");
                assert_eq!(config["label_names"][1], "dog", "{name}");
                "head.weight"
            }
            FolderKind::Transformers => {
                assert_eq!(config["id2label"]["1"], "dog", "{name}");
                assert_eq!(config["label2id"]["cat"], 0, "{name}");
                match name {
                    "hf_deit_teacher" => "cls_classifier.weight",
                    _ => "classifier.weight",
                }
            }
        };
        let weights = TensorFile::read(&hub_dir.join("model.safetensors")).expect("weights");
        assert_eq!(weights.tensors[head].0[0], 2, "{name}: {head}");
        // The folder holds the run's last weights.
        let last = vit_wgpu::model::checkpoint::load_model(&run.join("last.safetensors"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.cfg, last.0, "{name}");
        assert_eq!(m.params.values, last.1.values, "{name}");
        eprintln!("{name}: {} written back ({:?})", hub_dir.display(), m.kind);
    }
    let _ = std::fs::remove_dir_all(&root);
}
