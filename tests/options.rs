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
        let report = verify(g, &fixture(name), Tolerances::default()).expect("verify runs");
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
