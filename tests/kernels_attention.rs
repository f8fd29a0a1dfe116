mod common;
use common::*;
use vit_wgpu::kernels::attention::*;
use vit_wgpu::reference::attention as reference;

/// qkv entries in [-2.5, 2.5): scaled scores have a standard deviation of about 2, so the
/// softmax is far from uniform.
const QKV_SCALE: f32 = 2.5;

fn shape(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> AttentionShape {
    AttentionShape {
        batch,
        tokens,
        heads,
        head_dim,
    }
}

/// Token counts {1, 5, 17, 65, 197} x head dims {16, 32, 64} x batch {1, 3, 5} x heads {1..4}
/// (odd batch x heads among them): every value of each at least once, within a minute of CPU
/// reference on 2 cores.
fn covering_shapes() -> Vec<AttentionShape> {
    vec![
        shape(1, 1, 1, 16),
        shape(3, 5, 1, 16),
        shape(1, 5, 3, 64),
        shape(5, 1, 3, 64),
        shape(5, 17, 2, 32),
        shape(2, 50, 2, 64),
        shape(1, 130, 1, 8),
        shape(1, 17, 4, 64),
        shape(1, 65, 3, 64),
        shape(5, 65, 4, 16),
        shape(1, 197, 2, 64),
        shape(5, 197, 1, 32),
        shape(2, 197, 3, 16),
        // head dims of 1, 3 and 5 vec4: the unrolled lanes loops stop between their steps
        shape(2, 9, 2, 4),
        shape(3, 23, 2, 12),
        shape(2, 33, 3, 20),
        // padded classes where D is a multiple of 64 (lanes rows from textures): d = 48 in
        // the class of 64, d = 8 in the class of 16
        shape(1, 23, 4, 48),
        shape(2, 9, 8, 8),
        // token counts whose last block of 8 streamed rows is full (64), half full (12), or
        // the only one (4)
        shape(2, 64, 2, 32),
        shape(3, 12, 2, 64),
        shape(2, 4, 1, 64),
        // the tiled kernels' row counts: 64 rows per workgroup, three groups (150), and one
        // full 128-row group (128)
        shape(1, 150, 3, 32),
        shape(1, 128, 1, 64),
    ]
}

/// Every variant the adapter runs; one line for each it does not, and why.
fn variants() -> Vec<Variant> {
    Variant::ALL
        .into_iter()
        .filter(|&v| match Attention::supports(gpu(), v) {
            Ok(()) => true,
            Err(why) => {
                eprintln!(
                    "SKIPPED attention variant {} on '{}': {why}",
                    v.name(),
                    gpu().info.name
                );
                false
            }
        })
        .collect()
}

fn describe(s: AttentionShape) -> String {
    format!(
        "B={} N={} A={} d={}",
        s.batch, s.tokens, s.heads, s.head_dim
    )
}

/// Forward (o, lse) and backward (dqkv) against the CPU reference; returns the largest
/// relative errors seen (forward, backward).
fn check_forward_backward(attention: &Attention, s: AttentionShape) -> (f64, f64) {
    let g = gpu();
    let mut r = rng();
    let (b, n, a, d) = (s.batch, s.tokens, s.heads, s.head_dim);
    let qkv: Vec<f32> = random(&mut r, s.qkv_len())
        .iter()
        .map(|v| v * QKV_SCALE)
        .collect();
    let d_o = random(&mut r, s.out_len());

    let mut o = vec![0.0; s.out_len()];
    let mut lse = vec![0.0; s.lse_len()];
    reference::forward(&mut o, &mut lse, &qkv, b, n, a, d);
    let mut dqkv = vec![0.0; s.qkv_len()];
    reference::backward(&mut dqkv, &d_o, &qkv, &o, &lse, b, n, a, d);

    let (bqkv, bdo) = (g.upload("qkv", &qkv), g.upload("dO", &d_o));
    let (bo, blse) = (poisoned(s.out_len()), poisoned(s.lse_len()));
    let forward = AttentionForward {
        shape: s,
        qkv: &bqkv,
        o: &bo,
        lse: &blse,
    };
    g.launch(attention, &forward);
    let variant = attention.variant();
    let what = format!("attention {variant:?} forward {}", describe(s));
    let e_o = assert_close(&format!("{what} o"), &read(&bo), &o, TOLERANCE);
    let e_lse = assert_close(&format!("{what} lse"), &read(&blse), &lse, TOLERANCE);

    let bdqkv = poisoned(s.qkv_len());
    let scratch = poisoned(Attention::scratch_len(s));
    let backward = AttentionBackward {
        shape: s,
        qkv: &bqkv,
        o: &bo,
        lse: &blse,
        d_o: &bdo,
        dqkv: &bdqkv,
        scratch: &scratch,
    };
    g.launch(attention, &backward);
    let what = format!("attention {variant:?} backward {}", describe(s));
    let ours = read(&bdqkv);
    let e_all = assert_close(&format!("{what} dqkv"), &ours, &dqkv, TOLERANCE);
    // dq, dk and dv apart too: each third must be right on its own, not just on aggregate.
    let model = s.model_dim();
    let mut e_parts = 0.0f64;
    for (part, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let pick = |v: &[f32]| -> Vec<f32> {
            v.chunks(3 * model)
                .flat_map(|row| row[part * model..(part + 1) * model].to_vec())
                .collect()
        };
        let e = assert_close(
            &format!("{what} {name}"),
            &pick(&ours),
            &pick(&dqkv),
            TOLERANCE,
        );
        e_parts = e_parts.max(e);
    }
    (e_o.max(e_lse), e_all.max(e_parts))
}

#[test]
fn attention_forward_and_backward_match_cpu_on_odd_token_counts_and_head_dims() {
    for variant in variants() {
        let attention = Attention::with_variant(gpu(), variant);
        let (mut fwd, mut bwd) = (0.0f64, 0.0f64);
        for s in covering_shapes() {
            let (f, b) = check_forward_backward(&attention, s);
            fwd = fwd.max(f);
            bwd = bwd.max(b);
        }
        eprintln!("{variant:?}: largest relative error: forward {fwd:.3e}, backward {bwd:.3e}");
    }
}

#[test]
fn attention_probabilities_match_cpu_and_rows_sum_to_one() {
    let g = gpu();
    let attention = Attention::new(g);
    let mut worst = 0.0f64;
    for s in [
        shape(1, 1, 2, 16),
        shape(5, 17, 3, 64),
        shape(1, 65, 4, 32),
        shape(2, 197, 3, 64),
    ] {
        let mut r = rng();
        let qkv: Vec<f32> = random(&mut r, s.qkv_len())
            .iter()
            .map(|v| v * QKV_SCALE)
            .collect();
        let mut probs = vec![0.0; s.probs_len()];
        reference::probabilities(&mut probs, &qkv, s.batch, s.tokens, s.heads, s.head_dim);

        let bqkv = g.upload("qkv", &qkv);
        let bprobs = poisoned(s.probs_len());
        let args = AttentionProbabilities {
            shape: s,
            qkv: &bqkv,
            probs: &bprobs,
        };
        g.launch(&attention, &args);
        let ours = read(&bprobs);
        let what = format!("attention probabilities {}", describe(s));
        worst = worst.max(assert_close(&what, &ours, &probs, TOLERANCE));
        for (row, p) in ours.chunks(s.tokens).enumerate() {
            let sum: f64 = p.iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{what}: row {row} sums to {sum}");
        }
    }
    eprintln!("largest relative error: probabilities {worst:.3e}");
}

/// With one token the softmax is exactly 1: o is that token's v, lse its single score.
#[test]
fn attention_of_one_token_returns_its_value_row() {
    let g = gpu();
    let s = shape(3, 1, 2, 32);
    let mut r = rng();
    let qkv = random(&mut r, s.qkv_len());
    let model = s.model_dim();
    for variant in variants() {
        let attention = Attention::with_variant(g, variant);
        let (bqkv, bo, blse) = (
            g.upload("qkv", &qkv),
            poisoned(s.out_len()),
            poisoned(s.lse_len()),
        );
        let forward = AttentionForward {
            shape: s,
            qkv: &bqkv,
            o: &bo,
            lse: &blse,
        };
        g.launch(&attention, &forward);
        check_one_token(s, &qkv, &read(&bo), &read(&blse), model);
    }
}

fn check_one_token(s: AttentionShape, qkv: &[f32], o: &[f32], lse_out: &[f32], model: usize) {
    let v: Vec<f32> = qkv
        .chunks(3 * model)
        .flat_map(|row| row[2 * model..].to_vec())
        .collect();
    assert_close("one-token attention o = v", o, &v, 1e-6);
    // lse of a single score s is s itself: q . k / sqrt(d)
    let lse: Vec<f32> = (0..s.batch * s.heads)
        .map(|bh| {
            let (b, a) = (bh / s.heads, bh % s.heads);
            let row = &qkv[b * 3 * model..(b + 1) * 3 * model];
            let d = s.head_dim;
            let dot: f64 = (0..d)
                .map(|c| row[a * d + c] as f64 * row[model + a * d + c] as f64)
                .sum();
            (dot / (d as f64).sqrt()) as f32
        })
        .collect();
    assert_close("one-token attention lse = q.k/sqrt(d)", lse_out, &lse, 1e-5);
}

/// The variant `Attention::new` takes follows the adapter's capabilities (or
/// VIT_ATTENTION_VARIANT), and says why.
#[test]
fn attention_new_picks_the_variant_the_adapter_supports() {
    let g = gpu();
    let attention = Attention::new(g);
    let forced = std::env::var("VIT_ATTENTION_VARIANT").ok();
    let expected = if let Some(v) = Variant::ALL
        .into_iter()
        .find(|v| forced.as_deref() == Some(v.name()) && Attention::supports(g, *v).is_ok())
    {
        v
    } else if g.caps.cpu {
        // the lanes shader's bindings exceed WebGPU's 8 storage buffers (VIT_LIMITS=webgpu)
        if g.caps.exact_subgroups(8).is_ok()
            && g.fits_limits(&vit_wgpu::kernels::ATTENTION_LANES).is_ok()
        {
            Variant::Lanes
        } else if g.caps.exact_subgroups(4).is_ok() {
            Variant::Lanes4
        } else {
            Variant::Rows
        }
    } else {
        Variant::Tiled
    };
    assert_eq!(
        attention.variant(),
        expected,
        "reason: {}",
        attention.reason()
    );
    assert!(!attention.reason().is_empty());
    eprintln!(
        "attention variant {}: {}",
        attention.variant().name(),
        attention.reason()
    );
}
