//! The page's classify path in headless Chromium (scripts/web_infer.mjs: the wasm package on
//! Chromium's WebGPU) prints what `vit-wgpu infer --json` prints: the same images, classes
//! and order, probabilities within 1e-5. Needs node, Chromium, `npm ci --prefix web` and
//! scripts/build_web.sh; fails saying which is missing. Run by .ci/web:
//!     cargo test --release --features web-tests --test web_infer
#![cfg(feature = "web-tests")]

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;
use web::{check_prerequisites, error_line, fresh_dir, json_lines, repo, run};

mod web;
use vit_wgpu::model::checkpoint::{self, TensorFile};
use vit_wgpu::model::{Act, Config, Head, HostParams};

const TOLERANCE: f64 = 1e-5;

/// Weights with logits far from uniform: timm's init plus seeded noise on every tensor.
fn params(cfg: &Config, seed: u64) -> HostParams {
    let mut p = HostParams::init(cfg, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1);
    for v in p.values.iter_mut().flatten() {
        *v += rng.random_range(-0.2f32..0.2);
    }
    p
}

/// Random-pixel images of odd sizes: RGB, grayscale, RGBA PNGs and a JPEG.
fn write_images(dir: &Path) -> Vec<PathBuf> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut bytes = |n: usize| (0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>();
    let rgb = image::RgbImage::from_raw(40, 30, bytes(40 * 30 * 3)).expect("rgb");
    let gray = image::GrayImage::from_raw(28, 28, bytes(28 * 28)).expect("gray");
    let rgba = image::RgbaImage::from_raw(17, 23, bytes(17 * 23 * 4)).expect("rgba");
    let photo = image::RgbImage::from_raw(50, 36, bytes(50 * 36 * 3)).expect("jpeg");
    let paths = ["rgb.png", "gray.png", "rgba.png", "photo.jpg"].map(|n| dir.join(n));
    rgb.save(&paths[0]).expect("png");
    gray.save(&paths[1]).expect("png");
    rgba.save(&paths[2]).expect("png");
    photo.save(&paths[3]).expect("jpeg");
    paths.to_vec()
}

/// The prediction lines of an infer run (the summary line dropped).
fn predictions(program: &str, cmd: Command) -> Vec<serde_json::Value> {
    json_lines(program, &run(program, cmd))
        .into_iter()
        .filter(|v| v.get("summary").is_none())
        .collect()
}

