//! Training in the browser (scripts/web_train.mjs: the page's TrainingSession on Chromium's
//! WebGPU) takes the native trainer's steps: with the same seed and flags on the same
//! Fashion-MNIST files, every step's loss is `vit-wgpu train --log-steps`'s within 1e-4, and
//! the checkpoint the page exports loads in `vit-wgpu eval` (which scores it as the page
//! did) and `infer`. A truncated file fails with the CLI's message. Needs node, Chromium,
//! `npm ci --prefix web` and scripts/build_web.sh; fails saying which is missing. Run by
//! .ci/web:
//!     cargo test --release --features web-tests --test web_train
#![cfg(feature = "web-tests")]

use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use web::{check_prerequisites, error_line, fresh_dir, json_lines, repo, run};

mod web;
use vit_wgpu::data::idx::{self, IdxKind};
use vit_wgpu::model::checkpoint;

const TOLERANCE: f64 = 1e-4;
/// Small enough for SwiftShader on two cores: 8 batches of 16 per epoch.
const TRAIN_IMAGES: usize = 128;
const TEST_IMAGES: usize = 48;

/// Writes one idx file, gzipped: magic, dims, then the bytes.
fn write_idx(path: &Path, magic: u32, dims: &[usize], data: &[u8]) {
    let mut raw = magic.to_be_bytes().to_vec();
    for &d in dims {
        raw.extend_from_slice(&(d as u32).to_be_bytes());
    }
    raw.extend_from_slice(data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    std::fs::write(path, gz.finish().expect("gzip")).expect("write idx");
}

/// The first images of each split of Debian's Fashion-MNIST when installed, else seeded
/// images whose class sets a brighter band (learnable, so the loss moves), as the four
/// gzipped idx files in `dir`.
fn write_dataset(dir: &Path) {
    let debian = Path::new(idx::FASHION_MNIST_DEBIAN_DIR);
    for (train, n, prefix) in [(true, TRAIN_IMAGES, "train"), (false, TEST_IMAGES, "t10k")] {
        let (images, labels) = match idx::load(debian, train, IdxKind::FashionMnist) {
            Ok(ds) => (ds.images[..n * 784].to_vec(), ds.labels[..n].to_vec()),
            Err(_) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(train as u64);
                let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
                let mut images = vec![0u8; n * 784];
                for (img, &label) in images.chunks_mut(784).zip(&labels) {
                    for (p, px) in img.iter_mut().enumerate() {
                        let band = (p / 28) / 3 == label as usize;
                        *px = rng.random_range(0..96) + if band { 150 } else { 0 };
                    }
                }
                (images, labels)
            }
        };
        let labels: Vec<u8> = labels.iter().map(|&l| l as u8).collect();
        let images_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
        write_idx(&images_path, 0x803, &[n, 28, 28], &images);
        let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
        write_idx(&labels_path, 0x801, &[n], &labels);
    }
}

