//! The kernel checks (`crate::kernels::checks`: every portable entry point against the CPU
//! reference) on the page's WebGPU, in packages built with the `web-checks` feature.
//! scripts/web_kernels.mjs runs them in headless Chromium one call per check, so a check
//! that traps names itself; `runKernelChecks` runs a filtered list in one call.

use super::{browser_gpu, js_error};
use crate::gpu::Gpu;
use crate::kernels::checks;
use wasm_bindgen::prelude::*;

/// A panic inside a check traps the module and leaves the check's promise pending; its
/// message goes to the console and to `globalThis.onWasmPanic` when the page set one (the
/// harness rejects the pending check with it).
fn report_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = JsValue::from_str(&format!("panic: {info}"));
            web_sys::console::error_1(&message);
            let global = js_sys::global();
            let handler = js_sys::Reflect::get(&global, &JsValue::from_str("onWasmPanic"));
            if let Some(f) = handler
                .ok()
                .and_then(|h| h.dyn_into::<js_sys::Function>().ok())
            {
                let _ = f.call1(&global, &message);
            }
        }))
    });
}

/// The page's device, for running the checks one at a time.
#[wasm_bindgen]
pub struct KernelChecks {
    gpu: Gpu,
}

#[wasm_bindgen]
impl KernelChecks {
    pub async fn create() -> Result<KernelChecks, JsError> {
        report_panics();
        Ok(KernelChecks {
            gpu: browser_gpu().await?,
        })
    }

    /// The adapter the checks run on.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.gpu.describe()
    }

    /// The checks whose description (kernel, check, shape, entry points) contains
    /// `filter`: a JSON array of `{id, kernel, check, shape, entries}`.
    pub fn list(&self, filter: String) -> String {
        let list: Vec<_> = checks::select(&filter)
            .iter()
            .map(|(id, case)| case.summary(*id))
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    /// Check `id` (of `list`) with its generator seeded from (`seed`, `id`): a JSON object
    /// `{kernel, check, shape, entries, launched, seed, max_err, tol, worst, ok, error,
    /// comparisons}`. `perturb` moves one element of the first reference, so it must fail.
    pub async fn run(&self, id: usize, seed: u32, perturb: bool) -> Result<String, JsError> {
        let case = checks::all()
            .into_iter()
            .nth(id)
            .ok_or_else(|| js_error(format!("no kernel check {id}")))?;
        let outcome = checks::run(
            &self.gpu,
            &case,
            checks::case_seed(seed as u64, id),
            perturb,
        )
        .await;
        Ok(outcome.to_json().to_string())
    }
}

/// Every check whose description contains `filter`, on the page's WebGPU: one JSON line
/// per check (as `KernelChecks.run`).
#[wasm_bindgen(js_name = runKernelChecks)]
pub async fn run_kernel_checks(filter: String, seed: u32) -> Result<String, JsError> {
    let runner = KernelChecks::create().await?;
    let mut lines = Vec::new();
    for (id, case) in checks::select(&filter) {
        let outcome = checks::run(
            &runner.gpu,
            &case,
            checks::case_seed(seed as u64, id),
            false,
        )
        .await;
        lines.push(outcome.to_json().to_string());
    }
    Ok(lines.join("\n"))
}
