//! Definitions the kernels and the reference both use, so neither imports the other: the
//! activations, the GEMM layouts and AdamW's hyper-parameters.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Gelu,
}

/// How a backward GEMM gets act'(pre) from what its layer's forward saved, to multiply the
/// input gradient by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActGrad {
    /// The buffer holds the slope act'(pre), saved by the forward GEMM's `slope` output
    /// (GELU: its erf is computed once, in the forward).
    Slope,
    /// The buffer holds relu(pre), the forward's output: relu'(pre) = [relu(pre) > 0], so
    /// a ReLU layer saves nothing more.
    ReluOutput,
}

/// C [m, n] = op(A) op(B) for PyTorch-style [out, in] weights: `NT` is the forward
/// (Y = X W^T), `NN` the input gradient (dX = dY W), `TN` the weight gradient (dW = dY^T X).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    NN,
    NT,
    TN,
}

/// AdamW's per-step hyper-parameters (the device copy is this struct as a uniform).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Hyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 - beta1^t for step t (1-based)
    pub bias_correction1: f32,
    /// 1 - beta2^t
    pub bias_correction2: f32,
    /// global gradient-norm clip; 0 turns clipping off
    pub max_norm: f32,
}

impl Hyper {
    pub fn at_step(
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        max_norm: f32,
        step: u64,
    ) -> Hyper {
        let t = step as i32;
        Hyper {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            bias_correction1: 1.0 - beta1.powi(t),
            bias_correction2: 1.0 - beta2.powi(t),
            max_norm,
        }
    }
}
