//! Training end to end: checkpoints round-trip bit for bit, a resumed run equals an
//! uninterrupted one, and the micro preset really learns Fashion-MNIST.

mod common;
use common::*;
use pollster::block_on;
use std::path::PathBuf;
use std::sync::Arc;
use vit_wgpu::data;
use vit_wgpu::model::checkpoint::{self, CheckpointError};
use vit_wgpu::model::config::{Act, Config, Head, Preset};
use vit_wgpu::model::{HostParams, Kernels};
use vit_wgpu::train::{self, TrainError, TrainOptions};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vit-wgpu-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn tiny_config() -> Config {
    Config {
        image_h: 8,
        image_w: 8,
        channels: 1,
        patch: 4,
        dim: 16,
        depth: 1,
        heads: 2,
        mlp_hidden: 32,
        act: Act::Gelu,
        head: Head::Mlp { hidden: 16 },
        dropout: 0.1,
        ln_eps: 1e-6,
        classes: 3,
        options: Default::default(),
    }
}

fn options(cfg: Config, out: PathBuf) -> TrainOptions {
    TrainOptions {
        cfg,
        epochs: 2,
        batch_size: 8,
        lr: 3e-3,
        weight_decay: 0.05,
        warmup: Some(3),
        cosine: true,
        max_grad_norm: 1.0,
        seed: 7,
        out,
        resume: None,
        init: None,
        max_steps: None,
        augment: true,
        progress: false,
        freeze_body: false,
        betas: (0.9, 0.999),
        save_every: None,
        keep: 1,
    }
}

#[test]
fn checkpoint_round_trips_bit_for_bit_and_rejects_bad_files() {
    let dir = temp_dir("ckpt");
    let cfg = tiny_config();
    let params = HostParams::init(&cfg, 3);
    let path = dir.join("model.safetensors");
    checkpoint::save_model(&path, &cfg, &params, &[]).expect("save");
    assert!(
        !dir.join("model.safetensors.tmp").exists(),
        "temporary file left behind"
    );
    let (cfg2, params2, _) = checkpoint::load_model(&path).expect("load");
    assert_eq!(cfg2, cfg);
    for (a, b) in params.values.iter().zip(&params2.values) {
        let bits_a: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
        let bits_b: Vec<u32> = b.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits_a, bits_b);
    }

    // A checkpoint of another shape: a clear error naming the tensor.
    let mut file = checkpoint::TensorFile::read(&path).expect("read");
    file.metadata.insert("dim".into(), "24".into());
    file.metadata.insert("mlp_hidden".into(), "32".into());
    let other = dir.join("other.safetensors");
    file.write(&other).expect("write");
    match checkpoint::load_model(&other) {
        Err(CheckpointError::Shape {
            name,
            expected,
            found,
            ..
        }) => {
            assert_eq!(name, "cls_token");
            assert_eq!(expected, vec![1, 1, 24]);
            assert_eq!(found, vec![1, 1, 16]);
        }
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
    // A missing tensor.
    let mut file = checkpoint::TensorFile::read(&path).expect("read");
    file.tensors.remove("blocks.0.mlp.fc1.bias");
    file.write(&other).expect("write");
    let err = checkpoint::load_model(&other).expect_err("missing tensor");
    assert!(err.to_string().contains("blocks.0.mlp.fc1.bias"), "{err}");
    // A NaN in the weights.
    let mut file = checkpoint::TensorFile::read(&path).expect("read");
    file.tensors.get_mut("norm.weight").expect("norm").1[3] = f32::NAN;
    file.write(&other).expect("write");
    match checkpoint::load_model(&other) {
        Err(CheckpointError::NonFinite { name, index, .. }) => {
            assert_eq!((name.as_str(), index), ("norm.weight", 3));
        }
        other => panic!("expected a NaN error, got {:?}", other.err()),
    }
    // Not a safetensors file at all.
    std::fs::write(&other, b"not a checkpoint").expect("write");
    let err = checkpoint::load_model(&other).expect_err("garbage");
    assert!(err.to_string().contains("other.safetensors"), "{err}");
}

