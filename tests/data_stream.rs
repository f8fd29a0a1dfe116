//! Streamed image folders: ImageFolder's order, batches that depend only on (seed, epoch,
//! position) whatever the number of workers, memory bounded by the queue, a clear error for
//! a corrupt file; a folder of 3,000 JPEGs in 310 classes trains, resumes bit for bit and
//! evaluates; a 1,000-class checkpoint round-trips and `infer DIR --json` gives JSON lines
//! whose numbers match the CPU reference model.

mod common;
use common::*;
use pollster::block_on;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vit_wgpu::data::stream::StreamOptions;
use vit_wgpu::data::transforms::{self, Interpolation};
use vit_wgpu::data::{folder, Augment, Dataset, Loader};
use vit_wgpu::model::checkpoint;
use vit_wgpu::model::config::{Act, Config, Head};
use vit_wgpu::model::{HostParams, Kernels};
use vit_wgpu::train::{self, TrainOptions};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vit-wgpu-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn options(workers: usize, queue_depth: usize) -> StreamOptions {
    StreamOptions {
        workers,
        queue_depth,
        ..Default::default()
    }
}

fn streamed(root: &Path, workers: usize, depth: usize) -> Dataset {
    folder::stream(root, 16, 16, 3, options(workers, depth)).expect("stream folder")
}

fn epoch(ds: &Arc<Dataset>, seed: u64, epoch: u64, skip: usize) -> Vec<vit_wgpu::data::Batch> {
    let mut loader = Loader::new(
        ds.clone(),
        8,
        true,
        Some(Augment::standard()),
        seed,
        epoch,
        true,
    )
    .start_batch(skip);
    let batches: Vec<_> = loader.by_ref().collect();
    loader.finish().expect("every file decodes");
    batches
}

#[test]
fn folder_lists_classes_and_files_in_sorted_order_like_image_folder() {
    let root = temp_dir("order");
    jpeg_folder(&root, 12, 3, 1);
    let ds = streamed(&root, 2, 4);
    assert_eq!(ds.len, 36);
    assert!(ds.images.is_empty(), "a streamed dataset holds no pixels");
    let names: Vec<String> = (0..12).map(|c| format!("c{c:03}")).collect();
    assert_eq!(ds.class_names, names);
    let stream = ds.stream.as_ref().expect("streamed");
    for i in 0..ds.len {
        let expected = root
            .join(format!("c{:03}", i / 3))
            .join(format!("{:02}.jpg", i % 3));
        assert_eq!(stream.path(i), expected);
        assert_eq!(ds.labels[i], (i / 3) as u32);
    }
    let sub = ds.subset(5);
    assert_eq!(
        (sub.len, sub.stream.as_ref().map(|s| s.len())),
        (5, Some(5))
    );
}

#[test]
fn batches_depend_only_on_seed_epoch_and_position_not_on_workers() {
    let root = temp_dir("determinism");
    jpeg_folder(&root, 12, 8, 2); // 96 images: 12 whole batches, none dropped
    let one = Arc::new(streamed(&root, 1, 1));
    let three = Arc::new(streamed(&root, 3, 5));
    let a = epoch(&one, 4, 0, 0);
    let b = epoch(&three, 4, 0, 0);
    assert_eq!(a.len(), 12);
    assert_eq!(a, b, "1 worker and 3 workers gave different batches");
    // A resumed epoch sees the same batches from where it stopped.
    assert_eq!(epoch(&three, 4, 0, 5), a[5..].to_vec());
    // Another epoch is another order and other crops; labels follow their images.
    let c = epoch(&three, 4, 1, 0);
    assert_ne!(a[0].images, c[0].images);
    let mut la: Vec<u32> = a.iter().flat_map(|b| b.labels.clone()).collect();
    let mut lc: Vec<u32> = c.iter().flat_map(|b| b.labels.clone()).collect();
    assert_ne!(la, lc, "the order must change with the epoch");
    la.sort();
    lc.sort();
    assert_eq!(la, lc);
    // Training crops stay in the normalised range of u8 pixels.
    assert!(a[0].images.iter().all(|&v| (-1.0..=1.0).contains(&v)));
}

