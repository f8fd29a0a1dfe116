//! timm's architecture names: each name's `VisionTransformer` arguments (the structural
//! options) and its default pretrained tag's eval preprocessing, so `--arch NAME` or a hub
//! folder's `architecture` builds the same model timm builds. A folder's `model_args`
//! override the name's arguments, as `timm.create_model(name, **model_args)` does.
//! tests/families_registry.rs checks every entry against timm itself (a fixture the script
//! scripts/make_family_fixtures.py recorded).

use super::config::{Act, Config, Head, Options, Pool};
use crate::data::preprocess::EvalPreprocess;
use crate::data::transforms::Interpolation;
use serde_json::Value;

/// `VisionTransformer.__init__`'s structural arguments (timm's defaults in `Default`).
#[derive(Clone, Debug, PartialEq)]
pub struct TimmArgs {
    pub img_size: (usize, usize),
    pub patch_size: usize,
    pub in_chans: usize,
    pub num_classes: usize,
    /// "token", "avg" (or "" for no pooling: a feature model).
    pub global_pool: String,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    /// LayerScale's initial value (`ls1.gamma`, `ls2.gamma`) when given.
    pub init_values: Option<f64>,
    pub class_token: bool,
    pub no_embed_class: bool,
    pub reg_tokens: usize,
    /// A LayerNorm before the blocks (`norm_pre`, CLIP).
    pub pre_norm: bool,
    /// `None`: a LayerNorm after pooling when pooling averages (timm's rule).
    pub fc_norm: Option<bool>,
    /// "gelu" or "quick_gelu".
    pub act_layer: String,
    /// LayerNorm eps: timm's ViT uses 1e-6, CLIP towers PyTorch's default 1e-5.
    pub norm_eps: f64,
    /// DeiT's distillation token and second head (`VisionTransformerDistilled`).
    pub distilled: bool,
}

impl Default for TimmArgs {
    fn default() -> Self {
        TimmArgs {
            img_size: (224, 224),
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            global_pool: "token".into(),
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            qk_norm: false,
            init_values: None,
            class_token: true,
            no_embed_class: false,
            reg_tokens: 0,
            pre_norm: false,
            fc_norm: None,
            act_layer: "gelu".into(),
            norm_eps: 1e-6,
            distilled: false,
        }
    }
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum ArchError {
    #[error(
        "unknown architecture '{name}'; known: {known} (their tiny/small/base/large sizes as \
         timm names them)"
    )]
    Unknown { name: String, known: String },
    #[error("{context}: option '{option}' is {found}, but only {expected} is supported yet")]
    Unsupported {
        context: String,
        option: String,
        expected: String,
        found: String,
    },
    #[error("{context}: model_args '{option}' is {found}, expected {expected}")]
    BadArg {
        context: String,
        option: String,
        expected: String,
        found: String,
    },
}

/// The families the registry names, with their sizes (timm's `model_args` per size).
struct Size {
    name: &'static str,
    dim: usize,
    depth: usize,
    heads: usize,
}

const fn size(name: &'static str, dim: usize, depth: usize, heads: usize) -> Size {
    Size {
        name,
        dim,
        depth,
        heads,
    }
}

const TINY: Size = size("tiny", 192, 12, 3);
const SMALL: Size = size("small", 384, 12, 6);
const MEDIUM: Size = size("medium", 512, 12, 8);
const BASE: Size = size("base", 768, 12, 12);
const LARGE: Size = size("large", 1024, 24, 16);

const INCEPTION: [f32; 3] = [0.5, 0.5, 0.5];
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// One family: its name pattern, sizes, options and eval preprocessing.
struct Family {
    /// `{}` is replaced by the size name.
    pattern: &'static str,
    sizes: &'static [Size],
    options: fn(&mut TimmArgs),
    img: usize,
    patch: usize,
    crop_pct: f64,
    mean: [f32; 3],
    std: [f32; 3],
    num_classes: usize,
}

fn plain(_: &mut TimmArgs) {}
fn deit3(a: &mut TimmArgs) {
    a.no_embed_class = true;
    a.init_values = Some(1e-6);
}
fn dinov2(a: &mut TimmArgs) {
    a.init_values = Some(1e-5);
}
fn dinov2_reg4(a: &mut TimmArgs) {
    a.init_values = Some(1e-5);
    a.reg_tokens = 4;
    a.no_embed_class = true;
}
fn distilled(a: &mut TimmArgs) {
    a.distilled = true;
}
fn clip_quickgelu(a: &mut TimmArgs) {
    a.pre_norm = true;
    a.norm_eps = 1e-5;
    a.act_layer = "quick_gelu".into();
}
fn gap(a: &mut TimmArgs) {
    a.class_token = false;
    a.global_pool = "avg".into();
    a.fc_norm = Some(false);
}
fn gap_medium(a: &mut TimmArgs) {
    gap(a);
    a.qkv_bias = false;
    a.init_values = Some(1e-6);
}

