//! The model's configuration, its presets, and its round trip through checkpoint metadata.

use std::collections::HashMap;
use std::fmt;

/// The MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "native", derive(clap::ValueEnum))]
pub enum Act {
    Relu,
    Gelu,
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
    /// N = 1 + patches (the CLS token first).
    pub fn tokens(&self) -> usize {
        1 + self.patches()
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
        put(
            "act",
            match self.act {
                Act::Relu => "relu",
                Act::Gelu => "gelu",
            }
            .into(),
        );
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
            other => {
                return Err(ConfigError::Metadata {
                    field: "act".into(),
                    problem: format!("is '{other}', expected relu or gelu"),
                })
            }
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
        )
    }
}
