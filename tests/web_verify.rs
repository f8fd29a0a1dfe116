//! `verify` in headless Chromium (scripts/web_verify.mjs): every parity fixture's logits,
//! loss and gradients, and the training trajectory's losses and final weights, on the page's
//! WebGPU within the native tolerances; a wrong expected gradient fails naming the tensor.
//! Needs what tests/web_infer.rs needs (.ci/web installs it):
//!     cargo test --release --features web-tests --test web_verify
#![cfg(feature = "web-tests")]

use std::process::{Command, Output};
use vit_wgpu::model::checkpoint::TensorFile;
use web::{check_prerequisites, fresh_dir, repo};

mod web;

fn web_verify(files: &[std::path::PathBuf]) -> Output {
    Command::new("node")
        .arg(repo().join("scripts/web_verify.mjs"))
        .args(files)
        .output()
        .expect("cannot run node")
}

#[test]
fn every_parity_fixture_verifies_in_the_browser() {
    check_prerequisites();
    let fixtures = repo().join("tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&fixtures)
        .expect("tests/fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            (name.starts_with("parity_") || name.starts_with("trajectory_"))
                && name.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "parity fixtures in {}",
        fixtures.display()
    );
    let out = web_verify(&files);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "web_verify failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &files {
        assert!(
            stdout.contains(&format!("{}: ", f.display())),
            "no report for {}:\n{stdout}",
            f.display()
        );
    }
    let grads = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("grad "))
        .count();
    assert!(grads >= 50, "only {grads} gradients compared:\n{stdout}");
    // The page runs what a browser user's adapter gets: the portable kernels, but for the
    // GEMM and attention of CPU adapters with 4-lane subgroups (SwiftShader, here:
    // `lanes4`); never the texture reads or the 8-lane kernels of lavapipe.
    let kernels: Vec<_> = stdout.lines().filter(|l| l.contains("kernels: ")).collect();
    assert_eq!(kernels.len(), files.len(), "kernel lines:\n{stdout}");
    for line in kernels {
        assert!(
            (line.contains("gemm tiled")
                || line.contains("gemm registers")
                || line.contains("gemm lanes4"))
                && (line.contains("attention tiled")
                    || line.contains("attention rows")
                    || line.contains("attention lanes4"))
                && line.contains("texture reads off"),
            "the page should run the portable kernels (or lanes4): {line}"
        );
    }
}

#[test]
fn a_wrong_gradient_fails_naming_the_tensor() {
    check_prerequisites();
    let src = repo().join("tests/fixtures/parity_micro_gelu.safetensors");
    let mut file = TensorFile::read(&src).expect("fixture");
    let name = "expected.grad.blocks.1.mlp.fc1.weight";
    let (_, values) = file.tensors.get_mut(name).expect("gradient in the fixture");
    values[17] += 0.05 * values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let dir = fresh_dir("verify");
    let bad = dir.join("parity_wrong_grad.safetensors");
    file.write(&bad).expect("write");
    let out = web_verify(std::slice::from_ref(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong gradient passed");
    assert!(
        stderr.contains("grad blocks.1.mlp.fc1.weight: relative error"),
        "the failure should name the tensor:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
