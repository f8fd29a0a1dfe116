//! The kernel checks the browser runs (src/kernels/checks, scripts/web_kernels.mjs), run
//! natively within WebGPU's default limits: a check that is wrong fails here too, against
//! the same reference. And the checks cover every entry point of shaders/*.wgsl (the
//! CPU-adapter shaders under shaders/cpu/ have their own tests, but for the one the browser
//! runs, `checks::CHECKED_CPU_SHADERS`). A check of a variant the adapter cannot run (the
//! subgroup GEMM on GL) prints one line saying why; CI's lavapipe runs them all.
//!     cargo test --release --test kernel_checks

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use vit_wgpu::gpu::{Gpu, GpuOptions, LimitsMode};
use vit_wgpu::kernels::checks::{self, Case};

fn webgpu_device() -> Gpu {
    let options = GpuOptions {
        limits: Some(LimitsMode::Webgpu),
        ..Default::default()
    };
    match pollster::block_on(Gpu::new(&options)) {
        Ok(gpu) => gpu,
        Err(e) => panic!(
            "these tests need a wgpu adapter: {e}\n\
             (CI and machines without a GPU: `apt-get install mesa-vulkan-drivers`)"
        ),
    }
}

/// A fresh seed each run, printed (VIT_TEST_SEED replays one).
fn seed() -> u64 {
    let seed = std::env::var("VIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (set VIT_TEST_SEED={seed} to replay)");
    seed
}

/// One check's failure line, or `None`; a panic inside it fails it with its message.
fn run(gpu: &Gpu, id: usize, case: &Case, seed: u64, perturb: bool) -> Option<String> {
    let case_seed = checks::case_seed(seed, id);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        pollster::block_on(checks::run(gpu, case, case_seed, perturb))
    }));
    match result {
        Ok(outcome) => {
            if let Some(why) = &outcome.unsupported {
                eprintln!(
                    "skip {} {} ({}): {why}",
                    case.kernel, case.check, case.shape
                );
                return None;
            }
            let worst = outcome.worst();
            eprintln!(
                "{} {} {} ({}): {}",
                if outcome.passed() { "ok  " } else { "FAIL" },
                case.kernel,
                case.check,
                case.shape,
                worst.map_or("nothing compared".into(), |c| format!(
                    "{} {:.2e} (tolerance {:.0e})",
                    c.name, c.error, c.tolerance
                ))
            );
            outcome.failure()
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Some(format!(
                "{} {} ({}): panicked: {message}",
                case.kernel, case.check, case.shape
            ))
        }
    }
}

#[test]
fn every_kernel_check_passes_natively_within_webgpu_limits() {
    let gpu = webgpu_device();
    eprintln!("adapter: {}", gpu.describe());
    let seed = seed();
    let cases = checks::all();
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(id, case)| run(&gpu, id, case, seed, false))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} kernel checks failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// "shader.wgsl:entry" for every compute entry point of shaders/*.wgsl, and of the
/// shaders/cpu/ kernels the browser runs (`checks::CHECKED_CPU_SHADERS`).
fn portable_entry_points() -> BTreeSet<String> {
    checks::checked_entry_points(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders"))
        .expect("read shaders/")
}

#[test]
fn the_checks_cover_every_portable_entry_point() {
    let shaders = portable_entry_points();
    assert!(
        shaders.len() >= 40,
        "only {} entry points found",
        shaders.len()
    );
    let checked: BTreeSet<String> = checks::all()
        .iter()
        .flat_map(|c| c.entries.iter().map(|e| e.to_string()))
        .collect();
    let unchecked: Vec<_> = shaders.difference(&checked).collect();
    let unknown: Vec<_> = checked.difference(&shaders).collect();
    assert!(
        unchecked.is_empty() && unknown.is_empty(),
        "entry points without a check: {unchecked:?}; checks of entry points not in shaders/: {unknown:?}"
    );
    eprintln!("{} entry points, each checked", shaders.len());
}

#[test]
fn entry_points_are_read_from_the_compute_attributes() {
    let source = "// @compute fn commented_out() {}\n\
                  @compute @workgroup_size(64)\nfn first(@builtin(global_invocation_id) g: vec3<u32>) {}\n\
                  fn helper() {}\n\
                  @compute\n@workgroup_size(8, 8)\nfn second() {}\n";
    assert_eq!(checks::entry_points(source), ["first", "second"]);
}

/// The harness's own check: a reference moved by one element fails, and the failure names
/// the kernel, the shape and the output.
#[test]
fn a_wrong_reference_fails_naming_the_kernel_and_shape() {
    let gpu = webgpu_device();
    let (id, case) = checks::select("layernorm backward")
        .into_iter()
        .next()
        .expect("a layernorm backward check");
    let failure = run(&gpu, id, &case, 7, true).expect("a perturbed reference must fail");
    assert!(
        failure.contains("layernorm backward")
            && failure.contains(&case.shape)
            && failure.contains("dx: error"),
        "{failure}"
    );
}