const FAMILIES: &[Family] = &[
    Family {
        pattern: "vit_{}_patch16_224",
        sizes: &[TINY, SMALL, BASE, LARGE],
        options: plain,
        img: 224,
        patch: 16,
        crop_pct: 0.9,
        mean: INCEPTION,
        std: INCEPTION,
        num_classes: 1000,
    },
    Family {
        pattern: "deit_{}_patch16_224",
        sizes: &[TINY, SMALL, BASE],
        options: plain,
        img: 224,
        patch: 16,
        crop_pct: 0.9,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        num_classes: 1000,
    },
    Family {
        pattern: "deit_{}_distilled_patch16_224",
        sizes: &[TINY, SMALL, BASE],
        options: distilled,
        img: 224,
        patch: 16,
        crop_pct: 0.9,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        num_classes: 1000,
    },
    Family {
        pattern: "deit3_{}_patch16_224",
        sizes: &[SMALL, MEDIUM, BASE, LARGE],
        options: deit3,
        img: 224,
        patch: 16,
        crop_pct: 0.9,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        num_classes: 1000,
    },
    Family {
        pattern: "vit_{}_patch14_dinov2",
        sizes: &[SMALL, BASE, LARGE],
        options: dinov2,
        img: 518,
        patch: 14,
        crop_pct: 1.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        num_classes: 0,
    },
    Family {
        pattern: "vit_{}_patch14_reg4_dinov2",
        sizes: &[SMALL, BASE, LARGE],
        options: dinov2_reg4,
        img: 518,
        patch: 14,
        crop_pct: 1.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
        num_classes: 0,
    },
    Family {
        pattern: "vit_{}_patch16_clip_quickgelu_224",
        sizes: &[BASE],
        options: clip_quickgelu,
        img: 224,
        patch: 16,
        crop_pct: 1.0,
        mean: CLIP_MEAN,
        std: CLIP_STD,
        num_classes: 512,
    },
    Family {
        pattern: "vit_{}_patch32_clip_quickgelu_224",
        sizes: &[BASE],
        options: clip_quickgelu,
        img: 224,
        patch: 32,
        crop_pct: 0.9,
        mean: CLIP_MEAN,
        std: CLIP_STD,
        num_classes: 512,
    },
    Family {
        pattern: "vit_{}_patch14_clip_quickgelu_224",
        sizes: &[LARGE],
        options: clip_quickgelu,
        img: 224,
        patch: 14,
        crop_pct: 1.0,
        mean: CLIP_MEAN,
        std: CLIP_STD,
        num_classes: 768,
    },
    Family {
        pattern: "vit_{}_patch16_gap_256",
        sizes: &[MEDIUM],
        options: gap_medium,
        img: 256,
        patch: 16,
        crop_pct: 0.95,
        mean: INCEPTION,
        std: INCEPTION,
        num_classes: 1000,
    },
    Family {
        pattern: "vit_{}_patch16_gap_224",
        // timm's GAP base has 16 heads of 48, not 12 of 64.
        sizes: &[size("base", 768, 12, 16)],
        options: gap,
        img: 224,
        patch: 16,
        crop_pct: 0.9,
        mean: INCEPTION,
        std: INCEPTION,
        num_classes: 1000,
    },
];

/// Every name the registry knows, in table order.
pub fn names() -> Vec<String> {
    FAMILIES
        .iter()
        .flat_map(|f| f.sizes.iter().map(|s| f.pattern.replace("{}", s.name)))
        .collect()
}

