//! Element-wise ops: LayerScale's per-column scale, products, scaled sums, QuickGELU and
//! strided column copies.

use super::Real;

/// y [rows, cols] (+)= gamma[col] * x
pub fn scale_columns<T: Real>(y: &mut [T], x: &[T], gamma: &[T], cols: usize, accumulate: bool) {
    for (i, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        let s = gamma[i % cols].to_f64() * v.to_f64();
        *o = T::from_f64(if accumulate { o.to_f64() + s } else { s });
    }
}

/// y = a * b
pub fn multiply<T: Real>(y: &mut [T], a: &[T], b: &[T]) {
    for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
        *o = T::from_f64(u.to_f64() * v.to_f64());
    }
}

/// y = alpha * x + beta * y (y is only read when beta != 0)
pub fn axpby<T: Real>(y: &mut [T], x: &[T], alpha: f64, beta: f64) {
    for (o, &v) in y.iter_mut().zip(x) {
        let old = if beta != 0.0 { beta * o.to_f64() } else { 0.0 };
        *o = T::from_f64(alpha * v.to_f64() + old);
    }
}

/// CLIP's QuickGELU: x * sigmoid(1.702 x).
pub fn quick_gelu(x: f64) -> f64 {
    x / (1.0 + (-1.702 * x).exp())
}

/// d quick_gelu / dx = s + 1.702 x s (1 - s), s = sigmoid(1.702 x).
pub fn quick_gelu_grad(x: f64) -> f64 {
    let s = 1.0 / (1.0 + (-1.702 * x).exp());
    s + 1.702 * x * s * (1.0 - s)
}

/// y = quick_gelu(x), and slope = its derivative at x when given
pub fn quick_gelu_forward<T: Real>(y: &mut [T], slope: Option<&mut [T]>, x: &[T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = T::from_f64(quick_gelu(v.to_f64()));
    }
    if let Some(slope) = slope {
        for (o, &v) in slope.iter_mut().zip(x) {
            *o = T::from_f64(quick_gelu_grad(v.to_f64()));
        }
    }
}

/// dx = dy * quick_gelu'(x)
pub fn quick_gelu_backward<T: Real>(dx: &mut [T], dy: &[T], x: &[T]) {
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        *o = T::from_f64(g.to_f64() * quick_gelu_grad(v.to_f64()));
    }
}

/// A block of columns from one row-major matrix to another:
/// dst[r, dst_offset + c] = src[r, src_offset + c] for c < width (row strides given)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnBlock {
    pub rows: usize,
    pub width: usize,
    pub src_stride: usize,
    pub src_offset: usize,
    pub dst_stride: usize,
    pub dst_offset: usize,
}

pub fn copy_columns<T: Real>(dst: &mut [T], src: &[T], c: &ColumnBlock) {
    for r in 0..c.rows {
        for j in 0..c.width {
            dst[r * c.dst_stride + c.dst_offset + j] = src[r * c.src_stride + c.src_offset + j];
        }
    }
}
