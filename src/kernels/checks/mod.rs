//! Every portable kernel entry point against the CPU reference (`crate::reference`), as a
//! library: the browser runs these on the page's WebGPU (`web::kernel_checks`,
//! scripts/web_kernels.mjs) and tests/kernel_checks.rs runs them natively, so a check that
//! is wrong fails on both sides against the same reference.
//!
//! A check is one call of one family (forward or backward) on one shape that is not a tile
//! multiple: inputs from a generator seeded per check, outputs poisoned with NaN before the
//! launch (an element never written fails), read back asynchronously and compared at the
//! native tests' tolerance. Each check declares the entry points it launches and fails if
//! it launched others, so the set the checks cover is the set they run.

mod cases;
mod matmul;
mod rows;
mod sequence;

use crate::gpu::{record_commands, Command, Gpu, Record, View};
use rand::SeedableRng;
use std::collections::BTreeSet;

pub use cases::{all, Spec};

/// ||ours - reference|| / ||reference||: the native kernel tests' tolerance
/// (tests/common `TOLERANCE`).
pub const TOLERANCE: f64 = 1e-4;

/// One check: a family's call on one shape, the entry points it launches
/// ("shader.wgsl:entry"), and what it runs.
pub struct Case {
    pub kernel: &'static str,
    pub check: &'static str,
    pub shape: String,
    pub entries: Vec<&'static str>,
    pub spec: Spec,
}

impl Case {
    /// What a filter matches: kernel, check, shape and entry points.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} {}",
            self.kernel,
            self.check,
            self.shape,
            self.entries.join(" ")
        )
    }

    pub fn summary(&self, id: usize) -> serde_json::Value {
        serde_json::json!({
            "id": id, "kernel": self.kernel, "check": self.check, "shape": self.shape,
            "entries": self.entries,
        })
    }
}

/// The checks whose description contains `filter` (every check when it is empty), with
/// their index in `all()`.
pub fn select(filter: &str) -> Vec<(usize, Case)> {
    all()
        .into_iter()
        .enumerate()
        .filter(|(_, c)| filter.is_empty() || c.describe().contains(filter))
        .collect()
}

/// One output compared with its reference.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub name: String,
    /// Relative error (`reference::relative_error`), or the measure `tolerance` applies to.
    pub error: f64,
    /// 0: the values must be equal.
    pub tolerance: f64,
    pub worst_index: usize,
    pub ours: f32,
    pub reference: f32,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        if self.tolerance == 0.0 {
            self.error == 0.0
        } else {
            self.error < self.tolerance
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}: error {:.3e} {} {:.0e}; worst element [{}]: ours {} vs reference {}",
            self.name,
            self.error,
            if self.passed() { "<" } else { ">=" },
            self.tolerance,
            self.worst_index,
            self.ours,
            self.reference
        )
    }
}

