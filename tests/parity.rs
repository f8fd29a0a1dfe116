//! Parity with PyTorch/timm: debug-state files written by scripts/make_parity_fixture.py
//! (timm's VisionTransformer in float64) must verify on the GPU; a corrupted one must not;
//! plain timm state_dicts load; position embeddings resample exactly as timm's function.

mod common;
use common::*;
use pollster::block_on;
use std::path::{Path, PathBuf};
use vit_wgpu::model::checkpoint::{self, ConfigHints, TensorFile};
use vit_wgpu::model::config::{Act, Head};
use vit_wgpu::model::pos_embed;
use vit_wgpu::verify::{verify, verify_in_chunks, Tolerances};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vit-wgpu-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn timm_fixtures_verify_under_default_tolerances() {
    let g = gpu();
    for name in [
        "parity_micro_gelu.safetensors",
        "parity_rect_relu.safetensors",
        "parity_197_tokens.safetensors",
        "parity_resampled_pos.safetensors",
    ] {
        let report =
            block_on(verify(g, &fixture(name), Tolerances::default())).expect("verify runs");
        let worst = report
            .comparisons
            .iter()
            .max_by(|a, b| {
                (a.relative_error / a.tolerance).total_cmp(&(b.relative_error / b.tolerance))
            })
            .expect("comparisons");
        eprintln!("{name}: worst {} {:.2e}", worst.name, worst.relative_error);
        for c in &report.comparisons {
            assert!(
                c.passed(),
                "{name}: {} relative error {:.3e} >= {:.0e}",
                c.name,
                c.relative_error,
                c.tolerance
            );
        }
        // logits, loss and one gradient per parameter
        assert_eq!(
            report.comparisons.len(),
            2 + vit_wgpu::model::params::param_specs(&report.config).len()
        );
    }
}

#[test]
fn a_corrupted_expected_gradient_makes_verify_fail() {
    let g = gpu();
    let mut file = TensorFile::read(&fixture("parity_micro_gelu.safetensors")).expect("fixture");
    let grad = &mut file
        .tensors
        .get_mut("expected.grad.blocks.1.mlp.fc1.weight")
        .expect("gradient")
        .1;
    grad[17] += 0.5;
    let path = temp("corrupted.safetensors");
    file.write(&path).expect("write");
    let report = block_on(verify(g, &path, Tolerances::default())).expect("verify runs");
    assert!(!report.passed());
    let failed: Vec<&str> = report
        .comparisons
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, vec!["grad blocks.1.mlp.fc1.weight"]);
}

#[test]
fn a_plain_timm_state_dict_loads_with_its_config_read_off_the_shapes() {
    let src = fixture("parity_rect_relu.safetensors");
    let mut file = TensorFile::read(&src).expect("fixture");
    let (meta_cfg, _, _) = {
        let mut m = file.metadata.clone();
        m.insert("head".into(), "linear".into());
        let cfg = vit_wgpu::model::Config::from_metadata(&m).expect("config");
        (cfg, (), ())
    };
    // What safetensors.torch.save_file(model.state_dict()) writes: no config metadata.
    file.metadata.clear();
    file.tensors
        .retain(|k, _| !k.starts_with("expected.") && !k.starts_with("input."));
    file.int_tensors.clear();
    let path = temp("timm_state_dict.safetensors");
    file.write(&path).expect("write");
    // 24x40 is not a square grid: the size must be given, as must heads/act/eps.
    let hints = ConfigHints {
        heads: Some(2),
        act: Some(Act::Relu),
        ln_eps: Some(1e-5),
        image_size: None,
    };
    let err = checkpoint::load_any(&path, &hints).expect_err("non-square grid needs --image-size");
    assert!(err.to_string().contains("--image-size"), "{err}");
    let hints = ConfigHints {
        image_size: Some((24, 40)),
        ..hints
    };
    let (cfg, params, _) = checkpoint::load_any(&path, &hints).expect("load");
    assert_eq!(cfg.head, Head::Linear);
    assert_eq!(
        cfg,
        vit_wgpu::model::Config {
            dropout: 0.0,
            ..meta_cfg
        }
    );
    for (spec, v) in params.specs.iter().zip(&params.values) {
        assert_eq!(v, &file.tensors[&spec.name].1, "{}", spec.name);
    }
}

