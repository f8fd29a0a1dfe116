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
    /// Uniform in [-bound, bound]: PyTorch's Conv2d default (kaiming_uniform with a = sqrt(5),
    /// bound 1/sqrt(fan_in), and the same bound for its bias), which timm keeps for the patch
    /// embedding because its ViT init touches Linear layers only.
    Uniform(f32),
    Zeros,
    Ones,
    /// Every element the same (LayerScale's `init_values`).
    Const(f32),
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
    let (d, f) = (cfg.dim, cfg.mlp_hidden);
    let fan_in = cfg.channels * cfg.patch * cfg.patch;
    let patch_init = Init::Uniform(1.0 / (fan_in as f32).sqrt());
    let o = &cfg.options;
    let mut v = Vec::new();
    if o.class_token {
        v.push(spec("cls_token", &[1, 1, d], false, Init::Normal(1e-6)));
    }
    if o.distilled {
        v.push(spec("dist_token", &[1, 1, d], false, W));
    }
    if o.reg_tokens > 0 {
        let r = o.reg_tokens;
        v.push(spec("reg_token", &[1, r, d], false, Init::Normal(1e-6)));
    }
    v.extend([
        spec("pos_embed", &[1, cfg.pos_tokens(), d], false, W),
        spec(
            "patch_embed.proj.weight",
            &[d, cfg.channels, cfg.patch, cfg.patch],
            true,
            patch_init,
        ),
    ]);
    // timm's patch embedding has no bias when a LayerNorm follows it (`pre_norm`, CLIP).
    if !o.pre_norm {
        v.push(spec("patch_embed.proj.bias", &[d], false, patch_init));
    }
    if o.pre_norm {
        v.push(spec("norm_pre.weight", &[d], false, Init::Ones));
        v.push(spec("norm_pre.bias", &[d], false, Init::Zeros));
    }
    let hd = cfg.head_dim();
    for i in 0..cfg.depth {
        let p = format!("blocks.{i}.");
        v.push(spec(format!("{p}norm1.weight"), &[d], false, Init::Ones));
        v.push(spec(format!("{p}norm1.bias"), &[d], false, Init::Zeros));
        v.push(spec(format!("{p}attn.qkv.weight"), &[3 * d, d], true, W));
        if o.qkv_bias {
            v.push(spec(
                format!("{p}attn.qkv.bias"),
                &[3 * d],
                false,
                Init::Zeros,
            ));
        }
        if o.qk_norm {
            for qk in ["q_norm", "k_norm"] {
                v.push(spec(
                    format!("{p}attn.{qk}.weight"),
                    &[hd],
                    false,
                    Init::Ones,
                ));
                v.push(spec(
                    format!("{p}attn.{qk}.bias"),
                    &[hd],
                    false,
                    Init::Zeros,
                ));
            }
        }
        v.push(spec(format!("{p}attn.proj.weight"), &[d, d], true, W));
        v.push(spec(format!("{p}attn.proj.bias"), &[d], false, Init::Zeros));
        v.push(spec(format!("{p}norm2.weight"), &[d], false, Init::Ones));
        v.push(spec(format!("{p}norm2.bias"), &[d], false, Init::Zeros));
        v.push(spec(format!("{p}mlp.fc1.weight"), &[f, d], true, W));
        v.push(spec(format!("{p}mlp.fc1.bias"), &[f], false, Init::Zeros));
        v.push(spec(format!("{p}mlp.fc2.weight"), &[d, f], true, W));
        v.push(spec(format!("{p}mlp.fc2.bias"), &[d], false, Init::Zeros));
        if let Some(init) = o.layer_scale {
            for ls in ["ls1", "ls2"] {
                v.push(spec(
                    format!("{p}{ls}.gamma"),
                    &[d],
                    false,
                    Init::Const(init),
                ));
            }
        }
    }
    let last = if o.fc_norm { "fc_norm" } else { "norm" };
    v.push(spec(format!("{last}.weight"), &[d], false, Init::Ones));
    v.push(spec(format!("{last}.bias"), &[d], false, Init::Zeros));
    v
}

/// The head's parameters.
pub fn head_specs(cfg: &Config) -> Vec<ParamSpec> {
    let (d, k) = (cfg.head_in(), cfg.classes);
    match cfg.head {
        Head::Linear if cfg.options.distilled => vec![
            spec("head.weight", &[k, d], true, W),
            spec("head.bias", &[k], false, Init::Zeros),
            spec("head_dist.weight", &[k, d], true, W),
            spec("head_dist.bias", &[k], false, Init::Zeros),
        ],
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
        Init::Const(v) => vec![v; n],
        Init::Normal(std) => (0..n).map(|_| std * normal(rng)).collect(),
        Init::Uniform(bound) => (0..n).map(|_| rng.random_range(-bound..=bound)).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Preset;

    fn stats(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (
            var.sqrt(),
            v.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64)),
        )
    }

    /// timm's VisionTransformer as built by `VisionTransformer(...)`: Linear weights and
    /// pos_embed trunc_normal(0.02) (std 0.02 x 0.8796 after truncation at 2 std), cls_token
    /// normal(1e-6), the patch embedding (a Conv2d timm does not re-initialise) and its bias
    /// uniform in +-1/sqrt(C*P*P) (std bound/sqrt(3)), norms 1 and biases 0.
    #[test]
    fn initialisation_follows_timm_tensor_by_tensor() {
        for preset in [Preset::Micro, Preset::Tiny] {
            let cfg = preset.config();
            let p = HostParams::init(&cfg, 7);
            let get = |name: &str| p.get(name).unwrap_or_else(|| panic!("{name} missing"));
            let bound = 1.0 / ((cfg.channels * cfg.patch * cfg.patch) as f64).sqrt();
            for name in ["patch_embed.proj.weight", "patch_embed.proj.bias"] {
                let (std, max) = stats(get(name));
                assert!(max <= bound * (1.0 + 1e-6), "{name}: |x| {max} > {bound}");
                let want = bound / 3f64.sqrt();
                assert!(
                    (std / want - 1.0).abs() < 0.2,
                    "{name}: std {std} vs {want}"
                );
            }
            for name in [
                "pos_embed",
                "blocks.0.attn.qkv.weight",
                "blocks.1.mlp.fc2.weight",
            ] {
                let (std, max) = stats(get(name));
                assert!(
                    max <= 0.04 + 1e-7,
                    "{name}: |x| {max} beyond the truncation"
                );
                assert!(
                    (std / (0.02 * 0.8796) - 1.0).abs() < 0.1,
                    "{name}: std {std}"
                );
            }
            let (std, _) = stats(get("cls_token"));
            assert!(std < 3e-6 && std > 3e-7, "cls_token std {std}");
            assert!(get("blocks.0.norm1.weight").iter().all(|&x| x == 1.0));
            assert!(get("blocks.0.mlp.fc1.bias").iter().all(|&x| x == 0.0));
        }
    }
}
