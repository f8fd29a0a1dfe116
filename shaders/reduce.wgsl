// Column sums, the reduction every bias gradient (and the LayerNorm parameter gradients'
// pattern) needs: sums[c] (+)= sum_r matrix[r, c], in two passes (partial sums over chunks
// of rows, then their sum) so that a few columns over thousands of rows still spread over
// many workgroups. Each pass is memory bound. Storage buffers only; CPU adapters read the
// matrix through a texture instead (cpu/reduce.wgsl).

struct Meta {
    rows: u32,
    cols: u32,
    chunk_rows: u32,  // rows per partial sum
    chunks: u32,      // partial sums per column
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

@group(0) @binding(0) var<storage, read> matrix: array<f32>;
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;   // [chunks, cols]

@compute @workgroup_size(64)
fn column_sum_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * 64u + lid;
    let chunk = wid.y;
    if (col >= shape.cols) { return; }
    let start = chunk * shape.chunk_rows;
    let end = min(start + shape.chunk_rows, shape.rows);
    var s = 0.0;
    for (var r = start; r < end; r++) {
        s += matrix[r * shape.cols + col];
    }
    partial[chunk * shape.cols + col] = s;
}

@group(0) @binding(2) var<storage, read> partial_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;

@compute @workgroup_size(64)
fn column_sum_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * 64u + lid;
    if (col >= shape.cols) { return; }
    var s = 0.0;
    for (var c = 0u; c < shape.chunks; c++) {
        s += partial_in[c * shape.cols + col];
    }
    if (shape.accumulate == 1u) { sums[col] += s; } else { sums[col] = s; }
}
