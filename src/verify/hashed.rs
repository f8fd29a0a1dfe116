//! Debug-state fixtures of models too large to store (scripts/make_hashed_parity_fixture.py,
//! e.g. ViT-B's width at depth 6: 175 MB of weights): the weights come from a counter-based
//! hash that the script and this file compute exactly alike, and each gradient is checked
//! by its norm and by samples at recorded indices.

use super::{compare, fixture_config, fixture_error, run_debug_step, Report, Tolerances};
use super::{Comparison, VerifyError};
use crate::gpu::Gpu;
use crate::model::checkpoint::TensorFile;
use crate::model::params::param_specs;
use crate::model::HostParams;
use std::path::Path;

/// The rule as the script records it in the metadata (`weights_rule`); another text is a
/// rule this build does not know.
const RULE: &str = "splitmix64(index * 2^32 + element + seed * 0x9E3779B97F4A7C15) >> 40 = u; \
                    k = 2u + 1 - 2^24; value = float32(center + k * 2^(log2_amplitude - 24)); \
                    weights.<name> = 'index center log2_amplitude'";

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(GOLDEN);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Elements 0..n of tensor `index` under the rule: `center + k 2^(log2_amplitude - 24)`
/// with an odd k in (-2^24, 2^24) from the hash, exact in f64, rounded once to f32.
pub fn hashed_values(
    index: u64,
    n: usize,
    seed: u64,
    center: i32,
    log2_amplitude: i32,
) -> Vec<f32> {
    let base = (index << 32).wrapping_add(seed.wrapping_mul(GOLDEN));
    let unit = 2f64.powi(log2_amplitude - 24);
    (0..n as u64)
        .map(|e| {
            let u = (splitmix64(base.wrapping_add(e)) >> 40) as i64;
            let k = 2 * u + 1 - (1 << 24);
            (f64::from(center) + k as f64 * unit) as f32
        })
        .collect()
}

pub fn is_hashed(file: &TensorFile) -> bool {
    file.metadata.contains_key("weights_rule")
}

/// Every parameter of the fixture's model from the rule and the metadata's
/// `weights.<name>` = "index center log2_amplitude".
fn hashed_params(path: &Path, file: &TensorFile) -> Result<HostParams, VerifyError> {
    let bad = |message: String| fixture_error(path, message);
    let meta = &file.metadata;
    let rule = meta.get("weights_rule").map_or("", String::as_str);
    if rule != RULE {
        return Err(bad(format!(
            "metadata weights_rule is '{rule}', this build computes '{RULE}'"
        )));
    }
    let seed = meta
        .get("weights_seed")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("metadata 'weights_seed' is missing or not a number".into()))?;
    let cfg = fixture_config(path, file)?;
    let specs = param_specs(&cfg);
    let values = specs
        .iter()
        .map(|spec| {
            let key = format!("weights.{}", spec.name);
            let raw = meta
                .get(&key)
                .ok_or_else(|| bad(format!("metadata '{key}' is missing")))?;
            let fields: Vec<&str> = raw.split_whitespace().collect();
            let parsed = match fields[..] {
                [i, c, a] => i.parse().ok().zip(c.parse().ok()).zip(a.parse().ok()),
                _ => None,
            };
            let ((index, center), log2_amplitude) = parsed.ok_or_else(|| {
                bad(format!(
                    "metadata '{key}' = '{raw}', expected 'index center log2_amplitude'"
                ))
            })?;
            Ok(hashed_values(
                index,
                spec.len(),
                seed,
                center,
                log2_amplitude,
            ))
        })
        .collect::<Result<Vec<_>, VerifyError>>()?;
    Ok(HostParams { specs, values })
}

/// One step of the fixture's batch; logits, loss, and per gradient its samples and norm.
pub(crate) async fn verify_hashed(
    gpu: &Gpu,
    path: &Path,
    file: &TensorFile,
    tol: Tolerances,
    chunk_bytes: Option<u64>,
) -> Result<Report, VerifyError> {
    let cfg = fixture_config(path, file)?;
    let params = hashed_params(path, file)?;
    let step = run_debug_step(gpu, path, file, &cfg, &params, chunk_bytes).await?;
    let mut comparisons = step.compare_logits_and_loss(path, file, tol)?;
    for (spec, grad) in params.specs.iter().zip(&step.grads) {
        comparisons.extend(compare_gradient(path, file, &spec.name, grad, tol.grads)?);
    }
    Ok(Report {
        config: cfg,
        batch: step.batch,
        arena_chunks: step.arena_chunks,
        comparisons,
    })
}

/// `grad <name>` (the samples at their indices) and `grad norm <name>`.
fn compare_gradient(
    path: &Path,
    file: &TensorFile,
    name: &str,
    grad: &[f32],
    tolerance: f64,
) -> Result<[Comparison; 2], VerifyError> {
    let index_name = format!("expected.grad_sample_index.{name}");
    let index = match file.int_tensors.get(&index_name) {
        Some((shape, index)) if shape.len() == 1 => index,
        _ => {
            return Err(fixture_error(
                path,
                format!("tensor '{index_name}' (int64, one dimension) is missing"),
            ))
        }
    };
    let expected = file.take(
        path,
        &format!("expected.grad_samples.{name}"),
        &[index.len()],
    )?;
    let ours = index
        .iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .and_then(|i| grad.get(i).copied())
                .ok_or_else(|| {
                    fixture_error(
                        path,
                        format!(
                            "{index_name} holds {i}, outside the {} elements of {name}",
                            grad.len()
                        ),
                    )
                })
        })
        .collect::<Result<Vec<f32>, VerifyError>>()?;
    let expected_norm = file.take(path, &format!("expected.grad_norm.{name}"), &[1])?;
    let norm = grad
        .iter()
        .map(|&g| f64::from(g).powi(2))
        .sum::<f64>()
        .sqrt();
    Ok([
        compare(&format!("grad {name}"), &ours, &expected, tolerance),
        compare(
            &format!("grad norm {name}"),
            &[norm as f32],
            &expected_norm,
            tolerance,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values the script's numpy code gives (make_hashed_parity_fixture.py `hashed`), bit
    /// for bit: the first is splitmix64's first output for state 0.
    #[test]
    fn the_weight_rule_matches_the_python_generator_bit_for_bit() {
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(hashed_values(0, 4, 0, 0, -4)),
            [0x3d444151, 0x3c08516c, 0x3c3ac1ac, 0xbd45e9d7]
        );
        assert_eq!(
            bits(hashed_values(3, 4, 7, 0, -4)),
            [0xbcda8b82, 0x3cffe86a, 0xbd56c529, 0xbbf61948]
        );
        assert_eq!(
            bits(hashed_values(70, 3, 0, 1, -2)),
            [0x3f7becd4, 0x3f822849, 0x3f536ccf]
        );
    }
}
