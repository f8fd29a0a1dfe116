// GEMM for CPU adapters (lavapipe/llvmpipe): C [m, n] = op(A) op(B) with a fused epilogue.
//
// On llvmpipe an invocation is one SIMD lane and a subgroup is the 8 lanes of one vector
// register; every storage or workgroup-memory load is a per-lane scalar loop with bounds
// branches, so speed is set by loads per multiply-add (design.md, section 5). Hence:
//   - no workgroup memory and no barriers;
//   - one subgroup of 8 lanes owns a 32x32 tile of C; each lane holds 32 rows x 4 columns
//     as eight mat4x4 accumulators (acc_g column i = C row 4g+i, 4 columns of the lane);
//   - per step of 4 k, a lane loads 4 vec4 of A (1/8 of the 32x4 block every lane needs,
//     shared with subgroupBroadcast) and its own 4 vec4 of B, then does 8 mat4x4 products:
//     128 vec4 multiply-adds for 8 vec4 loads;
//   - the epilogue works on a row of a lane's block at a time (4 columns): when n % 4 == 0
//     (override VEC4) C, bias, slope and aux are read and written as vec4 through a second,
//     vec4-typed binding of the same buffer (bindings 8..11). At k = 192 the stores were
//     over half of the time with one scalar access per element;
//   - A and B come from rgba32float textures (one texel fetch per vec4, cheaper than four
//     storage loads there) when the operand's shape allows, else from storage buffers. The
//     textures are read-only storage textures: llvmpipe reads those inline, where a
//     texture_2d texel goes through a sampling function call (2.3x slower per texel; a
//     tiny qkv GEMM 1.1x (forward, NT) and 1.6-2x (weight gradient, TN) faster).
// The layout is an override constant (0 NN, 1 NT, 2 TN, as in gemm_tiled.wgsl), and so
// are the operand sources (TEXTURES, C_TEXTURE) and the epilogue the model asks for
// (HAS_BIAS ... ACCUMULATE); any other epilogue reads its flags from `shape`
// (EPILOGUE_FROM_SHAPE). One pipeline per combination the host lists, built on first use.

// Subgroup builtins need Features::SUBGROUP on the device (naga 30 rejects the WGSL
// `enable subgroups;` directive as not yet implemented, and needs none).

override LAYOUT: u32 = 1u;
// A, B and aux (when read) come from rgba32float copies (bindings 6, 7, 12): a texel fetch
// instead of a per-lane load loop (aux: half of the time of fc2's dX with GELU').
override TEXTURES: bool = false;
// steps of 4 k per loop iteration
const K_STEPS: u32 = 2u;
// n % 4 == 0: C, bias, slope and aux are also bound as arrays of vec4 (bindings 8..11), and
// the epilogue reads and writes a vec4 per row of a lane's block.
override VEC4: bool = false;
// The epilogue, fixed per pipeline: read from `shape`, its branches cost llvmpipe 16% of
// a plain 4160x192x576 GEMM even when not taken. Epilogues the model never asks for read
// `shape` instead (EPILOGUE_FROM_SHAPE), so they need no pipelines of their own.
override EPILOGUE_FROM_SHAPE: bool = false;
override HAS_BIAS: bool = false;
override HAS_SLOPE: bool = false;
// 0 none, 1 relu, 2 gelu
override ACTIVATION: u32 = 0u;
// multiply by act'(pre) from aux: 0 off, 1 aux = relu(pre) (keep where positive),
// 2 aux = act'(pre) (a forward's HAS_SLOPE output)
override ACT_GRAD: u32 = 0u;
override ACCUMULATE: bool = false;
// when accumulating, C's old value from an rgba32float copy (binding 13)
override C_TEXTURE: bool = false;
// n a multiple of 32, k of 4 * K_STEPS and this launch's rows whole tiles: every fetch and
// store is in bounds, so none is checked (bounds math was a fifth of a k = 192 GEMM's
// instructions).
override ALIGNED: bool = false;

