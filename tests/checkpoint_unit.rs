//! A checkpoint is one unit: a write failure injected at every file-system step of every
//! checkpoint of a run leaves a consistent model/state pair and no temporaries, and the
//! resume after it ends bit-identical to an uninterrupted run, with no epoch logged twice.
//! (Its own test binary: the failure injection is process-wide.)

mod common;
use common::*;
use pollster::block_on;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vit_wgpu::model::checkpoint::{self, inject};
use vit_wgpu::model::config::{Act, Config, Head};
use vit_wgpu::model::Kernels;
use vit_wgpu::train::{self, RunSummary, TrainError, TrainOptions};

fn options(out: PathBuf) -> TrainOptions {
    TrainOptions {
        cfg: Config {
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
        },
        epochs: 2,
        batch_size: 8,
        lr: 3e-3,
        weight_decay: 0.05,
        warmup: Some(1),
        cosine: true,
        max_grad_norm: 1.0,
        seed: 11,
        out,
        resume: None,
        init: None,
        max_steps: None,
        augment: true,
        progress: false,
        freeze_body: false,
        betas: (0.9, 0.999),
        // Steps 1..=6, epochs of 3: checkpoints at 2 (mid-epoch), 3 (end), 4 (mid), 6 (end).
        save_every: Some(2),
        keep: 1,
    }
}

fn bits(dir: &Path) -> Vec<Vec<u32>> {
    let (_, p, _) = checkpoint::load_model(&dir.join("last.safetensors")).expect("load");
    p.values
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn a_write_failure_at_any_point_of_a_checkpoint_leaves_one_consistent_unit() {
    let g = gpu();
    let kernels = Kernels::new(g);
    let (train_set, val_set) = (Arc::new(synthetic(24, 1)), Arc::new(synthetic(8, 2)));
    let run = |opts: &TrainOptions| -> Result<RunSummary, TrainError> {
        block_on(train::train(
            g,
            &kernels,
            opts,
            train_set.clone(),
            val_set.clone(),
        ))
    };
    let full_dir = fresh_dir("unit-full");
    inject::fail_nth_write(None);
    let full = run(&options(full_dir.clone())).expect("uninterrupted run");
    assert_eq!(full.steps, 6);
    let writes = inject::writes_done();
    let (full_bits, full_log) = (bits(&full_dir), metrics_log(&full_dir));
    assert_eq!(full_log.len(), 2);
    // --keep 1: one past pair besides last (the step-4 one; step 2 and 3 were pruned).
    let kept: Vec<String> = std::fs::read_dir(&full_dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    let mut kept = kept;
    kept.sort();
    assert_eq!(
        kept,
        [
            "step-000000004.safetensors",
            "step-000000004.state.safetensors"
        ]
    );
    eprintln!("an uninterrupted run makes {writes} checkpoint writes");

    let t0 = std::time::Instant::now();
    for n in 1..=writes {
        let dir = fresh_dir(&format!("unit-{n}"));
        inject::fail_nth_write(Some(n));
        let err = run(&options(dir.clone())).err();
        inject::fail_nth_write(None);
        let err = err.unwrap_or_else(|| panic!("write {n} of {writes} was to fail"));
        assert!(
            err.to_string().contains("injected write failure"),
            "write {n}: {err}"
        );
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".tmp"),
                "write {n}: temporary {name} left behind"
            );
        }
        // Resume from the newest consistent pair (or start again when none was committed).
        let pair = checkpoint::newest_consistent_pair(&dir);
        let mut opts = options(dir.clone());
        if let Some((step, _, _)) = &pair {
            opts.resume = Some(dir.clone());
            assert!(*step <= 6, "write {n}: pair at step {step}");
        }
        run(&opts).unwrap_or_else(|e| panic!("write {n}: resume failed: {e}"));
        assert!(bits(&dir) == full_bits, "write {n}: final weights differ");
        assert_eq!(
            metrics_log(&dir),
            full_log,
            "write {n}: metrics.jsonl differs"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!(
        "{writes} injected failures, each resumed bit-identically, in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
