//! Attention maps and training curves: the device's attention probabilities against the CPU
//! reference, rollout against a plain f64 implementation, the PNG files (library and
//! `infer --attention`), and curves.png after a training run.

mod common;
use common::*;
use pollster::block_on;
use rand::Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vit_wgpu::model::config::{Act, Config, Head};
use vit_wgpu::model::{checkpoint, reference, HostParams, Kernels, Mode, Vit};
use vit_wgpu::train::{self, EpochMetrics, TrainOptions};
use vit_wgpu::viz::{self, curves, render, MapShape};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vit-wgpu-viz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// 8x12 RGB images, patch 4: a 2x3 grid, 7 tokens; 2 layers of 2 heads of dim 8.
fn small_config() -> Config {
    Config {
        image_h: 8,
        image_w: 12,
        channels: 3,
        patch: 4,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp_hidden: 24,
        act: Act::Gelu,
        head: Head::Linear,
        dropout: 0.0,
        ln_eps: 1e-5,
        classes: 3,
        options: Default::default(),
    }
}

/// Parameters away from their init, the qkv weights large so the attention is far from
/// uniform.
fn params(cfg: &Config, r: &mut impl Rng) -> HostParams {
    let mut p = HostParams::init(cfg, r.random());
    for (spec, v) in p.specs.iter().zip(p.values.iter_mut()) {
        let qkv = spec.name.contains("qkv.weight");
        for x in v.iter_mut() {
            *x = if qkv {
                r.random_range(-0.6..0.6)
            } else {
                *x + r.random_range(-0.1..0.1)
            };
        }
    }
    p
}

/// The CLS row of Â_L ... Â_1 computed as a row vector times each Â from the last layer
/// down, in f64, with Â built from explicit head means and row sums.
fn rollout_f64(layers: &[Vec<f32>], s: MapShape, image: usize) -> Vec<f64> {
    let n = s.tokens;
    let a_hat = |layer: &[f32]| -> Vec<Vec<f64>> {
        let mut m = vec![vec![0.0f64; n]; n];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                for h in 0..s.heads {
                    *v += layer[((image * s.heads + h) * n + i) * n + j] as f64;
                }
                *v /= s.heads as f64;
                if i == j {
                    *v += 1.0;
                }
            }
            let sum: f64 = row.iter().sum();
            for v in row.iter_mut() {
                *v /= sum;
            }
        }
        m
    };
    let mut v = vec![0.0f64; n];
    v[0] = 1.0;
    for layer in layers.iter().rev() {
        let a = a_hat(layer);
        v = (0..n)
            .map(|j| (0..n).map(|i| v[i] * a[i][j]).sum())
            .collect();
    }
    v[1..].to_vec()
}

struct Run {
    cfg: Config,
    batch: usize,
    maps: Vec<Vec<f32>>,
    pixels: Vec<Vec<u8>>,
    logits: Vec<f32>,
}

/// A forward on the device and its attention maps.
fn gpu_maps(r: &mut impl Rng) -> (Run, Vec<Vec<f32>>, HostParams, Vec<f32>) {
    let gpu = gpu();
    let kernels = Kernels::new(gpu);
    let cfg = small_config();
    let p = params(&cfg, r);
    let batch = 3;
    let per = cfg.channels * cfg.image_h * cfg.image_w;
    let pixels: Vec<Vec<u8>> = (0..batch)
        .map(|_| (0..per).map(|_| r.random()).collect())
        .collect();
    let images: Vec<f32> = pixels
        .iter()
        .flatten()
        .map(|&v| (v as f32 / 255.0 - 0.5) / 0.5)
        .collect();
    let model = Vit::new(gpu, &kernels, &cfg, &p, batch, Mode::Infer, 0).expect("model");
    model.write_batch(gpu, &images, &vec![0; batch]);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    model.record_forward(&mut encoder);
    gpu.queue.submit([encoder.finish()]);
    let maps = block_on(model.attention_maps(gpu, &kernels)).expect("attention maps");
    let logits: Vec<f32> = block_on(gpu.read(&model.logits)).expect("logits");
    let qkv = block_on(model.read_layer_qkv(gpu)).expect("qkv");
    // A second call reuses the commands built by the first and gives the same maps.
    let again = block_on(model.attention_maps(gpu, &kernels)).expect("attention maps");
    assert_eq!(maps, again);
    (
        Run {
            cfg,
            batch,
            maps,
            pixels,
            logits,
        },
        qkv,
        p,
        images,
    )
}