// The host's record also carries the epilogue flags (read when EPILOGUE_FROM_SHAPE).
struct Meta {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    has_slope: u32,
    activation: u32,
    act_grad: u32,
    accumulate: u32,
    // this launch's k range: k_chunk values of k from k_begin (a long k of a weight gradient
    // runs as chunks, one launch each, accumulating into C)
    k_chunk: u32,
    splits: u32,
    // the first row of C this launch's tiles start at (a partial last row tile runs in a
    // launch of its own, with bounds checks)
    row_base: u32,
    k_begin: u32,
    // gemm_tiled's fields
    _portable0: u32,
    _portable1: u32,
    _portable2: u32,
    // Workgroup x walks the row tiles and y the column tiles (the host swaps its counts):
    // for a weight gradient whose B is the wider operand, consecutive workgroups then share
    // B's strip of k rows (kept in cache) and walk A's narrower one.
    rows_fast: u32,
    // Otherwise, when > 0: the column tiles run in bands of `band`, every row tile of a band
    // before the next band, so a wide B's panel of column strips stays in cache while the
    // row tiles walk A (NN input gradients, whose B rows are a weight's whole width apart).
    band: u32,
    _pad: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> slope: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<f32>;
@group(0) @binding(8) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> slope4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> aux4: array<vec4<f32>>;
// The same operands as rgba32float textures, a texel = 4 consecutive floats of a row.
@group(0) @binding(6) var a_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(7) var b_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(12) var aux_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(13) var c_tex: texture_storage_2d<rgba32float, read>;

// ---- epilogue (gelu and gelu_grad: activations.wgsl) ----

fn has_bias() -> bool {
    if (EPILOGUE_FROM_SHAPE) { return shape.has_bias != 0u; }
    return HAS_BIAS;
}

fn has_slope() -> bool {
    if (EPILOGUE_FROM_SHAPE) { return shape.has_slope != 0u; }
    return HAS_SLOPE;
}

fn activation_code() -> u32 {
    if (EPILOGUE_FROM_SHAPE) { return shape.activation; }
    return ACTIVATION;
}

fn act_grad_code() -> u32 {
    if (EPILOGUE_FROM_SHAPE) { return shape.act_grad; }
    return ACT_GRAD;
}

fn accumulates() -> bool {
    if (EPILOGUE_FROM_SHAPE) { return shape.accumulate != 0u; }
    return ACCUMULATE;
}

fn epilogue(row: u32, col: u32, sum: f32) {
    if (row >= shape.m || col >= shape.n) { return; }
    let idx = row * shape.n + col;
    var v = sum;
    if (has_bias()) { v += bias[col]; }
    if (has_slope()) { slope[idx] = act_slope(activation_code(), v); }
    if (activation_code() == 1u) { v = select(v, 0.0, v < 0.0); }
    if (activation_code() == 2u) { v = gelu(v); }
    if (act_grad_code() == 1u) { v = select(0.0, v, aux[idx] > 0.0); }
    if (act_grad_code() == 2u) { v *= aux[idx]; }
    if (accumulates()) { c[idx] += v; } else { c[idx] = v; }
}

// ---- operand fetches: 4 consecutive floats of a row-major matrix, zero outside ----

// Storage: branch-free, the index is clamped and the value masked.
fn fetch_buf_a(row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    let last = rows * cols - 1u;
    let base = row * cols + col;
    var v: vec4<f32>;
    for (var i = 0u; i < 4u; i++) {
        let ok = row < rows && col + i < cols;
        v[i] = select(0.0, a[min(base + i, last)], ok);
    }
    return v;
}

fn fetch_buf_b(row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    let last = rows * cols - 1u;
    let base = row * cols + col;
    var v: vec4<f32>;
    for (var i = 0u; i < 4u; i++) {
        let ok = row < rows && col + i < cols;
        v[i] = select(0.0, b[min(base + i, last)], ok);
    }
    return v;
}

// Textures: the host only uses them when cols is a multiple of 4 (texel width cols / 4).
fn fetch_a(row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if (TEXTURES) {
        if (ALIGNED) { return textureLoad(a_tex, vec2<u32>(col / 4u, row)); }
        let t = textureLoad(a_tex, vec2<u32>(col / 4u, min(row, rows - 1u)));
        return select(vec4<f32>(0.0), t, row < rows && col < cols);
    }
    return fetch_buf_a(row, col, rows, cols);
}

fn fetch_b(row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if (TEXTURES) {
        if (ALIGNED) { return textureLoad(b_tex, vec2<u32>(col / 4u, row)); }
        let t = textureLoad(b_tex, vec2<u32>(col / 4u, min(row, rows - 1u)));
        return select(vec4<f32>(0.0), t, row < rows && col < cols);
    }
    return fetch_buf_b(row, col, rows, cols);
}

// ---- subgroup sharing ----

// Columns = the vec4 of lanes 0..3 (or 4..7) of the subgroup.
fn lanes_lo(t: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(t, 0u), subgroupBroadcast(t, 1u),
                       subgroupBroadcast(t, 2u), subgroupBroadcast(t, 3u));
}

