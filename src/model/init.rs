//! Starting weights from a pre-trained checkpoint (`train --init`): the body is kept, the
//! head is kept too when it fits, else a new one is initialised.

use super::config::Config;
use super::params::{param_specs, HostParams};

/// The checkpoint's body is not the body of the model to train.
#[derive(thiserror::Error, Debug)]
#[error(
    "--init checkpoint's body ({init}) differs from the model to train ({model}); only the \
     head, the classes, the image size and dropout can change"
)]
pub struct BodyMismatch {
    pub init: String,
    pub model: String,
}

/// Whether `init_cfg`'s head can be kept for `cfg` (same kind, same classes).
pub fn keeps_head(init_cfg: &Config, cfg: &Config) -> bool {
    init_cfg.head == cfg.head && init_cfg.classes == cfg.classes
}

/// The parameters of `cfg` from `init` (trained as `init_cfg`, position embeddings already
/// resampled to `cfg`'s grid): every body tensor, and the head when [`keeps_head`], else a
/// fresh head drawn from `seed` (the seed's fine-tuning recipe).
pub fn merge_init(
    init_cfg: &Config,
    init: &HostParams,
    cfg: &Config,
    seed: u64,
) -> Result<HostParams, BodyMismatch> {
    let body = |c: &Config| (c.dim, c.depth, c.heads, c.mlp_hidden, c.patch, c.channels);
    if body(init_cfg) != body(cfg) || init_cfg.act != cfg.act {
        return Err(BodyMismatch {
            init: init_cfg.to_string(),
            model: cfg.to_string(),
        });
    }
    if keeps_head(init_cfg, cfg) {
        return Ok(HostParams {
            specs: param_specs(cfg),
            values: init.values.clone(),
        });
    }
    Ok(init.with_new_head(cfg, seed))
}
