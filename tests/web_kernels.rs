//! Every kernel's CPU-reference check in headless Chromium's WebGPU (scripts/web_kernels.mjs
//! runs src/kernels/checks on the page): each portable entry point, forward and backward,
//! odd shapes, outputs poisoned with NaN; a failure names the kernel, the shape and the
//! error, and the entry points launched are exactly those of shaders/*.wgsl.
//! Needs what tests/web_infer.rs needs (.ci/web installs it), with web/pkg built with the
//! checks in:
//!     WEB_FEATURES=web-checks scripts/build_web.sh
//!     cargo test --release --features web-tests --test web_kernels
#![cfg(feature = "web-tests")]

use std::collections::BTreeSet;
use std::process::{Command, Output};
use vit_wgpu::kernels::checks;
use web::{check_prerequisites, repo};

// Shared with the other browser tests, which use more of it.
#[allow(dead_code)]
mod web;

fn web_kernels(args: &[&str]) -> Output {
    Command::new("node")
        .arg(repo().join("scripts/web_kernels.mjs"))
        .args(args)
        .output()
        .expect("cannot run node")
}

/// "shader.wgsl:entry" for every compute entry point of shaders/*.wgsl, and of the
/// shaders/cpu/ kernels the browser runs (`checks::CHECKED_CPU_SHADERS`).
fn portable_entry_points() -> BTreeSet<String> {
    checks::checked_entry_points(&repo().join("shaders")).expect("read shaders/")
}

#[test]
fn every_kernel_check_passes_in_the_browser_and_covers_every_entry_point() {
    check_prerequisites();
    let out = web_kernels(&["--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line from web_kernels.mjs"))
        .collect();
    let failures: Vec<String> = lines
        .iter()
        .filter(|l| l["ok"] != true)
        .map(|l| {
            l["error"]
                .as_str()
                .unwrap_or("failed without a message")
                .to_string()
        })
        .collect();
    assert!(
        failures.is_empty() && out.status.success(),
        "{} of {} kernel checks failed in Chromium:\n{}\n{stderr}",
        failures.len(),
        lines.len(),
        failures.join("\n")
    );
    assert_eq!(
        lines.len(),
        checks::all().len(),
        "one line per check:\n{stdout}"
    );
    let launched: BTreeSet<String> = lines
        .iter()
        .flat_map(|l| l["launched"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let shaders = portable_entry_points();
    let unchecked: Vec<_> = shaders.difference(&launched).collect();
    let unknown: Vec<_> = launched.difference(&shaders).collect();
    assert!(
        unchecked.is_empty() && unknown.is_empty(),
        "entry points no check launched in Chromium: {unchecked:?}; launched but not in \
         shaders/*.wgsl: {unknown:?}"
    );
}

/// A reference moved by one element fails in the browser, naming the kernel, the shape and
/// the output.
#[test]
fn a_wrong_reference_fails_naming_the_kernel_and_shape() {
    check_prerequisites();
    let out = web_kernels(&["--filter", "layernorm backward", "--perturb"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong reference passed");
    assert!(
        stderr.contains("kernel checks failed")
            && stderr.contains("layernorm backward (rows=17 cols=96 accumulate=false")
            && stderr.contains("dx: error"),
        "the failure should name the kernel, the shape and the output:\n{stderr}"
    );
}
