//! The page end to end in headless Chromium (scripts/web_page.mjs): a person's clicks (pick
//! a checkpoint, pick an image) give a screenshot that is not blank and whose result card has
//! content; the top-1 label the page shows is `vit-wgpu infer`'s; the attention rollout the
//! page draws is the one computed here from the f64 reference model's q and k. Needs node,
//! Chromium, `npm ci --prefix web` and scripts/build_web.sh. Run by .ci/web:
//!     cargo test --release --features web-tests --test web_page
#![cfg(feature = "web-tests")]

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;
use web::{check_prerequisites, fresh_dir, repo, run};

mod web;
use vit_wgpu::model::checkpoint;
use vit_wgpu::model::{reference, Config, HostParams, Preset};

/// The f32 rule for whole vectors: ||ours - ref|| / ||ref||.
const TOLERANCE: f64 = 1e-4;

/// Weights with attention far from uniform (large qkv weights) and logits far from flat.
fn params(cfg: &Config, seed: u64) -> HostParams {
    let mut p = HostParams::init(cfg, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 1);
    for (spec, v) in p.specs.iter().zip(p.values.iter_mut()) {
        let qkv = spec.name.contains("qkv.weight");
        for x in v.iter_mut() {
            *x = if qkv {
                rng.random_range(-0.4f32..0.4)
            } else {
                *x + rng.random_range(-0.2f32..0.2)
            };
        }
    }
    p
}

/// A 28x28 grayscale picture: a bright disc off centre on a dark, noisy background.
fn write_image(path: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let img = image::GrayImage::from_fn(28, 28, |x, y| {
        let (dx, dy) = (x as f32 - 18.0, y as f32 - 10.0);
        let base = if dx * dx + dy * dy < 40.0 { 220 } else { 30 };
        image::Luma([base + rng.random_range(0..30u8)])
    });
    img.save(path).expect("png");
}

