// GEMM for adapters without 8-lane subgroups: C [m, n] = op(A) op(B) with a fused epilogue.
// Storage buffers only, no subgroups, within WebGPU's default limits (at most 7 storage
// buffers per entry point, 16 KiB of workgroup memory, 256 invocations). Entry points:
//   gemm_tiled     for GPUs: workgroup-memory tiles, built like the fastest published WGSL
//                  SGEMMs (TF.js packed vec4 matmul, gpu.cpp, siboehm's kernel 6):
//                  - 16x16 invocations; BLOCKS = 2: a 128x128 tile of C, 8x8 accumulators
//                    per invocation as a 2x2 grid of 4x4 blocks at row/column offsets 0 and
//                    64; BLOCKS = 1: a 64x64 tile, one 4x4 block (for shapes with few tiles);
//                  - workgroup memory as vec4, op(A) and op(B) stored k-major (A transposed
//                    on store for NN/NT, B for NT), each k row's vec4 index XORed with a
//                    function of k, so the transposing stores hit 32 different banks;
//                  - vec4 global loads along the contiguous axis when its length is a
//                    multiple of 4 (shape.a_vec4, shape.b_vec4; else four scalar reads of
//                    the same vec4 binding);
//                  - the next k-tile is fetched into registers while this one is used;
//                  - the k loop body is written out and every accumulator is indexed by a
//                    literal (one dynamic index would move the array out of registers);
//                  - C stored a vec4 row at a time; SPLIT: workgroup z sums k in
//                    [z k_chunk, (z+1) k_chunk) into partial[z] (no epilogue), and
//                    gemm_reduce adds the splits and runs the epilogue. The host also takes
//                    SPLIT with one split when n % 4 != 0 (C rows not on 16-byte bounds).
//   gemm_reduce    the split-K sum and the epilogue, one invocation per element of C.
//   gemm_registers for CPU adapters without 8-lane subgroups (llvmpipe on GL, SwiftShader in
//                  Chrome): no workgroup memory and no barriers (on a CPU each barrier ends a
//                  loop over the lanes); each invocation keeps a 4x4 block of C in a mat4x4
//                  and reads its operands straight from storage, zero outside;
//                  gemm_registers_aligned, for C rows on 16 bytes (n % 4 == 0, m >= 12,
//                  n >= 8): a 12x8 block per invocation, its operands read a float at a
//                  time (20 loads per 96 multiply-adds), no branch in its k loop.
// The layout is an override constant, so each pipeline compiles one indexing scheme:
//   LAYOUT 0 = NN: A [m, k], B [k, n]     C = A B      (dX = dY W)
//          1 = NT: A [m, k], B [n, k]     C = A B^T    (Y = X W^T)
//          2 = TN: A [k, m], B [k, n]     C = A^T B    (dW = dY^T X)
// Epilogue (same as gemm_lanes.wgsl): + bias[n]; slope act'(pre-activation) out;
// activation; times act'(pre) of a later layer from aux; C = or C +=.

override LAYOUT: u32 = 1u;
// 4x4 blocks per invocation along each axis: 1 (64x64 tile) or 2 (128x128 tile)
override BLOCKS: u32 = 2u;
// raw sums to partial[wid.z], the epilogue runs in gemm_reduce
override SPLIT: bool = false;

