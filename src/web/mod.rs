//! The browser package (`--features web`, wasm32 only; scripts/build_web.sh): a classifier
//! made from checkpoint bytes that classifies encoded images or canvas RGBA pixels on the
//! page's WebGPU, with the CLI's preprocessing, probabilities and error messages.
//!
//! Errors reach JavaScript as `Error` exceptions whose message is the CLI's.

use crate::data::transforms::{self, Interpolation, Pixels};
use crate::data::DataError;
use crate::gpu::{Gpu, LimitsMode};
use crate::kernels::Kernels;
use crate::model::checkpoint::{self, ConfigHints, TensorFile};
use crate::model::{Config, Mode, Vit};
use std::path::PathBuf;
use wasm_bindgen::prelude::*;

#[cfg(feature = "web-checks")]
mod kernel_checks;
mod measure;
mod rollout;
mod train;

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A JS options object's field: `undefined`/`null` is `None`.
fn field(options: &JsValue, name: &str) -> Option<JsValue> {
    if !options.is_object() {
        return None;
    }
    js_sys::Reflect::get(options, &JsValue::from_str(name))
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

fn usize_field(options: &JsValue, name: &str) -> Result<Option<usize>, JsError> {
    match field(options, name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x >= 1.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
            _ => Err(js_error(format!(
                "option {name}: expected a whole number of at least 1, found {v:?}"
            ))),
        },
    }
}

/// The model flags `vit-wgpu infer` takes for a timm checkpoint (`--heads`, `--act`,
/// `--ln-eps`, `--image-size`), from a JS object `{heads, act, lnEps, imageSize}`.
fn hints(options: &JsValue) -> Result<ConfigHints, JsError> {
    let act = match field(options, "act") {
        None => None,
        Some(v) => {
            let s = v.as_string().unwrap_or_default().to_lowercase();
            Some(match s.as_str() {
                "gelu" => crate::model::config::Act::Gelu,
                "relu" => crate::model::config::Act::Relu,
                "quick-gelu" | "quick_gelu" => crate::model::config::Act::QuickGelu,
                _ => {
                    return Err(js_error(format!(
                        "option act: '{s}' is not an activation: expected gelu, relu or quick-gelu"
                    )))
                }
            })
        }
    };
    let ln_eps = match field(options, "lnEps") {
        None => None,
        Some(v) => match v.as_f64() {
            Some(x) if x > 0.0 => Some(x as f32),
            _ => {
                return Err(js_error(format!(
                    "option lnEps: expected a positive number, found {v:?}"
                )))
            }
        },
    };
    let image_size = match field(options, "imageSize") {
        None => None,
        Some(v) => {
            let s = v
                .as_string()
                .or_else(|| v.as_f64().map(|x| x.to_string()))
                .unwrap_or_default();
            Some(parse_size(&s).map_err(js_error)?)
        }
    };
    Ok(ConfigHints {
        heads: usize_field(options, "heads")?,
        act,
        ln_eps,
        image_size,
    })
}

/// `H` or `HxW`, as the CLI's `--image-size`.
fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad =
        || format!("option imageSize: '{s}' is not a size: expected H or HxW, e.g. 224 or 224x160");
    let mut parts = s.split(['x', 'X']);
    let h: usize = parts
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(bad)?;
    let w: usize = match parts.next() {
        Some(v) => v.trim().parse().map_err(|_| bad())?,
        None => h,
    };
    if parts.next().is_some() || h == 0 || w == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