#[test]
fn pos_embed_resampling_matches_timm_and_identity_is_exact() {
    let file = TensorFile::read(&fixture("pos_embed_resample.safetensors")).expect("fixture");
    let cases: usize = file.metadata["cases"].parse().expect("cases");
    let dim: usize = file.metadata["dim"].parse().expect("dim");
    for i in 0..cases {
        let g: Vec<usize> = file.metadata[&format!("case{i}")]
            .split(',')
            .map(|v| v.parse().expect("size"))
            .collect();
        let input = &file.tensors[&format!("case{i}.input")].1;
        let expected = &file.tensors[&format!("case{i}.output")].1;
        let ours = pos_embed::resample(input, dim, (g[0], g[1]), (g[2], g[3]));
        assert_close(
            &format!("resample {}x{} -> {}x{}", g[0], g[1], g[2], g[3]),
            &ours,
            expected,
            1e-5,
        );
        assert_eq!(ours[..dim], input[..dim], "the CLS position is kept as is");
        if (g[0], g[1]) == (g[2], g[3]) {
            assert_eq!(
                &ours, input,
                "identity resampling must return the input exactly"
            );
        }
    }
}

#[test]
fn head_swap_keeps_every_body_tensor_bit_for_bit() {
    let src = fixture("parity_micro_gelu.safetensors");
    let (cfg, params, _) = checkpoint::load_any(&src, &ConfigHints::default()).expect("load");
    for (head, classes) in [
        (Head::Mlp { hidden: 32 }, 3),
        (Head::Linear, 5),
        (Head::Linear, cfg.classes),
    ] {
        let new_cfg = vit_wgpu::model::Config {
            head,
            classes,
            ..cfg.clone()
        };
        let merged = vit_wgpu::model::init::merge_init(&cfg, &params, &new_cfg, 1).expect("merge");
        assert_eq!(merged.specs, vit_wgpu::model::params::param_specs(&new_cfg));
        let body = vit_wgpu::model::params::body_specs(&cfg).len();
        for i in 0..body {
            assert_eq!(
                merged.values[i], params.values[i],
                "{} changed",
                merged.specs[i].name
            );
        }
        if head == cfg.head && classes == cfg.classes {
            assert_eq!(merged.values, params.values, "same head: kept");
        } else {
            assert_ne!(merged.values[body..], params.values[body..]);
        }
    }
    // A different body is refused.
    let other = vit_wgpu::model::Config {
        dim: 96,
        heads: 4,
        ..cfg.clone()
    };
    assert!(vit_wgpu::model::init::merge_init(&cfg, &params, &other, 1).is_err());
}

#[test]
fn timm_training_trajectory_replays_through_the_training_step() {
    let g = gpu();
    let path = fixture("trajectory_small.safetensors");
    let report = block_on(verify(g, &path, Tolerances::default())).expect("verify runs");
    let steps = 20;
    // learning rates, one loss per step, one final tensor per parameter
    assert_eq!(
        report.comparisons.len(),
        1 + steps + vit_wgpu::model::params::param_specs(&report.config).len()
    );
    for c in &report.comparisons {
        eprintln!("{:<40} {:.2e}", c.name, c.relative_error);
        assert!(
            c.passed(),
            "{} relative error {:.3e} >= {:.0e}",
            c.name,
            c.relative_error,
            c.tolerance
        );
    }
}