struct Meta {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    has_slope: u32,
    // 0 none, 1 relu, 2 gelu
    activation: u32,
    // multiply by act'(pre) from aux: 0 off, 1 aux = relu(pre), 2 aux = act'(pre)
    act_grad: u32,
    accumulate: u32,
    // split-K: k per split (a multiple of TK) and the number of splits
    k_chunk: u32,
    splits: u32,
    _lanes0: u32,
    _lanes1: u32,
    // A's (B's) contiguous axis is a multiple of 4: its rows start on 16 bytes
    a_vec4: u32,
    b_vec4: u32,
    // floats per row of partial: n rounded up to a multiple of 4
    partial_cols: u32,
    _lanes2: u32,
    _lanes3: u32,
    _pad: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

// A and B as vec4 (bound rounded up to whole vec4s), also read a float at a time
@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;
// the epilogue's buffers as floats (gemm_reduce, gemm_registers unaligned) ...
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> slope: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<f32>;
// ... and as vec4 (gemm_tiled, whose C rows start on 16 bytes unless it runs SPLIT, and
// gemm_registers_aligned)
@group(0) @binding(8) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> slope4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> aux4: array<vec4<f32>>;
// A and B a float at a time (gemm_registers_aligned: CPU adapters load each float of a
// vec4 separately, so a vec4 saves nothing and would force aligned operand rows)
@group(0) @binding(12) var<storage, read> a_f32: array<f32>;
@group(0) @binding(13) var<storage, read> b_f32: array<f32>;
// split-K partial sums [splits, m, partial_cols]
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;
@group(0) @binding(7) var<storage, read_write> partial4: array<vec4<f32>>;

// ---- epilogue (gelu and gelu_grad: activations.wgsl) ----

// The activation (0 none, 1 relu, 2 gelu) and whether its slope is saved: fixed per
// pipeline by gemm_registers_aligned (CPU adapters run the body of every branch, so a gelu
// chosen at run time would cost every GEMM its transcendentals), else (RUNTIME) read from
// the shape record.
const RUNTIME: u32 = 3u;
override ACTIVATION: u32 = RUNTIME;
override SAVE_SLOPE: bool = false;
// Whether the epilogue may read C (accumulate) or aux (act_grad), as the shape record says;
// false compiles both reads out (gemm_registers_aligned's pipelines without them).
override EPILOGUE_READS: bool = true;

fn activation_code() -> u32 {
    if (ACTIVATION == RUNTIME) { return shape.activation; }
    return ACTIVATION;
}

fn saves_slope() -> bool {
    if (ACTIVATION == RUNTIME) { return shape.has_slope != 0u; }
    return SAVE_SLOPE;
}

fn epilogue(row: u32, col: u32, sum: f32) {
    if (row >= shape.m || col >= shape.n) { return; }
    let idx = row * shape.n + col;
    var v = sum;
    if (shape.has_bias != 0u) { v += bias[col]; }
    if (shape.has_slope != 0u) { slope[idx] = act_slope(shape.activation, v); }
    if (shape.activation == 1u) { v = max(v, 0.0); }
    if (shape.activation == 2u) { v = gelu(v); }
    if (shape.act_grad == 1u) { v = select(0.0, v, aux[idx] > 0.0); }
    if (shape.act_grad == 2u) { v *= aux[idx]; }
    if (shape.accumulate != 0u) { c[idx] += v; } else { c[idx] = v; }
}

// Columns col..col+3 of a row (n % 4 == 0, so all or none are inside C).
fn epilogue4(row: u32, col: u32, sum: vec4<f32>) {
    if (row >= shape.m || col >= shape.n) { return; }
    var v = sum;
    if (shape.has_bias != 0u) { v += bias4[col / 4u]; }
    epilogue4_biased(row, col, v);
}

// The rest of epilogue4, from the biased sum (inside C).
fn epilogue4_biased(row: u32, col: u32, pre: vec4<f32>) {
    let i4 = (row * shape.n + col) / 4u;
    let act = activation_code();
    var v = pre;
    if (saves_slope()) { slope4[i4] = act_slope4(act, v); }
    if (act == 1u) { v = max(v, vec4<f32>(0.0)); }
    if (act == 2u) { v = gelu4(v); }
    if (EPILOGUE_READS && shape.act_grad != 0u) {
        let g = aux4[i4];
        v = select(v * g, select(vec4<f32>(0.0), v, g > vec4<f32>(0.0)), shape.act_grad == 1u);
    }
    if (EPILOGUE_READS && shape.accumulate != 0u) { v += c4[i4]; }
    c4[i4] = v;
}

// ---- global loads: 4 consecutive floats of a row-major [rows, cols] matrix, 0 outside ----

fn load_a4(row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if (row >= rows || col >= cols) { return vec4<f32>(0.0); }
    let base = row * cols + col;
    if (shape.a_vec4 != 0u) { return a4[base / 4u]; }
    var v = vec4<f32>(0.0);
    v.x = a4[base / 4u][base % 4u];
    if (col + 1u < cols) { v.y = a4[(base + 1u) / 4u][(base + 1u) % 4u]; }
    if (col + 2u < cols) { v.z = a4[(base + 2u) / 4u][(base + 2u) % 4u]; }
    if (col + 3u < cols) { v.w = a4[(base + 3u) / 4u][(base + 3u) % 4u]; }
    return v;
}

fn load_b4(row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if (row >= rows || col >= cols) { return vec4<f32>(0.0); }
    let base = row * cols + col;
    if (shape.b_vec4 != 0u) { return b4[base / 4u]; }
    var v = vec4<f32>(0.0);
    v.x = b4[base / 4u][base % 4u];
    if (col + 1u < cols) { v.y = b4[(base + 1u) / 4u][(base + 1u) % 4u]; }
    if (col + 2u < cols) { v.z = b4[(base + 2u) / 4u][(base + 2u) % 4u]; }
    if (col + 3u < cols) { v.w = b4[(base + 3u) / 4u][(base + 3u) % 4u]; }
    return v;
}

// op(A) at row i, k p, 4 along A's contiguous axis: k p..p+3 (NN, NT) or rows i..i+3 (TN)
fn fetch_a(i: u32, p: u32) -> vec4<f32> {
    if (LAYOUT == 2u) { return load_a4(p, i, shape.k, shape.m); }
    return load_a4(i, p, shape.m, shape.k);
}

// op(B) at k p, column j, 4 along B's contiguous axis: columns j..j+3 (NN, TN) or k p..p+3 (NT)
fn fetch_b(p: u32, j: u32) -> vec4<f32> {
    if (LAYOUT == 1u) { return load_b4(j, p, shape.n, shape.k); }
    return load_b4(p, j, shape.k, shape.n);
}

// ---- gemm_tiled ----

const TK: u32 = 16u;
// vec4 per k row of a tile in workgroup memory (room for the 128 tile; the 64 uses half)
const ROW4: u32 = 32u;

// k-major: tile_a[kk * ROW4 + (i4 ^ swizzle(kk))] = op(A)[row0 + 4 i4 .. + 4, k0 + kk]
var<workgroup> tile_a: array<vec4<f32>, 512>;
// tile_b[kk * ROW4 + (j4 ^ swizzle(kk))] = op(B)[k0 + kk, col0 + 4 j4 .. + 4]
var<workgroup> tile_b: array<vec4<f32>, 512>;

// The vec4 index of a k row is XORed with 0, 2, 4 or 6 by kk / 4: a transposing store
// writes 8 vec4 indices (4 floats each) at 4 values of kk / 4 from one warp, which without
// it fall on the same 32 banks 4 times over. A permutation within each 8 vec4 (never past
// 16 BLOCKS), so readers see the same values at the XORed index.
fn swizzle(kk: u32) -> u32 {
    return ((kk >> 2u) & 3u) << 1u;
}

// The vec4 loads of one k-tile: 16 BLOCKS rows (or k) per invocation; invocation t's
// e-th load. Consecutive invocations walk the matrix's contiguous axis.
fn fetch_tile_a(e: u32, t: u32, row0: u32, k0: u32) -> vec4<f32> {
    let u = e * 256u + t;
    if (LAYOUT == 2u) {
        // contiguous along rows of op(A): u = kk * (16 BLOCKS) + i4
        let w = 16u * BLOCKS;
        return fetch_a(row0 + (u % w) * 4u, k0 + u / w);
    }
    // contiguous along k: u = i * 4 + kq
    return fetch_a(row0 + u / 4u, k0 + (u % 4u) * 4u);
}

fn fetch_tile_b(e: u32, t: u32, col0: u32, k0: u32) -> vec4<f32> {
    let u = e * 256u + t;
    if (LAYOUT == 1u) {
        return fetch_b(k0 + (u % 4u) * 4u, col0 + u / 4u);
    }
    let w = 16u * BLOCKS;
    return fetch_b(k0 + u / w, col0 + (u % w) * 4u);
}

// Store a fetched vec4 into workgroup memory; along k it is scattered over 4 k rows.
fn stash_a(e: u32, t: u32, v: vec4<f32>) {
    let u = e * 256u + t;
    if (LAYOUT == 2u) {
        let w = 16u * BLOCKS;
        let kk = u / w;
        tile_a[kk * ROW4 + ((u % w) ^ swizzle(kk))] = v;
    } else {
        let i = u / 4u;
        let kk = (u % 4u) * 4u;
        let at = kk * ROW4 + ((i / 4u) ^ swizzle(kk));
        tile_a[at][i % 4u] = v.x;
        tile_a[at + ROW4][i % 4u] = v.y;
        tile_a[at + 2u * ROW4][i % 4u] = v.z;
        tile_a[at + 3u * ROW4][i % 4u] = v.w;
    }
}

fn stash_b(e: u32, t: u32, v: vec4<f32>) {
    let u = e * 256u + t;
    if (LAYOUT == 1u) {
        let j = u / 4u;
        let kk = (u % 4u) * 4u;
        let at = kk * ROW4 + ((j / 4u) ^ swizzle(kk));
        tile_b[at][j % 4u] = v.x;
        tile_b[at + ROW4][j % 4u] = v.y;
        tile_b[at + 2u * ROW4][j % 4u] = v.z;
        tile_b[at + 3u * ROW4][j % 4u] = v.w;
    } else {
        let w = 16u * BLOCKS;
        let kk = u / w;
        tile_b[kk * ROW4 + ((u % w) ^ swizzle(kk))] = v;
    }
}

// One k of the register blocks: acc[(qa * 2 + qb) * 4 + r] is row qa*64 + 4 ty + r,
// columns qb*64 + 4 tx .. + 4 of the tile. Every accumulator index is a literal.
fn mac(acc: ptr<function, array<vec4<f32>, 16>>, kk: u32, ty: u32, tx: u32) {
    let s = swizzle(kk);
    let a0 = tile_a[kk * ROW4 + (ty ^ s)];
    let b0 = tile_b[kk * ROW4 + (tx ^ s)];
    (*acc)[0] += a0.x * b0;
    (*acc)[1] += a0.y * b0;
    (*acc)[2] += a0.z * b0;
    (*acc)[3] += a0.w * b0;
    if (BLOCKS == 2u) {
        let a1 = tile_a[kk * ROW4 + ((16u + ty) ^ s)];
        let b1 = tile_b[kk * ROW4 + ((16u + tx) ^ s)];
        (*acc)[4] += a0.x * b1;
        (*acc)[5] += a0.y * b1;
        (*acc)[6] += a0.z * b1;
        (*acc)[7] += a0.w * b1;
        (*acc)[8] += a1.x * b0;
        (*acc)[9] += a1.y * b0;
        (*acc)[10] += a1.z * b0;
        (*acc)[11] += a1.w * b0;
        (*acc)[12] += a1.x * b1;
        (*acc)[13] += a1.y * b1;
        (*acc)[14] += a1.z * b1;
        (*acc)[15] += a1.w * b1;
    }
}

// Row `row`, columns col..col+3 of C (or of split z's partial sums) as one vec4 store.
fn store_row(row: u32, col: u32, z: u32, v: vec4<f32>) {
    if (SPLIT) {
        let cols = shape.partial_cols;
        if (row < shape.m && col < cols) {
            partial4[((z * shape.m + row) * cols + col) / 4u] = v;
        }
    } else {
        epilogue4(row, col, v);
    }
}

// A 4x4 block of accumulators, passed by value: rows row..row+3, columns col..col+3.
fn store_block(row: u32, col: u32, z: u32, r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>,
               r3: vec4<f32>) {
    store_row(row, col, z, r0);
    store_row(row + 1u, col, z, r1);
    store_row(row + 2u, col, z, r2);
    store_row(row + 3u, col, z, r3);
}

@compute @workgroup_size(16, 16)
fn gemm_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let tile = 64u * BLOCKS;
    let row0 = wid.y * tile;
    let col0 = wid.x * tile;
    let k_begin = select(0u, wid.z * shape.k_chunk, SPLIT);
    let k_end = select(shape.k, min(shape.k, k_begin + shape.k_chunk), SPLIT);
    var acc: array<vec4<f32>, 16>;
    // the k-tile in flight, in registers
    var fa0 = fetch_tile_a(0u, li, row0, k_begin);
    var fb0 = fetch_tile_b(0u, li, col0, k_begin);
    var fa1 = vec4<f32>(0.0);
    var fb1 = vec4<f32>(0.0);
    if (BLOCKS == 2u) {
        fa1 = fetch_tile_a(1u, li, row0, k_begin);
        fb1 = fetch_tile_b(1u, li, col0, k_begin);
    }
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        stash_a(0u, li, fa0);
        stash_b(0u, li, fb0);
        if (BLOCKS == 2u) {
            stash_a(1u, li, fa1);
            stash_b(1u, li, fb1);
        }
        workgroupBarrier();
        // prefetch the next k-tile: its loads are in flight during the math below
        let next = k0 + TK;
        if (next < k_end) {
            fa0 = fetch_tile_a(0u, li, row0, next);
            fb0 = fetch_tile_b(0u, li, col0, next);
            if (BLOCKS == 2u) {
                fa1 = fetch_tile_a(1u, li, row0, next);
                fb1 = fetch_tile_b(1u, li, col0, next);
            }
        }
        let ty = lid.y;
        let tx = lid.x;
        mac(&acc, 0u, ty, tx);
        mac(&acc, 1u, ty, tx);
        mac(&acc, 2u, ty, tx);
        mac(&acc, 3u, ty, tx);
        mac(&acc, 4u, ty, tx);
        mac(&acc, 5u, ty, tx);
        mac(&acc, 6u, ty, tx);
        mac(&acc, 7u, ty, tx);
        mac(&acc, 8u, ty, tx);
        mac(&acc, 9u, ty, tx);
        mac(&acc, 10u, ty, tx);
        mac(&acc, 11u, ty, tx);
        mac(&acc, 12u, ty, tx);
        mac(&acc, 13u, ty, tx);
        mac(&acc, 14u, ty, tx);
        mac(&acc, 15u, ty, tx);
        workgroupBarrier();
    }
    let row = row0 + lid.y * 4u;
    let col = col0 + lid.x * 4u;
    let z = wid.z;
    store_block(row, col, z, acc[0], acc[1], acc[2], acc[3]);
    if (BLOCKS == 2u) {
        store_block(row, col + 64u, z, acc[4], acc[5], acc[6], acc[7]);
        store_block(row + 64u, col, z, acc[8], acc[9], acc[10], acc[11]);
        store_block(row + 64u, col + 64u, z, acc[12], acc[13], acc[14], acc[15]);
    }
}

