//! Model families (issue 33): the timm architecture registry against timm itself, and model
//! folders (timm hub, transformers) read with no flags, checked against the probabilities
//! timm and transformers computed on the same image files
//! (tests/fixtures/families/, made by scripts/make_family_fixtures.py).

mod common;

use std::path::{Path, PathBuf};
use vit_wgpu::data::stream::decode;
use vit_wgpu::model::arch;
use vit_wgpu::model::checkpoint::{ConfigHints, TensorFile};
use vit_wgpu::model::hub::{self, FolderKind, FolderModel};
use vit_wgpu::model::{Kernels, Mode, Vit};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

fn images() -> Vec<PathBuf> {
    ["wide.png", "tall.png"]
        .iter()
        .map(|f| fixtures().join("images").join(f))
        .collect()
}

fn expected(folder: &str) -> TensorFile {
    let path = fixtures().join(format!("{folder}.expected.safetensors"));
    TensorFile::read(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f64, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (&x, &y))| ((x as f64 - y as f64).abs(), i))
        .fold((0.0, 0), |m, v| if v.0 > m.0 { v } else { m })
}

fn softmax_rows(logits: &[f64], k: usize) -> Vec<f32> {
    logits
        .chunks(k)
        .flat_map(|row| {
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
            row.iter()
                .map(move |v| ((v - mx).exp() / z) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The folder's model inputs for the fixture images, checked against the reference
/// library's eval transform, and the probabilities of the device model and of the f64
/// reference model, each checked against the reference library's.
fn check_folder(folder: &str, kind: FolderKind) {
    let dir = fixtures().join(folder);
    let m: FolderModel =
        hub::read_folder(&dir, &ConfigHints::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.kind, kind);
    let want = expected(folder);
    let (_, want_input) = &want.tensors["input"];
    let (_, want_probs) = &want.tensors["probs"];
    let cfg = &m.cfg;
    let mut input = Vec::new();
    for path in images() {
        let img = decode(&path, cfg.channels).unwrap_or_else(|e| panic!("{e}"));
        input.extend(m.preprocess.apply(&img));
    }
    let (err, at) = max_abs_diff(&input, want_input);
    assert!(
        err < 1e-5,
        "{folder}: model input differs from the reference transform by {err:.2e} at {at}"
    );
    eprintln!("{folder}: input max |diff| {err:.2e}");

    let batch = images().len();
    let labels = vec![0u32; batch];
    let reference = vit_wgpu::model::reference::forward_backward(
        cfg,
        &vit_wgpu::model::reference::widen(&m.params),
        &m.params,
        &input,
        &labels,
    );
    let probs = softmax_rows(&reference.logits, cfg.classes);
    let (err, at) = max_abs_diff(&probs, want_probs);
    assert!(
        err < 1e-4,
        "{folder}: f64 reference probabilities differ by {err:.2e} at {at}"
    );
    eprintln!("{folder}: reference model probabilities max |diff| {err:.2e}");

    let gpu = common::gpu();
    let kernels = Kernels::new(gpu);
    let model = Vit::new(gpu, &kernels, cfg, &m.params, batch, Mode::Infer, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    model.write_batch(gpu, &input, &labels);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    model.record_forward(&mut encoder);
    gpu.queue.submit([encoder.finish()]);
    let logits: Vec<f32> =
        pollster::block_on(gpu.read(&model.logits)).unwrap_or_else(|e| panic!("{e}"));
    let logits: Vec<f64> = logits[..batch * cfg.classes]
        .iter()
        .map(|&v| v as f64)
        .collect();
    let probs = softmax_rows(&logits, cfg.classes);
    let (err, at) = max_abs_diff(&probs, want_probs);
    assert!(
        err < 1e-4,
        "{folder}: device probabilities differ by {err:.2e} at {at}"
    );
    eprintln!("{folder}: device model probabilities max |diff| {err:.2e}");
}

#[test]
fn registry_matches_what_timm_builds_for_every_name() {
    let text = std::fs::read_to_string(fixtures().join("registry.json")).expect("registry.json");
    let timm: serde_json::Value = serde_json::from_str(&text).expect("registry.json is JSON");
    let timm = timm.as_object().expect("an object of names");
    let ours = arch::names();
    for name in timm.keys() {
        assert!(
            ours.contains(name),
            "timm's {name} is missing from the registry"
        );
    }
    for name in &ours {
        let t = timm
            .get(name)
            .unwrap_or_else(|| panic!("{name}: not in the fixture; rerun the script"));
        let (a, pre) = arch::lookup(name).unwrap_or_else(|e| panic!("{e}"));
        let int = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{name}.{k}")) as usize;
        let flag = |k: &str| t[k].as_bool().unwrap_or_else(|| panic!("{name}.{k}"));
        let floats = |k: &str| -> Vec<f32> {
            t[k].as_array()
                .unwrap_or_else(|| panic!("{name}.{k}"))
                .iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                .collect()
        };
        assert_eq!(
            (Some(a.img_size.0 as u64), Some(a.img_size.1 as u64)),
            (t["img_size"][0].as_u64(), t["img_size"][1].as_u64()),
            "{name}: img_size"
        );
        let checks = [
            ("patch_size", a.patch_size, int("patch_size")),
            ("in_chans", a.in_chans, int("in_chans")),
            ("num_classes", a.num_classes, int("num_classes")),
            ("embed_dim", a.embed_dim, int("embed_dim")),
            ("depth", a.depth, int("depth")),
            ("num_heads", a.num_heads, int("num_heads")),
            (
                "mlp hidden",
                (a.embed_dim as f64 * a.mlp_ratio) as usize,
                int("mlp_hidden"),
            ),
            ("reg_tokens", a.reg_tokens, int("reg_tokens")),
        ];
        for (what, ours, theirs) in checks {
            assert_eq!(ours, theirs, "{name}: {what}");
        }
        let flags = [
            ("qkv_bias", a.qkv_bias, flag("qkv_bias")),
            ("qk_norm", a.qk_norm, flag("qk_norm")),
            ("class_token", a.class_token, flag("class_token")),
            ("no_embed_class", a.no_embed_class, flag("no_embed_class")),
            ("pre_norm", a.pre_norm, flag("pre_norm")),
            ("distilled", a.distilled, flag("distilled")),
            // timm's rule: a LayerNorm after pooling when pooling averages, unless told.
            (
                "fc_norm",
                a.fc_norm.unwrap_or(a.global_pool == "avg"),
                flag("fc_norm"),
            ),
        ];
        for (what, ours, theirs) in flags {
            assert_eq!(ours, theirs, "{name}: {what}");
        }
        assert_eq!(
            a.global_pool,
            t["global_pool"].as_str().unwrap_or(""),
            "{name}"
        );
        assert_eq!(a.act_layer, t["act_layer"].as_str().unwrap_or(""), "{name}");
        let eps = t["norm_eps"].as_f64().unwrap_or(0.0);
        assert!(
            (a.norm_eps - eps).abs() < 1e-12,
            "{name}: eps {} vs {eps}",
            a.norm_eps
        );
        match (a.init_values, t["init_values"].as_f64()) {
            (None, None) => {}
            (Some(x), Some(y)) => assert!((x / y - 1.0).abs() < 1e-6, "{name}: init_values"),
            (x, y) => panic!("{name}: init_values {x:?} vs timm {y:?}"),
        }
        let input: Vec<usize> = (0..3)
            .map(|i| t["input_size"][i].as_u64().unwrap_or(0) as usize)
            .collect();
        assert_eq!(
            vec![pre.input_size.0, pre.input_size.1, pre.input_size.2],
            input,
            "{name}: input_size"
        );
        assert_eq!(
            pre.interpolation.to_string(),
            t["interpolation"].as_str().unwrap_or(""),
            "{name}"
        );
        let crop = t["crop_pct"].as_f64().unwrap_or(0.0);
        assert_eq!(pre.crop_pct, Some(crop), "{name}: crop_pct");
        let (m, s) = (floats("mean"), floats("std"));
        assert_eq!(pre.mean, m, "{name}: mean");
        assert_eq!(pre.std, s, "{name}: std");
    }
    eprintln!("{} architecture names checked against timm", ours.len());
}

#[test]
fn registry_names_give_our_config_and_unknown_arguments_are_named() {
    let (a, _) = arch::lookup("vit_small_patch16_224").unwrap_or_else(|e| panic!("{e}"));
    let cfg = a.to_config("test", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            cfg.dim,
            cfg.depth,
            cfg.heads,
            cfg.mlp_hidden,
            cfg.patch,
            cfg.image_h,
            cfg.classes
        ),
        (384, 12, 6, 1536, 16, 224, 1000)
    );
    assert_eq!(cfg.ln_eps, 1e-6);
    let (a, _) = arch::lookup("deit3_small_patch16_224").unwrap_or_else(|e| panic!("{e}"));
    let cfg = a.to_config("test", None).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.options.no_embed_class && cfg.options.layer_scale == Some(1e-6));
    let mut a = a;
    a.act_layer = "swiglu".into();
    let e = a
        .to_config("test", None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("act_layer") && e.contains("swiglu"), "{e}");
    let e = arch::lookup("vit_enormous_patch3_7")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("vit_enormous_patch3_7") && e.contains("deit3_<size>_patch16_224"),
        "{e}"
    );
    let mut a = arch::TimmArgs::default();
    let args = serde_json::json!({"img_size": [48, 64], "depth": 3, "drop_path_rate": 0.1});
    a.apply_model_args("test", &args)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((a.img_size, a.depth), ((48, 64), 3));
    let bad = serde_json::json!({"depth": "three"});
    let e = a
        .apply_model_args("test", &bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("depth") && e.contains("\"three\""), "{e}");
}

#[test]
fn timm_hub_folder_gives_timms_probabilities() {
    check_folder("timm_vit", FolderKind::Timm);
}

/// One timm hub folder per family (scripts/make_family_fixtures.py FAMILY_FOLDERS): the
/// options of each (LayerScale, registers, distillation token, norm_pre and QuickGELU,
/// avg pooling without a class token or qkv bias) give timm's probabilities.
#[test]
fn timm_hub_folders_of_every_family_give_timms_probabilities() {
    for family in [
        "deit3",
        "dinov2",
        "reg4",
        "distilled",
        "clip_quickgelu",
        "gap",
    ] {
        check_folder(&format!("timm_{family}"), FolderKind::Timm);
    }
}

#[test]
fn transformers_folder_gives_transformers_probabilities() {
    check_folder("hf_vit", FolderKind::Transformers);
}

/// transformers' DeiT (a distillation token read by no head; with a square resize and a
/// center crop), DeiT with its teacher head (two heads averaged) and Dinov2 (LayerScale, a
/// head on [class token ; patch mean], positions interpolated to the processor's crop).
#[test]
fn transformers_deit_and_dinov2_folders_give_transformers_probabilities() {
    for folder in ["hf_deit", "hf_deit_teacher", "hf_dinov2"] {
        check_folder(folder, FolderKind::Transformers);
    }
    let m = hub::read_folder(&fixtures().join("hf_dinov2"), &ConfigHints::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            m.cfg.image_h,
            m.cfg.patches(),
            m.cfg.mlp_hidden,
            m.cfg.head_in()
        ),
        (28, 4, 48, 48)
    );
    assert_eq!(m.cfg.options.pool, vit_wgpu::model::Pool::ClsAvg);
    assert_eq!(m.class_names[4], "hammerhead");
    let m = hub::read_folder(&fixtures().join("hf_deit"), &ConfigHints::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m.cfg.options.reg_tokens, m.cfg.tokens()), (1, 18));
}

