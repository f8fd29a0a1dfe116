//! The options of timm's ViT descendants (issue 33) against timm itself: float64 fixtures
//! (scripts/make_option_fixtures.sh) with a batch, the logits, the loss and every
//! parameter's gradient, checked first on the f64 CPU reference model, then on the device
//! with `verify` (the training code path, as `vit-wgpu verify FILE` runs it).

mod common;
use common::*;
use std::path::PathBuf;
use vit_wgpu::model::checkpoint::{load_params_resampling, TensorFile};
use vit_wgpu::model::{reference, Config};
use vit_wgpu::verify::{verify, Tolerances};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/options")
        .join(format!("{name}.safetensors"))
}

/// The options the device model runs (each also in `arch.rs`'s SUPPORTED).
const ON_DEVICE: &[&str] = ALL;

/// Every fixture (scripts/make_option_fixtures.sh).
const ALL: &[&str] = &[
    "no_embed_class",
    "gap_fc_norm",
    "avg_norm_per_token",
    "layer_scale",
    "deit3",
    "reg_tokens",
    "reg_tokens_with_pos",
    "distilled",
    "clip_quickgelu",
    "qk_norm",
    "gap_medium",
    "patch14_98",
    "patch14_112_reg4",
    "patch14_224",
    "patch14_518_reg4",
    "patch14_rect",
];

