// Column sums for CPU adapters (llvmpipe), appended to reduce.wgsl (WGSL has no includes):
// column_sum_partial with the matrix read as an rgba32float texture (the host copies it in
// when cols % 64 == 0), one invocation summing a texel, 4 columns. There a texel fetch
// replaces a per-lane load loop. Their sum is column_sum_finish.

@group(0) @binding(4) var matrix_tex: texture_storage_2d<rgba32float, read>;

@compute @workgroup_size(64)
fn column_sum_partial_texture(@builtin(workgroup_id) wid: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let texel = wid.x * 64u + lid;
    let chunk = wid.y;
    if (texel * 4u >= shape.cols) { return; }
    let start = chunk * shape.chunk_rows;
    let end = min(start + shape.chunk_rows, shape.rows);
    var s = vec4<f32>(0.0);
    for (var r = start; r < end; r++) {
        s += textureLoad(matrix_tex, vec2<u32>(texel, r));
    }
    let p = chunk * shape.cols + texel * 4u;
    partial[p] = s.x;
    partial[p + 1u] = s.y;
    partial[p + 2u] = s.z;
    partial[p + 3u] = s.w;
}