#[test]
fn eval_batches_equal_the_transforms_applied_file_by_file() {
    let root = temp_dir("eval");
    jpeg_folder(&root, 3, 5, 3);
    let mut opts = options(2, 2);
    opts.interpolation = Interpolation::Bicubic;
    let mut ds = folder::stream(&root, 16, 16, 3, opts).expect("stream");
    ds.mean = vec![0.485, 0.456, 0.406];
    ds.std = vec![0.229, 0.224, 0.225];
    let ds = Arc::new(ds);
    let batches: Vec<_> = Loader::new(ds.clone(), 4, false, None, 0, 0, false).collect();
    assert_eq!(batches.iter().map(|b| b.len).sum::<usize>(), 15);
    let stream = ds.stream.as_ref().expect("streamed");
    for (i, (b, k)) in (0..15).map(|i| (i / 4, i % 4)).enumerate() {
        let img = image::open(stream.path(i)).expect("decode").to_rgb8();
        let px = transforms::Pixels {
            width: img.width() as usize,
            height: img.height() as usize,
            channels: 3,
            data: img.into_raw(),
        };
        let crop = transforms::eval_resize_crop(&px, 16, 16, 0.875, Interpolation::Bicubic);
        let mut expected = vec![0f32; 3 * 256];
        transforms::normalise_chw(&crop, false, &ds.mean, &ds.std, &mut expected);
        assert_eq!(
            &batches[b].images[k * 768..(k + 1) * 768],
            &expected[..],
            "image {i}"
        );
    }
}

#[test]
fn the_loader_never_holds_more_than_queue_depth_batches() {
    let root = temp_dir("bound");
    let n = jpeg_folder(&root, 40, 25, 4);
    let ds = Arc::new(streamed(&root, 2, 3));
    let mut loader = Loader::new(ds, 10, true, Some(Augment::standard()), 0, 0, true);
    let mut seen = 0;
    for b in loader.by_ref() {
        // A slow consumer: the workers run ahead until the queue is full, and no further.
        std::thread::sleep(std::time::Duration::from_millis(3));
        seen += b.len;
    }
    loader.finish().expect("decodes");
    assert_eq!(seen, n);
    eprintln!(
        "{} batches, peak held {} (queue depth {})",
        n / 10,
        loader.peak_batches_held(),
        loader.queue_depth()
    );
    assert_eq!(loader.queue_depth(), 3);
    assert!(
        loader.peak_batches_held() <= 3,
        "held {} batches at once",
        loader.peak_batches_held()
    );
    assert_eq!(
        loader.peak_batches_held(),
        3,
        "the workers never filled the queue"
    );
}

#[test]
fn a_corrupt_jpeg_ends_the_epoch_with_an_error_naming_the_file() {
    let root = temp_dir("corrupt");
    jpeg_folder(&root, 2, 6, 5);
    let bad = root.join("c001").join("03.jpg");
    std::fs::write(&bad, b"\xff\xd8 not really a jpeg").expect("write");
    let ds = Arc::new(streamed(&root, 2, 2));
    let mut loader = Loader::new(ds, 4, false, None, 0, 0, false);
    let got = loader.by_ref().count();
    assert!(
        got < 3,
        "the batch holding the bad file must not be delivered"
    );
    let err = loader.finish().expect_err("a decode error").to_string();
    assert!(err.contains("03.jpg") && err.contains("c001"), "{err}");
}

fn config(classes: usize) -> Config {
    Config {
        image_h: 16,
        image_w: 16,
        channels: 3,
        patch: 8,
        dim: 16,
        depth: 1,
        heads: 2,
        mlp_hidden: 32,
        act: Act::Gelu,
        head: Head::Linear,
        dropout: 0.0,
        ln_eps: 1e-6,
        classes,
        options: Default::default(),
    }
}