/// (step, loss) of every `{"step", "loss"}` line.
fn step_losses(program: &str, text: &str) -> Vec<(u64, f64)> {
    json_lines(program, text)
        .iter()
        .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_browser_trains_as_the_cli_does_and_its_checkpoint_loads_natively() {
    check_prerequisites();
    let dir = fresh_dir("train");
    write_dataset(&dir);
    let data_dir = dir.display().to_string();
    // Ten steps over two epochs (the second reshuffles), augmented, at a rate that moves
    // the weights: warmup 2, then cosine over the run's 16 steps.
    let steps = 10;
    let flags = strings(&[
        "--preset",
        "micro",
        "--seed",
        "11",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--lr",
        "0.002",
        "--warmup",
        "2",
    ]);

    let log = dir.join("native-steps.jsonl");
    let mut native = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
    native
        .args([
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            &data_dir,
        ])
        .args(&flags)
        .args(["--max-steps", &steps.to_string(), "--quiet", "--out"])
        .arg(dir.join("run"))
        .arg("--log-steps")
        .arg(&log);
    run("vit-wgpu train", native);
    let expected = step_losses("--log-steps", &std::fs::read_to_string(&log).expect("log"));

    let exported = dir.join("web.safetensors");
    let mut web = Command::new("node");
    web.arg(repo().join("scripts/web_train.mjs"))
        .args([
            "--data-dir",
            &data_dir,
            "--json",
            "--steps",
            &steps.to_string(),
        ])
        .args(&flags)
        .arg("--checkpoint-out")
        .arg(&exported);
    let web_out = run("web_train.mjs", web);
    let found = step_losses("web_train.mjs", &web_out);

    let wanted: Vec<u64> = (1..=steps).collect();
    let numbers = |v: &[(u64, f64)]| v.iter().map(|s| s.0).collect::<Vec<_>>();
    assert_eq!(numbers(&expected), wanted, "native steps logged");
    assert_eq!(numbers(&found), wanted, "browser steps reported");
    let mut worst = 0f64;
    for ((step, b), (_, n)) in found.iter().zip(&expected) {
        let diff = (b - n).abs();
        assert!(
            diff <= TOLERANCE,
            "step {step}: browser loss {b}, native {n}, difference {diff:e} > {TOLERANCE:e}"
        );
        worst = worst.max(diff);
    }
    let (first, last) = (expected[0].1, expected[steps as usize - 1].1);
    eprintln!("losses {first:.4} -> {last:.4}; largest browser-native difference {worst:e}");

    // The export is our checkpoint of the native run's model, with the data's metadata.
    let (cfg, _, file) = checkpoint::load_model(&exported).expect("the export loads");
    let (native_cfg, _, _) =
        checkpoint::load_model(&dir.join("run/last.safetensors")).expect("native checkpoint");
    assert_eq!(cfg, native_cfg, "the exported model's config");
    assert_eq!(file.metadata.get("step"), Some(&steps.to_string()));

    // `vit-wgpu eval` scores the export on the test split as the page did.
    let web_eval = json_lines("web_train.mjs", &web_out)
        .into_iter()
        .find_map(|v| v.get("eval").cloned())
        .expect("web_train.mjs printed no eval line");
    let mut eval = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
    eval.args([
        "eval",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        &data_dir,
    ])
    .arg("--checkpoint")
    .arg(&exported)
    .arg("--json");
    let native_eval: serde_json::Value =
        serde_json::from_str(run("vit-wgpu eval", eval).trim()).expect("eval --json");
    assert_eq!(
        native_eval["images"], web_eval["images"],
        "images evaluated"
    );
    assert_eq!(
        native_eval["images"].as_u64(),
        Some(TEST_IMAGES as u64),
        "images evaluated"
    );
    assert_eq!(
        native_eval["accuracy"], web_eval["accuracy"],
        "test accuracy: native eval of the export against the page's"
    );
    let (nl, wl) = (
        native_eval["loss"].as_f64().expect("loss"),
        web_eval["loss"].as_f64().expect("loss"),
    );
    assert!(
        (nl - wl).abs() <= TOLERANCE,
        "test loss: native eval {nl}, page {wl}"
    );

    // `vit-wgpu infer` classifies a test image with the export, under Fashion-MNIST's names.
    let test = idx::load(&dir, false, IdxKind::FashionMnist).expect("test split");
    let png = dir.join("test-0.png");
    image::GrayImage::from_raw(28, 28, test.image(0).to_vec())
        .expect("28x28")
        .save(&png)
        .expect("png");
    let mut infer = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
    infer
        .args(["infer", "--json", "--checkpoint"])
        .arg(&exported)
        .arg(&png);
    let out = run("vit-wgpu infer", infer);
    let top = json_lines("vit-wgpu infer", &out)
        .into_iter()
        .find_map(|v| v["top"][0]["class"].as_str().map(str::to_string))
        .expect("infer printed a prediction");
    assert!(
        IdxKind::FashionMnist.class_names().contains(&top),
        "infer's top class '{top}' is not a Fashion-MNIST class name"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_truncated_idx_file_fails_in_the_browser_with_the_cli_s_message() {
    check_prerequisites();
    let dir = fresh_dir("train-truncated");
    write_dataset(&dir);
    // The training images cut short by 100 bytes, still validly gzipped.
    let path = dir.join("train-images-idx3-ubyte.gz");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&std::fs::read(&path).expect("read")[..]),
        &mut raw,
    )
    .expect("gunzip");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw[..raw.len() - 100]).expect("gzip");
    std::fs::write(&path, gz.finish().expect("gzip")).expect("write");

    let data_dir = dir.display().to_string();
    let mut native = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
    native
        .args(["train", "--dataset", "fashion-mnist", "--preset", "micro"])
        .args(["--data-dir", &data_dir, "--quiet", "--out"])
        .arg(dir.join("run"));
    let mut web = Command::new("node");
    web.arg(repo().join("scripts/web_train.mjs"))
        .args(["--data-dir", &data_dir, "--steps", "1"]);
    let (n, w) = (
        error_line("vit-wgpu train", native),
        error_line("web_train.mjs", web),
    );
    let expected_bytes = 16 + TRAIN_IMAGES * 784;
    let wanted = format!(
        "{} is truncated or corrupt (images with dims [{TRAIN_IMAGES}, 28, 28]): expected \
         {expected_bytes} bytes, found {}",
        path.display(),
        expected_bytes - 100
    );
    assert!(n.contains(&wanted), "native: expected '{wanted}' in '{n}'");
    assert_eq!(w, n, "the browser's message differs from the CLI's");
    let _ = std::fs::remove_dir_all(&dir);
}
