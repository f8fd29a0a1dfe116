//! GEMM with a fused epilogue, and the activations the model shares with it.
//!
//! C [m, n] = op(A) op(B), weights stored [out, in] like PyTorch:
//!   NN: A [m, k], B [k, n]  -> C = A B      (dX = dY W)
//!   NT: A [m, k], B [n, k]  -> C = A B^T    (Y = X W^T)
//!   TN: A [k, m], B [k, n]  -> C = A^T B    (dW = dY^T X)
//! Epilogue, in this order: + bias[n]; save the slope act'(pre-activation); activation;
//! times act'(pre) of a later layer from what its forward saved (`act_grad`); then
//! C = result, or C += result (`accumulate`).

use super::Real;
use crate::ops::{ActGrad, Activation, Layout};

const SQRT_2: f64 = std::f64::consts::SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// erf in f64 (libm's; Rust's std has none).
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

/// Exact GELU, as PyTorch's nn.GELU(): x * Phi(x).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / SQRT_2))
}

/// d gelu / dx = Phi(x) + x phi(x).
pub fn gelu_grad(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / SQRT_2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
}

pub fn relu(x: f64) -> f64 {
    x.max(0.0)
}

/// d relu / dx, taken as 0 at 0 like PyTorch.
pub fn relu_grad(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else {
        0.0
    }
}

pub fn activate(act: Activation, x: f64) -> f64 {
    match act {
        Activation::None => x,
        Activation::Relu => relu(x),
        Activation::Gelu => gelu(x),
    }
}

pub fn activation_grad(act: Activation, x: f64) -> f64 {
    match act {
        Activation::None => 1.0,
        Activation::Relu => relu_grad(x),
        Activation::Gelu => gelu_grad(x),
    }
}

/// The epilogue flags, mirroring `kernels::gemm::GemmArgs`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a, T = f32> {
    pub bias: Option<&'a [T]>, // [n]
    pub activation: Activation,
    pub act_grad: Option<(&'a [T], ActGrad)>, // [m, n]
    pub accumulate: bool,
}

impl<T: 'static> Epilogue<'static, T> {
    pub const NONE: Epilogue<'static, T> = Epilogue {
        bias: None,
        activation: Activation::None,
        act_grad: None,
        accumulate: false,
    };
}

/// c (= or += when `accumulate`), slope = act'(op(A) op(B) (+ bias)) and the rest of the
/// epilogue. `rows` limits the computation to those rows of C (benchmarks validate a
/// sample of a large matrix); pass `0..m` for all.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    c: &mut [T],             // [m, n]
    slope: Option<&mut [T]>, // [m, n]
    a: &[T],                 // [m, k] (NN, NT) or [k, m] (TN)
    b: &[T],                 // [k, n] (NN, TN) or [n, k] (NT)
    m: usize,
    n: usize,
    k: usize,
    layout: Layout,
    epilogue: &Epilogue<T>,
    rows: std::ops::Range<usize>,
) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= n * k);
    let mut slope = slope;
    let mut acc = vec![0.0f64; n];
    for i in rows {
        acc.iter_mut().for_each(|v| *v = 0.0);
        for p in 0..k {
            let aip = match layout {
                Layout::NN | Layout::NT => a[i * k + p],
                Layout::TN => a[p * m + i],
            }
            .to_f64();
            match layout {
                Layout::NN | Layout::TN => {
                    let row = &b[p * n..(p + 1) * n];
                    for (s, &bv) in acc.iter_mut().zip(row) {
                        *s += aip * bv.to_f64();
                    }
                }
                Layout::NT => {
                    for (j, s) in acc.iter_mut().enumerate() {
                        *s += aip * b[j * k + p].to_f64();
                    }
                }
            }
        }
        for (j, &s) in acc.iter().enumerate() {
            let idx = i * n + j;
            let mut v = s;
            if let Some(bias) = epilogue.bias {
                v += bias[j].to_f64();
            }
            if let Some(slope) = slope.as_deref_mut() {
                slope[idx] = T::from_f64(activation_grad(epilogue.activation, v));
            }
            v = activate(epilogue.activation, v);
            match epilogue.act_grad {
                Some((z, ActGrad::Slope)) => v *= z[idx].to_f64(),
                Some((z, ActGrad::ReluOutput)) => v *= relu_grad(z[idx].to_f64()),
                None => {}
            }
            c[idx] = if epilogue.accumulate {
                T::from_f64(c[idx].to_f64() + v)
            } else {
                T::from_f64(v)
            };
        }
    }
}