/// Dinov2's head on [class token ; patch mean] against transformers in float64: logits,
/// loss and every parameter's gradient, on the f64 reference model and on the device
/// (`verify`, the training code path).
#[test]
fn dinov2_head_gradients_match_transformers() {
    use vit_wgpu::model::checkpoint::load_params_resampling;
    use vit_wgpu::model::{reference, Config};
    let path = fixtures().join("hf_dinov2.grads.safetensors");
    let file = TensorFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let cfg = Config::from_metadata(&file.metadata).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.head_in(), 2 * cfg.dim);
    let params = load_params_resampling(&path, &file, &cfg).unwrap_or_else(|e| panic!("{e}"));
    let (_, images) = &file.tensors["input.images"];
    let labels: Vec<u32> = file.int_tensors["input.labels"]
        .1
        .iter()
        .map(|&l| l as u32)
        .collect();
    let res =
        reference::forward_backward(&cfg, &reference::widen(&params), &params, images, &labels);
    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (_, logits) = &file.tensors["expected.logits"];
    common::assert_close("dinov2 logits", &to32(&res.logits), logits, 1e-5);
    let (_, loss) = &file.tensors["expected.loss"];
    assert!(
        (res.loss - loss[0] as f64).abs() < 1e-5 * res.loss.abs(),
        "loss {} vs transformers {}",
        res.loss,
        loss[0]
    );
    let mut worst = (0.0, String::new());
    for (spec, g) in params.specs.iter().zip(&res.grads) {
        let (_, want) = &file.tensors[&format!("expected.grad.{}", spec.name)];
        let err = common::assert_close(&format!("grad {}", spec.name), &to32(g), want, 1e-5);
        if err > worst.0 {
            worst = (err, spec.name.clone());
        }
    }
    eprintln!(
        "reference: worst gradient error {:.2e} in {}",
        worst.0, worst.1
    );
    let gpu = common::gpu();
    let report = pollster::block_on(vit_wgpu::verify::verify(
        gpu,
        &path,
        vit_wgpu::verify::Tolerances::default(),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    for c in &report.comparisons {
        eprintln!("device: {} relative error {:.2e}", c.name, c.relative_error);
    }
    assert!(report.passed(), "the device model fails verify");
}

#[test]
fn folders_carry_class_names_and_preprocessing() {
    let m = hub::read_folder(&fixtures().join("timm_vit"), &ConfigHints::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.class_names[2], "great white shark");
    assert_eq!(m.preprocess.crop_pct, Some(0.9));
    assert_eq!(m.file.metadata["interpolation"], "bicubic");
    let m = hub::read_folder(&fixtures().join("hf_vit"), &ConfigHints::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        m.class_names,
        ["tench", "goldfish", "great white shark", "tiger shark"]
    );
    assert_eq!((m.cfg.mlp_hidden, m.cfg.ln_eps), (48, 1e-12));
    assert_eq!(m.preprocess.crop_pct, None);
}

/// A copy of fixture folder `name` in a fresh temporary folder, its config.json edited.
fn edited_copy(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = fixtures().join(name);
    let dir = std::env::temp_dir().join(format!(
        "vit-families-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for f in std::fs::read_dir(&src).expect("fixture folder").flatten() {
        std::fs::copy(f.path(), dir.join(f.file_name())).expect("copy");
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    edit(&mut config);
    std::fs::write(&path, config.to_string()).expect("write config");
    dir
}

fn folder_error(dir: &Path) -> String {
    let e = hub::read_folder(dir, &ConfigHints::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    e
}

#[test]
fn bad_folders_name_the_option_or_tensor() {
    let dir = edited_copy("timm_vit", |c| {
        c["architecture"] = "vit_nano_patch2_8".into()
    });
    let e = folder_error(&dir);
    assert!(
        e.contains("unknown architecture 'vit_nano_patch2_8'"),
        "{e}"
    );

    let dir = edited_copy("timm_vit", |c| c["model_args"]["reg_tokens"] = 4.into());
    let e = folder_error(&dir);
    assert!(e.contains("reg_token") && e.contains("missing"), "{e}");

    let dir = edited_copy("timm_vit", |c| c["model_args"]["depth"] = 3.into());
    let e = folder_error(&dir);
    assert!(e.contains("blocks.2.") && e.contains("missing"), "{e}");

    let dir = edited_copy("timm_vit", |c| c["model_args"]["depth"] = 1.into());
    let e = folder_error(&dir);
    assert!(e.contains("tensor 'blocks.1."), "{e}");

    let dir = edited_copy("timm_vit", |c| c["model_args"]["embed_dim"] = 64.into());
    let e = folder_error(&dir);
    assert!(e.contains("shape") && e.contains("64"), "{e}");

    let dir = edited_copy("hf_vit", |c| c["hidden_act"] = "gelu_new".into());
    let e = folder_error(&dir);
    assert!(e.contains("hidden_act 'gelu_new'"), "{e}");

    let dir = edited_copy("hf_vit", |c| c["model_type"] = "deit".into());
    let e = folder_error(&dir);
    assert!(
        e.contains("model_type 'deit' with architecture 'ViTForImageClassification'")
            && e.contains("supported: model_type 'vit'"),
        "{e}"
    );

    let dir = edited_copy("hf_dinov2", |c| {
        c["architectures"][0] = "Dinov2ForDepthEstimation".into()
    });
    let e = folder_error(&dir);
    assert!(
        e.contains("'Dinov2ForDepthEstimation' is not supported"),
        "{e}"
    );

    let dir = edited_copy("hf_dinov2", |c| c["use_swiglu_ffn"] = true.into());
    let e = folder_error(&dir);
    assert!(e.contains("use_swiglu_ffn"), "{e}");

    // Weights that do not match the config: the tensor, its expected and found shapes.
    let dir = edited_copy("hf_dinov2", |c| c["mlp_ratio"] = 4.into());
    let e = folder_error(&dir);
    assert!(
        e.contains("blocks.0.mlp.fc1.weight") && e.contains("96") && e.contains("48"),
        "{e}"
    );
    let dir = edited_copy("hf_deit_teacher", |c| {
        c["architectures"][0] = "DeiTForImageClassification".into()
    });
    let e = folder_error(&dir);
    assert!(e.contains("'classifier.weight' is missing"), "{e}");
    let dir = edited_copy("hf_deit", |c| {
        c["architectures"][0] = "DeiTForImageClassificationWithTeacher".into()
    });
    let e = folder_error(&dir);
    assert!(
        e.contains("cls_classifier.weight") && e.contains("missing"),
        "{e}"
    );
    let dir = edited_copy("hf_deit", |_| {});
    let pre = dir.join("preprocessor_config.json");
    let text = std::fs::read_to_string(&pre).expect("processor config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["crop_size"] = serde_json::json!({"height": 40, "width": 40});
    std::fs::write(&pre, v.to_string()).expect("write");
    let e = folder_error(&dir);
    assert!(
        e.contains("'crop_size' is 40x40, larger than the resized image (36x36)"),
        "{e}"
    );
    let dir = edited_copy("hf_dinov2", |_| {});
    let pre = dir.join("preprocessor_config.json");
    let text = std::fs::read_to_string(&pre).expect("processor config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["do_center_crop"] = false.into();
    std::fs::write(&pre, v.to_string()).expect("write");
    let e = folder_error(&dir);
    assert!(
        e.contains("'size' is a shortest_edge without a center crop"),
        "{e}"
    );
    let dir = edited_copy("hf_deit", |c| c["image_size"] = 40.into());
    let e = folder_error(&dir);
    assert!(
        e.contains("32x32 inputs") && e.contains("image_size 40x40"),
        "{e}"
    );
}

/// `infer` on a folder with no flags prints the folder's class names with the reference
/// library's probabilities; a flag that contradicts the folder is reported.
#[test]
fn infer_reads_a_folder_with_no_flags() {
    // hf_deit and hf_dinov2 resize and center-crop as transformers does (not timm's crop).
    for folder in ["timm_vit", "hf_vit", "hf_deit", "hf_dinov2"] {
        let want = expected(folder);
        let (_, want_probs) = &want.tensors["probs"];
        let dir = fixtures().join(folder);
        let classes = if folder == "hf_vit" { 4 } else { 5 };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
            .arg("infer")
            .arg("--checkpoint")
            .arg(&dir)
            .args(images())
            .args(["--json", "--top-k", &classes.to_string()])
            .output()
            .expect("run vit-wgpu");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{folder}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v.get("top").is_some())
            .collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        let names = hub::read_folder(&dir, &ConfigHints::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .class_names;
        for (i, line) in lines.iter().enumerate() {
            for entry in line["top"].as_array().expect("top") {
                let class = entry["class"].as_str().expect("class");
                let k = names
                    .iter()
                    .position(|n| n == class)
                    .unwrap_or_else(|| panic!("{folder}: class '{class}' is not the folder's"));
                let p = entry["probability"].as_f64().expect("probability");
                let w = want_probs[i * classes + k] as f64;
                assert!(
                    (p - w).abs() < 1e-4,
                    "{folder} image {i} {class}: {p} vs {w}"
                );
            }
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .arg("infer")
        .arg("--checkpoint")
        .arg(fixtures().join("timm_vit"))
        .args(images())
        .args(["--heads", "4"])
        .output()
        .expect("run vit-wgpu");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--heads 4 overrides") && stderr.contains("(2 there)"),
        "{stderr}"
    );
}

/// `eval` of a model folder on an image folder applies the model folder's eval transform:
/// its loss is the cross-entropy of the reference library's probabilities.
#[test]
fn eval_uses_the_folder_preprocessing() {
    let data = std::env::temp_dir().join(format!("vit-families-eval-{}", std::process::id()));
    for (class, image) in [("a", "wide.png"), ("b", "tall.png")] {
        let dir = data.join("val").join(class);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::copy(fixtures().join("images").join(image), dir.join(image)).expect("copy");
    }
    // hf_deit and hf_dinov2: transformers' resize + center crop in the streamed loader.
    for (folder, classes) in [
        ("timm_vit", 5),
        ("hf_vit", 4),
        ("hf_deit", 5),
        ("hf_dinov2", 5),
    ] {
        let want = expected(folder);
        let (_, p) = &want.tensors["probs"];
        let want_loss = -((p[0] as f64).ln() + (p[classes + 1] as f64).ln()) / 2.0;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
            .arg("eval")
            .arg("--checkpoint")
            .arg(fixtures().join(folder))
            .args(["--dataset", "folder", "--json", "--data-dir"])
            .arg(&data)
            .output()
            .expect("run vit-wgpu");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{folder}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = stdout
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no JSON in {stdout}"));
        let loss = v["loss"].as_f64().expect("loss");
        assert!(
            (loss - want_loss).abs() < 1e-4 * want_loss.max(1.0),
            "{folder}: eval loss {loss} vs the reference's {want_loss}"
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// `train --init FOLDER` fine-tunes a folder's body with a new head for the data's classes,
/// normalising with the folder's mean and std (recorded in the run's checkpoint).
#[test]
fn train_init_from_a_transformers_folder() {
    let root = std::env::temp_dir().join(format!("vit-families-train-{}", std::process::id()));
    let data = root.join("data");
    for split in ["train", "val"] {
        for (class, image) in [("a", "wide.png"), ("b", "tall.png")] {
            let dir = data.join(split).join(class);
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::copy(fixtures().join("images").join(image), dir.join(image)).expect("copy");
        }
    }
    let run = root.join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .arg("train")
        .arg("--init")
        .arg(fixtures().join("hf_vit"))
        .args([
            "--dataset",
            "folder",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--quiet",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&run)
        .output()
        .expect("run vit-wgpu");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("new Linear head with 2 classes"),
        "{stderr}"
    );
    let file = TensorFile::read(&run.join("last.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.metadata["norm_mean"], "0.485,0.456,0.406");
    assert_eq!(file.metadata["classes"], "2");
    let _ = std::fs::remove_dir_all(&root);
}