/// What one check found.
pub struct Outcome {
    pub kernel: &'static str,
    pub check: &'static str,
    pub shape: String,
    pub seed: u64,
    pub declared: Vec<&'static str>,
    /// The entry points its commands launched.
    pub launched: Vec<String>,
    pub comparisons: Vec<Comparison>,
    /// A device error, a limit exceeded, or launches other than those declared.
    pub error: Option<String>,
    /// Why it did not run: the adapter cannot run the check's kernel variant (reported,
    /// not failed; the entry-point coverage tests fail if that leaves an entry unchecked).
    pub unsupported: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        if self.unsupported.is_some() {
            return self.error.is_none();
        }
        self.error.is_none()
            && !self.comparisons.is_empty()
            && self.comparisons.iter().all(Comparison::passed)
    }

    /// The comparison nearest its tolerance (or furthest past it).
    pub fn worst(&self) -> Option<&Comparison> {
        let ratio = |c: &Comparison| {
            if c.tolerance == 0.0 {
                if c.error == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else if c.error.is_nan() {
                f64::INFINITY
            } else {
                c.error / c.tolerance
            }
        };
        self.comparisons
            .iter()
            .max_by(|a, b| ratio(a).total_cmp(&ratio(b)))
    }

    /// `None` when it passed, else one line naming the kernel, the shape and what failed.
    pub fn failure(&self) -> Option<String> {
        if self.passed() {
            return None;
        }
        let mut what: Vec<String> = self.error.iter().cloned().collect();
        what.extend(
            self.comparisons
                .iter()
                .filter(|c| !c.passed())
                .map(Comparison::describe),
        );
        if what.is_empty() {
            what.push("nothing was compared".into());
        }
        Some(format!(
            "{} {} ({}; seed {}): {}",
            self.kernel,
            self.check,
            self.shape,
            self.seed,
            what.join("; ")
        ))
    }

    /// One JSON line: kernel, check, shape, entries, the worst error and its tolerance,
    /// ok, error (the failure line) and every comparison.
    pub fn to_json(&self) -> serde_json::Value {
        let worst = self.worst();
        let comparisons: Vec<_> = self
            .comparisons
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "error": c.error, "tolerance": c.tolerance,
                    "worst_index": c.worst_index, "ours": c.ours, "reference": c.reference,
                    "ok": c.passed(),
                })
            })
            .collect();
        serde_json::json!({
            "kernel": self.kernel, "check": self.check, "shape": self.shape,
            "entries": self.declared, "launched": self.launched, "seed": self.seed,
            "max_err": worst.map(|c| c.error), "tol": worst.map(|c| c.tolerance),
            "worst": worst.map(|c| c.name.clone()),
            "ok": self.passed(), "error": self.failure(), "comparisons": comparisons,
            "unsupported": self.unsupported,
        })
    }
}

/// The seed a check's generator starts from: the run's seed and the check's index.
pub fn case_seed(seed: u64, id: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(id as u64)
}

/// Run one check on `gpu`. `perturb` moves one element of the first reference it compares
/// with, so the check must fail (the harness's own test).
pub async fn run(gpu: &Gpu, case: &Case, seed: u64, perturb: bool) -> Outcome {
    if let Some(why) = case.spec.unsupported(gpu) {
        return Outcome {
            kernel: case.kernel,
            check: case.check,
            shape: case.shape.clone(),
            seed,
            declared: case.entries.clone(),
            launched: Vec::new(),
            comparisons: Vec::new(),
            error: None,
            unsupported: Some(why),
        };
    }
    let mut bench = Bench::new(gpu, seed, perturb);
    // Errors of this check's pipelines, bind groups and submits land here, not in the
    // device's uncaptured-error handler (which panics).
    let validation = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = gpu.device.push_error_scope(wgpu::ErrorFilter::Internal);
    let result = case.spec.run(&mut bench).await;
    let internal = internal.pop().await;
    let validation = validation.pop().await;
    let mut errors: Vec<String> = Vec::new();
    if let Err(e) = result {
        errors.push(e);
    }
    for e in [validation, internal].into_iter().flatten() {
        errors.push(format!(
            "device error: {}",
            e.to_string().replace('\n', " ")
        ));
    }
    let launched: Vec<String> = bench.launched.iter().cloned().collect();
    let declared: BTreeSet<&str> = case.entries.iter().copied().collect();
    if errors.is_empty()
        && launched
            .iter()
            .map(String::as_str)
            .ne(declared.iter().copied())
    {
        errors.push(format!(
            "launched {launched:?} but the check declares {declared:?}"
        ));
    }
    Outcome {
        kernel: case.kernel,
        check: case.check,
        shape: case.shape.clone(),
        seed,
        declared: case.entries.clone(),
        launched,
        comparisons: bench.comparisons,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        unsupported: None,
    }
}

/// The CPU-adapter shaders (shaders/cpu/) the checks cover too: the browser's adapter
/// (SwiftShader) runs them in place of portable kernels.
pub const CHECKED_CPU_SHADERS: &[&str] = &["gemm_lanes4.wgsl", "attention_lanes4.wgsl"];