// ---- gemm_reduce: C = epilogue(sum over splits of partial) ----

@compute @workgroup_size(256)
fn gemm_reduce(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let total = shape.m * shape.n;
    if (idx >= total) { return; }
    let row = idx / shape.n;
    let col = idx % shape.n;
    let at = row * shape.partial_cols + col;
    let stride = shape.m * shape.partial_cols;
    var sum = 0.0;
    for (var z = 0u; z < shape.splits; z++) {
        sum += partial[z * stride + at];
    }
    epilogue(row, col, sum);
}

// ---- gemm_registers: no workgroup memory (CPU adapters without 8-lane subgroups) ----

// gemm_registers_aligned (generated below) stores C rows a vec4 at a time (n % 4 == 0). Its
// k loop has no branch: CPU adapters run both sides of every branch under a lane mask, and a
// branch per load costs more than the load. gemm_registers takes every other shape.

// The unaligned operands: each float read alone, zero outside.
fn registers_a_unaligned(i: u32, p: u32) -> mat4x4<f32> {
    if (LAYOUT == 2u) {
        return transpose(mat4x4<f32>(fetch_a(i, p), fetch_a(i, p + 1u), fetch_a(i, p + 2u),
                                     fetch_a(i, p + 3u)));
    }
    return mat4x4<f32>(fetch_a(i, p), fetch_a(i + 1u, p), fetch_a(i + 2u, p), fetch_a(i + 3u, p));
}

