//! The portable GEMM (tiled with its split-K reduction, and register blocks) in every
//! layout with its epilogues, attention (tiled and rows, forward and both backward passes,
//! and the probabilities), and the benchmarks' multiply-add shader, against
//! `crate::reference`.

use super::{Bench, TOLERANCE};
use crate::gpu::Out;
use crate::kernels::attention::{self, Attention, AttentionBackward, AttentionForward};
use crate::kernels::attention::{AttentionProbabilities, AttentionShape};
use crate::kernels::gemm::{self, ActGrad, Activation, Gemm, GemmArgs, Layout, Plan};
use crate::reference::attention as ra;
use crate::reference::gemm::{self as rg, Epilogue};

/// The epilogue of a GEMM check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    pub bias: bool,
    pub slope: bool,
    pub activation: Option<Activation>,
    pub act_grad: Option<ActGrad>,
    pub accumulate: bool,
}

#[derive(Clone, Debug)]
pub struct GemmCase {
    pub variant: gemm::Variant,
    pub layout: Layout,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `Tiled`'s tile size and split-K (`Plan::for_shape` when `None`).
    pub plan: Option<Plan>,
    pub flags: Flags,
}

/// `Tiled`'s k-tile: a split's k is a multiple of it (as `kernels::gemm`).
const TILED_TK: usize = 16;

impl GemmCase {
    pub fn check(&self) -> &'static str {
        match (self.variant, self.layout) {
            (gemm::Variant::Registers, Layout::NT) => "registers forward (NT)",
            (gemm::Variant::Registers, Layout::NN) => "registers input gradient (NN)",
            (gemm::Variant::Registers, Layout::TN) => "registers weight gradient (TN)",
            (gemm::Variant::Lanes4, Layout::NT) => "lanes4 forward (NT)",
            (gemm::Variant::Lanes4, Layout::NN) => "lanes4 input gradient (NN)",
            (gemm::Variant::Lanes4, Layout::TN) => "lanes4 weight gradient (TN)",
            (_, Layout::NT) => "tiled forward (NT)",
            (_, Layout::NN) => "tiled input gradient (NN)",
            (_, Layout::TN) => "tiled weight gradient (TN)",
        }
    }

    fn plan(&self) -> Plan {
        self.plan
            .unwrap_or_else(|| Plan::for_shape(self.m, self.n, self.k, self.layout))
    }

    /// Whether `Tiled` stores through the partial sums and reduces them: k split in more
    /// than one chunk, or rows of C off 16-byte bounds.
    fn reduced(&self) -> bool {
        let splits = self.plan().splits.max(1) as usize;
        let chunk = self.k.div_ceil(splits).div_ceil(TILED_TK) * TILED_TK;
        self.k.div_ceil(chunk) > 1 || !self.n.is_multiple_of(4)
    }

    pub fn entries(&self) -> Vec<&'static str> {
        let aligned = gemm::registers_aligned(self.m, self.n, self.layout, self.epilogue());
        match self.variant {
            gemm::Variant::Lanes4
                if crate::kernels::cpu::gemm_lanes4::runs_blocks(
                    self.m,
                    self.n,
                    self.layout,
                    self.epilogue(),
                ) =>
            {
                vec!["cpu/gemm_lanes4.wgsl:gemm_lanes4"]
            }
            gemm::Variant::Registers | gemm::Variant::Lanes4 if aligned => {
                vec!["gemm_tiled.wgsl:gemm_registers_aligned"]
            }
            gemm::Variant::Registers | gemm::Variant::Lanes4 => {
                vec!["gemm_tiled.wgsl:gemm_registers"]
            }
            _ if self.reduced() => {
                vec!["gemm_tiled.wgsl:gemm_tiled", "gemm_tiled.wgsl:gemm_reduce"]
            }
            _ => vec!["gemm_tiled.wgsl:gemm_tiled"],
        }
    }

    fn epilogue(&self) -> gemm::AlignedEpilogue {
        let f = self.flags;
        gemm::AlignedEpilogue::of(
            f.activation.unwrap_or(Activation::None),
            f.slope,
            f.act_grad.is_some(),
            f.accumulate,
        )
    }

    pub fn describe(&self) -> String {
        let f = self.flags;
        let plan = match self.variant {
            gemm::Variant::Registers | gemm::Variant::Lanes4 => String::new(),
            _ => {
                let p = self.plan();
                format!(" tile={} splits={}", 64 * p.blocks, p.splits)
            }
        };
        format!(
            "m={} n={} k={}{plan} bias={} slope={} act={:?} act_grad={:?} accumulate={}",
            self.m, self.n, self.k, f.bias, f.slope, f.activation, f.act_grad, f.accumulate
        )
    }
}

