//! Evaluation preprocessing as a model folder describes it: timm's `pretrained_cfg` (input
//! size, interpolation, crop_pct, mean, std) or a transformers image processor config
//! (`preprocessor_config.json`). Both reduce to one of the two eval transforms the loader
//! already runs pixel-exact with PIL (`transforms.rs`): timm's resize-shorter-side to
//! size/crop_pct + center crop, or a plain resize to the input size.

use super::transforms::{self, Interpolation, Pixels};
use serde_json::Value;

/// How an image becomes the model's input at evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalPreprocess {
    /// Channels, height, width of the model input.
    pub input_size: (usize, usize, usize),
    pub interpolation: Interpolation,
    /// timm's crop: resize to floor(size / crop_pct), center-crop `size`. `None`: resize the
    /// whole image to the input size (transformers' `ViTImageProcessor`).
    pub crop_pct: Option<f64>,
    /// transformers' resize then center crop (`do_center_crop`), when the processor has one.
    pub hf_crop: Option<HfCrop>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// transformers' first resize: to an exact size, or the shorter side to `S` (aspect kept,
/// the longer side `int(S * long / short)`, as torchvision's Resize).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HfResize {
    /// Height, width.
    Exact(usize, usize),
    ShortestEdge(usize),
}

impl std::fmt::Display for HfResize {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            HfResize::Exact(h, w) => write!(f, "{h}x{w}"),
            HfResize::ShortestEdge(s) => write!(f, "shortest_edge {s}"),
        }
    }
}

/// transformers' eval transform with `do_center_crop` (DeiT's and BiT's/DINOv2's image
/// processors): resize, then a center crop whose offsets are `int((in - out) / 2)` (both of
/// transformers' backends; torchvision's CenterCrop rounds instead).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HfCrop {
    pub resize: HfResize,
    /// Height, width.
    pub crop: (usize, usize),
}

impl HfCrop {
    /// The image resized and cropped (PIL's filters, as the loader's other transforms).
    pub fn apply(&self, img: &Pixels, filter: Interpolation) -> Pixels {
        let (rw, rh) = match self.resize {
            HfResize::Exact(h, w) => (w, h),
            HfResize::ShortestEdge(s) => transforms::shorter_side_size(img.width, img.height, s),
        };
        let (ch, cw) = self.crop;
        let all = transforms::CropBox {
            x: 0,
            y: 0,
            w: img.width,
            h: img.height,
        };
        let window = transforms::CropBox {
            x: rw.saturating_sub(cw) / 2,
            y: rh.saturating_sub(ch) / 2,
            w: cw.min(rw),
            h: ch.min(rh),
        };
        transforms::resize_crop(img, all, rw, rh, window, filter)
    }

    /// The metadata value `hf_crop` ("RESIZE/HxW", RESIZE "HxW" or "sS").
    pub fn to_metadata(&self) -> String {
        let resize = match self.resize {
            HfResize::Exact(h, w) => format!("{h}x{w}"),
            HfResize::ShortestEdge(s) => format!("s{s}"),
        };
        format!("{resize}/{}x{}", self.crop.0, self.crop.1)
    }

    /// `hf_crop` of checkpoint metadata, when present and readable.
    pub fn from_metadata(meta: &std::collections::HashMap<String, String>) -> Option<HfCrop> {
        let (resize, crop) = meta.get("hf_crop")?.split_once('/')?;
        let pair = |s: &str| -> Option<(usize, usize)> {
            let (h, w) = s.split_once('x')?;
            Some((h.parse().ok()?, w.parse().ok()?))
        };
        let resize = match resize.strip_prefix('s') {
            Some(s) => HfResize::ShortestEdge(s.parse().ok()?),
            None => pair(resize).map(|(h, w)| HfResize::Exact(h, w))?,
        };
        Some(HfCrop {
            resize,
            crop: pair(crop)?,
        })
    }
}

