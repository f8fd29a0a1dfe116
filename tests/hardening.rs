//! Bad input of every kind: each bad flag exits with 2 naming the flag, the value and the
//! range; a run whose parameters become non-finite writes no checkpoint; a run folder in
//! use is refused and a stale lock taken over; a run killed mid-epoch resumes from its
//! `--save-every` checkpoint and ends bit-identical to an uninterrupted run.

mod common;
use common::*;
use pollster::block_on;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use vit_wgpu::cli::resolve::{self, DataShape, UsageError};
use vit_wgpu::cli::{ModelArgs, TrainArgs};
use vit_wgpu::model::checkpoint;
use vit_wgpu::model::config::{Act, Config, Head, Preset};
use vit_wgpu::model::Kernels;
use vit_wgpu::train::{self, run_folder, TrainError, TrainOptions};

fn vit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args(args)
        .output()
        .expect("run vit-wgpu")
}

fn tiny() -> Config {
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
        head: Head::Linear,
        dropout: 0.0,
        ln_eps: 1e-6,
        classes: 3,
        options: Default::default(),
    }
}

fn options(out: PathBuf) -> TrainOptions {
    TrainOptions {
        cfg: tiny(),
        epochs: 1,
        batch_size: 8,
        lr: 3e-3,
        weight_decay: 0.0,
        warmup: Some(1),
        cosine: true,
        max_grad_norm: 1.0,
        seed: 5,
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
fn every_bad_flag_exits_with_2_naming_the_flag_the_value_and_the_range() {
    // (arguments, what the message must contain). Checked before any data or device.
    let cases: &[(&[&str], &[&str])] = &[
        (&["train", "--lr=-1"], &["--lr", "-1", "> 0"]),
        (&["train", "--lr", "nan"], &["--lr", "NaN", "finite"]),
        (&["train", "--lr", "0"], &["--lr", "'0'", "> 0"]),
        (
            &["train", "--weight-decay=-0.1"],
            &["--weight-decay", "-0.1", ">= 0"],
        ),
        (
            &["train", "--weight-decay", "inf"],
            &["--weight-decay", "inf", "finite"],
        ),
        (
            &["train", "--clip=-1"],
            &["--clip", "-1", "0 for no clipping"],
        ),
        (&["train", "--clip", "nan"], &["--clip", "NaN"]),
        (&["train", "--beta1", "1"], &["--beta1", "'1'", "[0, 1)"]),
        (&["train", "--beta2=-0.5"], &["--beta2", "-0.5", "[0, 1)"]),
        (
            &["train", "--epochs", "0"],
            &["--epochs", "'0'", "at least 1"],
        ),
        (
            &["train", "--batch-size", "0"],
            &["--batch-size", "'0'", "at least 1"],
        ),
        (
            &["train", "--dropout", "1"],
            &["--dropout", "'1'", "[0, 1)"],
        ),
        (&["train", "--ln-eps", "0"], &["--ln-eps", "'0'", "> 0"]),
        (&["train", "--dim", "0"], &["--dim", "'0'", "at least 1"]),
        (
            &["train", "--classes", "1"],
            &["--classes", "'1'", "at least 2"],
        ),
        (
            &["train", "--limit-train", "0"],
            &["--limit-train", "'0'", "at least 1"],
        ),
        (
            &["train", "--limit-eval", "0"],
            &["--limit-eval", "'0'", "at least 1"],
        ),
        (
            &["train", "--max-steps", "0"],
            &["--max-steps", "'0'", "at least 1"],
        ),
        (
            &["train", "--save-every", "0"],
            &["--save-every", "'0'", "at least 1"],
        ),
        (
            &["train", "--image-size", "0"],
            &["--image-size", "0x0", "at least 1x1"],
        ),
        (
            &["bench", "--batch-size", "0"],
            &["--batch-size", "'0'", "at least 1"],
        ),
        (
            &["bench", "--steps", "0"],
            &["--steps", "'0'", "at least 1"],
        ),
        (
            &["bench", "--heads", "3"],
            &["not a multiple of the head count 3"],
        ),
        (
            &["eval", "--checkpoint", "x", "--batch-size", "0"],
            &["--batch-size"],
        ),
        (
            &["infer", "--checkpoint", "x", "--top-k", "0", "a.png"],
            &["--top-k", "'0'"],
        ),
        (
            &["verify", "--grad-tol", "0", "f"],
            &["--grad-tol", "'0'", "> 0"],
        ),
    ];
    for (args, needles) in cases {
        let out = vit(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for n in *needles {
            assert!(stderr.contains(n), "{args:?}: '{n}' not in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    eprintln!("{} bad flags refused with exit code 2", cases.len());
}

#[test]
fn warmup_longer_than_the_run_is_refused_once_the_data_is_known() {
    let data = fresh_dir("warmup-data");
    write_idx_dataset(&data, &synthetic(40, 1), &synthetic(8, 2));
    let d = data.to_str().expect("utf-8 path");
    // 40 images in batches of 8 over 2 epochs: 10 steps.
    let common = [
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        d,
        "--epochs",
        "2",
    ];
    let out = vit(&[&common[..], &["--batch-size", "8", "--warmup", "11"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--warmup") && stderr.contains("'11'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("at most the run's 10 optimiser steps"),
        "{stderr}"
    );
    assert_eq!(
        resolve::check_warmup(Some(10), 2, 40, 8),
        Ok(()),
        "a warmup of the whole run is allowed"
    );
}

#[test]
fn train_config_is_resolved_from_flags_checkpoint_and_data() {
    use clap::Parser;
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        model: ModelArgs,
    }
    let model = |flags: &[&str]| Args::parse_from([&["x"], flags].concat()).model;
    let grey = DataShape {
        channels: 1,
        height: 28,
        width: 28,
        classes: 10,
    };
    // The preset's shape, the data's channels, image size and classes.
    let c = resolve::train_config(&model(&["--preset", "micro"]), None, &grey).expect("micro");
    assert_eq!(c, Preset::Micro.config());
    let c = resolve::train_config(&model(&["--preset", "labml"]), None, &grey).expect("labml");
    assert_eq!(
        (c.channels, c.image_h, c.image_w, c.classes),
        (1, 28, 28, 10)
    );
    // Flags win over the data.
    let c = resolve::train_config(
        &model(&[
            "--preset",
            "micro",
            "--image-size",
            "32",
            "--classes",
            "12",
            "--dim",
            "96",
        ]),
        None,
        &grey,
    )
    .expect("overrides");
    assert_eq!((c.image_h, c.classes, c.dim), (32, 12, 96));
    // A checkpoint's shape wins over the preset; the data gives the classes.
    let init = tiny();
    let c = resolve::train_config(&model(&[]), Some(&init), &grey).expect("init");
    assert_eq!((c.dim, c.image_h, c.classes), (16, 8, 10));
    // Fewer classes than the data has; channels that do not match; no valid model.
    let err = resolve::train_config(&model(&["--classes", "5"]), None, &grey).expect_err("k");
    assert!(
        matches!(
            err,
            UsageError::Flag {
                flag: "classes",
                ..
            }
        ),
        "{err}"
    );
    let err = resolve::train_config(
        &model(&[]),
        Some(&Config {
            channels: 3,
            ..init
        }),
        &grey,
    )
    .expect_err("channels");
    assert!(err.to_string().contains("3 channels"), "{err}");
    let err = resolve::train_config(&model(&["--preset", "micro", "--heads", "3"]), None, &grey)
        .expect_err("heads");
    assert!(err.to_string().contains("head count 3"), "{err}");
    // And the flag checks alone, without a process.
    let bad = TrainArgs::try_parse_from_train(&["--lr=-2"]);
    assert_eq!(
        resolve::check_train(&bad),
        Err(UsageError::Flag {
            flag: "lr",
            value: "-2".into(),
            allowed: "must be a finite number > 0".into()
        })
    );
}

trait ParseTrain {
    fn try_parse_from_train(flags: &[&str]) -> TrainArgs;
}

impl ParseTrain for TrainArgs {
    fn try_parse_from_train(flags: &[&str]) -> TrainArgs {
        use clap::Parser;
        let cli = vit_wgpu::cli::Cli::parse_from([&["vit-wgpu", "train"], flags].concat());
        match cli.command {
            vit_wgpu::cli::Command::Train(a) => a,
            _ => unreachable!("parsed a train command"),
        }
    }
}

#[test]
fn a_run_whose_parameters_become_nan_writes_no_checkpoint() {
    let g = gpu();
    let kernels = Kernels::new(g);
    let (train_set, val_set) = (Arc::new(synthetic(16, 1)), Arc::new(synthetic(8, 2)));
    // A good first epoch (2 steps) leaves a checkpoint...
    let dir = fresh_dir("nan-model");
    let mut opts = options(dir.clone());
    opts.epochs = 2;
    opts.max_steps = Some(2);
    block_on(train::train(
        g,
        &kernels,
        &opts,
        train_set.clone(),
        val_set.clone(),
    ))
    .expect("epoch 1");
    let good = std::fs::read(dir.join("last.safetensors")).expect("epoch 1 checkpoint");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics");
    // ...then a NaN learning rate (only reachable from the library: the CLI refuses it)
    // turns every parameter into NaN at step 3, while step 3's loss is still finite.
    opts.lr = f32::NAN;
    opts.max_steps = None;
    opts.resume = Some(dir.clone());
    let err = block_on(train::train(g, &kernels, &opts, train_set, val_set))
        .err()
        .expect("the NaN model must stop the run");
    match &err {
        TrainError::NonFiniteModel { step, .. } | TrainError::NonFiniteLoss { step, .. } => {
            assert!(*step >= 3, "{err}")
        }
        other => panic!("expected a non-finite model error, got: {other}"),
    }
    assert!(err.to_string().contains("step"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("last.safetensors")).expect("still there"),
        good,
        "the last good checkpoint was replaced"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics"),
        metrics
    );
    let (_, params, _) = checkpoint::load_model(&dir.join("last.safetensors")).expect("load");
    assert!(params.values.iter().flatten().all(|v| v.is_finite()));
    assert_no_temporaries(&dir);
}

#[test]
fn a_nan_model_at_the_end_of_an_epoch_is_caught_before_the_checkpoint() {
    let g = gpu();
    let kernels = Kernels::new(g);
    let dir = fresh_dir("nan-first");
    let mut opts = options(dir.clone());
    opts.lr = f32::NAN;
    // One step per epoch: its loss is finite (computed before the update), so only the
    // parameter check can stop the checkpoint.
    let err = block_on(train::train(
        g,
        &kernels,
        &opts,
        Arc::new(synthetic(8, 1)),
        Arc::new(synthetic(8, 2)),
    ))
    .err()
    .expect("a NaN model must not be saved");
    match &err {
        TrainError::NonFiniteModel { step, tensor, .. } => {
            assert_eq!(*step, 1);
            assert!(err.to_string().contains(tensor.as_str()));
        }
        other => panic!("expected NonFiniteModel, got: {other}"),
    }
    for f in [
        "last.safetensors",
        "last.state.safetensors",
        "best.safetensors",
        "metrics.jsonl",
    ] {
        assert!(!dir.join(f).exists(), "{f} was written");
    }
}

fn assert_no_temporaries(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".tmp"),
            "temporary {name} left in {}",
            dir.display()
        );
    }
}

#[test]
fn a_second_run_on_a_locked_folder_is_refused_and_a_stale_lock_is_taken_over() {
    let g = gpu();
    let kernels = Kernels::new(g);
    let dir = fresh_dir("lock");
    let lock = dir.join(run_folder::LOCK);
    let run = || {
        block_on(train::train(
            g,
            &kernels,
            &options(dir.clone()),
            Arc::new(synthetic(8, 1)),
            Arc::new(synthetic(8, 2)),
        ))
    };
    // A live holder: this very process.
    let me = std::process::id();
    let host = run_folder::hostname();
    std::fs::write(&lock, format!("{me} {host}\n")).expect("lock");
    match run() {
        Err(e @ TrainError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&me.to_string()) && msg.contains(&host),
                "{msg}"
            );
        }
        other => panic!("expected the folder to be refused, got {:?}", other.err()),
    }
    assert!(!dir.join("last.safetensors").exists());
    // A holder on another machine cannot be checked: refused too.
    std::fs::write(&lock, "1 some-other-host\n").expect("lock");
    assert!(matches!(run(), Err(TrainError::Locked { pid: 1, .. })));
    // A dead holder: a child process that has exited.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    std::fs::write(&lock, format!("{dead} {host}\n")).expect("lock");
    run().expect("a stale lock is taken over");
    assert!(dir.join("last.safetensors").exists());
    assert!(!lock.exists(), "the run removes its lock when it ends");
    // A lock torn by a crash while it was written (no PID) is stale too.
    std::fs::write(&lock, "").expect("lock");
    let mut opts = options(dir.clone());
    opts.resume = Some(dir.clone());
    opts.epochs = 2;
    block_on(train::train(
        g,
        &kernels,
        &opts,
        Arc::new(synthetic(8, 1)),
        Arc::new(synthetic(8, 2)),
    ))
    .expect("an empty lock is taken over");
}

/// The run folder's last model, every tensor as bits.
fn final_bits(dir: &Path) -> Vec<Vec<u32>> {
    let (_, p, _) = checkpoint::load_model(&dir.join("last.safetensors")).expect("load");
    p.values
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn a_run_killed_mid_epoch_resumes_from_its_save_every_checkpoint_bit_identically() {
    let data = fresh_dir("kill-data");
    // 1600 images in batches of 8: 200 steps per epoch, long enough to kill mid-epoch.
    write_idx_dataset(&data, &synthetic(1600, 1), &synthetic(16, 2));
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            data.to_str().unwrap_or(""),
            "--preset",
            "micro",
            "--dim",
            "16",
            "--depth",
            "1",
            "--heads",
            "2",
            "--mlp-hidden",
            "32",
            "--dropout",
            "0.1",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--warmup",
            "5",
            "--save-every",
            "5",
            "--seed",
            "3",
            "--quiet",
            "--out",
            out.to_str().unwrap_or(""),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = fresh_dir("kill-full");
    let out = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args(args(&full))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = fresh_dir("kill-part");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args(args(&killed))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let state = killed.join(run_folder::LAST_STATE);
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(Some(step)) = checkpoint::read_step(&state) {
            if step >= 10 {
                break;
            }
        }
        assert!(
            t0.elapsed().as_secs() < 120,
            "no checkpoint at step 10 within 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let step = checkpoint::read_step(&state)
        .expect("state")
        .expect("stamped");
    assert!(
        !step.is_multiple_of(200) && step.is_multiple_of(5),
        "resuming from step {step}"
    );
    eprintln!("killed after the checkpoint of step {step} (epoch 1 of 2, batch {step})");
    let mut resume = args(&killed);
    resume.extend([
        "--resume".to_string(),
        killed.to_str().unwrap_or("").to_string(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args(&resume)
        .output()
        .expect("resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        final_bits(&full) == final_bits(&killed),
        "final weights differ"
    );
    let epochs = |d: &Path| {
        let text = std::fs::read_to_string(d.join("metrics.jsonl")).expect("metrics");
        text.lines()
            .map(|l| train::EpochMetrics::from_json(l).expect("a record"))
            .map(|m| {
                (
                    m.epoch,
                    m.step,
                    m.train_loss.to_bits(),
                    m.val_loss.to_bits(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(epochs(&full), epochs(&killed), "metrics differ");
    assert_eq!(epochs(&killed).len(), 2);
}

#[test]
fn a_model_and_a_state_of_different_steps_resume_from_the_newest_consistent_pair() {
    let dir = fresh_dir("pairs");
    let cfg = tiny();
    let params = vit_wgpu::model::HostParams::init(&cfg, 1);
    let write = |name: &str, step: u64, state: bool| {
        let file = if state {
            let s = checkpoint::TrainState {
                step,
                epoch: 0,
                batch_in_epoch: step,
                best_accuracy: 0.0,
                totals: Default::default(),
                moments: params
                    .values
                    .iter()
                    .map(|v| (v.clone(), v.clone()))
                    .collect(),
            };
            checkpoint::state_file(&params, &s)
        } else {
            checkpoint::model_file(&cfg, &params, &[("step", step.to_string())])
        };
        file.write(&dir.join(name)).expect("write");
    };
    // A failure between the two renames: the state is new (7), the model old (5); the
    // previous pair was kept as step-5 (its model) and step-3.
    write("last.safetensors", 5, false);
    write("last.state.safetensors", 7, true);
    write("step-000000005.state.safetensors", 5, true);
    write("step-000000003.safetensors", 3, false);
    write("step-000000003.state.safetensors", 3, true);
    let (step, model, state) = run_folder::resume_pair(&dir).expect("a consistent pair");
    assert_eq!(step, 5);
    assert_eq!(model, dir.join("last.safetensors"));
    assert_eq!(state, dir.join("step-000000005.state.safetensors"));
    // Named explicitly, a consistent pair is used as it is.
    let (step, _, _) =
        run_folder::resume_pair(&dir.join("step-000000003.safetensors")).expect("step 3");
    assert_eq!(step, 3);
    // No pair of one step at all: an error naming both files and their steps.
    std::fs::remove_file(dir.join("step-000000005.state.safetensors")).expect("rm");
    std::fs::remove_file(dir.join("step-000000003.state.safetensors")).expect("rm");
    let err = run_folder::resume_pair(&dir).expect_err("nothing consistent");
    let msg = err.to_string();
    assert!(
        msg.contains("last.safetensors (step 5)") && msg.contains("state.safetensors (step 7)"),
        "{msg}"
    );
}