#[test]
fn gpu_attention_maps_match_cpu_and_rollout_matches_f64() {
    let mut r = rng();
    let (run, qkv, p, images) = gpu_maps(&mut r);
    let cfg = &run.cfg;
    let s = MapShape::of(cfg, run.batch);
    assert_eq!(run.maps.len(), cfg.depth);

    // The maps belong to this forward: the device's logits agree with the f64 CPU model.
    let logits = &run.logits;
    let reference = reference::forward_backward(cfg, &reference::widen(&p), &p, &images, &[0; 3]);
    let ref_logits: Vec<f32> = reference.logits.iter().map(|&v| v as f32).collect();
    assert_close("logits", &logits[..ref_logits.len()], &ref_logits, 1e-4);

    for (l, (map, q)) in run.maps.iter().zip(&qkv).enumerate() {
        assert_eq!(map.len(), s.layer_len());
        let mut expected = vec![0.0f32; s.layer_len()];
        vit_wgpu::reference::attention::probabilities(
            &mut expected,
            &q[..run.batch * s.tokens * 3 * cfg.dim],
            run.batch,
            s.tokens,
            cfg.heads,
            cfg.head_dim(),
        );
        assert_close(&format!("layer {l} probabilities"), map, &expected, 1e-4);
        for row in map.chunks(s.tokens) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-4, "a row sums to {sum}");
        }
    }
    // Not uniform (else the rollout check below would be trivial).
    let spread = run.maps[1].iter().cloned().fold(0.0f32, f32::max);
    assert!(
        spread > 2.0 / s.tokens as f32,
        "attention is nearly uniform"
    );

    for image in 0..run.batch {
        let ours = viz::rollout(&run.maps, s, image).expect("rollout");
        let expected = rollout_f64(&run.maps, s, image);
        assert_eq!(ours.len(), s.grid_h * s.grid_w);
        for (a, b) in ours.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-12, "rollout {a} vs f64 {b}");
        }
        let heads = viz::cls_attention_per_head(&run.maps[1], s, image).expect("heads");
        assert_eq!(heads.len(), cfg.heads);
        for (h, row) in heads.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let at = ((image * cfg.heads + h) * s.tokens) * s.tokens + 1 + j;
                assert_eq!(v, run.maps[1][at] as f64);
            }
        }
    }
}

