//! The variant overrides (VIT_GEMM_VARIANT, VIT_ATTENTION_VARIANT) through the real CLI:
//! `verify` on the committed timm fixtures passes with each forced variant the adapter
//! runs (the GPU kernels included, on any adapter), and `info` names what will run.
//! The environment is read once per process, so each case is its own `vit-wgpu` process.

mod common;
use common::*;
use std::process::Command;
use vit_wgpu::kernels::{attention, gemm};

fn vit(args: &[&str], gemm_variant: &str, attention_variant: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vit-wgpu"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("VIT_GEMM_VARIANT", gemm_variant)
        .env("VIT_ATTENTION_VARIANT", attention_variant)
        .output()
        .expect("vit-wgpu runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn fixtures() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/fixtures")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("parity_") && n.ends_with(".safetensors"))
        .map(|n| format!("tests/fixtures/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no parity fixtures in {}", dir.display());
    files
}

/// One run of `verify` over every fixture with both families forced.
fn verify_forced(g: gemm::Variant, a: attention::Variant) {
    let files = fixtures();
    let mut args = vec!["verify"];
    args.extend(files.iter().map(String::as_str));
    let (ok, text) = vit(&args, g.name(), a.name());
    let gemm_line = format!("GEMM variant: {} (forced by VIT_GEMM_VARIANT", g.name());
    let attention_line = format!(
        "attention variant: {} (forced by VIT_ATTENTION_VARIANT",
        a.name()
    );
    assert!(
        text.contains(&gemm_line),
        "expected '{gemm_line}' in:\n{text}"
    );
    assert!(
        text.contains(&attention_line),
        "expected '{attention_line}' in:\n{text}"
    );
    assert!(
        ok,
        "verify failed with {} / {}:\n{text}",
        g.name(),
        a.name()
    );
    assert_eq!(text.matches(": PASS").count(), files.len(), "{text}");
    for line in text
        .lines()
        .filter(|l| l.contains("largest gradient error"))
    {
        eprintln!("gemm {} attention {}: {line}", g.name(), a.name());
    }
}

fn runs(g: gemm::Variant, a: attention::Variant) -> bool {
    let why = gemm::Gemm::supports(gpu(), g)
        .err()
        .or(attention::Attention::supports(gpu(), a).err());
    if let Some(why) = why {
        eprintln!(
            "SKIPPED verify with gemm {} / attention {} on '{}': {why}",
            g.name(),
            a.name(),
            gpu().info.name
        );
        return false;
    }
    true
}

#[test]
fn verify_passes_on_the_timm_fixtures_with_the_gpu_kernels_forced() {
    if runs(gemm::Variant::Tiled, attention::Variant::Tiled) {
        verify_forced(gemm::Variant::Tiled, attention::Variant::Tiled);
    }
}

#[test]
fn verify_passes_on_the_timm_fixtures_with_the_kernels_for_cpus_without_subgroups_forced() {
    if runs(gemm::Variant::Registers, attention::Variant::Rows) {
        verify_forced(gemm::Variant::Registers, attention::Variant::Rows);
    }
}

/// The kernels the browser runs on SwiftShader (4-lane subgroups): lavapipe's 8-lane
/// subgroups run lanes4's 4-invocation workgroups as one subgroup (one quad) each.
#[test]
fn verify_passes_on_the_timm_fixtures_with_the_kernels_for_4_lane_subgroups_forced() {
    if runs(gemm::Variant::Lanes4, attention::Variant::Lanes4) {
        verify_forced(gemm::Variant::Lanes4, attention::Variant::Lanes4);
    }
}

/// A variant the adapter cannot run, or a misspelt one, is ignored with the reason shown;
/// nothing panics.
#[test]
fn info_shows_an_unknown_forced_variant_as_ignored() {
    let (ok, text) = vit(&["info"], "fastest", "tiled");
    assert!(ok, "{text}");
    assert!(
        text.contains("VIT_GEMM_VARIANT=fastest ignored: no such variant"),
        "{text}"
    );
    assert!(text.contains("attention variant: tiled (forced"), "{text}");
}