/// The page's WebGPU device with the portable limits, or why there is none.
async fn browser_gpu() -> Result<Gpu, JsError> {
    let navigator = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("navigator"))
        .ok()
        .filter(|n| n.is_object());
    let has_gpu = navigator
        .and_then(|n| js_sys::Reflect::get(&n, &JsValue::from_str("gpu")).ok())
        .is_some_and(|g| g.is_object());
    if !has_gpu {
        return Err(js_error(
            "this browser has no WebGPU (navigator.gpu is missing): use a recent Chrome, Edge or \
             Safari, or Firefox with WebGPU enabled, on a page served over https or from localhost",
        ));
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(desc);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            js_error(format!(
                "WebGPU is present but the browser offers no adapter ({e}): the GPU may be \
                 blocklisted or hardware acceleration turned off"
            ))
        })?;
    // WebGPU's default limits: the portable path's, checked natively by `--limits webgpu`;
    // an adapter below them is refused with what it lacks.
    Gpu::from_adapter(adapter, LimitsMode::Webgpu)
        .await
        .map_err(js_error)
}

/// The checkpoint's normalisation (default 0.5, 0.5), as the CLI's `checkpoint_norm`.
fn checkpoint_norm(file: &TensorFile, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let per_channel = |key: &str| -> Vec<f32> {
        let v: Vec<f32> = file
            .metadata
            .get(key)
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        if v.len() == channels {
            v
        } else {
            vec![0.5; channels]
        }
    };
    (per_channel("norm_mean"), per_channel("norm_std"))
}

/// The CLI's softmax: f64 sums over f32 logits.
fn softmax(row: &[f32]) -> Vec<f32> {
    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = row.iter().map(|&v| ((v - mx) as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| (v / z) as f32).collect()
}

/// One image's prediction as `vit-wgpu infer --json` prints it.
fn prediction(image: &str, logits: &[f32], names: &[String], top_k: usize) -> serde_json::Value {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&x, &y| probs[y].total_cmp(&probs[x]));
    let top: Vec<_> = order
        .iter()
        .take(top_k.max(1))
        .map(|&k| {
            let name = names.get(k).cloned().unwrap_or_else(|| k.to_string());
            serde_json::json!({"class": name, "probability": probs[k]})
        })
        .collect();
    serde_json::json!({"image": image, "top": top})
}

/// A ViT for inference on the page's GPU, made from checkpoint bytes.
#[wasm_bindgen]
pub struct Classifier {
    gpu: Gpu,
    kernels: Kernels,
    model: Vit,
    cfg: Config,
    names: Vec<String>,
    mean: Vec<f32>,
    std: Vec<f32>,
    interpolation: Interpolation,
    crop_pct: Option<f64>,
}

#[wasm_bindgen]
impl Classifier {
    /// A classifier from the bytes of a checkpoint (ours, or a timm state_dict in
    /// safetensors); `name` names the file in messages. `options`: `{heads, act, lnEps,
    /// imageSize}` as the CLI's flags for timm checkpoints, `batch` (images per forward
    /// pass, default 8) and `classes` (an array of names, as `--classes`).
    pub async fn create(
        bytes: Vec<u8>,
        name: String,
        options: JsValue,
    ) -> Result<Classifier, JsError> {
        let path = PathBuf::from(&name);
        let hints = hints(&options)?;
        let batch = usize_field(&options, "batch")?.unwrap_or(8);
        let file = TensorFile::from_bytes(&path, &bytes).map_err(js_error)?;
        let (cfg, params, file) =
            checkpoint::any_from_file(&path, file, &hints).map_err(js_error)?;
        let names = match field(&options, "classes") {
            Some(list) if js_sys::Array::is_array(&list) => js_sys::Array::from(&list)
                .iter()
                .map(|v| v.as_string().unwrap_or_default().trim().to_string())
                .collect(),
            _ => file
                .metadata
                .get("class_names")
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_else(|| (0..cfg.classes).map(|i| i.to_string()).collect()),
        };
        let interpolation = file
            .metadata
            .get("interpolation")
            .and_then(|s| s.parse().ok())
            .unwrap_or(Interpolation::Bilinear);
        let crop_pct = file.metadata.get("crop_pct").and_then(|s| s.parse().ok());
        let (mean, std) = checkpoint_norm(&file, cfg.channels);
        let gpu = browser_gpu().await?;
        let kernels = Kernels::new(&gpu);
        gpu.check_limits().map_err(js_error)?;
        let model =
            Vit::new(&gpu, &kernels, &cfg, &params, batch, Mode::Infer, 0).map_err(js_error)?;
        gpu.check_limits().map_err(js_error)?;
        Ok(Classifier {
            gpu,
            kernels,
            model,
            cfg,
            names,
            mean,
            std,
            interpolation,
            crop_pct,
        })
    }