fn train_options(cfg: Config, out: PathBuf, max_steps: u64) -> TrainOptions {
    TrainOptions {
        cfg,
        epochs: 1,
        batch_size: 16,
        lr: 3e-3,
        weight_decay: 0.05,
        warmup: Some(2),
        cosine: true,
        max_grad_norm: 1.0,
        betas: (0.9, 0.999),
        save_every: None,
        keep: 1,
        seed: 9,
        out,
        resume: None,
        init: None,
        max_steps: Some(max_steps),
        augment: true,
        progress: false,
        freeze_body: false,
    }
}

#[test]
fn a_folder_of_3000_jpegs_in_310_classes_trains_resumes_bit_identically_and_evaluates() {
    let root = temp_dir("train");
    let n = jpeg_folder(&root.join("train"), 310, 10, 6) - 100;
    // 100 images fewer: c300..c309 keep their folders but lose their images below.
    for c in 300..310 {
        for i in 0..10 {
            let _ = std::fs::remove_file(root.join(format!("train/c{c}/{i:02}.jpg")));
        }
    }
    jpeg_folder(&root.join("val"), 310, 2, 7);
    let train_set = Arc::new(streamed(&root.join("train"), 2, 4));
    let val_set = Arc::new(streamed(&root.join("val"), 2, 4));
    assert_eq!((train_set.len, val_set.len), (n, 620));
    assert_eq!(train_set.num_classes(), 310);
    let g = gpu();
    let kernels = Kernels::new(g);
    let cfg = config(310);

    let full_dir = root.join("full");
    let full = block_on(train::train(
        g,
        &kernels,
        &train_options(cfg.clone(), full_dir.clone(), 8),
        train_set.clone(),
        val_set.clone(),
    ))
    .expect("uninterrupted run");
    let part_dir = root.join("part");
    let a = block_on(train::train(
        g,
        &kernels,
        &train_options(cfg.clone(), part_dir.clone(), 4),
        train_set.clone(),
        val_set.clone(),
    ))
    .expect("first half");
    let mut second = train_options(cfg, part_dir.clone(), 8);
    second.resume = Some(part_dir.clone());
    let b = block_on(train::train(
        g,
        &kernels,
        &second,
        train_set,
        val_set.clone(),
    ))
    .expect("resumed");
    assert_eq!((full.steps, a.steps, b.steps), (8, 4, 8));
    let losses: Vec<(u64, f32)> = a
        .step_losses
        .iter()
        .chain(&b.step_losses)
        .cloned()
        .collect();
    assert_eq!(losses, full.step_losses, "per-step losses differ");
    let (_, p_full, f_full) =
        checkpoint::load_model(&full_dir.join("last.safetensors")).expect("full");
    let (_, p_res, _) = checkpoint::load_model(&part_dir.join("last.safetensors")).expect("res");
    assert_eq!(p_full, p_res, "final weights differ");
    // 310 classes: the loss starts near ln(310) = 5.74.
    let first = full.step_losses[0].1;
    assert!((first - 310f32.ln()).abs() < 1.0, "first loss {first}");
    // The evaluation saw every validation image, with a 310 x 310 confusion matrix.
    let model = vit_wgpu::model::Vit::new(
        g,
        &kernels,
        &config(310),
        &p_full,
        16,
        vit_wgpu::model::Mode::Infer,
        0,
    )
    .expect("model");
    let eval = block_on(train::evaluate(g, &model, &val_set)).expect("evaluate");
    assert_eq!(eval.images, 620);
    assert_eq!(eval.confusion.len(), 310);
    assert_eq!(eval.confusion.iter().flatten().sum::<u64>(), 620);
    for (c, row) in eval.confusion.iter().enumerate() {
        assert_eq!(
            row.iter().sum::<u64>(),
            2,
            "class {c} has 2 validation images"
        );
    }
    let names: Vec<String> =
        serde_json::from_str(&f_full.metadata["class_names"]).expect("class names");
    assert_eq!(names.len(), 310);
    assert_eq!(f_full.metadata["crop_pct"], "0.875");
    assert_eq!(f_full.metadata["interpolation"], "bilinear");
}