#[test]
fn attention_pngs_decode_with_the_expected_size() {
    let mut r = rng();
    let (run, _, _, _) = gpu_maps(&mut r);
    let cfg = &run.cfg;
    let dir = temp_dir("png");
    let paths: Vec<PathBuf> = (0..run.batch)
        .map(|i| PathBuf::from(format!("some/where/img{i}.png")))
        .collect();
    let written = render::write_batch(&dir, cfg, run.batch, &run.maps, &paths, &run.pixels)
        .expect("write pngs");
    assert_eq!(written.len(), 2 * run.batch);
    let (aw, ah) = render::attention_png_size(cfg.image_h, cfg.image_w);
    let (hw, hh) = render::heads_png_size(cfg.heads, 2, 3);
    let scale = render::display_scale(cfg.image_h, cfg.image_w) as u32;
    assert!(ah >= 224);
    for i in 0..run.batch {
        let att = image::open(dir.join(format!("img{i}_attention.png")))
            .expect("decode attention png")
            .to_rgb8();
        assert_eq!(att.dimensions(), (aw, ah));
        // The left panel is the input, upscaled by nearest neighbour.
        let plane = cfg.image_h * cfg.image_w;
        for (y, x) in [(0, 0), (3, 7), (7, 11)] {
            let px = att.get_pixel(x as u32 * scale + 1, y as u32 * scale + 1);
            for c in 0..3 {
                assert_eq!(px.0[c], run.pixels[i][c * plane + y * cfg.image_w + x]);
            }
        }
        let heads = image::open(dir.join(format!("img{i}_heads.png")))
            .expect("decode heads png")
            .to_rgb8();
        assert_eq!(heads.dimensions(), (hw, hh));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `infer --attention DIR` on a checkpoint and a PNG file writes both pictures.
#[test]
fn infer_attention_flag_writes_pngs() {
    let mut r = rng();
    let cfg = small_config();
    let p = params(&cfg, &mut r);
    let dir = temp_dir("cli");
    let ckpt = dir.join("model.safetensors");
    checkpoint::save_model(&ckpt, &cfg, &p, &[]).expect("save");
    let input = dir.join("shirt.png");
    image::RgbImage::from_fn(12, 8, |x, y| {
        image::Rgb([(x * 20) as u8, (y * 30) as u8, 99])
    })
    .save(&input)
    .expect("input png");
    let out = dir.join("maps");
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .arg("infer")
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("--attention")
        .arg(&out)
        .arg(&input)
        .output()
        .expect("run vit-wgpu");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "infer failed: {stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for name in ["shirt_attention.png", "shirt_heads.png"] {
        let path = out.join(name);
        assert!(stdout.contains(&path.display().to_string()), "{stdout}");
        image::open(&path).expect("decode");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn metrics(epoch: u64, loss: f64) -> EpochMetrics {
    EpochMetrics {
        epoch,
        step: epoch * 10,
        lr: 1e-3,
        train_loss: loss,
        train_accuracy: 1.0 - loss / 3.0,
        val_loss: loss * 1.1,
        val_accuracy: 0.9 - loss / 3.0,
        images_per_second: 100.0,
        seconds: 1.0,
    }
}

fn assert_curves_png(path: &Path) {
    let img = image::open(path).expect("decode curves.png").to_rgb8();
    assert_eq!(img.dimensions(), (curves::WIDTH, curves::HEIGHT));
    // Something other than the white background was drawn.
    let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(ink > 5000, "only {ink} non-white pixels");
}

#[test]
fn write_curves_draws_one_and_many_epochs() {
    let dir = temp_dir("curves");
    let path = dir.join("curves.png");
    curves::write_curves(&path, &[metrics(1, 2.0)]).expect("one epoch");
    assert_curves_png(&path);
    let mut many: Vec<EpochMetrics> = (1..=12).map(|e| metrics(e, 2.0 / e as f64)).collect();
    many[0].train_loss = f64::NAN; // an epoch that recorded no step
    many.push(metrics(12, 0.1)); // a resumed epoch logged twice
    curves::write_curves(&path, &many).expect("many epochs");
    assert_curves_png(&path);
    assert!(!dir.join("curves.png.tmp").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_writes_curves_png_every_epoch() {
    let gpu = gpu();
    let kernels = Kernels::new(gpu);
    let cfg = Config {
        image_h: 8,
        image_w: 8,
        channels: 1,
        patch: 4,
        dim: 16,
        depth: 1,
        heads: 2,
        mlp_hidden: 32,
        act: Act::Gelu,
        head: Head::Linear,
        dropout: 0.0,
        ln_eps: 1e-6,
        classes: 3,
        options: Default::default(),
    };
    let out = temp_dir("train");
    let opts = TrainOptions {
        cfg,
        epochs: 2,
        batch_size: 8,
        lr: 3e-3,
        weight_decay: 0.0,
        warmup: Some(2),
        cosine: true,
        max_grad_norm: 1.0,
        seed: 3,
        out: out.clone(),
        resume: None,
        init: None,
        max_steps: None,
        augment: false,
        progress: false,
        freeze_body: false,
        betas: (0.9, 0.999),
        save_every: None,
        keep: 1,
    };
    // The CLI draws the curves from the training loop's epoch callback; so does this test.
    let mut draw = |dir: &Path, epochs: &[EpochMetrics]| {
        curves::update_curves(&dir.join("curves.png"), epochs)
    };
    let summary = block_on(train::train_with(
        gpu,
        &kernels,
        &opts,
        Arc::new(synthetic(48, 1)),
        Arc::new(synthetic(16, 2)),
        &mut draw,
    ))
    .expect("train");
    assert_eq!(summary.epochs.len(), 2);
    assert_curves_png(&out.join("curves.png"));
    // The curve's data is the run's metrics.jsonl.
    let logged = curves::previous_epochs(&out.join("metrics.jsonl"), true);
    assert_eq!(logged.len(), 2);
    assert_eq!(logged[1].val_accuracy, summary.epochs[1].val_accuracy);
    let _ = std::fs::remove_dir_all(&out);
}
