//! The recorder the model schedule writes into: one call per layer operation, over typed
//! weights (`Linear`, `Norm`) that point into the parameter arena. `linear_backward` is
//! llm.c's `matmul_backward`: weight gradient, bias gradient and input gradient in one call.

use super::arena::{Arena, Tensor};
use crate::gpu::{Command, Gpu, Record};
use crate::kernels::gemm::{ActGrad, Activation, GemmArgs, Layout};
use crate::kernels::layernorm::{LayerNormBackward, LayerNormForward};
use crate::kernels::reduce::ColumnSum;
use crate::kernels::Kernels;

/// A linear layer Y = X W^T + b: weight [out, inp] and bias [out] in the arena (CLIP's
/// patch embedding has no bias).
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub out: usize,
    pub inp: usize,
}

/// A LayerNorm's gamma and beta [width] in the arena.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub width: usize,
    pub eps: f32,
}

/// What a LayerNorm forward saves for its backward: mean and rstd per row.
pub struct NormStats {
    pub mean: wgpu::Buffer,
    pub rstd: wgpu::Buffer,
}

pub struct Recorder<'a> {
    pub gpu: &'a Gpu,
    pub kernels: &'a Kernels,
    pub arena: &'a Arena,
    /// Partial sums of the column sums (bias and LayerNorm parameter gradients).
    pub reduce_scratch: &'a wgpu::Buffer,
    pub commands: Vec<Command>,
}

impl Recorder<'_> {
    pub fn push(&mut self, command: impl Into<Command>) {
        self.commands.push(command.into());
    }

    pub fn extend<C: Into<Command>>(&mut self, commands: impl IntoIterator<Item = C>) {
        self.commands.extend(commands.into_iter().map(Into::into));
    }

    /// Whole-buffer copy (the residual stream kept for the backward).
    pub fn copy(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer) {
        self.commands.push(Command::CopyBuffer {
            src: src.clone(),
            dst: dst.clone(),
        });
    }

    /// Record one kernel call (any family: the args pick the entry point).
    pub fn record<A>(&mut self, kernel: &impl Record<A>, args: &A) {
        kernel.record(self.gpu, args, &mut self.commands);
    }

    fn gemm(&mut self, args: &GemmArgs) {
        self.record(&self.kernels.gemm, args);
    }

    /// y [rows, out] = x W^T + b.
    pub fn linear(&mut self, x: &wgpu::Buffer, l: &Linear, y: &wgpu::Buffer, rows: usize) {
        self.linear_epilogue(x, l, y, rows, (Activation::None, None), false);
    }

    /// y [rows, out] = act(x W^T + b), saving the slope act'(x W^T + b) into `slope` when
    /// given (for the backward of a trained layer whose y does not give it: GELU's).
    pub fn linear_act(
        &mut self,
        x: &wgpu::Buffer,
        l: &Linear,
        y: &wgpu::Buffer,
        rows: usize,
        act: Activation,
        slope: Option<&wgpu::Buffer>,
    ) {
        self.linear_epilogue(x, l, y, rows, (act, slope), false);
    }

    /// y [rows, out] += x W^T + b: the residual add folded into the GEMM epilogue.
    pub fn linear_residual(&mut self, x: &wgpu::Buffer, l: &Linear, y: &wgpu::Buffer, rows: usize) {
        self.linear_epilogue(x, l, y, rows, (Activation::None, None), true);
    }

    fn linear_epilogue(
        &mut self,
        x: &wgpu::Buffer,
        l: &Linear,
        y: &wgpu::Buffer,
        rows: usize,
        (act, slope): (Activation, Option<&wgpu::Buffer>),
        accumulate: bool,
    ) {
        self.gemm(&GemmArgs {
            a: x.into(),
            b: self.arena.value(l.w),
            c: y.into(),
            m: rows,
            n: l.out,
            k: l.inp,
            layout: Layout::NT,
            bias: l.b.map(|b| self.arena.value(b)),
            slope,
            activation: act,
            act_grad: None,
            accumulate,
        });
    }

    /// From dy [rows, out]: dW = dy^T x, db = column sums of dy (both overwritten), and,
    /// when `dx` is given, dx [rows, inp] = dy W, times act'(pre) from `act_grad`.
    pub fn linear_backward(
        &mut self,
        dy: &wgpu::Buffer,
        x: &wgpu::Buffer,
        l: &Linear,
        dx: Option<&wgpu::Buffer>,
        rows: usize,
        act_grad: Option<(&wgpu::Buffer, ActGrad)>,
    ) {
        self.gemm(&GemmArgs {
            a: dy.into(),
            b: x.into(),
            c: self.arena.grad(l.w),
            m: l.out,
            n: l.inp,
            k: rows,
            layout: Layout::TN,
            bias: None,
            slope: None,
            activation: Activation::None,
            act_grad: None,
            accumulate: false,
        });
        if let Some(b) = l.b {
            let sum = ColumnSum {
                matrix: dy,
                sums: self.arena.grad(b),
                scratch: self.reduce_scratch,
                rows,
                cols: l.out,
                accumulate: false,
            };
            self.record(&self.kernels.reduce, &sum);
        }
        if let Some(dx) = dx {
            self.gemm(&GemmArgs {
                a: dy.into(),
                b: self.arena.value(l.w),
                c: dx.into(),
                m: rows,
                n: l.inp,
                k: l.out,
                layout: Layout::NN,
                bias: None,
                slope: None,
                activation: Activation::None,
                act_grad,
                accumulate: false,
            });
        }
    }

    /// y = LayerNorm(x) over rows of `n.width`, saving the statistics.
    pub fn layernorm(
        &mut self,
        x: &wgpu::Buffer,
        n: &Norm,
        y: &wgpu::Buffer,
        s: &NormStats,
        rows: usize,
    ) {
        self.record(
            &self.kernels.layernorm,
            &LayerNormForward {
                x,
                gamma: self.arena.value(n.gamma),
                beta: self.arena.value(n.beta),
                y,
                mean: &s.mean,
                rstd: &s.rstd,
                rows,
                cols: n.width,
                eps: n.eps,
            },
        );
    }

    /// dx (= or +=, `accumulate`) and the gamma/beta gradients (overwritten) from dy.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward(
        &mut self,
        dy: &wgpu::Buffer,
        x: &wgpu::Buffer,
        n: &Norm,
        s: &NormStats,
        dx: &wgpu::Buffer,
        rows: usize,
        accumulate: bool,
    ) {
        self.record(
            &self.kernels.layernorm,
            &LayerNormBackward {
                dy,
                x,
                gamma: self.arena.value(n.gamma),
                mean: &s.mean,
                rstd: &s.rstd,
                dx,
                dgamma: self.arena.grad(n.gamma),
                dbeta: self.arena.grad(n.beta),
                scratch: self.reduce_scratch,
                rows,
                cols: n.width,
                accumulate,
            },
        );
    }
}
