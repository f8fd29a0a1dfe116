//! The whole model: the f64 CPU reference against finite differences, then the device
//! model's logits, loss and every parameter gradient against the CPU reference.

mod common;
use common::*;
use pollster::block_on;
use rand::Rng;
use vit_wgpu::model::config::{Act, Config, Head, Options, Pool, Preset};
use vit_wgpu::model::{reference, HostParams, Kernels, Mode, OptimConfig, Vit};

/// Parameters perturbed away from their init (so LayerNorm gains, biases, cls are not 0/1).
fn perturbed_params(cfg: &Config, r: &mut impl Rng) -> HostParams {
    let mut p = HostParams::init(cfg, r.random());
    for v in p.values.iter_mut() {
        for x in v.iter_mut() {
            *x += r.random_range(-0.1..0.1);
        }
    }
    p
}

fn small_config() -> Config {
    Config {
        image_h: 8,
        image_w: 12,
        channels: 2,
        patch: 4,
        dim: 8,
        depth: 2,
        heads: 2,
        mlp_hidden: 12,
        act: Act::Gelu,
        head: Head::Mlp { hidden: 6 },
        dropout: 0.0,
        ln_eps: 1e-5,
        classes: 3,
        options: Default::default(),
    }
}

/// Central differences of the reference loss at a few entries of every tensor (the first,
/// the middle, the last and a random one) against the reference's analytic gradients.
fn assert_matches_finite_differences(
    what: &str,
    params: &HostParams,
    run: impl Fn(&[Vec<f64>]) -> reference::ReferenceResult,
    r: &mut impl Rng,
) {
    let mut p64 = reference::widen(params);
    let res = run(&p64);
    let h = 1e-5;
    let mut checked = 0;
    for (t, spec) in params.specs.iter().enumerate() {
        let n = spec.len();
        for i in [0, n / 2, n - 1, r.random_range(0..n)] {
            let orig = p64[t][i];
            p64[t][i] = orig + h;
            let up = run(&p64).loss;
            p64[t][i] = orig - h;
            let down = run(&p64).loss;
            p64[t][i] = orig;
            let fd = (up - down) / (2.0 * h);
            let an = res.grads[t][i];
            assert!(
                (fd - an).abs() <= 1e-7 + 1e-5 * an.abs().max(fd.abs()),
                "{what} {}[{i}]: finite difference {fd:e} vs analytic {an:e}",
                spec.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 4 * params.specs.len());
}

#[test]
fn cpu_reference_gradients_match_finite_differences() {
    let mut r = rng();
    for act in [Act::Gelu, Act::Relu] {
        let cfg = Config {
            act,
            ..small_config()
        };
        let params = perturbed_params(&cfg, &mut r);
        let b = 2;
        let images = random(&mut r, b * cfg.channels * cfg.image_h * cfg.image_w);
        let labels: Vec<u32> = (0..b)
            .map(|_| r.random_range(0..cfg.classes as u32))
            .collect();
        let loss = |p: &[Vec<f64>]| reference::forward_backward(&cfg, p, &params, &images, &labels);
        assert_matches_finite_differences(&format!("{act:?}"), &params, loss, &mut r);
    }
}

fn gpu_matches_cpu(cfg: &Config, batch: usize, grad_tol: f64) {
    gpu_matches_reference(cfg, batch, grad_tol, None)
}

fn gpu_matches_reference(
    cfg: &Config,
    batch: usize,
    grad_tol: f64,
    drop: Option<reference::DropoutAt>,
) {
    let g = gpu();
    let mut r = rng();
    let params = perturbed_params(cfg, &mut r);
    let images = random(&mut r, batch * cfg.channels * cfg.image_h * cfg.image_w);
    let labels: Vec<u32> = (0..batch)
        .map(|_| r.random_range(0..cfg.classes as u32))
        .collect();
    let p64 = reference::widen(&params);
    let reference = reference::forward_backward_at(cfg, &p64, &params, &images, &labels, drop);

    let kernels = Kernels::new(g);
    let seed = drop.map_or(0, |d| d.seed);
    let model = Vit::new(g, &kernels, cfg, &params, batch, Mode::Train, seed).expect("model");
    model.write_batch(g, &images, &labels);
    if let Some(d) = drop {
        model.write_step(g, d.step as u64, 0.0, &OptimConfig::default());
    }
    // Gradients are overwritten by the backward pass: poison them first.
    let grads = model.arena.grads.as_ref();
    for chunk in grads.expect("train mode has gradients") {
        g.poison(chunk);
    }
    let mut encoder = g.device.create_command_encoder(&Default::default());
    model.record_gradients(&mut encoder);
    g.queue.submit([encoder.finish()]);
    let logits: Vec<f32> = read(&model.logits);
    let losses: Vec<f32> = read(&model.losses);
    let ref_logits: Vec<f32> = reference.logits.iter().map(|&v| v as f32).collect();
    let what = format!("{cfg}");
    assert_close(
        &format!("logits of {what}"),
        &logits[..batch * cfg.classes],
        &ref_logits,
        TOLERANCE,
    );
    let loss = losses[..batch].iter().map(|&v| v as f64).sum::<f64>() / batch as f64;
    assert!(
        (loss - reference.loss).abs() <= 1e-4 * reference.loss.abs(),
        "loss {loss} vs reference {}",
        reference.loss
    );
    let grads = block_on(model.read_grads(g)).expect("read gradients");
    let mut worst = (0.0, String::new());
    for ((spec, ours), theirs) in params.specs.iter().zip(&grads).zip(&reference.grads) {
        let theirs32: Vec<f32> = theirs.iter().map(|&v| v as f32).collect();
        // A gradient zero in exact arithmetic (qk-norm's k bias: a constant on every key
        // of a row cancels in its softmax) is rounding noise on both sides: compared
        // absolutely.
        if theirs.iter().all(|v| v.abs() < 1e-12) {
            let max = ours.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(max < 1e-6, "grad {} should be 0, has {max:e}", spec.name);
            continue;
        }
        let err = assert_close(
            &format!("grad {} of {what}", spec.name),
            ours,
            &theirs32,
            grad_tol,
        );
        if err > worst.0 {
            worst = (err, spec.name.clone());
        }
    }
    eprintln!("largest gradient error {:.2e} in {}", worst.0, worst.1);
}

#[test]
fn micro_preset_gradients_on_gpu_match_cpu_reference() {
    let cfg = Preset::Micro.config();
    gpu_matches_cpu(&cfg, 3, 1e-3);
}

#[test]
fn rectangular_odd_config_with_relu_and_mlp_head_matches_cpu_reference() {
    let cfg = Config {
        image_h: 12,
        image_w: 20,
        channels: 3,
        patch: 4,
        dim: 48,
        depth: 2,
        heads: 3,
        mlp_hidden: 72,
        act: Act::Relu,
        head: Head::Mlp { hidden: 40 },
        dropout: 0.0,
        ln_eps: 1e-5,
        classes: 7,
        options: Default::default(),
    };
    gpu_matches_cpu(&cfg, 5, 1e-3);
}

#[test]
fn reference_gradients_with_dropout_match_finite_differences() {
    let mut r = rng();
    // a linear head: the small config's ReLU MLP head is dead for some draws of the
    // parameters, and then no dropout upstream moves the loss
    let cfg = Config {
        dropout: 0.3,
        head: Head::Linear,
        ..small_config()
    };
    let drop = Some(reference::DropoutAt {
        seed: 0x1234_5678_9abc,
        step: 7,
    });
    let params = perturbed_params(&cfg, &mut r);
    let b = 2;
    let images = random(&mut r, b * cfg.channels * cfg.image_h * cfg.image_w);
    let labels: Vec<u32> = (0..b).map(|i| i as u32 % cfg.classes as u32).collect();
    let run =
        |p: &[Vec<f64>]| reference::forward_backward_at(&cfg, p, &params, &images, &labels, drop);
    let p64 = reference::widen(&params);
    let plain = reference::forward_backward(&cfg, &p64, &params, &images, &labels);
    let dropped = run(&p64).loss;
    assert!(
        (dropped - plain.loss).abs() > 1e-6,
        "dropout at p=0.3 left the loss unchanged ({dropped} vs {})",
        plain.loss
    );
    assert_matches_finite_differences("dropout", &params, run, &mut r);
}

#[test]
fn gradients_with_dropout_on_gpu_match_reference() {
    let cfg = Config {
        dropout: 0.25,
        ..small_config()
    };
    let drop = reference::DropoutAt {
        seed: 0xfeed_beef_0042,
        step: 3,
    };
    gpu_matches_reference(&cfg, 4, 1e-3, Some(drop));
}

/// Every option of timm's ViT descendants (issue 33) on the small config, one at a time
/// and a few together, with a linear head (the distilled model needs one).
fn option_configs() -> Vec<(&'static str, Config)> {
    let base = Config {
        head: Head::Linear,
        ..small_config()
    };
    let with = |f: &dyn Fn(&mut Options)| {
        let mut c = base.clone();
        f(&mut c.options);
        c
    };
    vec![
        ("no_embed_class", with(&|o| o.no_embed_class = true)),
        (
            "gap_fc_norm",
            with(&|o| {
                o.class_token = false;
                o.pool = Pool::Avg;
                o.fc_norm = true;
            }),
        ),
        ("avg_with_cls_norm_per_token", with(&|o| o.pool = Pool::Avg)),
        ("layer_scale", with(&|o| o.layer_scale = Some(0.3))),
        (
            "registers_no_embed_class",
            with(&|o| {
                o.reg_tokens = 3;
                o.no_embed_class = true;
            }),
        ),
        ("registers_with_pos", with(&|o| o.reg_tokens = 2)),
        ("distilled", with(&|o| o.distilled = true)),
        (
            "pre_norm_quick_gelu",
            Config {
                act: Act::QuickGelu,
                ..with(&|o| o.pre_norm = true)
            },
        ),
        ("qk_norm", with(&|o| o.qk_norm = true)),
        (
            "gap_medium_no_qkv_bias",
            with(&|o| {
                o.class_token = false;
                o.pool = Pool::Avg;
                o.qkv_bias = false;
                o.layer_scale = Some(-0.4);
            }),
        ),
    ]
}

#[test]
fn cpu_reference_gradients_with_every_option_match_finite_differences() {
    let mut r = rng();
    for (name, cfg) in option_configs() {
        cfg.validate().expect(name);
        let params = perturbed_params(&cfg, &mut r);
        let b = 2;
        let images = random(&mut r, b * cfg.channels * cfg.image_h * cfg.image_w);
        let labels: Vec<u32> = (0..b)
            .map(|_| r.random_range(0..cfg.classes as u32))
            .collect();
        let loss = |p: &[Vec<f64>]| reference::forward_backward(&cfg, p, &params, &images, &labels);
        assert_matches_finite_differences(name, &params, loss, &mut r);
    }
}

#[test]
fn gpu_gradients_with_every_option_match_cpu_reference() {
    for (name, cfg) in option_configs() {
        eprintln!("option config {name}");
        gpu_matches_cpu(&cfg, 3, 1e-3);
    }
}

#[test]
fn gpu_gradients_with_options_and_dropout_match_reference() {
    let drop = reference::DropoutAt {
        seed: 0x0b7e_0042_1234,
        step: 5,
    };
    for (name, cfg) in option_configs() {
        eprintln!("option config {name} with dropout");
        let cfg = Config {
            dropout: 0.2,
            ..cfg
        };
        gpu_matches_reference(&cfg, 3, 1e-3, Some(drop));
    }
}
