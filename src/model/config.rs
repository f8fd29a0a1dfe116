//! The model's configuration, its presets, and its round trip through checkpoint metadata.

use std::collections::HashMap;
use std::fmt;

/// The MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "native", derive(clap::ValueEnum))]
pub enum Act {
    Relu,
    Gelu,
    /// CLIP's x * sigmoid(1.702 x).
    QuickGelu,
}

impl Act {
    /// The name in checkpoint metadata and timm's `act_layer`.
    pub fn name(self) -> &'static str {
        match self {
            Act::Relu => "relu",
            Act::Gelu => "gelu",
            Act::QuickGelu => "quick_gelu",
        }
    }
}

/// What the head reads: the class token, or the mean of the patch tokens (timm's
/// `global_pool` 'token' and 'avg'; prefix tokens are left out of the mean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Token,
    Avg,
    /// transformers' `Dinov2ForImageClassification`: the class token and the mean of the
    /// patch tokens side by side ([B, 2D] into a head of width 2D), after `norm` over every
    /// token.
    ClsAvg,
}

/// The options timm's VisionTransformer descendants add (issue 33). `Default` is the
/// original ViT, so a config without them (and an old checkpoint) is unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// A class token (`cls_token` [1,1,D]) first in the sequence.
    pub class_token: bool,
    pub pool: Pool,
    /// The final LayerNorm after pooling, named `fc_norm` (then there is no `norm`);
    /// otherwise `norm` applies to every token before pooling.
    pub fc_norm: bool,
    /// The position embedding covers the patch tokens only (`pos_embed` [1, Np, D]).
    pub no_embed_class: bool,
    /// LayerScale's initial value: x + gamma * branch, `blocks.i.ls1.gamma`, `ls2.gamma` [D].
    pub layer_scale: Option<f32>,
    /// Register tokens (`reg_token` [1, R, D]) after the class token.
    pub reg_tokens: usize,
    /// DeiT's distillation token (`dist_token`) after the class token and its head
    /// (`head_dist`); the logits are the mean of the two heads' (timm's default).
    pub distilled: bool,
    /// A LayerNorm before the blocks (`norm_pre`, CLIP).
    pub pre_norm: bool,
    /// LayerNorm on q and k per head (`attn.q_norm`, `attn.k_norm` [head_dim]).
    pub qk_norm: bool,
    /// A bias on the qkv projection (`attn.qkv.bias`; timm's `qkv_bias`).
    pub qkv_bias: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            class_token: true,
            pool: Pool::Token,
            fc_norm: false,
            no_embed_class: false,
            layer_scale: None,
            reg_tokens: 0,
            distilled: false,
            pre_norm: false,
            qk_norm: false,
            qkv_bias: true,
        }
    }
}

/// The classification head: one linear layer, or the seed's pre-training MLP head
/// (hidden layer with ReLU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    Linear,
    Mlp { hidden: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "native", derive(clap::ValueEnum))]
pub enum Preset {
    /// The seed's experiment: 32x32x3, patch 4, D 512, 6 layers, 8 heads, FFN 2048 ReLU, MLP head.
    Labml,
    /// ViT-Tiny width on 32x32 images.
    Tiny,
    /// A small model for 28x28 grey images (MNIST, Fashion-MNIST).
    Micro,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub image_h: usize,
    pub image_w: usize,
    pub channels: usize,
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    pub act: Act,
    pub head: Head,
    pub dropout: f32,
    pub ln_eps: f32,
    pub classes: usize,
    pub options: Options,
}

#[derive(thiserror::Error, Debug, PartialEq)]
pub enum ConfigError {
    #[error("invalid model config: {0}")]
    Invalid(String),
    #[error("checkpoint metadata: field '{field}' {problem}")]
    Metadata { field: String, problem: String },
}