#[derive(thiserror::Error, Debug, PartialEq)]
#[error("{file}: '{field}' {problem}")]
pub struct PreprocessError {
    pub file: String,
    pub field: String,
    pub problem: String,
}

fn err(file: &str, field: &str, problem: impl Into<String>) -> PreprocessError {
    PreprocessError {
        file: file.into(),
        field: field.into(),
        problem: problem.into(),
    }
}

fn floats(
    file: &str,
    field: &str,
    v: &Value,
    channels: usize,
) -> Result<Vec<f32>, PreprocessError> {
    let list: Option<Vec<f32>> = match v {
        Value::Number(n) => n.as_f64().map(|x| vec![x as f32; channels]),
        Value::Array(a) => a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect(),
        _ => None,
    };
    match list {
        Some(l) if l.len() == channels => Ok(l),
        Some(l) => Err(err(
            file,
            field,
            format!(
                "has {} values, expected {channels} (one per channel)",
                l.len()
            ),
        )),
        None => Err(err(
            file,
            field,
            format!("is {v}, expected a list of numbers"),
        )),
    }
}

fn interpolation(file: &str, field: &str, v: &Value) -> Result<Interpolation, PreprocessError> {
    // PIL's resampling constants, as transformers stores them: 2 bilinear, 3 bicubic.
    match (v.as_str(), v.as_u64()) {
        (Some(s), _) => s.parse().map_err(|e: String| err(file, field, e)),
        (_, Some(2)) => Ok(Interpolation::Bilinear),
        (_, Some(3)) => Ok(Interpolation::Bicubic),
        _ => Err(err(
            file,
            field,
            format!("is {v}, expected bilinear or bicubic (PIL resample 2 or 3)"),
        )),
    }
}

impl EvalPreprocess {
    /// From timm's `pretrained_cfg` (a hub folder's config.json).
    pub fn from_timm(file: &str, cfg: &Value) -> Result<EvalPreprocess, PreprocessError> {
        let size = cfg
            .get("input_size")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .filter(|a| a.len() == 3 && a.iter().all(|&v| v > 0))
            .ok_or_else(|| {
                err(
                    file,
                    "pretrained_cfg.input_size",
                    "is missing or not [channels, height, width]",
                )
            })?;
        let input_size = (size[0] as usize, size[1] as usize, size[2] as usize);
        let interpolation = match cfg.get("interpolation") {
            Some(v) => interpolation(file, "pretrained_cfg.interpolation", v)?,
            None => Interpolation::Bicubic,
        };
        let crop_pct = cfg.get("crop_pct").and_then(Value::as_f64).unwrap_or(0.875);
        if !(crop_pct > 0.0 && crop_pct <= 10.0) {
            return Err(err(
                file,
                "pretrained_cfg.crop_pct",
                format!("is {crop_pct}, expected a number in (0, 10]"),
            ));
        }
        if let Some(mode) = cfg.get("crop_mode").and_then(Value::as_str) {
            if mode != "center" {
                return Err(err(
                    file,
                    "pretrained_cfg.crop_mode",
                    format!("is '{mode}', only 'center' is supported"),
                ));
            }
        }
        let c = input_size.0;
        let default = Value::from(vec![0.5; c]);
        Ok(EvalPreprocess {
            input_size,
            interpolation,
            crop_pct: Some(crop_pct),
            hf_crop: None,
            mean: floats(
                file,
                "pretrained_cfg.mean",
                cfg.get("mean").unwrap_or(&default),
                c,
            )?,
            std: floats(
                file,
                "pretrained_cfg.std",
                cfg.get("std").unwrap_or(&default),
                c,
            )?,
        })
    }