    /// The model's config as JSON text (image size, channels, width, depth, heads, classes).
    #[wasm_bindgen(getter)]
    pub fn config(&self) -> String {
        serde_json::json!({
            "image_h": self.cfg.image_h, "image_w": self.cfg.image_w,
            "channels": self.cfg.channels, "patch": self.cfg.patch, "dim": self.cfg.dim,
            "depth": self.cfg.depth, "heads": self.cfg.heads, "mlp_hidden": self.cfg.mlp_hidden,
            "classes": self.cfg.classes, "batch": self.model.batch, "crop_pct": self.crop_pct,
            "parameters": crate::model::params::param_specs(&self.cfg)
                .iter().map(|s| s.shape.iter().product::<usize>()).sum::<usize>(),
        })
        .to_string()
    }

    /// Class names, in the order of the logits.
    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The adapter the page's WebGPU gave (name, limits, features).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.gpu.describe()
    }

    /// Classify encoded images (PNG or JPEG bytes; `names[i]` names image i in results and
    /// errors): a JSON array of `{image, top: [{class, probability}]}`, `top_k` long each,
    /// as `vit-wgpu infer --json` prints them. All images are decoded before any is run.
    pub async fn classify_encoded(
        &self,
        images: Vec<js_sys::Uint8Array>,
        names: Vec<String>,
        top_k: usize,
    ) -> Result<String, JsError> {
        let mut inputs = Vec::with_capacity(images.len());
        for (i, bytes) in images.iter().enumerate() {
            let name = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("image {i}"));
            inputs.push((name.clone(), decode(&bytes.to_vec(), &name)?));
        }
        self.classify(inputs, top_k).await
    }

    /// Classify one image of RGBA pixels (a canvas's `ImageData.data`, row by row).
    pub async fn classify_rgba(
        &self,
        rgba: Vec<u8>,
        width: u32,
        height: u32,
        name: String,
        top_k: usize,
    ) -> Result<String, JsError> {
        let img = image::RgbaImage::from_raw(width, height, rgba).ok_or_else(|| {
            js_error(format!(
                "{name}: RGBA data of {width}x{height} needs {} bytes",
                4 * width as usize * height as usize
            ))
        })?;
        self.classify(vec![(name, image::DynamicImage::ImageRgba8(img))], top_k)
            .await
    }
}

/// An encoded image (PNG or JPEG) decoded, or the CLI's message naming it.
fn decode(bytes: &[u8], name: &str) -> Result<image::DynamicImage, JsError> {
    image::load_from_memory(bytes).map_err(|e| {
        js_error(DataError::Decode {
            path: PathBuf::from(name),
            message: e.to_string(),
        })
    })
}

impl Classifier {
    /// The model's input for one image: the CLI's decode (luma or RGB), eval transform
    /// (resize, or resize + center crop when the checkpoint records `crop_pct`) and
    /// normalisation.
    fn preprocess(
        &self,
        name: &str,
        img: image::DynamicImage,
        out: &mut [f32],
    ) -> Result<(), JsError> {
        let (width, height) = (img.width() as usize, img.height() as usize);
        if width == 0 || height == 0 {
            return Err(js_error(DataError::Decode {
                path: PathBuf::from(name),
                message: "the image is empty (0 pixels)".into(),
            }));
        }
        let channels = self.cfg.channels;
        let data = match channels {
            1 => img.into_luma8().into_raw(),
            _ => img.into_rgb8().into_raw(),
        };
        let pixels = Pixels {
            width,
            height,
            channels,
            data,
        };
        let (w, h) = (self.cfg.image_w, self.cfg.image_h);
        let sized = match self.crop_pct {
            Some(pct) => transforms::eval_resize_crop(&pixels, w, h, pct, self.interpolation),
            None => transforms::resize(&pixels, w, h, self.interpolation),
        };
        transforms::normalise_chw(&sized, false, &self.mean, &self.std, out);
        Ok(())
    }

