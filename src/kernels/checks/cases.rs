//! The checks: every portable entry point, forward and backward, on shapes that are not
//! tile or workgroup multiples, small enough for a software adapter (SwiftShader runs the
//! whole list in the browser in a few minutes).

use super::{matmul, rows, sequence, Bench, Case};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::embed::EmbedShape;
use crate::kernels::gemm::{self, ActGrad, Activation, Layout, Plan};
use crate::reference::elementwise::ColumnBlock;
use crate::reference::tokens::TokenLayout;

/// What a check runs: the family's call and its parameters.
#[derive(Clone, Debug)]
pub enum Spec {
    LayerNormForward {
        rows: usize,
        cols: usize,
    },
    LayerNormBackward {
        rows: usize,
        cols: usize,
        accumulate: bool,
    },
    ColumnSum {
        rows: usize,
        cols: usize,
        accumulate: bool,
    },
    CrossEntropy {
        rows: usize,
        classes: usize,
    },
    Dropout(rows::DropoutCase),
    AdamW(rows::AdamWCase),
    Embed(sequence::EmbedOp, EmbedShape),
    Tokens(sequence::TokensOp, TokenLayout),
    Elementwise(sequence::ElementwiseOp),
    Gemm(matmul::GemmCase),
    Attention(matmul::AttentionCase),
    PeakFma,
}

impl Spec {
    pub(super) async fn run(&self, b: &mut Bench<'_>) -> Result<(), String> {
        match self {
            Spec::LayerNormForward { rows, cols } => rows::layernorm_forward(b, *rows, *cols).await,
            Spec::LayerNormBackward {
                rows,
                cols,
                accumulate,
            } => rows::layernorm_backward(b, *rows, *cols, *accumulate).await,
            Spec::ColumnSum {
                rows,
                cols,
                accumulate,
            } => rows::column_sum(b, *rows, *cols, *accumulate).await,
            Spec::CrossEntropy { rows, classes } => rows::cross_entropy(b, *rows, *classes).await,
            Spec::Dropout(c) => rows::dropout(b, c).await,
            Spec::AdamW(c) => rows::adamw(b, c).await,
            Spec::Embed(op, shape) => sequence::embed(b, *op, *shape).await,
            Spec::Tokens(op, layout) => sequence::tokens(b, *op, *layout).await,
            Spec::Elementwise(op) => sequence::elementwise(b, *op).await,
            Spec::Gemm(c) => matmul::gemm(b, c).await,
            Spec::Attention(c) => matmul::attention(b, c).await,
            Spec::PeakFma => matmul::peak_fma(b).await,
        }
    }

    /// Why the adapter cannot run this check's kernel variant (a CPU-adapter GEMM or
    /// attention on an adapter without its subgroups), or `None`.
    pub(super) fn unsupported(&self, gpu: &crate::gpu::Gpu) -> Option<String> {
        match self {
            Spec::Gemm(c) => gemm::Gemm::supports(gpu, c.variant)
                .err()
                .map(|why| format!("the adapter cannot run GEMM {}: {why}", c.variant.name())),
            Spec::Attention(c) => attention::Attention::supports(gpu, c.variant)
                .err()
                .map(|why| {
                    format!(
                        "the adapter cannot run attention {}: {why}",
                        c.variant.name()
                    )
                }),
            _ => None,
        }
    }
}