fn config(path: &std::path::Path, file: &TensorFile) -> Config {
    let mut meta = file.metadata.clone();
    meta.entry("head".into()).or_insert_with(|| "linear".into());
    Config::from_metadata(&meta).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn cpu_reference_matches_timm_on_every_option_fixture() {
    for name in ALL {
        let path = fixture(name);
        let file = TensorFile::read(&path).expect("fixture reads");
        let cfg = config(&path, &file);
        let params = load_params_resampling(&path, &file, &cfg).expect("parameters load");
        let (_, images) = &file.tensors["input.images"];
        let labels: Vec<u32> = file.int_tensors["input.labels"]
            .1
            .iter()
            .map(|&l| l as u32)
            .collect();
        let p64 = reference::widen(&params);
        let res = reference::forward_backward(&cfg, &p64, &params, images, &labels);
        let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (_, logits) = &file.tensors["expected.logits"];
        assert_close(&format!("{name} logits"), &to32(&res.logits), logits, 1e-5);
        let (_, loss) = &file.tensors["expected.loss"];
        assert!(
            (res.loss - loss[0] as f64).abs() < 1e-5 * res.loss.abs(),
            "{name}: loss {} vs timm {}",
            res.loss,
            loss[0]
        );
        let mut worst = (0.0, String::new());
        for (spec, g) in params.specs.iter().zip(&res.grads) {
            let (_, want) = &file.tensors[&format!("expected.grad.{}", spec.name)];
            let err = assert_close(&format!("{name} grad {}", spec.name), &to32(g), want, 1e-5);
            if err > worst.0 {
                worst = (err, spec.name.clone());
            }
        }
        eprintln!(
            "{name}: worst gradient error {:.2e} in {}",
            worst.0, worst.1
        );
    }
}

#[test]
fn device_model_verifies_against_timm_on_every_supported_option() {
    let g = gpu();
    for name in ON_DEVICE {
        let report = pollster::block_on(verify(g, &fixture(name), Tolerances::default()))
            .expect("verify runs");
        for c in &report.comparisons {
            eprintln!("{name}: {} relative error {:.2e}", c.name, c.relative_error);
        }
        assert!(report.passed(), "{name} fails verify");
    }
}

/// A bare timm state_dict (no config beside it) of every family: the options come from
/// the tensor names, the rest as for the original ViT (heads, activation and eps as hints).
#[test]
fn options_are_read_off_a_bare_timm_state_dict() {
    use vit_wgpu::model::checkpoint::{infer_config, ConfigHints};
    use vit_wgpu::model::hub;
    let families = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families");
    for family in [
        "vit",
        "deit3",
        "dinov2",
        "reg4",
        "distilled",
        "clip_quickgelu",
        "gap",
    ] {
        let dir = families.join(format!("timm_{family}"));
        let folder = hub::read_folder(&dir, &ConfigHints::default()).expect("folder reads");
        let path = dir.join("model.safetensors");
        let file = TensorFile::read(&path).expect("weights read");
        let hints = ConfigHints {
            heads: Some(folder.cfg.heads),
            act: Some(folder.cfg.act),
            ln_eps: Some(folder.cfg.ln_eps),
            image_size: None,
        };
        let mut inferred = infer_config(&path, &file, &hints).expect("config inferred");
        // The tensors hold LayerScale's gammas, not the value they started from.
        inferred.options.layer_scale = inferred
            .options
            .layer_scale
            .and(folder.cfg.options.layer_scale);
        assert_eq!(inferred, folder.cfg, "{family}");
    }
}

/// Training end to end with the options (AdamW over their parameters, checkpoints with
/// them in the metadata): on the synthetic quadrant task the last of 6 epochs' mean loss
/// is below the first's, and the last checkpoint loads back with the same config.
#[test]
fn models_with_options_train_and_checkpoint() {
    use std::sync::Arc;
    use vit_wgpu::model::checkpoint;
    use vit_wgpu::model::{Act, Head, Kernels, Options, Pool};
    use vit_wgpu::train::{self, TrainOptions};
    let g = gpu();
    let kernels = Kernels::new(g);
    let base = Config {
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
        dropout: 0.1,
        ln_eps: 1e-6,
        classes: 3,
        options: Options::default(),
    };
    let with = |act: Act, f: &dyn Fn(&mut Options)| {
        let mut c = Config {
            act,
            ..base.clone()
        };
        f(&mut c.options);
        c
    };
    let configs = [
        ("plain", base.clone()),
        (
            "deit3",
            with(Act::Gelu, &|o| {
                o.no_embed_class = true;
                o.layer_scale = Some(1e-5);
            }),
        ),
        (
            "reg4_qk_norm",
            with(Act::Gelu, &|o| {
                o.reg_tokens = 4;
                o.no_embed_class = true;
                o.qk_norm = true;
            }),
        ),
        (
            "gap",
            with(Act::Gelu, &|o| {
                o.class_token = false;
                o.pool = Pool::Avg;
                o.fc_norm = true;
                o.qkv_bias = false;
            }),
        ),
        ("distilled", with(Act::Gelu, &|o| o.distilled = true)),
        ("clip", with(Act::QuickGelu, &|o| o.pre_norm = true)),
    ];
    for (name, cfg) in configs {
        let out = std::env::temp_dir().join(format!("vit-options-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let opts = TrainOptions {
            cfg: cfg.clone(),
            epochs: 6,
            batch_size: 8,
            lr: 3e-3,
            weight_decay: 0.05,
            warmup: Some(3),
            cosine: true,
            max_grad_norm: 1.0,
            seed: 7,
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
        let s = pollster::block_on(train::train(
            g,
            &kernels,
            &opts,
            Arc::new(synthetic(40, 1)),
            Arc::new(synthetic(16, 2)),
        ))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mean = |s: &[(u64, f32)]| s.iter().map(|l| l.1 as f64).sum::<f64>() / s.len() as f64;
        let (first, last) = (&s.step_losses[..5], &s.step_losses[25..]);
        let (first, last) = (mean(first), mean(last));
        eprintln!("{name}: mean loss first epoch {first:.4}, last {last:.4}");
        assert!(
            last < first,
            "{name}: mean loss first epoch {first}, last {last}"
        );
        let (loaded, _, _) =
            checkpoint::load_model(&out.join("last.safetensors")).expect("checkpoint loads");
        assert_eq!(loaded, cfg, "{name}: the checkpoint's config");
        let _ = std::fs::remove_dir_all(&out);
    }
}