    /// One forward of a whole batch of inputs `x` [B, C, H, W]: the logits [B, K].
    async fn forward_logits(&self, x: &[f32]) -> Result<Vec<f32>, JsError> {
        self.model
            .write_batch(&self.gpu, x, &vec![0u32; self.model.batch]);
        Ok(self
            .gpu
            .record_and_read(
                |e| self.model.record_forward(e),
                &[(&self.model.logits).into()],
            )
            .await
            .map_err(js_error)?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    async fn classify(
        &self,
        images: Vec<(String, image::DynamicImage)>,
        top_k: usize,
    ) -> Result<String, JsError> {
        let batch = self.model.batch;
        let per_image = self.cfg.channels * self.cfg.image_h * self.cfg.image_w;
        let mut inputs = Vec::with_capacity(images.len());
        for (name, img) in images {
            let mut x = vec![0f32; per_image];
            self.preprocess(&name, img, &mut x)?;
            inputs.push((name, x));
        }
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(batch) {
            let mut x = vec![0f32; batch * per_image];
            for (i, (_, img)) in chunk.iter().enumerate() {
                x[i * per_image..(i + 1) * per_image].copy_from_slice(img);
            }
            let logits = self.forward_logits(&x).await?;
            let classes = self.cfg.classes;
            for (i, (name, _)) in chunk.iter().enumerate() {
                let row = &logits[i * classes..(i + 1) * classes];
                out.push(prediction(name, row, &self.names, top_k));
            }
        }
        Ok(serde_json::Value::Array(out).to_string())
    }
}

/// `vit-wgpu verify` on the page's GPU: a parity fixture's bytes (debug state, hashed or
/// training trajectory; `name` names it in messages) run through the training code path and
/// compared with PyTorch's logits, loss and every gradient at the CLI's default tolerances.
/// A JSON report: `{config, batch, passed, comparisons: [{name, relative_error, tolerance,
/// worst_index, ours, expected, passed}], kernels: {gemm, attention, texture_reads}}`.
#[wasm_bindgen]
pub async fn verify(bytes: Vec<u8>, name: String) -> Result<String, JsError> {
    let path = PathBuf::from(&name);
    let file = TensorFile::from_bytes(&path, &bytes).map_err(js_error)?;
    let gpu = browser_gpu().await?;
    let tol = crate::verify::Tolerances::default();
    let report = crate::verify::verify_file(&gpu, &path, &file, tol, None)
        .await
        .map_err(js_error)?;
    gpu.check_limits().map_err(js_error)?;
    let comparisons: Vec<_> = report
        .comparisons
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "relative_error": c.relative_error, "tolerance": c.tolerance,
                "worst_index": c.worst_index, "ours": c.ours, "expected": c.expected,
                "passed": c.passed(),
            })
        })
        .collect();
    // Which kernels ran: the page must run the portable ones (no CPU specialisation).
    let kernels = serde_json::json!({
        "gemm": crate::kernels::gemm::Gemm::choose(&gpu).variant.name(),
        "attention": crate::kernels::attention::Attention::choose(&gpu).variant.name(),
        "texture_reads": crate::kernels::cpu::texture::preferred(&gpu),
    });
    Ok(serde_json::json!({
        "config": report.config.to_string(), "batch": report.batch,
        "passed": report.passed(), "comparisons": comparisons, "kernels": kernels,
    })
    .to_string())
}
