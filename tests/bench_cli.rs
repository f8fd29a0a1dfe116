//! The `bench` command's reports: `--json` carries the model's GFLOP/s and its ratio to the
//! in-run ceiling (scripts/bench_pytorch.py reads those keys), and `--profile`'s tables
//! add up: the commands timed in place to about a step, family shares to 100%, and each
//! group of like launches to its count times its per-launch time, no group larger than its
//! family.

use std::process::Command;

/// The tests of this file time steps: one bench at a time, or each slows the other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bench(args: &[&str]) -> String {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args([
            "bench",
            "--preset",
            "micro",
            "--batch-size",
            "4",
            "--steps",
            "2",
        ])
        .args(args)
        .output()
        .expect("run vit-wgpu bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vit-wgpu bench {args:?} failed (no adapter? install one: sudo apt-get install \
         mesa-vulkan-drivers): {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bench_json_reports_model_gflops_against_the_in_run_ceiling() {
    let stdout = bench(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let num = |key: &str| {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing from {stdout}"))
    };
    let (ips, per_image, gflops) = (
        num("images_per_second"),
        num("model_gflop_per_image"),
        num("model_gflops"),
    );
    assert!(ips > 0.0 && per_image > 0.0, "{stdout}");
    // a training step counts 3 forward passes of matmul FLOPs: micro's forward is 0.0112
    // GFLOP per image (README), counted independently here from the preset's shapes:
    // 49 patches of 16 pixels to 64, then 2 layers over 50 tokens (qkv, scores, values,
    // projection, MLP 256) and the linear head to 10 classes
    let (n, d, f) = (50.0, 64.0, 256.0);
    let layer = 2.0 * n * d * 3.0 * d + 4.0 * n * n * d + 2.0 * n * d * d + 4.0 * n * d * f;
    let forward = 2.0 * 49.0 * 16.0 * d + 2.0 * layer + 2.0 * d * 10.0;
    assert!(
        (per_image - 3.0 * forward * 1e-9).abs() < 1e-12,
        "model_gflop_per_image {per_image} against {}",
        3.0 * forward * 1e-9
    );
    assert!(
        (gflops - ips * per_image).abs() <= 1e-9 * gflops.max(1.0),
        "{stdout}"
    );
    let ceiling = num("ceiling_gflops");
    assert!(ceiling > 0.0, "{stdout}");
    assert!(
        (num("of_ceiling") - gflops / ceiling).abs() < 1e-9,
        "of_ceiling is not model_gflops / ceiling_gflops: {stdout}"
    );
}

#[test]
fn bench_profile_tables_add_up() {
    let stdout = bench(&["--profile"]);
    let lines: Vec<&str> = stdout.lines().collect();
    let families_at = lines
        .iter()
        .position(|l| l.starts_with("per kernel family"))
        .unwrap_or_else(|| panic!("no family table in {stdout}"));
    let launches_at = lines
        .iter()
        .position(|l| l.starts_with("largest launches"))
        .unwrap_or_else(|| panic!("no launch table in {stdout}"));
    let numbers = |l: &str| -> Vec<f64> {
        l.split_whitespace()
            .filter_map(|w| w.trim_end_matches('%').parse::<f64>().ok())
            .collect()
    };
    // Lavapipe has timestamps inside encoders: the step runs once with one between every
    // two commands, so the commands' sum is about a step's time (a real step also waits
    // for its submit and reads the loss back).
    let header = lines[families_at];
    assert!(header.contains("timed in place"), "{header}");
    let sum: f64 = header
        .rsplit("sum ")
        .next()
        .and_then(|w| w.trim_end_matches(" ms):").parse().ok())
        .unwrap_or_else(|| panic!("no sum in {header}"));
    let step: f64 = stdout
        .split("median step ")
        .nth(1)
        .and_then(|w| w.split(" ms").next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no median step in {stdout}"));
    // (wide bounds: the steps and the profile run are timed apart on a machine whose speed
    // moves; a unit or indexing error is off by far more)
    assert!(
        (0.25..4.0).contains(&(sum / step)),
        "commands timed in place sum to {sum} ms, a step takes {step} ms: {stdout}"
    );
    // "  cpu/gemm_lanes.wgsl   41.90 ms   45.8%"
    let mut families = std::collections::HashMap::new();
    let mut share = 0.0;
    for l in &lines[families_at + 1..launches_at] {
        let family = l.split_whitespace().next().expect("family name");
        let x = numbers(l);
        families.insert(family.to_string(), x[0]);
        share += x[1];
    }
    assert!(families.len() >= 5, "{stdout}");
    assert!(
        (share - 100.0).abs() < 0.5,
        "family shares sum to {share}: {stdout}"
    );
    // "  cpu/gemm_lanes.wgsl   workgroups [8, 100, 1]   4 x 3.60 = 14.39 ms  15.7%"
    let rows = &lines[launches_at + 1..];
    assert!(rows.len() >= 5, "{stdout}");
    let mut last = f64::INFINITY;
    for l in rows {
        let family = l.split_whitespace().next().expect("family name");
        let (count, each, total) = {
            let i = l.find(" x ").unwrap_or_else(|| panic!("no count in {l}"));
            let count: f64 = l[..i]
                .split_whitespace()
                .last()
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("count in {l}"));
            let x = numbers(&l[i + 3..]);
            (count, x[0], x[1])
        };
        assert!(
            (count * each - total).abs() <= 0.01 * count + 0.01,
            "{count} x {each} != {total}: {l}"
        );
        assert!(
            total <= last + 1e-9,
            "launch groups not largest first: {stdout}"
        );
        last = total;
        let family_total = families
            .get(family)
            .unwrap_or_else(|| panic!("launch family {family} not in the family table"));
        assert!(
            total <= family_total + 0.01,
            "{l} exceeds its family's {family_total} ms"
        );
    }
}
