//! What the browser tests share: the repository, a scratch folder, the check that what
//! they drive (node, Chromium, web/node_modules, web/pkg) is there, and running a program.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vit-wgpu-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// What the browser side needs, each missing piece named with how to get it.
pub fn check_prerequisites() {
    let mut missing = Vec::new();
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("node (apt-get install nodejs)".to_string());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        missing.push(format!("{chromium} (apt-get install chromium)"));
    }
    if !repo().join("web/node_modules/puppeteer-core").exists() {
        missing.push("web/node_modules/puppeteer-core (npm ci --prefix web)".into());
    }
    if !repo().join("web/pkg/vit_wgpu_bg.wasm").exists() {
        missing.push("web/pkg/vit_wgpu_bg.wasm (scripts/build_web.sh)".into());
    }
    assert!(
        missing.is_empty(),
        "the browser test needs: {}; .ci/web installs and builds all of them",
        missing.join(", ")
    );
}

/// The `error: ...` line a failing run prints on stderr.
#[allow(dead_code)] // the error-message tests only
pub fn error_line(program: &str, mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(!out.status.success(), "{program} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{program} printed no error line:\n{stderr}"))
        .to_string()
}

/// Runs `cmd`; its stdout when it succeeds, else a panic with both outputs.
#[allow(dead_code)] // the tests that compare the page with the CLI
pub fn run(program: &str, mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{program} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The JSON lines (`{...}`) of a program's output.
#[allow(dead_code)] // the tests that compare the page with the CLI
pub fn json_lines(program: &str, text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{program}: '{l}': {e}")))
        .collect()
}
