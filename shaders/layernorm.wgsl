// LayerNorm over the last dimension of x [rows, cols].
// Forward saves mean and rstd per row; backward recomputes xhat from them:
//   dx = rstd * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat))
//   dgamma = sum_rows dy*xhat,  dbeta = sum_rows dy
// One invocation per row (forward, dx): rows are a few hundred floats, and on CPU adapters
// a per-row loop beats workgroup reductions. dgamma/dbeta are column sums over thousands
// of rows: partial sums over row chunks first (many workgroups), then their sum.

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

// ---- The same three row and column passes reading their inputs through rgba32float
// textures (a texel = 4 floats of a row; the host copies x, dy, gamma and beta in when
// cols % 64 == 0). On CPU adapters a texel fetch replaces a per-lane load loop per float;
// outputs stay storage, written a vec4 at a time.

@group(0) @binding(16) var x_tex: texture_storage_2d<rgba32float, read>;       // [rows, cols]
@group(0) @binding(17) var gamma_tex: texture_storage_2d<rgba32float, read>;   // [1, cols]
@group(0) @binding(18) var beta_tex: texture_storage_2d<rgba32float, read>;    // [1, cols]
@group(0) @binding(19) var dy_tex: texture_storage_2d<rgba32float, read>;      // [rows, cols]
@group(0) @binding(20) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(21) var<storage, read_write> dx4: array<vec4<f32>>;
// dx's old values when the backward adds to it (a placeholder otherwise): a storage load of
// them is a per-lane loop, which made tiny's accumulating backward 1.5x slower.
@group(0) @binding(22) var dx_old_tex: texture_storage_2d<rgba32float, read>;   // [rows, cols]

// Texel c of a row (one function per texture: GLSL takes no image as a parameter).
fn x_texel(row: u32, c: u32) -> vec4<f32> { return textureLoad(x_tex, vec2<u32>(c, row)); }
fn dy_texel(row: u32, c: u32) -> vec4<f32> { return textureLoad(dy_tex, vec2<u32>(c, row)); }
fn gamma_texel(c: u32) -> vec4<f32> { return textureLoad(gamma_tex, vec2<u32>(c, 0u)); }
fn beta_texel(c: u32) -> vec4<f32> { return textureLoad(beta_tex, vec2<u32>(c, 0u)); }
fn dx_old_texel(row: u32, c: u32) -> vec4<f32> { return textureLoad(dx_old_tex, vec2<u32>(c, row)); }

@compute @workgroup_size(64)
fn layernorm_forward_texture(@builtin(workgroup_id) wid: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let row = linear_id(wid, nwg, lid);
    if (row >= shape.rows) { return; }
    let texels = shape.cols / 4u;
    // one pass of shifted sums, as layernorm_forward
    let shift = x_texel(row, 0u).x;
    var sum = vec4<f32>(0.0);
    var sum_sq = vec4<f32>(0.0);
    for (var c = 0u; c < texels; c++) {
        let d = x_texel(row, c) - shift;
        sum += d;
        sum_sq += d * d;
    }
    let n = f32(shape.cols);
    let mean_d = (sum.x + sum.y + sum.z + sum.w) / n;
    let mu = shift + mean_d;
    let var_ = (sum_sq.x + sum_sq.y + sum_sq.z + sum_sq.w) / n - mean_d * mean_d;
    let rs = inverseSqrt(max(var_, 0.0) + shape.eps);
    let base = row * texels;
    for (var c = 0u; c < texels; c++) {
        y4[base + c] = (x_texel(row, c) - mu) * rs * gamma_texel(c)
            + beta_texel(c);
    }
    mean_out[row] = mu;
    rstd_out[row] = rs;
}

@compute @workgroup_size(64)
fn layernorm_backward_input_texture(@builtin(workgroup_id) wid: vec3<u32>,
                                    @builtin(num_workgroups) nwg: vec3<u32>,
                                    @builtin(local_invocation_index) lid: u32) {
    let row = linear_id(wid, nwg, lid);
    if (row >= shape.rows) { return; }
    let texels = shape.cols / 4u;
    let mu = bmean[row];
    let rs = brstd[row];
    var sum_g = vec4<f32>(0.0);
    var sum_gx = vec4<f32>(0.0);
    for (var c = 0u; c < texels; c++) {
        let g = gamma_texel(c) * dy_texel(row, c);
        sum_g += g;
        sum_gx += g * (x_texel(row, c) - mu) * rs;
    }
    let mean_g = (sum_g.x + sum_g.y + sum_g.z + sum_g.w) / f32(shape.cols);
    let mean_gx = (sum_gx.x + sum_gx.y + sum_gx.z + sum_gx.w) / f32(shape.cols);
    let base = row * texels;
    for (var c = 0u; c < texels; c++) {
        let xhat = (x_texel(row, c) - mu) * rs;
        let v = rs * (gamma_texel(c) * dy_texel(row, c) - mean_g - xhat * mean_gx);
        if (shape.accumulate == 1u) {
            dx4[base + c] = dx_old_texel(row, c) + v;
        } else {
            dx4[base + c] = v;
        }
    }
}

// The row statistics as textures of 64-texel rows (float r = component r % 4 of texel r / 4):
// every invocation reads the same row's statistics, and a storage load of them was a per-lane
// loop each.
@group(0) @binding(23) var mean_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(24) var rstd_tex: texture_storage_2d<rgba32float, read>;

fn stat_texel(r: u32) -> vec2<u32> {
    let j = r >> 2u;
    return vec2<u32>(j & 63u, j >> 6u);
}
fn mean_at(r: u32) -> f32 { return textureLoad(mean_tex, stat_texel(r))[r & 3u]; }
fn rstd_at(r: u32) -> f32 { return textureLoad(rstd_tex, stat_texel(r))[r & 3u]; }

// One invocation per texel (4 columns) and chunk of rows.
@compute @workgroup_size(64)
fn layernorm_backward_params_texture(@builtin(workgroup_id) wid: vec3<u32>,
                                     @builtin(local_invocation_index) lid: u32) {
    let c = wid.x * 64u + lid;
    let chunk = wid.y;
    if (c * 4u >= shape.cols) { return; }
    let start = chunk * shape.chunk_rows;
    let end = min(start + shape.chunk_rows, shape.rows);
    var sg = vec4<f32>(0.0);
    var sb = vec4<f32>(0.0);
    for (var r = start; r < end; r++) {
        let dyv = dy_texel(r, c);
        sg += dyv * (x_texel(r, c) - mean_at(r)) * rstd_at(r);
        sb += dyv;
    }
    let pg = chunk * shape.cols + c * 4u;
    let pb = (shape.chunks + chunk) * shape.cols + c * 4u;
    partial[pg] = sg.x;
    partial[pg + 1u] = sg.y;
    partial[pg + 2u] = sg.z;
    partial[pg + 3u] = sg.w;
    partial[pb] = sb.x;
    partial[pb + 1u] = sb.y;
    partial[pb + 2u] = sb.z;
    partial[pb + 3u] = sb.w;
}