    /// From a transformers image processor config (`preprocessor_config.json`) for a model
    /// of `channels` x `height` x `width`.
    pub fn from_transformers(
        file: &str,
        cfg: &Value,
        input_size: (usize, usize, usize),
    ) -> Result<EvalPreprocess, PreprocessError> {
        let flag = |k: &str, default: bool| cfg.get(k).and_then(Value::as_bool).unwrap_or(default);
        let c = input_size.0;
        if !flag("do_resize", true) {
            return Err(err(
                file,
                "do_resize",
                "is false: inputs must be resized to the model's size",
            ));
        }
        let resize = match cfg.get("size") {
            None => HfResize::Exact(input_size.1, input_size.2),
            Some(size) => match (
                size.get("height").and_then(Value::as_u64),
                size.get("width").and_then(Value::as_u64),
                size.get("shortest_edge").and_then(Value::as_u64),
                size.as_u64(),
            ) {
                (Some(h), Some(w), _, _) => HfResize::Exact(h as usize, w as usize),
                (_, _, Some(s), _) => HfResize::ShortestEdge(s as usize),
                (_, _, _, Some(s)) => HfResize::Exact(s as usize, s as usize),
                _ => {
                    return Err(err(
                        file,
                        "size",
                        format!(
                            "is {size}, expected {{\"height\": H, \"width\": W}} or \
                             {{\"shortest_edge\": S}}"
                        ),
                    ))
                }
            },
        };
        let hf_crop = match flag("do_center_crop", false) {
            false => None,
            true => {
                let size = cfg.get("crop_size").unwrap_or(&Value::Null);
                let crop = match (
                    size.get("height").and_then(Value::as_u64),
                    size.get("width").and_then(Value::as_u64),
                    size.as_u64(),
                ) {
                    (Some(h), Some(w), _) => (h as usize, w as usize),
                    (_, _, Some(s)) => (s as usize, s as usize),
                    _ => {
                        return Err(err(
                            file,
                            "crop_size",
                            format!("is {size}, expected {{\"height\": H, \"width\": W}}"),
                        ))
                    }
                };
                let fits = match resize {
                    HfResize::Exact(h, w) => h >= crop.0 && w >= crop.1,
                    HfResize::ShortestEdge(s) => s >= crop.0.max(crop.1),
                };
                if !fits || crop.0 == 0 || crop.1 == 0 {
                    return Err(err(
                        file,
                        "crop_size",
                        format!(
                            "is {}x{}, larger than the resized image ({resize}) or empty",
                            crop.0, crop.1
                        ),
                    ));
                }
                Some(HfCrop { resize, crop })
            }
        };
        let input_size = match (hf_crop, resize) {
            (Some(hc), _) => (c, hc.crop.0, hc.crop.1),
            (None, HfResize::Exact(h, w)) => (c, h, w),
            (None, HfResize::ShortestEdge(_)) => {
                return Err(err(
                    file,
                    "size",
                    "is a shortest_edge without a center crop: the input size would depend on \
                     each image",
                ))
            }
        };
        let rescale = cfg
            .get("rescale_factor")
            .and_then(Value::as_f64)
            .unwrap_or(1.0 / 255.0);
        if flag("do_rescale", true) && (rescale * 255.0 - 1.0).abs() > 1e-9 {
            return Err(err(
                file,
                "rescale_factor",
                format!("is {rescale}, only 1/255 is supported"),
            ));
        }
        let interpolation = match cfg.get("resample") {
            Some(v) => interpolation(file, "resample", v)?,
            None => Interpolation::Bilinear,
        };
        let (mean, std) = if flag("do_normalize", true) {
            let default = Value::from(vec![0.5; c]);
            (
                floats(
                    file,
                    "image_mean",
                    cfg.get("image_mean").unwrap_or(&default),
                    c,
                )?,
                floats(
                    file,
                    "image_std",
                    cfg.get("image_std").unwrap_or(&default),
                    c,
                )?,
            )
        } else {
            (vec![0.0; c], vec![1.0; c])
        };
        Ok(EvalPreprocess {
            input_size,
            interpolation,
            crop_pct: None,
            hf_crop,
            mean,
            std,
        })
    }

