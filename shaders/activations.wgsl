// GELU and its derivative, written once and prepended (by kernels::shader_with_activations!)
// to both GEMM shaders, whose epilogues apply them. Scalar and vec4 forms side by side.

// erf(x) = 1 - erfc(|x|) with Numerical Recipes' Chebyshev fit of erfc (fractional error
// < 1.2e-7), so GELU and its derivative are float32-accurate.
fn erf(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-z * z + p);
    return select(r - 1.0, 1.0 - r, x >= 0.0);
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf(x * 0.70710678));
}

fn gelu_grad(x: f32) -> f32 {
    return 0.5 * (1.0 + erf(x * 0.70710678)) + x * 0.39894228 * exp(-0.5 * x * x);
}

fn erf4(x: vec4<f32>) -> vec4<f32> {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-z * z + p);
    return select(r - 1.0, 1.0 - r, x >= vec4<f32>(0.0));
}

fn gelu4(x: vec4<f32>) -> vec4<f32> {
    return 0.5 * x * (1.0 + erf4(x * 0.70710678));
}

fn gelu_grad4(x: vec4<f32>) -> vec4<f32> {
    return 0.5 * (1.0 + erf4(x * 0.70710678)) + x * 0.39894228 * exp(-0.5 * x * x);
}


// The slope act'(x) a forward GEMM saves for its backward, for an activation code (0 none,
// 1 relu, 2 gelu). GELU and GELU' start from the same erf(x / sqrt 2) expression, which the
// shader compiler evaluates once: with the slope, micro's fc1 forward ran as fast as it did
// storing the pre-activation.
fn act_slope(code: u32, x: f32) -> f32 {
    if (code == 1u) { return select(0.0, 1.0, x > 0.0); }
    if (code == 2u) { return gelu_grad(x); }
    return 1.0;
}

fn act_slope4(code: u32, x: vec4<f32>) -> vec4<f32> {
    if (code == 1u) { return select(vec4<f32>(0.0), vec4<f32>(1.0), x > vec4<f32>(0.0)); }
    if (code == 2u) { return gelu_grad4(x); }
    return vec4<f32>(1.0);
}