/// "shader.wgsl:entry" for every entry point the checks must cover: those of shaders/*.wgsl
/// and, as "cpu/shader.wgsl:entry", of `CHECKED_CPU_SHADERS`.
pub fn checked_entry_points(
    shaders: &std::path::Path,
) -> std::io::Result<std::collections::BTreeSet<String>> {
    let mut out = entry_points_in_folder(shaders)?;
    for file in CHECKED_CPU_SHADERS {
        let source = std::fs::read_to_string(shaders.join("cpu").join(file))?;
        for name in entry_points(&source) {
            out.insert(format!("cpu/{file}:{name}"));
        }
    }
    Ok(out)
}

/// "shader.wgsl:entry" for every compute entry point of the `.wgsl` files directly in
/// `dir` (the portable shaders when given `shaders/`; `shaders/cpu/` is not read).
pub fn entry_points_in_folder(
    dir: &std::path::Path,
) -> std::io::Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let source = std::fs::read_to_string(&path)?;
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            for name in entry_points(&source) {
                out.insert(format!("{file}:{name}"));
            }
        }
    }
    Ok(out)
}

/// The compute entry points of a WGSL source: every `fn` after an `@compute` attribute
/// (comments skipped).
pub fn entry_points(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("@compute") {
        rest = &rest[at + "@compute".len()..];
        let Some(f) = rest.find("fn ") else { break };
        let name: String = rest[f + 3..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        out.push(name);
        rest = &rest[f + 3..];
    }
    out
}

/// What one check runs with: the device, its generator, the commands recorded since the
/// last launch, the entry points launched, and the comparisons made.
pub(crate) struct Bench<'g> {
    pub gpu: &'g Gpu,
    rng: rand::rngs::StdRng,
    commands: Vec<Command>,
    launched: BTreeSet<String>,
    comparisons: Vec<Comparison>,
    perturb: bool,
    limits_before: Option<String>,
}