fn lanes_hi(t: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(subgroupBroadcast(t, 4u), subgroupBroadcast(t, 5u),
                       subgroupBroadcast(t, 6u), subgroupBroadcast(t, 7u));
}

// The A block of a row group as a matrix whose column i is op(A)[row 4g+i, k0..k0+4]:
// for NN/NT the lanes fetched rows (column = a row's 4 k), for TN they fetched 4 rows at
// one k (column = one k's 4 rows), which needs a transpose.
fn a_block(lanes: mat4x4<f32>) -> mat4x4<f32> {
    if (LAYOUT == 2u) { return transpose(lanes); }
    return lanes;
}

// ---- vectorized epilogue: one row of 4 columns of this lane ----

fn load_c4(row: u32, col: u32, idx: u32) -> vec4<f32> {
    if (C_TEXTURE) { return textureLoad(c_tex, vec2<u32>(col / 4u, row)); }
    if (VEC4) { return c4[idx / 4u]; }
    return vec4<f32>(c[idx], c[idx + 1u], c[idx + 2u], c[idx + 3u]);
}

fn load_aux4(row: u32, col: u32, idx: u32) -> vec4<f32> {
    if (TEXTURES) { return textureLoad(aux_tex, vec2<u32>(col / 4u, row)); }
    if (VEC4) { return aux4[idx / 4u]; }
    return vec4<f32>(aux[idx], aux[idx + 1u], aux[idx + 2u], aux[idx + 3u]);
}

// Row `row`, columns col..col+4 (all < n), value s (bias already added).
fn epilogue4(row: u32, col: u32, s: vec4<f32>) {
    let idx = row * shape.n + col;
    var v = s;
    if (has_slope()) {
        let d = act_slope4(activation_code(), v);
        if (VEC4) { slope4[idx / 4u] = d; } else {
            slope[idx] = d.x; slope[idx + 1u] = d.y; slope[idx + 2u] = d.z; slope[idx + 3u] = d.w;
        }
    }
    // ReLU as a select (NaN passes through, as in PyTorch): with max() this kernel ran a
    // 4160x768x192 GEMM 1.2-1.5x slower on llvmpipe.
    if (activation_code() == 1u) { v = select(v, vec4<f32>(0.0), v < vec4<f32>(0.0)); }
    if (activation_code() == 2u) { v = gelu4(v); }
    if (act_grad_code() == 1u) {
        v = select(vec4<f32>(0.0), v, load_aux4(row, col, idx) > vec4<f32>(0.0));
    }
    if (act_grad_code() == 2u) { v *= load_aux4(row, col, idx); }
    if (accumulates()) { v += load_c4(row, col, idx); }
    if (VEC4) { c4[idx / 4u] = v; } else {
        c[idx] = v.x; c[idx + 1u] = v.y; c[idx + 2u] = v.z; c[idx + 3u] = v.w;
    }
}

// This lane's 4 bias values (columns col0..col0+4, all < n), loaded once for its eight
// blocks (the compiler may not merge eight loads that C's stores might alias).
fn load_bias4(col0: u32) -> vec4<f32> {
    if (!has_bias() || col0 + 4u > shape.n) { return vec4<f32>(0.0); }
    if (VEC4) { return bias4[col0 / 4u]; }
    return vec4<f32>(bias[col0], bias[col0 + 1u], bias[col0 + 2u], bias[col0 + 3u]);
}

