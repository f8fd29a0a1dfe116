// LayerNorm for CPU adapters (llvmpipe), appended to layernorm.wgsl (WGSL has no includes):
// the forward, dx and partial-sum passes reading their inputs through rgba32float textures
// (a texel = 4 floats of a row; the host copies x, dy, gamma and beta in when
// cols % 64 == 0). There a texel fetch replaces a per-lane load loop per float; outputs stay
// storage, written a vec4 at a time. The sum of the partials is layernorm_params_finish.

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