#[test]
fn a_1000_class_checkpoint_round_trips_and_infer_over_a_folder_prints_json_lines() {
    let root = temp_dir("infer");
    let cfg = config(1000);
    let params = HostParams::init(&cfg, 3);
    let names: Vec<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
    let ck = root.join("k1000.safetensors");
    let extra = [
        ("class_names", serde_json::to_string(&names).expect("json")),
        ("norm_mean", "0.485,0.456,0.406".to_string()),
        ("norm_std", "0.229,0.224,0.225".to_string()),
        ("crop_pct", "0.875".to_string()),
        ("interpolation", "bicubic".to_string()),
    ];
    checkpoint::save_model(&ck, &cfg, &params, &extra).expect("save");
    let (cfg2, params2, file) = checkpoint::load_model(&ck).expect("load");
    assert_eq!(cfg2, cfg);
    assert_eq!(params2, params, "weights changed in the round trip");
    let names2: Vec<String> = serde_json::from_str(&file.metadata["class_names"]).expect("names");
    assert_eq!(names2, names);

    // 11 images in nested folders: batches of 4 leave a padded last batch.
    let images = root.join("images");
    jpeg_folder(&images.join("a"), 2, 3, 8);
    jpeg_folder(&images.join("b"), 1, 5, 9);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args(["infer", "--checkpoint"])
        .arg(&ck)
        .arg(&images)
        .args([
            "--json",
            "--batch-size",
            "4",
            "--top-k",
            "3",
            "--workers",
            "2",
        ])
        .output()
        .expect("run vit-wgpu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "infer failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 12, "11 images and a summary");
    let summary = &lines[11]["summary"];
    assert_eq!(summary["images"], 11);
    assert!(summary["images_per_second"]
        .as_f64()
        .is_some_and(|v| v > 0.0));

    // The reference: the same files through the transforms and the f64 CPU model.
    let files = folder::expand_inputs(std::slice::from_ref(&images)).expect("files");
    assert_eq!(files.len(), 11);
    let mut input = Vec::new();
    for f in &files {
        let img = image::open(f).expect("decode").to_rgb8();
        let px = transforms::Pixels {
            width: img.width() as usize,
            height: img.height() as usize,
            channels: 3,
            data: img.into_raw(),
        };
        let crop = transforms::eval_resize_crop(&px, 16, 16, 0.875, Interpolation::Bicubic);
        let mut x = vec![0f32; 768];
        transforms::normalise_chw(
            &crop,
            false,
            &[0.485, 0.456, 0.406],
            &[0.229, 0.224, 0.225],
            &mut x,
        );
        input.extend(x);
    }
    let widened = vit_wgpu::model::reference::widen(&params);
    let reference =
        vit_wgpu::model::reference::forward_backward(&cfg, &widened, &params, &input, &[0; 11]);
    for (i, (line, file)) in lines[..11].iter().zip(&files).enumerate() {
        assert_eq!(line["image"], file.display().to_string());
        let logits = &reference.logits[i * 1000..(i + 1) * 1000];
        let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|v| (v - mx).exp()).sum();
        let mut order: Vec<usize> = (0..1000).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top = line["top"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        for (k, t) in top.iter().enumerate() {
            let p = t["probability"].as_f64().expect("probability");
            // The top classes of close logits may swap; compare probabilities by class.
            let class = t["class"].as_str().expect("class");
            let idx = names
                .iter()
                .position(|n| n == class)
                .expect("a known class");
            let expected = (logits[idx] - mx).exp() / z;
            assert!(
                (p - expected).abs() < 1e-5,
                "image {i} top {k}: {p} vs {expected}"
            );
            let rank_p = (logits[order[k]] - mx).exp() / z;
            assert!(
                (p - rank_p).abs() < 1e-5,
                "image {i}: top {k} is not the k-th class"
            );
        }
    }
}