impl Preset {
    pub fn config(self) -> Config {
        match self {
            Preset::Labml => Config {
                image_h: 32,
                image_w: 32,
                channels: 3,
                patch: 4,
                dim: 512,
                depth: 6,
                heads: 8,
                mlp_hidden: 2048,
                act: Act::Relu,
                head: Head::Mlp { hidden: 2048 },
                dropout: 0.1,
                ln_eps: 1e-5,
                classes: 10,
                options: Options::default(),
            },
            Preset::Tiny => Config {
                image_h: 32,
                image_w: 32,
                channels: 3,
                patch: 4,
                dim: 192,
                depth: 6,
                heads: 3,
                mlp_hidden: 768,
                act: Act::Gelu,
                head: Head::Linear,
                dropout: 0.0,
                ln_eps: 1e-6,
                classes: 10,
                options: Options::default(),
            },
            Preset::Micro => Config {
                image_h: 28,
                image_w: 28,
                channels: 1,
                patch: 4,
                dim: 64,
                depth: 2,
                heads: 4,
                mlp_hidden: 256,
                act: Act::Gelu,
                head: Head::Linear,
                dropout: 0.0,
                ln_eps: 1e-6,
                classes: 10,
                options: Options::default(),
            },
        }
    }
}

impl Config {
    pub fn grid(&self) -> (usize, usize) {
        (self.image_h / self.patch, self.image_w / self.patch)
    }
    pub fn patches(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }
    /// Tokens before the patches: class, distillation and register tokens, in that order.
    pub fn prefix_tokens(&self) -> usize {
        let o = &self.options;
        o.class_token as usize + o.distilled as usize + o.reg_tokens
    }
    /// N = prefix tokens + patches (1 + patches for the original ViT).
    pub fn tokens(&self) -> usize {
        self.prefix_tokens() + self.patches()
    }
    /// Rows of `pos_embed`: every token, or the patches alone (`no_embed_class`).
    pub fn pos_tokens(&self) -> usize {
        if self.options.no_embed_class {
            self.patches()
        } else {
            self.tokens()
        }
    }
    /// The original ViT's token layout (class token + patches, position on all, head on the
    /// class token), which the embedding kernels and their CPU specialisation run.
    pub fn plain_tokens(&self) -> bool {
        let o = &self.options;
        o.class_token && !o.distilled && o.reg_tokens == 0 && !o.no_embed_class
    }
    /// The width the head reads: D, or 2D for [class token ; patch mean].
    pub fn head_in(&self) -> usize {
        match self.options.pool {
            Pool::ClsAvg => 2 * self.dim,
            _ => self.dim,
        }
    }
    /// `norm` runs over every token before the readouts (avg pooling without fc_norm, and
    /// the class token beside the patch mean).
    pub fn norm_all_tokens(&self) -> bool {
        !self.options.fc_norm && self.options.pool != Pool::Token
    }
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.patch == 0
            || !self.image_h.is_multiple_of(self.patch)
            || !self.image_w.is_multiple_of(self.patch)
        {
            return bad(format!(
                "image {}x{} is not a multiple of the patch size {}",
                self.image_h, self.image_w, self.patch
            ));
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return bad(format!(
                "width {} is not a multiple of the head count {}",
                self.dim, self.heads
            ));
        }
        if self.head_dim() > 64 || !self.head_dim().is_multiple_of(4) {
            return bad(format!(
                "head dim {} must be a multiple of 4 and at most 64 (the attention kernels' limit)",
                self.head_dim()
            ));
        }
        if self.depth == 0 || self.mlp_hidden == 0 || self.classes < 2 || self.channels == 0 {
            return bad(format!(
                "depth {}, mlp hidden {}, classes {}, channels {}: all must be positive (classes >= 2)",
                self.depth, self.mlp_hidden, self.classes, self.channels
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if self.ln_eps.is_nan() || self.ln_eps <= 0.0 {
            return bad(format!("LayerNorm eps {} must be positive", self.ln_eps));
        }
        let o = &self.options;
        if o.pool == Pool::Token && !o.class_token {
            return bad("token pooling needs a class token (use avg pooling without one)".into());
        }
        if o.distilled
            && (!o.class_token
                || o.pool != Pool::Token
                || o.reg_tokens > 0
                || self.head != Head::Linear)
        {
            return bad(
                "a distillation token needs a class token, token pooling, no register tokens \
                 and a linear head"
                    .into(),
            );
        }
        if o.pool == Pool::ClsAvg
            && (!o.class_token || o.fc_norm || o.distilled || self.head != Head::Linear)
        {
            return bad(
                "the class token beside the patch mean needs a class token, no fc_norm, no \
                 distillation token and a linear head"
                    .into(),
            );
        }
        if o.pool != Pool::Token && self.patches() == 0 {
            return bad("avg pooling needs at least one patch".into());
        }
        if o.layer_scale.is_some_and(|v| !v.is_finite()) {
            return bad(format!(
                "LayerScale init {:?} must be finite",
                o.layer_scale
            ));
        }
        Ok(())
    }

    /// The config as safetensors metadata strings (design.md section 2).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("img_h", self.image_h.to_string());
        put("img_w", self.image_w.to_string());
        put("chans", self.channels.to_string());
        put("patch", self.patch.to_string());
        put("dim", self.dim.to_string());
        put("depth", self.depth.to_string());
        put("heads", self.heads.to_string());
        put("mlp_hidden", self.mlp_hidden.to_string());
        put("act", self.act.name().into());
        match self.head {
            Head::Linear => put("head", "linear".into()),
            Head::Mlp { hidden } => {
                put("head", "mlp".into());
                put("head_hidden", hidden.to_string());
            }
        }
        put("dropout", self.dropout.to_string());
        put("ln_eps", self.ln_eps.to_string());
        put("classes", self.classes.to_string());
        // The options only where they differ from the original ViT, so its metadata is
        // unchanged.
        let (o, plain) = (&self.options, Options::default());
        if o.class_token != plain.class_token {
            put("class_token", o.class_token.to_string());
        }
        match o.pool {
            Pool::Token => {}
            Pool::Avg => put("global_pool", "avg".into()),
            Pool::ClsAvg => put("global_pool", "cls_avg".into()),
        }
        if o.fc_norm {
            put("fc_norm", "true".into());
        }
        if o.no_embed_class {
            put("no_embed_class", "true".into());
        }
        if let Some(v) = o.layer_scale {
            put("init_values", v.to_string());
        }
        if o.reg_tokens > 0 {
            put("reg_tokens", o.reg_tokens.to_string());
        }
        if o.distilled {
            put("distilled", "true".into());
        }
        if o.pre_norm {
            put("pre_norm", "true".into());
        }
        if o.qk_norm {
            put("qk_norm", "true".into());
        }
        if !o.qkv_bias {
            put("qkv_bias", "false".into());
        }
        m
    }

    pub fn from_metadata(m: &HashMap<String, String>) -> Result<Config, ConfigError> {
        fn get<T: std::str::FromStr>(
            m: &HashMap<String, String>,
            k: &str,
        ) -> Result<T, ConfigError> {
            let v = m.get(k).ok_or_else(|| ConfigError::Metadata {
                field: k.into(),
                problem: "is missing".into(),
            })?;
            v.parse().map_err(|_| ConfigError::Metadata {
                field: k.into(),
                problem: format!("has unreadable value '{v}'"),
            })
        }
        let act = match get::<String>(m, "act")?.as_str() {
            "relu" => Act::Relu,
            "gelu" => Act::Gelu,
            "quick_gelu" => Act::QuickGelu,
            other => {
                return Err(ConfigError::Metadata {
                    field: "act".into(),
                    problem: format!("is '{other}', expected relu, gelu or quick_gelu"),
                })
            }
        };
        // Absent options keep the original ViT's value (checkpoints written before them).
        fn opt<T: std::str::FromStr>(
            m: &HashMap<String, String>,
            k: &str,
            default: T,
        ) -> Result<T, ConfigError> {
            match m.get(k) {
                None => Ok(default),
                Some(_) => get(m, k),
            }
        }
        let plain = Options::default();
        let pool = match m.get("global_pool").map(String::as_str) {
            None | Some("token") => Pool::Token,
            Some("avg") => Pool::Avg,
            Some("cls_avg") => Pool::ClsAvg,
            Some(other) => {
                return Err(ConfigError::Metadata {
                    field: "global_pool".into(),
                    problem: format!("is '{other}', expected token, avg or cls_avg"),
                })
            }
        };
        let options = Options {
            class_token: opt(m, "class_token", plain.class_token)?,
            pool,
            fc_norm: opt(m, "fc_norm", plain.fc_norm)?,
            no_embed_class: opt(m, "no_embed_class", plain.no_embed_class)?,
            layer_scale: m
                .get("init_values")
                .map(|_| get(m, "init_values"))
                .transpose()?,
            reg_tokens: opt(m, "reg_tokens", plain.reg_tokens)?,
            distilled: opt(m, "distilled", plain.distilled)?,
            pre_norm: opt(m, "pre_norm", plain.pre_norm)?,
            qk_norm: opt(m, "qk_norm", plain.qk_norm)?,
            qkv_bias: opt(m, "qkv_bias", plain.qkv_bias)?,
        };
        let head = match m.get("head").map(String::as_str) {
            None | Some("linear") => Head::Linear,
            Some("mlp") => Head::Mlp {
                hidden: get(m, "head_hidden")?,
            },
            Some(other) => {
                return Err(ConfigError::Metadata {
                    field: "head".into(),
                    problem: format!("is '{other}', expected linear or mlp"),
                })
            }
        };
        let cfg = Config {
            image_h: get(m, "img_h")?,
            image_w: get(m, "img_w")?,
            channels: get(m, "chans")?,
            patch: get(m, "patch")?,
            dim: get(m, "dim")?,
            depth: get(m, "depth")?,
            heads: get(m, "heads")?,
            mlp_hidden: get(m, "mlp_hidden")?,
            act,
            head,
            dropout: m
                .get("dropout")
                .map(|_| get(m, "dropout"))
                .transpose()?
                .unwrap_or(0.0),
            ln_eps: get(m, "ln_eps")?,
            classes: get(m, "classes")?,
            options,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}x{} patch {} ({} tokens), D {}, {} layers, {} heads, MLP {} {:?}, head {:?}, dropout {}, {} classes",
            self.image_h,
            self.image_w,
            self.channels,
            self.patch,
            self.tokens(),
            self.dim,
            self.depth,
            self.heads,
            self.mlp_hidden,
            self.act,
            self.head,
            self.dropout,
            self.classes
        )?;
        if self.options != Options::default() {
            write!(f, ", {:?}", self.options)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_metadata_and_old_metadata_means_the_original_vit() {
        let plain = Preset::Micro.config();
        let m = plain.to_metadata();
        for key in [
            "class_token",
            "global_pool",
            "init_values",
            "reg_tokens",
            "qkv_bias",
        ] {
            assert!(!m.contains_key(key), "the original ViT writes no '{key}'");
        }
        assert_eq!(Config::from_metadata(&m), Ok(plain.clone()));
        let every = Config {
            act: Act::QuickGelu,
            options: Options {
                class_token: true,
                pool: Pool::Avg,
                fc_norm: true,
                no_embed_class: true,
                layer_scale: Some(1e-5),
                reg_tokens: 4,
                distilled: false,
                pre_norm: true,
                qk_norm: true,
                qkv_bias: false,
            },
            ..plain.clone()
        };
        assert_eq!(Config::from_metadata(&every.to_metadata()), Ok(every));
        let deit = Config {
            options: Options {
                distilled: true,
                class_token: true,
                ..Options::default()
            },
            ..plain
        };
        assert_eq!(Config::from_metadata(&deit.to_metadata()), Ok(deit.clone()));
        let mut bad = deit.to_metadata();
        bad.insert("global_pool".into(), "max".into());
        let e = Config::from_metadata(&bad).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("global_pool") && e.contains("max")));
        let mut bad = deit.to_metadata();
        bad.insert("global_pool".into(), "avg".into());
        let e = Config::from_metadata(&bad).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("distillation token")));
    }
}