pub(super) async fn gemm(b: &mut Bench<'_>, c: &GemmCase) -> Result<(), String> {
    let (m, n, k, f) = (c.m, c.n, c.k, c.flags);
    Gemm::supports(b.gpu, c.variant)
        .map_err(|why| format!("the adapter cannot run GEMM {}: {why}", c.variant.name()))?;
    let a = b.random(m * k, 1.0);
    let bm = b.random(n * k, 1.0);
    let bias = b.random(n, 1.0);
    let aux = b.random(m * n, 1.0);
    let c0 = b.random(m * n, 1.0);
    let activation = f.activation.unwrap_or(Activation::None);
    let epilogue = Epilogue {
        bias: f.bias.then_some(&bias[..]),
        activation,
        act_grad: f.act_grad.map(|grad| (&aux[..], grad)),
        accumulate: f.accumulate,
    };
    let (mut want, mut slope) = (c0.clone(), vec![0.0; m * n]);
    rg::gemm(
        &mut want,
        Some(&mut slope),
        &a,
        &bm,
        m,
        n,
        k,
        c.layout,
        &epilogue,
        0..m,
    );
    let kernel = Gemm::with_variant(b.gpu, c.variant);
    let (ba, bb, bbias, baux) = (b.input(&a), b.input(&bm), b.input(&bias), b.input(&aux));
    let bc = if f.accumulate {
        b.input(&c0)
    } else {
        b.output(m * n)
    };
    let bslope = b.output(m * n);
    let args = GemmArgs {
        a: (&ba).into(),
        b: (&bb).into(),
        c: (&bc).into(),
        m,
        n,
        k,
        layout: c.layout,
        bias: f.bias.then(|| (&bbias).into()),
        slope: f.slope.then_some(&bslope),
        activation,
        act_grad: f.act_grad.map(|grad| (&baux, grad)),
        accumulate: f.accumulate,
    };
    let commands = kernel.record_with_plan(b.gpu, &args, c.plan());
    b.push(commands);
    let out = b.run(&[&bc, &bslope]).await?;
    b.expect("C", &out[0], &want, TOLERANCE);
    if f.slope {
        b.expect("slope", &out[1], &slope, TOLERANCE);
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPass {
    Forward,
    /// The query pass, then the key pass.
    Backward,
    /// Inference only: the probabilities for attention maps.
    Probabilities,
}

#[derive(Clone, Debug)]
pub struct AttentionCase {
    pub variant: attention::Variant,
    pub pass: AttentionPass,
    pub shape: AttentionShape,
}

/// qkv entries in [-2.5, 2.5): scaled scores with a standard deviation of about 2, a softmax
/// far from uniform (as tests/kernels_attention.rs).
const QKV_SCALE: f32 = 2.5;

impl AttentionCase {
    pub fn check(&self) -> &'static str {
        use AttentionPass::*;
        match (self.variant, self.pass) {
            (_, Probabilities) => "probabilities",
            (attention::Variant::Tiled, Forward) => "tiled forward",
            (attention::Variant::Tiled, Backward) => "tiled backward",
            (attention::Variant::Lanes4, Forward) => "lanes4 forward",
            (_, Forward) => "rows forward",
            (_, Backward) => "rows backward",
        }
    }

    pub fn entries(&self) -> Vec<&'static str> {
        use AttentionPass::*;
        match (self.variant, self.pass) {
            (_, Probabilities) => vec!["attention.wgsl:attention_probabilities"],
            (attention::Variant::Tiled, Forward) => vec!["attention.wgsl:attention_forward_tiled"],
            (attention::Variant::Tiled, Backward) => vec![
                "attention.wgsl:attention_backward_query_tiled",
                "attention.wgsl:attention_backward_key_tiled",
            ],
            (attention::Variant::Lanes4, Forward)
                if crate::kernels::cpu::attention_lanes4::LanesAttention4::runs_forward(
                    self.shape.head_dim,
                ) =>
            {
                vec!["cpu/attention_lanes4.wgsl:attention_forward_lanes4"]
            }
            (_, Forward) => vec!["attention.wgsl:attention_forward"],
            (_, Backward) => vec![
                "attention.wgsl:attention_backward_query",
                "attention.wgsl:attention_backward_key",
            ],
        }
    }

    pub fn describe(&self) -> String {
        let s = self.shape;
        format!(
            "B={} N={} A={} d={}",
            s.batch, s.tokens, s.heads, s.head_dim
        )
    }
}