/// timm's arguments and default eval preprocessing of architecture `name`.
pub fn lookup(name: &str) -> Result<(TimmArgs, EvalPreprocess), ArchError> {
    for f in FAMILIES {
        for s in f.sizes {
            if f.pattern.replace("{}", s.name) != name {
                continue;
            }
            let mut a = TimmArgs {
                img_size: (f.img, f.img),
                patch_size: f.patch,
                embed_dim: s.dim,
                depth: s.depth,
                num_heads: s.heads,
                num_classes: f.num_classes,
                ..TimmArgs::default()
            };
            (f.options)(&mut a);
            let pre = EvalPreprocess {
                input_size: (3, f.img, f.img),
                interpolation: Interpolation::Bicubic,
                crop_pct: Some(f.crop_pct),
                hf_crop: None,
                mean: f.mean.to_vec(),
                std: f.std.to_vec(),
            };
            return Ok((a, pre));
        }
    }
    Err(ArchError::Unknown {
        name: name.into(),
        known: FAMILIES
            .iter()
            .map(|f| f.pattern.replace("{}", "<size>"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

impl TimmArgs {
    /// Apply a `model_args` object (timm's `create_model` keyword arguments). Arguments
    /// that change only training (dropout rates, init schemes) are accepted and ignored.
    pub fn apply_model_args(&mut self, context: &str, args: &Value) -> Result<(), ArchError> {
        let Some(map) = args.as_object() else {
            return Err(bad(context, "model_args", "an object", args));
        };
        for (k, v) in map {
            let usize_of = |v: &Value| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(context, k, "a non-negative integer", v))
            };
            let bool_of = |v: &Value| {
                v.as_bool()
                    .ok_or_else(|| bad(context, k, "true or false", v))
            };
            let f64_of = |v: &Value| v.as_f64().ok_or_else(|| bad(context, k, "a number", v));
            let str_of = |v: &Value| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(context, k, "a string", v))
            };
            match k.as_str() {
                "img_size" => {
                    self.img_size = match v {
                        Value::Array(a) if a.len() == 2 => (usize_of(&a[0])?, usize_of(&a[1])?),
                        _ => {
                            let s = usize_of(v)?;
                            (s, s)
                        }
                    }
                }
                "patch_size" => self.patch_size = usize_of(v)?,
                "in_chans" => self.in_chans = usize_of(v)?,
                "num_classes" => self.num_classes = usize_of(v)?,
                "global_pool" => self.global_pool = str_of(v)?,
                "embed_dim" => self.embed_dim = usize_of(v)?,
                "depth" => self.depth = usize_of(v)?,
                "num_heads" => self.num_heads = usize_of(v)?,
                "mlp_ratio" => self.mlp_ratio = f64_of(v)?,
                "qkv_bias" => self.qkv_bias = bool_of(v)?,
                "qk_norm" => self.qk_norm = bool_of(v)?,
                "init_values" => {
                    self.init_values = if v.is_null() { None } else { Some(f64_of(v)?) }
                }
                "class_token" => self.class_token = bool_of(v)?,
                "no_embed_class" => self.no_embed_class = bool_of(v)?,
                "reg_tokens" => self.reg_tokens = usize_of(v)?,
                "pre_norm" => self.pre_norm = bool_of(v)?,
                "fc_norm" => self.fc_norm = if v.is_null() { None } else { Some(bool_of(v)?) },
                "act_layer" => self.act_layer = str_of(v)?,
                "distilled" => self.distilled = bool_of(v)?,
                "drop_rate" | "pos_drop_rate" | "patch_drop_rate" | "proj_drop_rate"
                | "attn_drop_rate" | "drop_path_rate" | "weight_init" | "fix_init"
                | "dynamic_img_size" | "dynamic_img_pad" => {}
                _ => {
                    return Err(ArchError::Unsupported {
                        context: context.into(),
                        option: k.clone(),
                        expected: "no such argument".into(),
                        found: v.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Our model config, or an error naming the first option the model cannot run yet.
    /// `classes` replaces `num_classes` (a feature model, num_classes 0, needs a head).
    pub fn to_config(&self, context: &str, classes: Option<usize>) -> Result<Config, ArchError> {
        let unsupported = |option: &str, expected: &str, found: String| {
            Err(ArchError::Unsupported {
                context: context.into(),
                option: option.into(),
                expected: expected.into(),
                found,
            })
        };
        let pool = match self.global_pool.as_str() {
            "token" => Pool::Token,
            "avg" => Pool::Avg,
            other => return unsupported("global_pool", "'token' or 'avg'", format!("'{other}'")),
        };
        // timm's rule: fc_norm None means a norm after pooling exactly when pooling averages.
        let fc_norm = self.fc_norm.unwrap_or(pool == Pool::Avg);
        let options = Options {
            class_token: self.class_token,
            pool,
            fc_norm,
            no_embed_class: self.no_embed_class,
            layer_scale: self.init_values.map(|v| v as f32),
            reg_tokens: self.reg_tokens,
            distilled: self.distilled,
            pre_norm: self.pre_norm,
            qk_norm: self.qk_norm,
            qkv_bias: self.qkv_bias,
        };
        let act = match self.act_layer.as_str() {
            "gelu" => Act::Gelu,
            "relu" => Act::Relu,
            "quick_gelu" => Act::QuickGelu,
            other => {
                return unsupported(
                    "act_layer",
                    "'gelu', 'quick_gelu' or 'relu'",
                    format!("'{other}'"),
                )
            }
        };
        let classes = classes.unwrap_or(self.num_classes);
        if classes < 2 {
            return unsupported(
                "num_classes",
                "at least 2 (give a head with --classes)",
                classes.to_string(),
            );
        }
        let cfg = Config {
            image_h: self.img_size.0,
            image_w: self.img_size.1,
            channels: self.in_chans,
            patch: self.patch_size,
            dim: self.embed_dim,
            depth: self.depth,
            heads: self.num_heads,
            mlp_hidden: (self.embed_dim as f64 * self.mlp_ratio) as usize,
            act,
            head: Head::Linear,
            dropout: 0.0,
            ln_eps: self.norm_eps as f32,
            classes,
            options,
        };
        cfg.validate().map_err(|e| ArchError::BadArg {
            context: context.into(),
            option: "model shape".into(),
            expected: "a valid model".into(),
            found: e.to_string(),
        })?;
        Ok(cfg)
    }
}

fn bad(context: &str, option: &str, expected: &str, found: &Value) -> ArchError {
    ArchError::BadArg {
        context: context.into(),
        option: option.into(),
        expected: expected.into(),
        found: found.to_string(),
    }
}