// Store a lane's 4x4 block: column i of acc is C[row0 + i, col0..col0+4]; bv is
// load_bias4(col0).
fn store_block(row0: u32, col0: u32, acc: mat4x4<f32>, bv: vec4<f32>) {
    if (ALIGNED || col0 + 4u <= shape.n) {
        let m = shape.m;
        if (ALIGNED || row0 + 4u <= m) {
            epilogue4(row0, col0, acc[0] + bv);
            epilogue4(row0 + 1u, col0, acc[1] + bv);
            epilogue4(row0 + 2u, col0, acc[2] + bv);
            epilogue4(row0 + 3u, col0, acc[3] + bv);
            return;
        }
        if (row0 < m) { epilogue4(row0, col0, acc[0] + bv); }
        if (row0 + 1u < m) { epilogue4(row0 + 1u, col0, acc[1] + bv); }
        if (row0 + 2u < m) { epilogue4(row0 + 2u, col0, acc[2] + bv); }
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            epilogue(row0 + i, col0 + j, acc[i][j]);
        }
    }
}

// One step of 4 k: this lane's share of A, its own B block, 8 mat4x4 products.
// (Eight pointer parameters rather than an array: any dynamically indexed local array
// becomes memory on llvmpipe, 3x slower.)
fn step(k0: u32, row0: u32, col: u32, lane: u32,
        acc0: ptr<function, mat4x4<f32>>, acc1: ptr<function, mat4x4<f32>>,
        acc2: ptr<function, mat4x4<f32>>, acc3: ptr<function, mat4x4<f32>>,
        acc4: ptr<function, mat4x4<f32>>, acc5: ptr<function, mat4x4<f32>>,
        acc6: ptr<function, mat4x4<f32>>, acc7: ptr<function, mat4x4<f32>>) {
    let m = shape.m;
    let n = shape.n;
    let k = shape.k;
    // This lane's share of A: slot s holds, for NN/NT, row 8s+lane at k0..k0+4;
    // for TN, rows 4(2s + lane/4)..+4 at k0 + lane%4.
    var t0: vec4<f32>;
    var t1: vec4<f32>;
    var t2: vec4<f32>;
    var t3: vec4<f32>;
    if (LAYOUT == 2u) {
        let kk = k0 + (lane & 3u);
        let r = row0 + (lane >> 2u) * 4u;
        t0 = fetch_a(kk, r, k, m);
        t1 = fetch_a(kk, r + 8u, k, m);
        t2 = fetch_a(kk, r + 16u, k, m);
        t3 = fetch_a(kk, r + 24u, k, m);
    } else {
        let r = row0 + lane;
        t0 = fetch_a(r, k0, m, k);
        t1 = fetch_a(r + 8u, k0, m, k);
        t2 = fetch_a(r + 16u, k0, m, k);
        t3 = fetch_a(r + 24u, k0, m, k);
    }
    // This lane's B block, column kk = op(B)[k0 + kk, col..col+4].
    var bm: mat4x4<f32>;
    if (LAYOUT == 1u) {
        // B [n, k]: fetch 4 columns' k-runs, then transpose.
        bm = transpose(mat4x4<f32>(fetch_b(col, k0, n, k), fetch_b(col + 1u, k0, n, k),
                                   fetch_b(col + 2u, k0, n, k), fetch_b(col + 3u, k0, n, k)));
    } else {
        bm = mat4x4<f32>(fetch_b(k0, col, k, n), fetch_b(k0 + 1u, col, k, n),
                         fetch_b(k0 + 2u, col, k, n), fetch_b(k0 + 3u, col, k, n));
    }
    *acc0 += bm * a_block(lanes_lo(t0));
    *acc1 += bm * a_block(lanes_hi(t0));
    *acc2 += bm * a_block(lanes_lo(t1));
    *acc3 += bm * a_block(lanes_hi(t1));
    *acc4 += bm * a_block(lanes_lo(t2));
    *acc5 += bm * a_block(lanes_hi(t2));
    *acc6 += bm * a_block(lanes_lo(t3));
    *acc7 += bm * a_block(lanes_hi(t3));
}