#[test]
fn resumed_run_matches_the_uninterrupted_run_exactly() {
    let g = gpu();
    let kernels = Kernels::new(g);
    let train_set = Arc::new(synthetic(40, 1));
    let val_set = Arc::new(synthetic(16, 2));
    let cfg = tiny_config();

    let full_dir = temp_dir("full");
    let full = block_on(train::train(
        g,
        &kernels,
        &options(cfg.clone(), full_dir.clone()),
        train_set.clone(),
        val_set.clone(),
    ))
    .expect("uninterrupted run");
    assert_eq!(full.steps, 10);

    // Stop mid-epoch (step 7 of 10: epoch 2, batch 2), then resume.
    let part_dir = temp_dir("part");
    let mut first = options(cfg.clone(), part_dir.clone());
    first.max_steps = Some(7);
    let a = block_on(train::train(
        g,
        &kernels,
        &first,
        train_set.clone(),
        val_set.clone(),
    ))
    .expect("first half");
    assert_eq!(a.steps, 7);
    let mut second = options(cfg, part_dir.clone());
    second.resume = Some(part_dir.clone());
    let b = block_on(train::train(g, &kernels, &second, train_set, val_set)).expect("resumed half");
    assert_eq!(b.steps, 10);

    let losses: Vec<(u64, f32)> = a
        .step_losses
        .iter()
        .chain(&b.step_losses)
        .cloned()
        .collect();
    assert_eq!(losses, full.step_losses, "per-step losses differ");
    let (_, p_full, _) = checkpoint::load_model(&full_dir.join("last.safetensors")).expect("full");
    let (_, p_res, _) =
        checkpoint::load_model(&part_dir.join("last.safetensors")).expect("resumed");
    assert_eq!(p_full, p_res, "final weights differ");
    // The run learned something: the second epoch's mean loss (the same 40 images) is below
    // the first's. (One batch's loss against another's is too noisy at batch 8.)
    let mean = |s: &[(u64, f32)]| s.iter().map(|l| l.1 as f64).sum::<f64>() / s.len() as f64;
    let (first, second) = full.step_losses.split_at(5);
    let (first, second) = (mean(first), mean(second));
    assert!(second < first, "mean loss by epoch {first} -> {second}");
}

#[test]
fn nan_loss_stops_training_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let g = gpu();
    let kernels = Kernels::new(g);
    let dir = temp_dir("nan");
    let mut opts = options(tiny_config(), dir.clone());
    let mut init = HostParams::init(&opts.cfg, 1);
    let i = init.index("head.fc2.weight").expect("head");
    init.values[i][0] = f32::INFINITY;
    opts.init = Some(init);
    let err = block_on(train::train(
        g,
        &kernels,
        &opts,
        Arc::new(synthetic(16, 1)),
        Arc::new(synthetic(8, 2)),
    ))
    .err()
    .expect("a non-finite loss must stop the run");
    assert!(
        matches!(err, TrainError::NonFiniteLoss { step: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("loss"), "{err}");
}

#[test]
fn micro_preset_learns_fashion_mnist() {
    let dir = &fashion_mnist_dir();
    let g = gpu();
    let kernels = Kernels::new(g);
    // 51200 images in 1600 steps of 32: PyTorch/timm reaches 81-82% with this recipe
    // (and only 77-80% with 1200 steps: too thin a margin over the 75% asked for).
    let train_set = data::idx::load(dir, true, data::idx::IdxKind::FashionMnist)
        .expect("train split")
        .subset(51200);
    let val_set = data::idx::load(dir, false, data::idx::IdxKind::FashionMnist)
        .expect("test split")
        .subset(2000);
    let cfg = Preset::Micro.config();
    let mut opts = options(cfg, temp_dir("fashion"));
    opts.epochs = 1;
    opts.batch_size = 32;
    opts.lr = 2e-3;
    opts.weight_decay = 0.05;
    opts.warmup = Some(20);
    opts.augment = false;
    opts.seed = 0;
    let t0 = std::time::Instant::now();
    let s = block_on(train::train(
        g,
        &kernels,
        &opts,
        Arc::new(train_set),
        Arc::new(val_set),
    ))
    .expect("training");
    let acc = s.epochs.last().expect("an epoch").val_accuracy;
    eprintln!(
        "Fashion-MNIST micro: {acc:.4} test accuracy (2000 images) after {} steps in {:.1}s",
        s.steps,
        t0.elapsed().as_secs_f64()
    );
    assert!(acc >= 0.75, "test accuracy {acc} < 0.75");
}
