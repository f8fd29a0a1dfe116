// GEMM for real GPUs: C [m, n] = op(A) op(B) with a fused epilogue.
// Classic workgroup-memory tiling: a 64x64 tile of C per workgroup of 16x16 invocations,
// each holding a 4x4 register block; A and B stream through workgroup memory 16 k at a time.
// The layout is an override constant, so each pipeline compiles one indexing scheme:
//   LAYOUT 0 = NN: A [m, k], B [k, n]     C = A B      (dX = dY W)
//          1 = NT: A [m, k], B [n, k]     C = A B^T    (Y = X W^T)
//          2 = TN: A [k, m], B [k, n]     C = A^T B    (dW = dY^T X)
// Epilogue (same as gemm_cpu.wgsl): + bias[n]; pre-activation out; activation;
// times act'(act_grad_of); C = or C +=.

override LAYOUT: u32 = 1u;

struct Meta {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    has_pre: u32,
    // 0 none, 1 relu, 2 gelu
    activation: u32,
    // multiply by act'(aux): 0 off, 1 relu, 2 gelu
    act_grad: u32,
    accumulate: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> pre: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<f32>;

// ---- epilogue (kept identical in gemm_cpu.wgsl) ----

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

fn epilogue(row: u32, col: u32, sum: f32) {
    if (row >= shape.m || col >= shape.n) { return; }
    let idx = row * shape.n + col;
    var v = sum;
    if (shape.has_bias != 0u) { v += bias[col]; }
    if (shape.has_pre != 0u) { pre[idx] = v; }
    if (shape.activation == 1u) { v = max(v, 0.0); }
    if (shape.activation == 2u) { v = gelu(v); }
    if (shape.act_grad == 1u) { v = select(0.0, v, aux[idx] > 0.0); }
    if (shape.act_grad == 2u) { v *= gelu_grad(aux[idx]); }
    if (shape.accumulate != 0u) { c[idx] += v; } else { c[idx] = v; }
}

// ---- tiled kernel ----

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [TK][TILE]: tile_a[kk * 64 + i] = op(A)[row0 + i, k0 + kk]
var<workgroup> tile_b: array<f32, 1024>; // [TK][TILE]: tile_b[kk * 64 + j] = op(B)[k0 + kk, col0 + j]

// op(A)[i, p], zero outside the matrix
fn load_a(i: u32, p: u32) -> f32 {
    if (i >= shape.m || p >= shape.k) { return 0.0; }
    if (LAYOUT == 2u) { return a[p * shape.m + i]; }
    return a[i * shape.k + p];
}

// op(B)[p, j], zero outside the matrix
fn load_b(p: u32, j: u32) -> f32 {
    if (p >= shape.k || j >= shape.n) { return 0.0; }
    if (LAYOUT == 1u) { return b[j * shape.k + p]; }
    return b[p * shape.n + j];
}

@compute @workgroup_size(16, 16)
fn gemm_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < shape.k; k0 += TK) {
        // 256 invocations load 1024 elements of each tile. For A the fastest-moving
        // invocation index walks along the matrix's contiguous axis.
        for (var e = 0u; e < 4u; e++) {
            let t = e * 256u + li;
            if (LAYOUT == 2u) {
                // A [k, m]: contiguous along i
                let i = t % TILE;
                let kk = t / TILE;
                tile_a[kk * TILE + i] = load_a(row0 + i, k0 + kk);
            } else {
                // A [m, k]: contiguous along k
                let kk = t % TK;
                let i = t / TK;
                tile_a[kk * TILE + i] = load_a(row0 + i, k0 + kk);
            }
            if (LAYOUT == 1u) {
                // B [n, k]: contiguous along k
                let kk = t % TK;
                let j = t / TK;
                tile_b[kk * TILE + j] = load_b(k0 + kk, col0 + j);
            } else {
                let j = t % TILE;
                let kk = t / TILE;
                tile_b[kk * TILE + j] = load_b(k0 + kk, col0 + j);
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                av[r] = tile_a[kk * TILE + lid.y * 4u + r];
                bv[r] = tile_b[kk * TILE + lid.x * 4u + r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var s = 0u; s < 4u; s++) {
                    acc[r][s] += av[r] * bv[s];
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        for (var s = 0u; s < 4u; s++) {
            epilogue(row0 + lid.y * 4u + r, col0 + lid.x * 4u + s, acc[r][s]);
        }
    }
}