#[test]
fn a_trajectory_with_another_optimizer_setting_fails_verify() {
    // The fixture must be able to fail: replaying it without weight decay, or with the learning
    // rate the seed's schedule gave the last step (zero), is caught.
    let g = gpu();
    let mut file = TensorFile::read(&fixture("trajectory_small.safetensors")).expect("fixture");
    file.metadata.insert("weight_decay".into(), "0".into());
    let path = temp("trajectory_no_decay.safetensors");
    file.write(&path).expect("write");
    let report = block_on(verify(g, &path, Tolerances::default())).expect("verify runs");
    let failed: Vec<&str> = report
        .comparisons
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.name.as_str())
        .collect();
    assert!(
        failed.contains(&"final blocks.0.attn.qkv.weight"),
        "decay off must change the weight matrices: {failed:?}"
    );
    assert!(
        !failed.contains(&"loss step 1"),
        "step 1's loss comes before any update: {failed:?}"
    );

    let mut file = TensorFile::read(&fixture("trajectory_small.safetensors")).expect("fixture");
    let lr = &mut file.tensors.get_mut("trajectory.lr").expect("lr").1;
    lr[19] = 0.0;
    file.write(&path).expect("write");
    let report = block_on(verify(g, &path, Tolerances::default())).expect("verify runs");
    assert!(
        !report.comparisons[0].passed(),
        "a zero last-step rate is caught"
    );
}

/// The largest parameter tensor's bytes, rounded up to 256 (every adapter's storage offset
/// alignment divides it): the smallest arena chunk the model fits, so the most chunks.
fn smallest_chunk_bytes(cfg: &vit_wgpu::model::Config) -> u64 {
    let specs = vit_wgpu::model::params::param_specs(cfg);
    let largest = specs.iter().map(|s| 4 * s.len() as u64).max().unwrap_or(0);
    largest.next_multiple_of(256)
}

fn assert_all_pass(name: &str, report: &vit_wgpu::verify::Report) {
    for c in &report.comparisons {
        assert!(
            c.passed(),
            "{name}: {} relative error {:.3e} >= {:.0e}",
            c.name,
            c.relative_error,
            c.tolerance
        );
    }
}

/// Every fixture, the training trajectory included (AdamW steps with clipping and weight
/// decay over all chunks), with the parameter arena in as many chunks as its tensors allow.
#[test]
fn timm_fixtures_verify_with_the_parameter_arena_in_many_chunks() {
    let g = gpu();
    for name in [
        "parity_micro_gelu.safetensors",
        "parity_rect_relu.safetensors",
        "parity_197_tokens.safetensors",
        "parity_resampled_pos.safetensors",
        "trajectory_small.safetensors",
    ] {
        let path = fixture(name);
        let whole =
            pollster::block_on(verify(g, &path, Tolerances::default())).expect("verify runs");
        let bytes = smallest_chunk_bytes(&whole.config);
        let report = pollster::block_on(verify_in_chunks(
            g,
            &path,
            Tolerances::default(),
            Some(bytes),
        ))
        .expect("verify runs");
        eprintln!("{name}: {} chunks of <= {bytes} bytes", report.arena_chunks);
        assert!(
            report.arena_chunks >= 4,
            "{name}: {} chunks",
            report.arena_chunks
        );
        assert_eq!(whole.arena_chunks, 1, "{name}");
        assert_all_pass(name, &report);
        assert_eq!(report.comparisons.len(), whole.comparisons.len());
    }
}

/// ViT-B's width (D 768, 12 heads, MLP 3072) at depth 6: 43M parameters, more than
/// WebGPU's 128 MiB binding. Run as a user would, `vit-wgpu verify` under WebGPU's default
/// limits (`VIT_LIMITS=webgpu`) and with the arena capped at 16 MiB chunks, so the test
/// needs the chunks whatever the adapter's own limits.
#[test]
fn a_vit_b_width_model_larger_than_one_binding_verifies_against_timm() {
    let path = fixture("parity_vitb_width_hashed.safetensors");
    let file = TensorFile::read(&path).expect("fixture");
    let parameters: u64 = file.metadata["parameters"].parse().expect("parameters");
    assert!(
        4 * parameters > 128 << 20,
        "{parameters} parameters fit one binding"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args(["verify", path.to_str().expect("utf-8 path")])
        .env("VIT_LIMITS", "webgpu")
        .env(
            vit_wgpu::model::arena::CHUNK_BYTES_ENV,
            (16u64 << 20).to_string(),
        )
        .output()
        .expect("vit-wgpu runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "verify failed");
    assert!(stdout.contains("largest gradient error") && stdout.contains("PASS"));
    // logits, loss, and per parameter its samples and its norm
    let report_lines = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("grad "));
    let cfg = vit_wgpu::model::Config::from_metadata(&file.metadata).expect("config");
    assert_eq!(
        report_lines.count(),
        2 * vit_wgpu::model::params::param_specs(&cfg).len()
    );
}

/// The hashed fixture must be able to fail: a wrong sample, or a wrong norm.
#[test]
fn a_corrupted_hashed_fixture_fails_verify_on_that_tensor() {
    let g = gpu();
    let path = fixture("parity_vitb_width_hashed.safetensors");
    let mut file = TensorFile::read(&path).expect("fixture");
    file.tensors
        .get_mut("expected.grad_samples.blocks.5.mlp.fc1.weight")
        .expect("samples")
        .1[100] += 0.5;
    file.tensors
        .get_mut("expected.grad_norm.blocks.0.attn.qkv.weight")
        .expect("norm")
        .1[0] *= 1.01;
    let corrupted = temp("hashed_corrupted.safetensors");
    file.write(&corrupted).expect("write");
    let report =
        pollster::block_on(verify(g, &corrupted, Tolerances::default())).expect("verify runs");
    let failed: Vec<&str> = report
        .comparisons
        .iter()
        .filter(|c| !c.passed())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        failed,
        vec![
            "grad norm blocks.0.attn.qkv.weight",
            "grad blocks.5.mlp.fc1.weight"
        ]
    );
}

