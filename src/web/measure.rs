//! What scripts/bench_web.mjs measures in the page: forwards back to back (images/s) and a
//! GPU-timestamp profile of one forward, kernel by kernel.

use super::{js_error, Classifier};
use crate::model::Mode;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
impl Classifier {
    /// `repeats` forwards of the batch in the device now (whatever it holds), submitted back
    /// to back, then one wait for the last logits: time it from JavaScript for images/s.
    pub async fn run_forwards(&self, repeats: usize) -> Result<(), JsError> {
        for _ in 0..repeats {
            for list in self.model.step_commands(Mode::Infer) {
                self.gpu.submit_commands(list);
            }
        }
        let _: Vec<f32> = self.gpu.read(&self.model.logits).await.map_err(js_error)?;
        Ok(())
    }

    /// One forward timed command by command (GPU timestamps around each launch when the
    /// browser grants timestamp-query, else wall clock): JSON
    /// `{timestamps, commands: [{family, what, seconds}]}`.
    pub async fn profile(&self) -> Result<String, JsError> {
        let mut times = Vec::new();
        for list in self.model.step_commands(Mode::Infer) {
            times.extend(
                crate::gpu::profile_commands(&self.gpu, list)
                    .await
                    .map_err(js_error)?,
            );
        }
        let rows: Vec<_> = times
            .iter()
            .map(|t| serde_json::json!({"family": t.family, "what": t.what, "seconds": t.seconds}))
            .collect();
        Ok(
            serde_json::json!({"timestamps": self.gpu.has_timestamps(), "commands": rows})
                .to_string(),
        )
    }

    /// The page's arithmetic ceiling in GFLOP/s: the benchmarks' peak_fma shader (written-out
    /// multiply-add chains), GPU-timed when the browser grants timestamp-query.
    pub async fn fma_gflops(&self, iterations: u32) -> Result<f64, JsError> {
        let timer = crate::gpu::PassTimer::new(&self.gpu);
        let rate = crate::kernels::peak::measure_fma_ceiling(&self.gpu, timer.as_ref(), iterations)
            .await
            .map_err(js_error)?;
        Ok(rate / 1e9)
    }
}