fn registers_b_unaligned(p: u32, j: u32) -> mat4x4<f32> {
    if (LAYOUT == 1u) {
        return transpose(mat4x4<f32>(fetch_b(p, j), fetch_b(p, j + 1u), fetch_b(p, j + 2u),
                                     fetch_b(p, j + 3u)));
    }
    return mat4x4<f32>(fetch_b(p, j), fetch_b(p + 1u, j), fetch_b(p + 2u, j), fetch_b(p + 3u, j));
}

// Columns col..col+3 of row `row` of a block moved back inside C: only the outputs from
// (row0, col0) on are this invocation's (the rest belong to the block before it).
fn store_registers_block(row0: u32, col0: u32, row: u32, col: u32, pre: vec4<f32>) {
    if (row < row0 || col < col0) { return; }
    epilogue4_biased(row, col, pre);
}

// ---- registers blocked GEMM: GENERATED by scripts/gen_gemm_registers.py (edit that) ----

const BLOCK_ROWS: u32 = 12u;
const BLOCK_COLS: u32 = 8u;

// acc{r}_{h} = C[i + r, j + 4h .. j + 4h + 3]. Each k step p reads 12 floats of op(A)
// (lhs{r} = op(A)[i + r, p]) and 8 of op(B) (rhs{h} = op(B)[p, j + 4h ..]) for
// 96 multiply-adds.
// The block is moved back inside C (m >= BLOCK_ROWS, n >= BLOCK_COLS), so it reads only
// inside A and B and stores only the outputs from (row0, col0) on: no branch in the loop.
@compute @workgroup_size(8, 8)
fn gemm_registers_aligned(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row0 = gid.y * BLOCK_ROWS;
    let col0 = gid.x * BLOCK_COLS;
    let i = min(row0, shape.m - BLOCK_ROWS);
    let j = min(col0, shape.n - BLOCK_COLS);
    // op(A)[i + r, p] = a_f32[ia + r a_row] at step p; op(B)[p, j + c] = b_f32[ib + c b_col]
    var ia = i * shape.k;
    var a_row = shape.k;
    var a_step = 1u;
    if (LAYOUT == 2u) {
        ia = i;
        a_row = 1u;
        a_step = shape.m;
    }
    var ib = j;
    var b_col = 1u;
    var b_step = shape.n;
    if (LAYOUT == 1u) {
        ib = j * shape.k;
        b_col = shape.k;
        b_step = 1u;
    }
    var acc0_0 = vec4<f32>(0.0); var acc0_1 = vec4<f32>(0.0);
    var acc1_0 = vec4<f32>(0.0); var acc1_1 = vec4<f32>(0.0);
    var acc2_0 = vec4<f32>(0.0); var acc2_1 = vec4<f32>(0.0);
    var acc3_0 = vec4<f32>(0.0); var acc3_1 = vec4<f32>(0.0);
    var acc4_0 = vec4<f32>(0.0); var acc4_1 = vec4<f32>(0.0);
    var acc5_0 = vec4<f32>(0.0); var acc5_1 = vec4<f32>(0.0);
    var acc6_0 = vec4<f32>(0.0); var acc6_1 = vec4<f32>(0.0);
    var acc7_0 = vec4<f32>(0.0); var acc7_1 = vec4<f32>(0.0);
    var acc8_0 = vec4<f32>(0.0); var acc8_1 = vec4<f32>(0.0);
    var acc9_0 = vec4<f32>(0.0); var acc9_1 = vec4<f32>(0.0);
    var acc10_0 = vec4<f32>(0.0); var acc10_1 = vec4<f32>(0.0);
    var acc11_0 = vec4<f32>(0.0); var acc11_1 = vec4<f32>(0.0);
    for (var p = 0u; p < shape.k; p++) {
        let lhs0 = a_f32[ia];
        let lhs1 = a_f32[ia + 1u * a_row];
        let lhs2 = a_f32[ia + 2u * a_row];
        let lhs3 = a_f32[ia + 3u * a_row];
        let lhs4 = a_f32[ia + 4u * a_row];
        let lhs5 = a_f32[ia + 5u * a_row];
        let lhs6 = a_f32[ia + 6u * a_row];
        let lhs7 = a_f32[ia + 7u * a_row];
        let lhs8 = a_f32[ia + 8u * a_row];
        let lhs9 = a_f32[ia + 9u * a_row];
        let lhs10 = a_f32[ia + 10u * a_row];
        let lhs11 = a_f32[ia + 11u * a_row];
        let rhs0 = vec4<f32>(b_f32[ib], b_f32[ib + 1u * b_col], b_f32[ib + 2u * b_col], b_f32[ib + 3u * b_col]);
        let rhs1 = vec4<f32>(b_f32[ib + 4u * b_col], b_f32[ib + 5u * b_col], b_f32[ib + 6u * b_col], b_f32[ib + 7u * b_col]);
        acc0_0 = fma(vec4<f32>(lhs0), rhs0, acc0_0);
        acc0_1 = fma(vec4<f32>(lhs0), rhs1, acc0_1);
        acc1_0 = fma(vec4<f32>(lhs1), rhs0, acc1_0);
        acc1_1 = fma(vec4<f32>(lhs1), rhs1, acc1_1);
        acc2_0 = fma(vec4<f32>(lhs2), rhs0, acc2_0);
        acc2_1 = fma(vec4<f32>(lhs2), rhs1, acc2_1);
        acc3_0 = fma(vec4<f32>(lhs3), rhs0, acc3_0);
        acc3_1 = fma(vec4<f32>(lhs3), rhs1, acc3_1);
        acc4_0 = fma(vec4<f32>(lhs4), rhs0, acc4_0);
        acc4_1 = fma(vec4<f32>(lhs4), rhs1, acc4_1);
        acc5_0 = fma(vec4<f32>(lhs5), rhs0, acc5_0);
        acc5_1 = fma(vec4<f32>(lhs5), rhs1, acc5_1);
        acc6_0 = fma(vec4<f32>(lhs6), rhs0, acc6_0);
        acc6_1 = fma(vec4<f32>(lhs6), rhs1, acc6_1);
        acc7_0 = fma(vec4<f32>(lhs7), rhs0, acc7_0);
        acc7_1 = fma(vec4<f32>(lhs7), rhs1, acc7_1);
        acc8_0 = fma(vec4<f32>(lhs8), rhs0, acc8_0);
        acc8_1 = fma(vec4<f32>(lhs8), rhs1, acc8_1);
        acc9_0 = fma(vec4<f32>(lhs9), rhs0, acc9_0);
        acc9_1 = fma(vec4<f32>(lhs9), rhs1, acc9_1);
        acc10_0 = fma(vec4<f32>(lhs10), rhs0, acc10_0);
        acc10_1 = fma(vec4<f32>(lhs10), rhs1, acc10_1);
        acc11_0 = fma(vec4<f32>(lhs11), rhs0, acc11_0);
        acc11_1 = fma(vec4<f32>(lhs11), rhs1, acc11_1);
        ia += a_step;
        ib += b_step;
    }
    // the bias once per column, not once per output
    var bias0 = vec4<f32>(0.0);
    var bias1 = vec4<f32>(0.0);
    if (shape.has_bias != 0u) {
        bias0 = bias4[j / 4u + 0u];
        bias1 = bias4[j / 4u + 1u];
    }
    var block = array<vec4<f32>, 24>(acc0_0, acc0_1, acc1_0, acc1_1, acc2_0, acc2_1, acc3_0, acc3_1, acc4_0, acc4_1, acc5_0, acc5_1, acc6_0, acc6_1, acc7_0, acc7_1, acc8_0, acc8_1, acc9_0, acc9_1, acc10_0, acc10_1, acc11_0, acc11_1);
    for (var r = 0u; r < BLOCK_ROWS; r++) {
        store_registers_block(row0, col0, i + r, j + 0u, block[2u * r + 0u] + bias0);
        store_registers_block(row0, col0, i + r, j + 4u, block[2u * r + 1u] + bias1);
    }
}

// ---- end of the generated registers blocked GEMM ----

// Any shape: the same blocks read a float at a time, zero outside, stored a float at a time.
@compute @workgroup_size(8, 8)
fn gemm_registers(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * 4u;
    let j = gid.x * 4u;
    var acc = mat4x4<f32>();
    for (var p = 0u; p < shape.k; p += 4u) {
        acc += registers_b_unaligned(p, j) * registers_a_unaligned(i, p);
    }
    store_registers_row(i, j, acc[0]);
    store_registers_row(i + 1u, j, acc[1]);
    store_registers_row(i + 2u, j, acc[2]);
    store_registers_row(i + 3u, j, acc[3]);
}

fn store_registers_row(row: u32, col: u32, v: vec4<f32>) {
    epilogue(row, col, v.x);
    epilogue(row, col + 1u, v.y);
    epilogue(row, col + 2u, v.z);
    epilogue(row, col + 3u, v.w);
}