/// The arena's chunking changes where tensors live, not what any kernel computes: gradients,
/// moments and parameters after AdamW steps (weight decay on, clipping off: the norm's
/// partial sums add up in another order) match one chunk bit for bit, for the whole model
/// and for the head alone (`set_trainable`, the body left as it was).
#[test]
fn training_in_many_arena_chunks_matches_one_chunk_bit_for_bit() {
    use vit_wgpu::model::{HostParams, Kernels, Mode, OptimConfig, Vit};
    let g = gpu();
    let kernels = Kernels::new(g);
    let cfg = vit_wgpu::model::config::Preset::Micro.config();
    let params = HostParams::init(&cfg, 5);
    let batch = 3;
    let mut r = rng();
    let images = random(&mut r, batch * cfg.channels * cfg.image_h * cfg.image_w);
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 7) % 10).collect();
    let opt = OptimConfig {
        weight_decay: 0.05,
        max_grad_norm: 0.0,
        ..OptimConfig::default()
    };
    let chunks = Some(smallest_chunk_bytes(&cfg));
    let mut models = [None, chunks].map(|bytes| {
        let m = Vit::with_chunk_bytes(g, &kernels, &cfg, &params, batch, Mode::Train, 1, bytes);
        m.expect("model")
    });
    assert_eq!(models[0].arena.layout.chunks.len(), 1);
    assert!(models[1].arena.layout.chunks.len() >= 4);
    let step = |m: &Vit, step: u64| {
        m.write_batch(g, &images, &labels);
        m.write_step(g, step, 1e-2, &opt);
        let mut encoder = g.device.create_command_encoder(&Default::default());
        m.record_train_step(&mut encoder);
        g.queue.submit([encoder.finish()]);
    };
    let state = |m: &Vit| {
        let moments = pollster::block_on(m.read_moments(g)).expect("moments");
        (
            pollster::block_on(m.read_params(g)).expect("params").values,
            pollster::block_on(m.read_grads(g)).expect("grads"),
            moments,
        )
    };
    for s in 1..=3 {
        models.iter().for_each(|m| step(m, s));
    }
    let (one, many) = (state(&models[0]), state(&models[1]));
    assert!(one.0 != params.values, "the steps moved nothing");
    assert!(one == many, "the whole model: many chunks differ from one");

    let head = |s: &vit_wgpu::model::ParamSpec| s.name.starts_with("head.");
    for m in &mut models {
        m.set_trainable(g, &kernels, head);
    }
    for s in 4..=5 {
        models.iter().for_each(|m| step(m, s));
    }
    let (one_head, many_head) = (state(&models[0]), state(&models[1]));
    assert!(
        one_head == many_head,
        "the head alone: many chunks differ from one"
    );
    for (i, spec) in params.specs.iter().enumerate() {
        let moved = one_head.0[i] != one.0[i];
        assert_eq!(moved, head(spec), "{} moved: {moved}", spec.name);
    }
}
