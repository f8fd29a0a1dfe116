// LayerNorm over the last dimension of x [rows, cols].
// Forward saves mean and rstd per row; backward recomputes xhat from them:
//   dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat))
//   dgamma = sum_rows dy*xhat,  dbeta = sum_rows dy
// One invocation per row (forward, dx): rows are a few hundred floats, and on CPU adapters
// a per-row loop beats workgroup reductions. dgamma/dbeta are column sums over thousands
// of rows: partial sums over row chunks first (many workgroups), then their sum.
// Storage buffers only; CPU adapters read through textures instead (cpu/layernorm.wgsl).

struct Meta {
    rows: u32,
    cols: u32,
    eps: f32,
    // backward: 1 = add dx into the output (the residual stream's gradient), 0 = overwrite
    accumulate: u32,
    chunk_rows: u32, // backward params: rows per partial sum
    chunks: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

// forward
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd_out: array<f32>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = linear_id(wid, nwg, lid);
    if (row >= shape.rows) { return; }
    let base = row * shape.cols;
    // Mean and variance in one pass over x (it is memory bound: two passes, not three),
    // of x - x[0], so a mean far from zero doesn't cancel the variance away.
    let shift = x[base];
    var sum = 0.0;
    var sum_sq = 0.0;
    for (var c = 0u; c < shape.cols; c++) {
        let d = x[base + c] - shift;
        sum += d;
        sum_sq += d * d;
    }
    let n = f32(shape.cols);
    let mean_d = sum / n;
    let mu = shift + mean_d;
    let rs = inverseSqrt(max(sum_sq / n - mean_d * mean_d, 0.0) + shape.eps);
    for (var c = 0u; c < shape.cols; c++) {
        y[base + c] = (x[base + c] - mu) * rs * gamma[c] + beta[c];
    }
    mean_out[row] = mu;
    rstd_out[row] = rs;
}

// backward
@group(0) @binding(6) var<storage, read> dy: array<f32>;
@group(0) @binding(7) var<storage, read> bx: array<f32>;
@group(0) @binding(8) var<storage, read> bgamma: array<f32>;
@group(0) @binding(9) var<storage, read> bmean: array<f32>;
@group(0) @binding(10) var<storage, read> brstd: array<f32>;
@group(0) @binding(11) var<storage, read_write> dx: array<f32>;
@group(0) @binding(12) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(13) var<storage, read_write> dbeta: array<f32>;

@compute @workgroup_size(64)
fn layernorm_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let row = linear_id(wid, nwg, lid);
    if (row >= shape.rows) { return; }
    let base = row * shape.cols;
    let mu = bmean[row];
    let rs = brstd[row];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var c = 0u; c < shape.cols; c++) {
        let g = bgamma[c] * dy[base + c];
        sum_g += g;
        sum_gx += g * (bx[base + c] - mu) * rs;
    }
    let mean_g = sum_g / f32(shape.cols);
    let mean_gx = sum_gx / f32(shape.cols);
    for (var c = 0u; c < shape.cols; c++) {
        let xhat = (bx[base + c] - mu) * rs;
        let v = rs * (bgamma[c] * dy[base + c] - mean_g - xhat * mean_gx);
        if (shape.accumulate == 1u) { dx[base + c] += v; } else { dx[base + c] = v; }
    }
}

@group(0) @binding(14) var<storage, read_write> partial: array<f32>;   // [2, chunks, cols]

@compute @workgroup_size(64)
fn layernorm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * 64u + lid;
    let chunk = wid.y;
    if (col >= shape.cols) { return; }
    let start = chunk * shape.chunk_rows;
    let end = min(start + shape.chunk_rows, shape.rows);
    var sg = 0.0;
    var sb = 0.0;
    for (var r = start; r < end; r++) {
        let i = r * shape.cols + col;
        sg += dy[i] * (bx[i] - bmean[r]) * brstd[r];
        sb += dy[i];
    }
    partial[chunk * shape.cols + col] = sg;
    partial[(shape.chunks + chunk) * shape.cols + col] = sb;
}

@group(0) @binding(15) var<storage, read> partial_in: array<f32>;

@compute @workgroup_size(64)
fn layernorm_params_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * 64u + lid;
    if (col >= shape.cols) { return; }
    var sg = 0.0;
    var sb = 0.0;
    for (var c = 0u; c < shape.chunks; c++) {
        sg += partial_in[c * shape.cols + col];
        sb += partial_in[(shape.chunks + c) * shape.cols + col];
    }
    dgamma[col] = sg;
    dbeta[col] = sb;
}
