//! The parameter list under timm's names and shapes (design.md section 2), and its
//! initialisation as timm does it.

use super::config::{Config, Head};
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Truncated normal (at +-2 std), timm's `trunc_normal_(std=0.02)`.
    TruncNormal(f32),
    /// Plain normal (timm's cls_token: std 1e-6).
    Normal(f32),
    Zeros,
    Ones,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Weight decay applies to weight matrices only, not biases, norms, cls or pos.
    pub decay: bool,
    pub init: Init,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn spec(name: impl Into<String>, shape: &[usize], decay: bool, init: Init) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        shape: shape.to_vec(),
        decay,
        init,
    }
}

const W: Init = Init::TruncNormal(0.02);

/// The body's parameters (everything but the head), in a fixed order.
pub fn body_specs(cfg: &Config) -> Vec<ParamSpec> {
    let (d, f, n) = (cfg.dim, cfg.mlp_hidden, cfg.tokens());
    let mut v = vec![
        spec("cls_token", &[1, 1, d], false, Init::Normal(1e-6)),
        spec("pos_embed", &[1, n, d], false, W),
        spec(
            "patch_embed.proj.weight",
            &[d, cfg.channels, cfg.patch, cfg.patch],
            true,
            W,
        ),
        spec("patch_embed.proj.bias", &[d], false, Init::Zeros),
    ];
    for i in 0..cfg.depth {
        let p = format!("blocks.{i}.");
        v.push(spec(format!("{p}norm1.weight"), &[d], false, Init::Ones));
        v.push(spec(format!("{p}norm1.bias"), &[d], false, Init::Zeros));
        v.push(spec(format!("{p}attn.qkv.weight"), &[3 * d, d], true, W));
        v.push(spec(
            format!("{p}attn.qkv.bias"),
            &[3 * d],
            false,
            Init::Zeros,
        ));
        v.push(spec(format!("{p}attn.proj.weight"), &[d, d], true, W));
        v.push(spec(format!("{p}attn.proj.bias"), &[d], false, Init::Zeros));
        v.push(spec(format!("{p}norm2.weight"), &[d], false, Init::Ones));
        v.push(spec(format!("{p}norm2.bias"), &[d], false, Init::Zeros));
        v.push(spec(format!("{p}mlp.fc1.weight"), &[f, d], true, W));
        v.push(spec(format!("{p}mlp.fc1.bias"), &[f], false, Init::Zeros));
        v.push(spec(format!("{p}mlp.fc2.weight"), &[d, f], true, W));
        v.push(spec(format!("{p}mlp.fc2.bias"), &[d], false, Init::Zeros));
    }
    v.push(spec("norm.weight", &[d], false, Init::Ones));
    v.push(spec("norm.bias", &[d], false, Init::Zeros));
    v
}

/// The head's parameters.
pub fn head_specs(cfg: &Config) -> Vec<ParamSpec> {
    let (d, k) = (cfg.dim, cfg.classes);
    match cfg.head {
        Head::Linear => vec![
            spec("head.weight", &[k, d], true, W),
            spec("head.bias", &[k], false, Init::Zeros),
        ],
        Head::Mlp { hidden } => vec![
            spec("head.fc1.weight", &[hidden, d], true, W),
            spec("head.fc1.bias", &[hidden], false, Init::Zeros),
            spec("head.fc2.weight", &[k, hidden], true, W),
            spec("head.fc2.bias", &[k], false, Init::Zeros),
        ],
    }
}

pub fn param_specs(cfg: &Config) -> Vec<ParamSpec> {
    let mut v = body_specs(cfg);
    v.extend(head_specs(cfg));
    v
}

/// All parameter values on the host, in `param_specs` order.
#[derive(Clone, Debug, PartialEq)]
pub struct HostParams {
    pub specs: Vec<ParamSpec>,
    pub values: Vec<Vec<f32>>,
}

fn init_values(spec: &ParamSpec, rng: &mut impl Rng) -> Vec<f32> {
    let n = spec.len();
    match spec.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal(std) => (0..n).map(|_| std * normal(rng)).collect(),
        Init::TruncNormal(std) => (0..n)
            .map(|_| loop {
                let z = normal(rng);
                if z.abs() <= 2.0 {
                    break std * z;
                }
            })
            .collect(),
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

impl HostParams {
    pub fn init(cfg: &Config, seed: u64) -> HostParams {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let specs = param_specs(cfg);
        let values = specs.iter().map(|s| init_values(s, &mut rng)).collect();
        HostParams { specs, values }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.index(name).map(|i| self.values[i].as_slice())
    }

    pub fn count(&self) -> usize {
        self.specs.iter().map(ParamSpec::len).sum()
    }

    /// Replace the head with a freshly initialised one for `cfg` (the body is kept as is).
    pub fn with_new_head(&self, cfg: &Config, seed: u64) -> HostParams {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x4ead);
        let body = body_specs(cfg).len();
        let mut specs = self.specs[..body].to_vec();
        let mut values = self.values[..body].to_vec();
        for s in head_specs(cfg) {
            values.push(init_values(&s, &mut rng));
            specs.push(s);
        }
        HostParams { specs, values }
    }
}
