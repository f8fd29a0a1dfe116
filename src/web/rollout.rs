//! Attention rollout on the page: the device's attention probabilities of one forward
//! (`Vit::attention_maps`, the portable probabilities kernel) rolled out on the CPU in wasm
//! by `viz::rollout`, the same code as `vit-wgpu infer --attention`.

use super::{decode, js_error, prediction, Classifier};
use crate::viz::{self, MapShape};
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
impl Classifier {
    /// The attention rollout of one encoded image (PNG or JPEG; `name` names it) and its
    /// prediction, as JSON `{image, top: [{class, probability}], grid_h, grid_w, rollout}`:
    /// `rollout` is the patch grid's weights, grid_h x grid_w row-major, as rolled out (not
    /// rescaled). The image runs alone in the model's batch (the other slots are zeros).
    pub async fn rollout(
        &self,
        bytes: Vec<u8>,
        name: String,
        top_k: usize,
    ) -> Result<String, JsError> {
        let per_image = self.cfg.channels * self.cfg.image_h * self.cfg.image_w;
        let mut x = vec![0f32; self.model.batch * per_image];
        self.preprocess(&name, decode(&bytes, &name)?, &mut x[..per_image])?;
        let logits = self.forward_logits(&x).await?;
        let maps = self
            .model
            .attention_maps(&self.gpu, &self.kernels)
            .await
            .map_err(js_error)?;
        let shape = MapShape::of(&self.cfg, self.model.batch);
        let grid = viz::rollout(&maps, shape, 0).map_err(js_error)?;
        let mut out = prediction(&name, &logits[..self.cfg.classes], &self.names, top_k);
        out["grid_h"] = shape.grid_h.into();
        out["grid_w"] = shape.grid_w.into();
        out["rollout"] = grid.into();
        Ok(out.to_string())
    }
}