// This workgroup's (column tile, row tile) in the order `rows_fast` and `band` choose
// (read once per workgroup, so from `shape`).
fn tile_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    if (shape.rows_fast != 0u) { return wid.yx; }
    let band = shape.band;
    if (band == 0u) { return wid.xy; }
    let rows = nwg.y;
    let l = wid.x + wid.y * nwg.x;
    let band_start = l / (band * rows) * band;
    let width = min(band, nwg.x - band_start);
    let i = l - band_start * rows;
    return vec2<u32>(band_start + i % width, i / width);
}

@compute @workgroup_size(8)
fn gemm_cpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(subgroup_invocation_id) lane: u32) {
    let tile = tile_of(wid, nwg);
    let row0 = shape.row_base + tile.y * 32u;
    let col = tile.x * 32u + lane * 4u;
    var acc0 = mat4x4<f32>();
    var acc1 = mat4x4<f32>();
    var acc2 = mat4x4<f32>();
    var acc3 = mat4x4<f32>();
    var acc4 = mat4x4<f32>();
    var acc5 = mat4x4<f32>();
    var acc6 = mat4x4<f32>();
    var acc7 = mat4x4<f32>();
    // K_STEPS steps of 4 k per iteration; past the end of k the fetches return zeros.
    let k_end = min(shape.k_begin + shape.k_chunk, shape.k);
    for (var k0 = shape.k_begin; k0 < k_end; k0 += 4u * K_STEPS) {
        step(k0, row0, col, lane, &acc0, &acc1, &acc2, &acc3, &acc4, &acc5, &acc6, &acc7);
        if (K_STEPS > 1u) {
            step(k0 + 4u, row0, col, lane, &acc0, &acc1, &acc2, &acc3, &acc4, &acc5, &acc6, &acc7);
        }
    }
    let bv = load_bias4(col);
    store_block(row0, col, acc0, bv);
    store_block(row0 + 4u, col, acc1, bv);
    store_block(row0 + 8u, col, acc2, bv);
    store_block(row0 + 12u, col, acc3, bv);
    store_block(row0 + 16u, col, acc4, bv);
    store_block(row0 + 20u, col, acc5, bv);
    store_block(row0 + 24u, col, acc6, bv);
    store_block(row0 + 28u, col, acc7, bv);
}

// ---- 16x64 tiles (host option `wide`): the same 128 accumulators per lane as 16 rows x 8
// columns (columns col..col+4 and col+32..col+36), so a tile stores 16 rows of 256 bytes
// instead of 32 of 128. Stores of C in 32x32 tiles ran 2.2-2.7x slower per float than
// plain contiguous ones once C outgrew the caches, 16x64 tiles about as fast as plain.
// Per step of 4 k a lane loads 2 vec4 of A and 8 of B (against 4 and 4) and broadcasts 16
// (against 32).