fn case(
    kernel: &'static str,
    check: &'static str,
    shape: String,
    entries: &[&'static str],
    spec: Spec,
) -> Case {
    Case {
        kernel,
        check,
        shape,
        entries: entries.to_vec(),
        spec,
    }
}

/// Every check, in a fixed order (a check's index seeds its generator).
pub fn all() -> Vec<Case> {
    let mut out = Vec::new();
    out.extend(layernorm_reduce_loss());
    out.extend(dropout_adamw());
    out.extend(embed());
    out.extend(tokens());
    out.extend(elementwise());
    out.extend(gemm_cases());
    out.extend(attention_cases());
    out.push(case(
        "peak_fma",
        "multiply-add chains",
        format!("{} workgroups of 64, x=0 y=0.25", matmul::PEAK_WORKGROUPS),
        &["peak_fma.wgsl:peak_fma"],
        Spec::PeakFma,
    ));
    out
}

fn layernorm_reduce_loss() -> Vec<Case> {
    let mut out = Vec::new();
    // 130 rows: two chunks of the parameter gradients' partial sums
    for (rows, cols) in [(17, 96), (130, 33)] {
        out.push(case(
            "layernorm",
            "forward",
            format!("rows={rows} cols={cols}"),
            &["layernorm.wgsl:layernorm_forward"],
            Spec::LayerNormForward { rows, cols },
        ));
    }
    for (rows, cols, accumulate) in [(17, 96, false), (130, 33, true)] {
        out.push(case(
            "layernorm",
            "backward",
            format!("rows={rows} cols={cols} accumulate={accumulate}"),
            &[
                "layernorm.wgsl:layernorm_backward_input",
                "layernorm.wgsl:layernorm_backward_params",
                "layernorm.wgsl:layernorm_params_finish",
            ],
            Spec::LayerNormBackward {
                rows,
                cols,
                accumulate,
            },
        ));
    }
    for (rows, cols, accumulate) in [(65, 33, false), (300, 64, true)] {
        out.push(case(
            "reduce",
            "column sum (bias gradient)",
            format!("rows={rows} cols={cols} accumulate={accumulate}"),
            &[
                "reduce.wgsl:column_sum_partial",
                "reduce.wgsl:column_sum_finish",
            ],
            Spec::ColumnSum {
                rows,
                cols,
                accumulate,
            },
        ));
    }
    for (rows, classes) in [(5, 10), (130, 3), (33, 1000)] {
        out.push(case(
            "loss",
            "cross-entropy forward and backward",
            format!("rows={rows} classes={classes}"),
            &["loss.wgsl:cross_entropy_forward_backward"],
            Spec::CrossEntropy { rows, classes },
        ));
    }
    out
}

fn dropout_adamw() -> Vec<Case> {
    let mut out = Vec::new();
    // lengths that are a multiple of 4 take the vec4 kernels
    let dropouts = [
        (4161, 0.1, 7, 0, true, "dropout_forward"),
        (2400, 0.3, 9, 2401, false, "dropout_forward4"),
        (4161, 0.5, 123456, 0, false, "dropout_backward"),
        (2400, 0.1, 3, 4800, false, "dropout_backward4"),
    ];
    for (len, p, step, offset, accumulate, entry) in dropouts {
        let backward = entry.starts_with("dropout_backward");
        let c = rows::DropoutCase {
            len,
            p,
            step,
            offset,
            accumulate,
            backward,
        };
        out.push(case(
            "dropout",
            if backward { "backward" } else { "forward" },
            format!("len={len} p={p} step={step} offset={offset} accumulate={accumulate}"),
            &[match entry {
                "dropout_forward" => "dropout.wgsl:dropout_forward",
                "dropout_forward4" => "dropout.wgsl:dropout_forward4",
                "dropout_backward" => "dropout.wgsl:dropout_backward",
                _ => "dropout.wgsl:dropout_backward4",
            }],
            Spec::Dropout(c),
        ));
    }
    for c in rows::AdamWCase::cases() {
        let entries: &[&str] = if c.vec4() {
            &[
                "adamw.wgsl:sum_squares4",
                "adamw.wgsl:clip_scale",
                "adamw.wgsl:adamw_update4",
            ]
        } else {
            &[
                "adamw.wgsl:sum_squares",
                "adamw.wgsl:clip_scale",
                "adamw.wgsl:adamw_update",
            ]
        };
        out.push(case(
            "adamw",
            "update with gradient-norm clipping",
            c.describe(),
            entries,
            Spec::AdamW(c),
        ));
    }
    out
}

fn embed_shape(
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    patch: usize,
    dim: usize,
) -> EmbedShape {
    EmbedShape {
        batch,
        channels,
        height: h,
        width: w,
        patch,
        dim,
    }
}

fn embed() -> Vec<Case> {
    use sequence::EmbedOp::*;
    // D odd: the scalar token kernels; D a multiple of 4: the vec4 ones
    let odd = embed_shape(2, 3, 24, 40, 8, 33);
    let vec4 = embed_shape(3, 1, 12, 20, 4, 36);
    let list = [
        (Patchify, odd, "forward", "patchify"),
        (Patchify, vec4, "forward", "patchify"),
        (Assemble, odd, "forward", "assemble_tokens"),
        (Assemble, vec4, "forward", "assemble_tokens4"),
        (TokensBackward, odd, "backward", "tokens_backward"),
        (TokensBackward, vec4, "backward", "tokens_backward4"),
        (PosClsBackward, odd, "backward", "pos_cls_backward"),
        (PosClsBackward, vec4, "backward", "pos_cls_backward"),
        (GatherCls, vec4, "forward", "gather_cls"),
        (ScatterCls, odd, "backward", "scatter_cls"),
    ];
    list.into_iter()
        .map(|(op, s, check, entry)| {
            case(
                "embed",
                check,
                format!(
                    "{} B={} C={} {}x{} patch={} D={}",
                    op.name(),
                    s.batch,
                    s.channels,
                    s.height,
                    s.width,
                    s.patch,
                    s.dim
                ),
                &[sequence::embed_entry(entry)],
                Spec::Embed(op, s),
            )
        })
        .collect()
}

fn token_layout(
    batch: usize,
    patches: usize,
    dim: usize,
    cls: bool,
    extra: usize,
    pos_start: usize,
) -> TokenLayout {
    TokenLayout {
        batch,
        patches,
        dim,
        cls,
        extra,
        pos_start,
    }
}

fn tokens() -> Vec<Case> {
    use sequence::TokensOp::*;
    // registers with positions; dinov2 (registers, positions on the patches); gap, odd D
    let registers = token_layout(3, 15, 17, true, 2, 0);
    let dinov2 = token_layout(2, 16, 20, true, 4, 5);
    let gap = token_layout(2, 49, 33, false, 0, 0);
    let list = [
        (Assemble, registers),
        (Assemble, dinov2),
        (Assemble, gap),
        (PatchesBackward, registers),
        (PatchesBackward, gap),
        (PrefixPosBackward, registers),
        (PrefixPosBackward, dinov2),
        (Pool { mean: false }, registers),
        (Pool { mean: true }, gap),
        (
            PoolBackward {
                mean: true,
                accumulate: false,
            },
            dinov2,
        ),
        (
            PoolBackward {
                mean: false,
                accumulate: true,
            },
            registers,
        ),
    ];
    list.into_iter()
        .map(|(op, l)| {
            case(
                "tokens",
                op.check(),
                format!(
                    "{} B={} patches={} D={} cls={} extra={} pos_start={}",
                    op.name(),
                    l.batch,
                    l.patches,
                    l.dim,
                    l.cls,
                    l.extra,
                    l.pos_start
                ),
                &[op.entry()],
                Spec::Tokens(op, l),
            )
        })
        .collect()
}

fn elementwise() -> Vec<Case> {
    use sequence::ElementwiseOp::*;
    let block = |rows, width, src_stride, src_offset, dst_stride, dst_offset| ColumnBlock {
        rows,
        width,
        src_stride,
        src_offset,
        dst_stride,
        dst_offset,
    };
    let list = [
        ScaleColumns {
            rows: 65,
            cols: 33,
            accumulate: false,
        },
        ScaleColumns {
            rows: 7,
            cols: 24,
            accumulate: true,
        },
        Multiply { len: 65 * 33 },
        Axpby {
            len: 65 * 33,
            alpha: 0.5,
            beta: 0.0,
        },
        Axpby {
            len: 1000,
            alpha: -1.25,
            beta: 2.0,
        },
        QuickGelu {
            len: 4097,
            slope: false,
        },
        QuickGelu {
            len: 257,
            slope: true,
        },
        // q out of qkv [65, 3 x 24], and a block back into the v columns
        CopyColumns(block(65, 24, 72, 24, 24, 0)),
        CopyColumns(block(33, 20, 20, 0, 60, 40)),
    ];
    list.into_iter()
        .map(|op| {
            case(
                "elementwise",
                op.check(),
                op.describe(),
                &[op.entry()],
                Spec::Elementwise(op),
            )
        })
        .collect()
}

fn gemm_cases() -> Vec<Case> {
    use gemm::Variant::{Lanes4, Registers, Tiled};
    use Layout::{NN, NT, TN};
    let (relu, gelu) = (Some(Activation::Relu), Some(Activation::Gelu));
    let (saved_slope, relu_output) = (Some(ActGrad::Slope), Some(ActGrad::ReluOutput));
    let flags = |bias, slope, activation, act_grad, accumulate| matmul::Flags {
        bias,
        slope,
        activation,
        act_grad,
        accumulate,
    };
    // the epilogues the model runs: linear forwards, the MLP's backward through its
    // activation, weight gradients added into a gradient, and the residual stream's +=
    let gelu_slope = flags(true, true, gelu, None, false);
    let relu_residual = flags(true, false, relu, None, true);
    let bias_residual = flags(true, false, None, None, true);
    let relu_slope = flags(true, true, relu, None, false);
    let times_slope = flags(false, false, None, saved_slope, false);
    let times_slope_added = flags(false, false, None, saved_slope, true);
    let times_relu = flags(false, false, None, relu_output, false);
    let plain = flags(false, false, None, None, false);
    let added = flags(false, false, None, None, true);
    let bias_gelu = flags(true, false, gelu, None, false);
    let plan = |blocks, splits| Some(Plan { blocks, splits });
    let gemm = |variant, layout, (m, n, k), plan, flags| matmul::GemmCase {
        variant,
        layout,
        m,
        n,
        k,
        plan,
        flags,
    };
    // n not a multiple of 4 and split-K take the reduction pass
    let list = [
        gemm(Tiled, NT, (65, 96, 64), plan(1, 1), gelu_slope),
        gemm(Tiled, NT, (50, 36, 50), plan(2, 1), relu_residual),
        gemm(Tiled, NT, (17, 33, 64), plan(1, 1), relu_slope),
        gemm(Tiled, NN, (50, 36, 50), plan(1, 1), times_slope_added),
        gemm(Tiled, NN, (65, 36, 96), plan(2, 1), times_relu),
        gemm(Tiled, NN, (33, 50, 17), plan(1, 1), times_slope),
        gemm(Tiled, TN, (36, 64, 197), plan(1, 3), added),
        gemm(Tiled, TN, (17, 96, 65), plan(2, 2), bias_gelu),
        gemm(Tiled, TN, (36, 20, 33), plan(2, 1), plain),
        gemm(Registers, NT, (65, 33, 17), None, gelu_slope),
        gemm(Registers, NN, (50, 36, 50), None, times_slope_added),
        gemm(Registers, TN, (36, 65, 50), None, added),
        // n % 4 == 0: the 12x8 blocks (gemm_registers_aligned), each epilogue it compiles
        // in, with C's last block moved back over the one before it, k odd
        gemm(Registers, NT, (70, 36, 21), None, gelu_slope),
        gemm(Registers, NT, (33, 68, 13), None, bias_residual),
        gemm(Registers, NT, (97, 12, 7), None, relu_slope),
        gemm(Registers, NN, (68, 36, 29), None, times_slope_added),
        gemm(Registers, TN, (36, 68, 53), None, added),
        // the same blocks in 4-lane workgroups sharing A (gemm_lanes4, the CPU-adapter
        // kernel the browser runs on SwiftShader): C's last tile past n (a lane wholly
        // outside, one overlapping its neighbour), k odd; weight gradients and shapes it
        // does not take (n % 4 != 0; m < 20) go to the portable kernels
        gemm(Lanes4, NT, (70, 44, 21), None, gelu_slope),
        gemm(Lanes4, NT, (33, 68, 13), None, bias_residual),
        gemm(Lanes4, NT, (97, 12, 7), None, relu_slope),
        gemm(Lanes4, NN, (68, 36, 29), None, times_slope_added),
        gemm(Lanes4, TN, (36, 68, 53), None, added),
        gemm(Lanes4, NT, (65, 33, 17), None, gelu_slope),
        gemm(Lanes4, NT, (14, 36, 9), None, gelu_slope),
    ];
    list.into_iter()
        .map(|c| case("gemm", c.check(), c.describe(), &c.entries(), Spec::Gemm(c)))
        .collect()
}

fn attention_cases() -> Vec<Case> {
    use attention::Variant::{Lanes4, Rows, Tiled};
    use matmul::AttentionPass::{Backward, Forward, Probabilities};
    let shape = |batch, tokens, heads, head_dim| AttentionShape {
        batch,
        tokens,
        heads,
        head_dim,
    };
    // 17 tokens: 64-row workgroups; 65: one of 128; d = 20 runs padded in the class of 32
    let tiled = [shape(2, 17, 2, 32), shape(1, 65, 3, 16), shape(2, 9, 2, 20)];
    let rows = [shape(2, 17, 2, 32), shape(1, 23, 3, 20)];
    let mut list = Vec::new();
    for pass in [Forward, Backward] {
        list.extend(tiled.map(|s| (Tiled, pass, s)));
        list.extend(rows.map(|s| (Rows, pass, s)));
    }
    // the 4-lane forward (the CPU-adapter kernel the browser runs on SwiftShader): N not a
    // multiple of its 16 rows or 4 keys, d = 64 and d = 36 (padded in the class of 64), and
    // d = 20, which it leaves to `Rows`
    for s in [shape(2, 23, 2, 64), shape(1, 65, 3, 36), shape(1, 6, 1, 64)] {
        list.push((Lanes4, Forward, s));
    }
    list.push((Lanes4, Forward, shape(1, 23, 3, 20)));
    list.push((Tiled, Probabilities, shape(2, 17, 3, 16)));
    list.push((Tiled, Probabilities, shape(1, 65, 2, 64)));
    list.into_iter()
        .map(|(variant, pass, shape)| {
            let c = matmul::AttentionCase {
                variant,
                pass,
                shape,
            };
            case(
                "attention",
                c.check(),
                c.describe(),
                &c.entries(),
                Spec::Attention(c),
            )
        })
        .collect()
}