    /// The checkpoint metadata keys `eval` and `infer` read their transform from.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let join = |v: &[f32]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut m = vec![
            ("interpolation".to_string(), self.interpolation.to_string()),
            ("norm_mean".to_string(), join(&self.mean)),
            ("norm_std".to_string(), join(&self.std)),
        ];
        if let Some(pct) = self.crop_pct {
            m.push(("crop_pct".to_string(), pct.to_string()));
        }
        if let Some(hc) = self.hf_crop {
            m.push(("hf_crop".to_string(), hc.to_metadata()));
        }
        m
    }

    /// The model input (CHW, normalised) of one decoded image, as the reference library's
    /// eval transform makes it.
    pub fn apply(&self, img: &Pixels) -> Vec<f32> {
        let (_, h, w) = self.input_size;
        let out = match (self.hf_crop, self.crop_pct) {
            (Some(hc), _) if hc.crop == (h, w) => hc.apply(img, self.interpolation),
            (_, Some(pct)) => transforms::eval_resize_crop(img, w, h, pct, self.interpolation),
            (_, None) => transforms::resize(img, w, h, self.interpolation),
        };
        let mut chw = vec![0f32; out.channels * h * w];
        transforms::normalise_chw(&out, false, &self.mean, &self.std, &mut chw);
        chw
    }
}

/// `eval` on a streamed image folder with a model folder's checkpoint: the folder's
/// interpolation and crop (from the metadata `hub.rs` wrote) replace the flags' defaults.
/// A flag given with another value than the folder's wins, and is reported.
#[cfg(feature = "native")]
pub fn use_folder_transform(
    ds: &mut super::Dataset,
    meta: &std::collections::HashMap<String, String>,
    flags: (Interpolation, f64),
) {
    let Some(stream) = &ds.stream else { return };
    if !meta.contains_key("source") {
        return;
    }
    let defaults = (Interpolation::Bilinear, 0.875);
    let folder_interp = meta.get("interpolation").and_then(|s| s.parse().ok());
    let folder_crop: Option<f64> = meta.get("crop_pct").and_then(|s| s.parse().ok());
    let mut s = stream.truncated(stream.len());
    if let Some(i) = folder_interp {
        match flags.0 == defaults.0 || flags.0 == i {
            true => s.options.interpolation = i,
            false => eprintln!(
                "note: --interpolation {} overrides the model folder's {i}",
                flags.0
            ),
        }
    }
    if flags.1 == defaults.1 || Some(flags.1) == folder_crop {
        // No crop_pct: the folder resizes to the input size exactly (transformers).
        s.options.crop_pct = folder_crop;
        s.options.hf_crop = HfCrop::from_metadata(meta);
    } else {
        let folder = match (folder_crop, HfCrop::from_metadata(meta)) {
            (Some(c), _) => c.to_string(),
            (None, Some(hc)) => format!("resize {} + center crop", hc.to_metadata()),
            (None, None) => "a plain resize".to_string(),
        };
        eprintln!(
            "note: --crop-pct {} overrides the model folder's {folder}",
            flags.1
        );
    }
    ds.stream = Some(std::sync::Arc::new(s));
}

/// `train --init FOLDER`: the model folder's normalisation (unless `--mean`/`--std` were
/// given) for both splits, and its eval transform for the validation split.
#[cfg(feature = "native")]
pub fn use_folder_for_training(
    train: &mut super::Dataset,
    val: &mut super::Dataset,
    meta: &std::collections::HashMap<String, String>,
    mean_std_flags: (bool, bool),
    flags: (Interpolation, f64),
) {
    if !meta.contains_key("source") {
        return;
    }
    let per_channel = |key: &str, channels: usize| -> Option<Vec<f32>> {
        let v: Vec<f32> = meta
            .get(key)?
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        (v.len() == channels).then_some(v)
    };
    for ds in [&mut *train, &mut *val] {
        if !mean_std_flags.0 {
            if let Some(m) = per_channel("norm_mean", ds.channels) {
                ds.mean = m;
            }
        }
        if !mean_std_flags.1 {
            if let Some(s) = per_channel("norm_std", ds.channels) {
                ds.std = s;
            }
        }
    }
    use_folder_transform(val, meta, flags);
}