/// Softmax(q k^T / sqrt(d)) of every head in f64, [A, N, N], for image 0.
fn probabilities(qkv: &[f64], tokens: usize, heads: usize, dim: usize) -> Vec<Vec<Vec<f64>>> {
    let d = dim / heads;
    let scale = 1.0 / (d as f64).sqrt();
    (0..heads)
        .map(|a| {
            (0..tokens)
                .map(|i| {
                    let q = &qkv[i * 3 * dim + a * d..][..d];
                    let s: Vec<f64> = (0..tokens)
                        .map(|j| {
                            let k = &qkv[j * 3 * dim + dim + a * d..][..d];
                            scale * q.iter().zip(k).map(|(x, y)| x * y).sum::<f64>()
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    e.iter().map(|v| v / z).collect()
                })
                .collect()
        })
        .collect()
}

/// The class token's row of Â_L ... Â_1 (Â = rows of mean_a P + I renormalised) over the
/// patches, as a row vector pushed through the layers from the last one down.
fn rollout(layers: &[Vec<Vec<Vec<f64>>>], tokens: usize) -> Vec<f64> {
    let mut v = vec![0.0f64; tokens];
    v[0] = 1.0;
    for heads in layers.iter().rev() {
        let a_hat: Vec<Vec<f64>> = (0..tokens)
            .map(|i| {
                let row: Vec<f64> = (0..tokens)
                    .map(|j| {
                        let mean = heads.iter().map(|p| p[i][j]).sum::<f64>() / heads.len() as f64;
                        mean + f64::from(u8::from(i == j))
                    })
                    .collect();
                let sum: f64 = row.iter().sum();
                row.iter().map(|x| x / sum).collect()
            })
            .collect();
        v = (0..tokens)
            .map(|j| (0..tokens).map(|i| v[i] * a_hat[i][j]).sum())
            .collect();
    }
    v[1..].to_vec()
}

/// (mean, variance) of the RGB values in the rectangle.
fn stats(img: &image::RgbaImage, x0: u32, y0: u32, w: u32, h: u32) -> (f64, f64) {
    let mut values = Vec::new();
    for y in y0..(y0 + h).min(img.height()) {
        for x in x0..(x0 + w).min(img.width()) {
            values.extend(img.get_pixel(x, y).0[..3].iter().map(|&v| v as f64));
        }
    }
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

#[test]
fn the_page_shows_the_cli_s_label_and_the_reference_rollout() {
    check_prerequisites();
    let dir = fresh_dir("page");
    let cfg = Preset::Micro.config();
    let p = params(&cfg, 21);
    let names: Vec<String> = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ckpt = dir.join("micro.safetensors");
    let extra = [("class_names", serde_json::to_string(&names).expect("json"))];
    checkpoint::save_model(&ckpt, &cfg, &p, &extra).expect("save");
    let image = dir.join("disc.png");
    write_image(&image);
    let shot = dir.join("page.png");

    let mut page = Command::new("node");
    page.arg(repo().join("scripts/web_page.mjs")).args([
        "--checkpoint".as_ref(),
        ckpt.as_os_str(),
        "--image".as_ref(),
        image.as_os_str(),
        "--screenshot".as_ref(),
        shot.as_os_str(),
        "--json".as_ref(),
    ]);
    let out = run("web_page.mjs", page);
    let shown: serde_json::Value = serde_json::from_str(out.trim()).expect("web_page.mjs JSON");

    // What the CLI says for the same checkpoint and image.
    let mut native = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"));
    native.arg("infer").args([
        "--checkpoint".as_ref(),
        ckpt.as_os_str(),
        image.as_os_str(),
        "--json".as_ref(),
        "--top-k".as_ref(),
        "5".as_ref(),
    ]);
    let cli = run("vit-wgpu infer", native);
    let first: serde_json::Value =
        serde_json::from_str(cli.lines().next().expect("a prediction line")).expect("JSON");
    let cli_labels: Vec<&str> = first["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|t| t["class"].as_str().expect("class"))
        .collect();
    assert_eq!(shown["top1"], cli_labels[0], "the page's top-1 label");
    let page_labels: Vec<&str> = shown["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|v| v.as_str().expect("label"))
        .collect();
    assert_eq!(page_labels, cli_labels, "the page's top-5 labels");

    // The screenshot: a page with content, and the result card is not empty.
    let png = image::open(&shot)
        .expect("the screenshot decodes")
        .to_rgba8();
    let (_, var) = stats(&png, 0, 0, png.width(), png.height());
    assert!(
        var > 100.0,
        "the screenshot is nearly blank (variance {var})"
    );
    let b = &shown["card_box"];
    let px = |k: &str| b[k].as_f64().expect("card box") as u32;
    let (w, h) = (px("width"), px("height"));
    assert!(w > 100 && h > 100, "the result card is {w}x{h} px");
    let (mean, var) = stats(&png, px("x"), px("y"), w, h);
    assert!(
        var > 300.0,
        "the result card has no content: mean {mean:.0}, variance {var:.0}"
    );

    // The rollout the page drew against the f64 reference model's attention.
    let pixels =
        vit_wgpu::data::folder::load_image(&image, cfg.image_h, cfg.image_w, 1).expect("image");
    let input: Vec<f32> = pixels
        .iter()
        .map(|&v| (v as f32 / 255.0 - 0.5) / 0.5)
        .collect();
    let qkv = reference::layer_qkv(&cfg, &reference::widen(&p), &p, &input, 1);
    let tokens = cfg.tokens();
    let layers: Vec<_> = qkv
        .iter()
        .map(|q| probabilities(q, tokens, cfg.heads, cfg.dim))
        .collect();
    let expected = rollout(&layers, tokens);
    let r = &shown["rollout"];
    let (gh, gw) = cfg.grid();
    assert_eq!(
        (r["grid_h"].as_u64(), r["grid_w"].as_u64()),
        (Some(gh as u64), Some(gw as u64))
    );
    let ours: Vec<f64> = r["rollout"]
        .as_array()
        .expect("rollout")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(ours.len(), expected.len());
    let diff: f64 = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = expected.iter().map(|v| v * v).sum::<f64>().sqrt();
    let spread = expected.iter().cloned().fold(0.0, f64::max)
        / expected.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        spread > 1.5,
        "the reference rollout is nearly flat (max/min {spread})"
    );
    assert!(
        diff / norm < TOLERANCE,
        "rollout: relative error {:e} > {TOLERANCE:e}\npage {ours:?}\nreference {expected:?}",
        diff / norm
    );
    eprintln!(
        "top-1 {} ({}); rollout relative error {:e}; {}",
        shown["top1"],
        shown["top1_percent"],
        diff / norm,
        shown["cost"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