pub(super) async fn attention(b: &mut Bench<'_>, c: &AttentionCase) -> Result<(), String> {
    let s = c.shape;
    let (bn, n, a, d) = (s.batch, s.tokens, s.heads, s.head_dim);
    Attention::supports(b.gpu, c.variant).map_err(|why| {
        format!(
            "the adapter cannot run attention {}: {why}",
            c.variant.name()
        )
    })?;
    let kernel = Attention::with_variant(b.gpu, c.variant);
    let qkv = b.random(s.qkv_len(), QKV_SCALE);
    let bqkv = b.input(&qkv);
    if c.pass == AttentionPass::Probabilities {
        let mut want = vec![0.0; s.probs_len()];
        ra::probabilities(&mut want, &qkv, bn, n, a, d);
        let out = b.output(want.len());
        let args = AttentionProbabilities {
            shape: s,
            qkv: &bqkv,
            probs: &out,
        };
        b.record(&kernel, &args);
        let got = b.run(&[&out]).await?;
        b.expect("probabilities", &got[0], &want, TOLERANCE);
        return Ok(());
    }
    let (mut o, mut lse) = (vec![0.0; s.out_len()], vec![0.0; s.lse_len()]);
    ra::forward(&mut o, &mut lse, &qkv, bn, n, a, d);
    if c.pass == AttentionPass::Forward {
        let (bo, blse) = (b.output(o.len()), b.output(lse.len()));
        let args = AttentionForward {
            shape: s,
            qkv: &bqkv,
            o: &bo,
            lse: &blse,
        };
        b.record(&kernel, &args);
        let got = b.run(&[&bo, &blse]).await?;
        b.expect("o", &got[0], &o, TOLERANCE);
        b.expect("lse", &got[1], &lse, TOLERANCE);
        return Ok(());
    }
    // The backward from the reference's o and lse, so the check launches it alone.
    let d_o = b.random(s.out_len(), 1.0);
    let mut dqkv = vec![0.0; s.qkv_len()];
    ra::backward(&mut dqkv, &d_o, &qkv, &o, &lse, bn, n, a, d);
    let (bo, blse, bdo) = (b.input(&o), b.input(&lse), b.input(&d_o));
    let (bdqkv, scratch) = (b.output(dqkv.len()), b.output(Attention::scratch_len(s)));
    let args = AttentionBackward {
        shape: s,
        qkv: &bqkv,
        o: &bo,
        lse: &blse,
        d_o: &bdo,
        dqkv: &bdqkv,
        scratch: &scratch,
    };
    b.record(&kernel, &args);
    let got = b.run(&[&bdqkv]).await?;
    b.expect("dqkv", &got[0], &dqkv, TOLERANCE);
    // dq, dk and dv apart: each third must be right on its own, not just on aggregate
    let model = s.model_dim();
    for (part, name) in ["dq", "dk", "dv"].into_iter().enumerate() {
        let pick = |v: &[f32]| -> Vec<f32> {
            v.chunks(3 * model)
                .flat_map(|row| row[part * model..(part + 1) * model].to_vec())
                .collect()
        };
        b.expect(name, &pick(&got[0]), &pick(&dqkv), TOLERANCE);
    }
    Ok(())
}

/// peak_fma's shape record (src/kernels/peak.rs).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PeakMeta {
    iterations: u32,
    x: f32,
    y: f32,
    sentinel: f32,
}

/// Workgroups of 64 that cover its 1024 outputs.
pub(super) const PEAK_WORKGROUPS: u32 = 16;

/// With x = 0 every chain is y after its first step, so every invocation's sum of 8 vec4
/// chains is exactly 32 y; passed as the sentinel, it is stored to all 1024 outputs.
pub(super) async fn peak_fma(b: &mut Bench<'_>) -> Result<(), String> {
    let y = 0.25f32;
    let meta = PeakMeta {
        iterations: 3,
        x: 0.0,
        y,
        sentinel: 32.0 * y,
    };
    let pipeline = b.gpu.pipeline(&crate::kernels::PEAK_FMA, "peak_fma");
    let out = b.output(1024);
    let dispatch = b.gpu.dispatch(
        &pipeline,
        &[(0, &Out(&out))],
        &meta,
        [PEAK_WORKGROUPS, 1, 1],
    );
    b.push(vec![dispatch.into()]);
    let got = b.run(&[&out]).await?;
    b.expect_equal("out", &got[0], &vec![32.0 * y; 1024]);
    Ok(())
}