/// Runs both with `args` and compares line by line; returns the largest difference.
fn compare(args: &[String]) -> f64 {
    let mut native = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
    native.arg("infer").args(args);
    let mut web = Command::new("node");
    web.arg(repo().join("scripts/web_infer.mjs")).args(args);
    let expected = predictions("vit-wgpu infer", native);
    let found = predictions("web_infer.mjs", web);
    assert_eq!(found.len(), expected.len(), "number of predictions");
    let mut worst = 0f64;
    for (f, e) in found.iter().zip(&expected) {
        assert_eq!(f["image"], e["image"], "image order");
        let (ft, et) = (
            f["top"].as_array().expect("top"),
            e["top"].as_array().expect("top"),
        );
        assert_eq!(ft.len(), et.len(), "{}: top-k length", e["image"]);
        for (k, (a, b)) in ft.iter().zip(et).enumerate() {
            assert_eq!(a["class"], b["class"], "{}: class at rank {k}", e["image"]);
            let (pa, pb) = (
                a["probability"].as_f64().expect("probability"),
                b["probability"].as_f64().expect("probability"),
            );
            let diff = (pa - pb).abs();
            assert!(
                diff <= TOLERANCE,
                "{}: rank {k} ({}): browser {pa}, native {pb}, difference {diff:e} > {TOLERANCE:e}",
                e["image"],
                b["class"]
            );
            worst = worst.max(diff);
        }
    }
    worst
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_browser_classifies_as_the_cli_does() {
    check_prerequisites();
    let dir = fresh_dir("infer");
    let images = write_images(&dir);
    let image_args: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();

    // Ours: micro on grayscale, class names, a recorded eval transform and normalisation.
    let micro = vit_wgpu::model::Preset::Micro.config();
    let ours = dir.join("micro.safetensors");
    let names: Vec<String> = (0..micro.classes).map(|i| format!("class-{i}")).collect();
    let extra = [
        ("class_names", serde_json::to_string(&names).expect("json")),
        ("norm_mean", "0.3".to_string()),
        ("norm_std", "0.4".to_string()),
        ("crop_pct", "0.875".to_string()),
        ("interpolation", "bicubic".to_string()),
    ];
    checkpoint::save_model(&ours, &micro, &params(&micro, 11), &extra).expect("save");
    let mut args = strings(&["--checkpoint", &ours.display().to_string(), "--top-k", "5"]);
    args.extend(["--json".into(), "--batch-size".into(), "3".into()]);
    args.extend(image_args.clone());
    let worst_ours = compare(&args);

    // A timm state_dict (no metadata): RGB, 2 heads given as a flag (default would be 1).
    let timm = Config {
        image_h: 32,
        image_w: 32,
        channels: 3,
        patch: 8,
        dim: 64,
        depth: 2,
        heads: 2,
        mlp_hidden: 96,
        act: Act::Gelu,
        head: Head::Linear,
        dropout: 0.0,
        ln_eps: 1e-6,
        classes: 7,
        options: Default::default(),
    };
    let mut file: TensorFile = checkpoint::model_file(&timm, &params(&timm, 12), &[]);
    file.metadata.clear();
    let timm_path = dir.join("timm.safetensors");
    file.write(&timm_path).expect("write");
    let mut args = strings(&["--checkpoint", &timm_path.display().to_string(), "--json"]);
    args.extend(strings(&["--heads", "2", "--top-k", "7"]));
    args.extend(image_args);
    let worst_timm = compare(&args);
    eprintln!("largest probability difference: ours {worst_ours:e}, timm {worst_timm:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_browser_fails_with_the_cli_s_messages() {
    check_prerequisites();
    let dir = fresh_dir("errors");
    let images = write_images(&dir);
    let good = images[0].display().to_string();
    let not_checkpoint = dir.join("notes.safetensors");
    std::fs::write(&not_checkpoint, b"not a checkpoint").expect("write");
    let not_image = dir.join("broken.png");
    std::fs::write(&not_image, b"not an image").expect("write");
    // Our metadata says width 32, the tensors are micro's 64: another model's shape.
    let micro = vit_wgpu::model::Preset::Micro.config();
    let mut file = checkpoint::model_file(&micro, &params(&micro, 3), &[]);
    file.metadata.insert("dim".into(), "32".into());
    let wrong_shape = dir.join("wrong_shape.safetensors");
    file.write(&wrong_shape).expect("write");
    let ours = dir.join("micro.safetensors");
    checkpoint::save_model(&ours, &micro, &params(&micro, 4), &[]).expect("save");

    let cases = [
        (
            not_checkpoint.display().to_string(),
            good.clone(),
            "not a readable safetensors file",
        ),
        (wrong_shape.display().to_string(), good.clone(), "has shape"),
        (
            ours.display().to_string(),
            not_image.display().to_string(),
            "cannot decode image",
        ),
    ];
    for (checkpoint, image, expect) in cases {
        let args = ["--checkpoint", &checkpoint, &image, "--json"];
        let mut native = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
        native.arg("infer").args(args);
        let mut web = Command::new("node");
        web.arg(repo().join("scripts/web_infer.mjs")).args(args);
        let (n, w) = (
            error_line("vit-wgpu infer", native),
            error_line("web_infer.mjs", web),
        );
        assert!(n.contains(expect), "native: expected '{expect}' in '{n}'");
        assert_eq!(w, n, "the browser's message differs from the CLI's");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