impl<'g> Bench<'g> {
    fn new(gpu: &'g Gpu, seed: u64, perturb: bool) -> Bench<'g> {
        Bench {
            gpu,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            commands: Vec::new(),
            launched: BTreeSet::new(),
            comparisons: Vec::new(),
            perturb,
            limits_before: gpu.check_limits().err().map(|e| e.to_string()),
        }
    }

    pub fn rng(&mut self) -> &mut rand::rngs::StdRng {
        &mut self.rng
    }

    /// `n` floats in [-scale, scale).
    pub fn random(&mut self, n: usize, scale: f32) -> Vec<f32> {
        crate::reference::random_vec(&mut self.rng, n, scale)
    }

    pub fn input<T: bytemuck::Pod>(&self, data: &[T]) -> wgpu::Buffer {
        self.gpu.upload("check input", data)
    }

    /// `n` floats of NaN: an element the kernel does not write fails its comparison.
    pub fn output(&self, n: usize) -> wgpu::Buffer {
        let b = self.gpu.storage("check output", n);
        self.gpu.poison(&b);
        b
    }

    /// Record one call of a family.
    pub fn record<A>(&mut self, kernel: &impl Record<A>, args: &A) {
        let commands = self.gpu.commands(kernel, args);
        self.push(commands);
    }

    /// Commands recorded elsewhere (a GEMM with its plan given).
    pub fn push(&mut self, commands: Vec<Command>) {
        for c in &commands {
            if let Some((shader, entry)) = self.gpu.launched(c) {
                self.launched.insert(format!("{shader}:{entry}"));
            }
        }
        self.commands.extend(commands);
    }

    /// Submit what was recorded and read `outputs` back once the device is done.
    pub async fn run(&mut self, outputs: &[&wgpu::Buffer]) -> Result<Vec<Vec<f32>>, String> {
        let commands = std::mem::take(&mut self.commands);
        if let Err(e) = self.gpu.check_limits() {
            let e = e.to_string();
            if self.limits_before.as_ref() != Some(&e) {
                return Err(e);
            }
        }
        let views: Vec<View> = outputs.iter().map(|&b| View::from(b)).collect();
        self.gpu
            .record_and_read(|e| record_commands(e, &commands), &views)
            .await
            .map_err(|e| e.to_string())
    }

    /// The reference as compared: with one element moved when the check must fail.
    fn reference<'r>(&mut self, reference: &'r [f32]) -> std::borrow::Cow<'r, [f32]> {
        if !self.perturb || !self.comparisons.is_empty() || reference.is_empty() {
            return reference.into();
        }
        let mut moved = reference.to_vec();
        let largest = moved.iter().fold(0f32, |m, v| m.max(v.abs()));
        moved[0] += 1.0 + largest;
        moved.into()
    }

    /// `ours` (its first `reference.len()` floats) within `tolerance` of `reference`,
    /// relative to the reference's norm.
    pub fn expect(&mut self, name: &str, ours: &[f32], reference: &[f32], tolerance: f64) {
        let reference = self.reference(reference);
        let comparison = compare(name, ours, &reference, tolerance);
        self.comparisons.push(comparison);
    }

    /// `ours` equal to `reference`, element by element (NaN never equal); the error is the
    /// relative error, for the report.
    pub fn expect_equal(&mut self, name: &str, ours: &[f32], reference: &[f32]) {
        let reference = self.reference(reference);
        let mut comparison = compare(name, ours, &reference, 0.0);
        let differs =
            ours.len() < reference.len() || ours.iter().zip(reference.iter()).any(|(a, b)| a != b);
        if differs && comparison.error == 0.0 {
            comparison.error = f64::MIN_POSITIVE;
        }
        self.comparisons.push(comparison);
    }

    /// Row means within `tolerance` of the rows' rms, sqrt(mean^2 + 1/rstd^2): a random
    /// row's mean is near zero, where an error relative to the mean itself is
    /// ill-conditioned (as tests/kernels_layernorm.rs).
    pub fn expect_means(&mut self, name: &str, ours: &[f32], mean: &[f32], rstd: &[f32]) {
        let reference = self.reference(mean).into_owned();
        let sq = |v: f64| v * v;
        let mut off = 0.0f64;
        let mut worst = (0usize, -1.0f64);
        for (i, (&a, &b)) in ours.iter().zip(&reference).enumerate() {
            let d = if (a - b).is_nan() {
                f64::INFINITY
            } else {
                sq(a as f64 - b as f64)
            };
            off += d;
            if d > worst.1 {
                worst = (i, d);
            }
        }
        let rms: f64 = reference
            .iter()
            .zip(rstd)
            .map(|(&m, &r)| sq(m as f64) + 1.0 / sq(r as f64))
            .sum();
        self.comparisons.push(Comparison {
            name: format!("{name} (error of the rows' rms)"),
            error: (off / rms).sqrt(),
            tolerance: TOLERANCE,
            worst_index: worst.0,
            ours: ours.get(worst.0).copied().unwrap_or(f32::NAN),
            reference: reference.get(worst.0).copied().unwrap_or(f32::NAN),
        });
    }
}

/// `ours` (its first `reference.len()` floats) against `reference`: the relative error and
/// the worst element.
fn compare(name: &str, ours: &[f32], reference: &[f32], tolerance: f64) -> Comparison {
    if ours.len() < reference.len() {
        return Comparison {
            name: format!("{name} (read {} floats of {})", ours.len(), reference.len()),
            error: f64::INFINITY,
            tolerance,
            worst_index: ours.len(),
            ours: f32::NAN,
            reference: reference[ours.len()],
        };
    }
    let ours = &ours[..reference.len()];
    let (error, worst) = crate::reference::relative_error(ours, reference);
    Comparison {
        name: name.into(),
        error,
        tolerance,
        worst_index: worst,
        ours: ours.get(worst).copied().unwrap_or(f32::NAN),
        reference: reference.get(worst).copied().unwrap_or(f32::NAN),
    }
}