fn step_wide(k0: u32, row0: u32, col: u32, lane: u32,
             acc0: ptr<function, mat4x4<f32>>, acc1: ptr<function, mat4x4<f32>>,
             acc2: ptr<function, mat4x4<f32>>, acc3: ptr<function, mat4x4<f32>>,
             acc4: ptr<function, mat4x4<f32>>, acc5: ptr<function, mat4x4<f32>>,
             acc6: ptr<function, mat4x4<f32>>, acc7: ptr<function, mat4x4<f32>>) {
    let m = shape.m;
    let n = shape.n;
    let k = shape.k;
    // This lane's share of A: for NN/NT rows lane and 8+lane at k0..k0+4; for TN rows
    // 4(lane/4)..+4 and 8+4(lane/4)..+4 at k0 + lane%4.
    var t0: vec4<f32>;
    var t1: vec4<f32>;
    if (LAYOUT == 2u) {
        let kk = k0 + (lane & 3u);
        let r = row0 + (lane >> 2u) * 4u;
        t0 = fetch_a(kk, r, k, m);
        t1 = fetch_a(kk, r + 8u, k, m);
    } else {
        let r = row0 + lane;
        t0 = fetch_a(r, k0, m, k);
        t1 = fetch_a(r + 8u, k0, m, k);
    }
    let c1 = col + 32u;
    var b0: mat4x4<f32>;
    var b1: mat4x4<f32>;
    if (LAYOUT == 1u) {
        b0 = transpose(mat4x4<f32>(fetch_b(col, k0, n, k), fetch_b(col + 1u, k0, n, k),
                                   fetch_b(col + 2u, k0, n, k), fetch_b(col + 3u, k0, n, k)));
        b1 = transpose(mat4x4<f32>(fetch_b(c1, k0, n, k), fetch_b(c1 + 1u, k0, n, k),
                                   fetch_b(c1 + 2u, k0, n, k), fetch_b(c1 + 3u, k0, n, k)));
    } else {
        b0 = mat4x4<f32>(fetch_b(k0, col, k, n), fetch_b(k0 + 1u, col, k, n),
                         fetch_b(k0 + 2u, col, k, n), fetch_b(k0 + 3u, col, k, n));
        b1 = mat4x4<f32>(fetch_b(k0, c1, k, n), fetch_b(k0 + 1u, c1, k, n),
                         fetch_b(k0 + 2u, c1, k, n), fetch_b(k0 + 3u, c1, k, n));
    }
    let a0 = a_block(lanes_lo(t0));
    let a1 = a_block(lanes_hi(t0));
    let a2 = a_block(lanes_lo(t1));
    let a3 = a_block(lanes_hi(t1));
    *acc0 += b0 * a0;
    *acc1 += b1 * a0;
    *acc2 += b0 * a1;
    *acc3 += b1 * a1;
    *acc4 += b0 * a2;
    *acc5 += b1 * a2;
    *acc6 += b0 * a3;
    *acc7 += b1 * a3;
}

// Rows row0..row0+4 of both column groups, row by row (a row's 256 bytes stored together).
fn store_pair(row0: u32, col: u32, lo: mat4x4<f32>, hi: mat4x4<f32>, bv0: vec4<f32>,
              bv1: vec4<f32>) {
    if (ALIGNED) {
        epilogue4(row0, col, lo[0] + bv0);
        epilogue4(row0, col + 32u, hi[0] + bv1);
        epilogue4(row0 + 1u, col, lo[1] + bv0);
        epilogue4(row0 + 1u, col + 32u, hi[1] + bv1);
        epilogue4(row0 + 2u, col, lo[2] + bv0);
        epilogue4(row0 + 2u, col + 32u, hi[2] + bv1);
        epilogue4(row0 + 3u, col, lo[3] + bv0);
        epilogue4(row0 + 3u, col + 32u, hi[3] + bv1);
        return;
    }
    store_block(row0, col, lo, bv0);
    store_block(row0, col + 32u, hi, bv1);
}

@compute @workgroup_size(8)
fn gemm_cpu_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(subgroup_invocation_id) lane: u32) {
    let tile = tile_of(wid, nwg);
    let row0 = shape.row_base + tile.y * 16u;
    let col = tile.x * 64u + lane * 4u;
    var acc0 = mat4x4<f32>();
    var acc1 = mat4x4<f32>();
    var acc2 = mat4x4<f32>();
    var acc3 = mat4x4<f32>();
    var acc4 = mat4x4<f32>();
    var acc5 = mat4x4<f32>();
    var acc6 = mat4x4<f32>();
    var acc7 = mat4x4<f32>();
    let k_end = min(shape.k_begin + shape.k_chunk, shape.k);
    for (var k0 = shape.k_begin; k0 < k_end; k0 += 4u * K_STEPS) {
        step_wide(k0, row0, col, lane, &acc0, &acc1, &acc2, &acc3, &acc4, &acc5, &acc6, &acc7);
        if (K_STEPS > 1u) {
            step_wide(k0 + 4u, row0, col, lane, &acc0, &acc1, &acc2, &acc3, &acc4, &acc5, &acc6,
                      &acc7);
        }
    }
    let bv0 = load_bias4(col);
    let bv1 = load_bias4(col + 32u);
    store_pair(row0, col, acc0, acc1, bv0, bv1);
    store_pair(row0 + 4u, col, acc2, acc3, bv0, bv1);
    store_pair(row0 + 8u, col, acc4, acc5, bv0, bv1);
    store_pair(row0 + 12u, col, acc6, acc7, bv0, bv1);
}
