// Multi-head self-attention, flash style: o = softmax(q k^T * scale) v per (batch, head),
// scale = 1/sqrt(d), with no N x N matrix in memory (except `attention_probabilities`,
// which writes P for the attention-map visualisation at inference).
//
// Layout: qkv [B*N, 3D] row-major; head a's q, k and v are columns [a*d, (a+1)*d) of the
// first, second and third thirds (offsets 0, D, 2D). o [B*N, D], head a in columns
// [a*d, (a+1)*d). lse and delta [B, A, N].
//
// Forward saves lse = row log-sum-exp of the scaled scores. Backward recomputes
// P = exp(S - lse) and, FlashAttention-2 style without atomics, runs two passes:
//   attention_backward_query: per query row i, delta_i = rowsum(dO o O) (saved for the
//       next pass) and dQ_i = scale * sum_j P_ij (dP_ij - delta_i) K_j, dP_ij = dO_i . V_j;
//   attention_backward_key: per key row j, dV_j = sum_i P_ij dO_i and
//       dK_j = scale * sum_i P_ij (dP_ij - delta_i) Q_i.
//
// One invocation owns one row (query or key) and keeps its d floats and its accumulators
// in registers (at most 16 vec4 each), streaming the other side's rows as vec4 loads. A
// workgroup holds consecutive rows of one (batch, head), so every lane streams the same
// rows. Three variants of the forward and both backward passes:
//   - attention_forward, ..._backward_query, ..._backward_key (ROWS rows per workgroup):
//     every lane loads each streamed row itself, no workgroup memory, no barriers; for CPU
//     adapters without 8-lane subgroups (llvmpipe on GL) and GPUs without workgroup memory;
//   - the same names + _tiled (end of this file): the streamed rows staged in workgroup
//     memory once per workgroup; for GPUs;
//   - the same names + _lanes, in attention_lanes.wgsl (one 8-lane subgroup per workgroup):
//     lane t loads streamed row t of each block of 8 and subgroupBroadcast shares it, one
//     vec4 load per 8 vec4 multiply-adds, for CPU adapters (lavapipe) where every storage
//     load is a per-lane loop. They need Features::SUBGROUP, so they live in their own
//     file, compiled as this file followed by attention_lanes.wgsl (src/kernels/mod.rs).
// Rows past N are clamped to N-1 for loads (so the loops stay branch-free and every lane
// of a subgroup takes part in each broadcast) and skipped at the store; streamed rows past
// N get probability 0.
//
// HEAD_VEC4 = d/4 is an override constant: one pipeline per head dim, so the register
// arrays and the inner loops have constant sizes.

override HEAD_VEC4: u32 = 16u;
override ROWS: u32 = 16u;
// keys per online-softmax block: the accumulator is rescaled once per block
const KEY_BLOCK: u32 = 8u;
const NEG_BIG: f32 = -3.0e38;

struct Meta {
    batch: u32,
    tokens: u32,
    heads: u32,
    // d / 4 (equals HEAD_VEC4)
    head_vec4: u32,
    // 3D / 4: one qkv row in vec4
    qkv_row_vec4: u32,
    // D / 4: one o row in vec4, and the offset of the k third (2D/4 for v)
    model_vec4: u32,
    // 1 / sqrt(d)
    scale: f32,
    // the first row this launch's workgroups start at (the `Lanes` tail launch's; else 0)
    row_base: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;            // [B*N, 3D]
// forward
@group(0) @binding(1) var<storage, read_write> o: array<vec4<f32>>;        // [B*N, D]
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;            // [B, A, N]
// backward
@group(0) @binding(3) var<storage, read> o_in: array<vec4<f32>>;           // [B*N, D]
@group(0) @binding(4) var<storage, read> lse_in: array<f32>;               // [B, A, N]
@group(0) @binding(5) var<storage, read> d_o: array<vec4<f32>>;            // [B*N, D]
@group(0) @binding(6) var<storage, read_write> dqkv: array<vec4<f32>>;     // [B*N, 3D]
@group(0) @binding(7) var<storage, read_write> delta: array<f32>;          // [B, A, N]
// probabilities
@group(0) @binding(8) var<storage, read_write> probs: array<f32>;          // [B, A, N, N]

// Where one workgroup's rows live: (batch, head) from workgroup_id.y, rows from .x.
struct Rows {
    batch: u32,
    head: u32,
    // (batch * A + head): index of this head's [N] slice of lse / delta, times N
    bh: u32,
    // this invocation's row, unclamped (>= N past the end) and clamped
    row: u32,
    clamped: u32,
    // vec4 index of token 0 of this batch in qkv, and of this head's columns within a row
    qkv_batch: u32,
    head_col: u32,
}

fn rows(wid: vec3<u32>, lid: u32, per_group: u32) -> Rows {
    var r: Rows;
    r.bh = wid.y;
    r.batch = wid.y / shape.heads;
    r.head = wid.y % shape.heads;
    r.row = shape.row_base + wid.x * per_group + lid;
    r.clamped = min(r.row, shape.tokens - 1u);
    r.qkv_batch = r.batch * shape.tokens * shape.qkv_row_vec4;
    r.head_col = r.head * HEAD_VEC4;
    return r;
}

// vec4 index of token t's q (part 0), k (1) or v (2) for this head
fn qkv_at(r: Rows, t: u32, part: u32) -> u32 {
    return r.qkv_batch + t * shape.qkv_row_vec4 + part * shape.model_vec4 + r.head_col;
}

// vec4 index of token t's head columns in an o-shaped [B*N, D] tensor
fn o_at(r: Rows, t: u32) -> u32 {
    return (r.batch * shape.tokens + t) * shape.model_vec4 + r.head_col;
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(ROWS)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = rows(wid, lid, ROWS);
    let n = shape.tokens;
    var q: array<vec4<f32>, 16>;
    var acc: array<vec4<f32>, 16>;
    let qi = qkv_at(r, r.clamped, 0u);
    for (var c = 0u; c < HEAD_VEC4; c++) {
        q[c] = qkv[qi + c] * shape.scale;
        acc[c] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j0 = 0u; j0 < n; j0 += KEY_BLOCK) {
        var s: array<f32, KEY_BLOCK>;
        var mb = m;
        for (var t = 0u; t < KEY_BLOCK; t++) {
            let kj = qkv_at(r, min(j0 + t, n - 1u), 1u);
            var dv = vec4<f32>(0.0);
            for (var c = 0u; c < HEAD_VEC4; c++) {
                dv += q[c] * qkv[kj + c];
            }
            s[t] = select(NEG_BIG, hsum(dv), j0 + t < n);
            mb = max(mb, s[t]);
        }
        let corr = exp(m - mb);
        l *= corr;
        for (var c = 0u; c < HEAD_VEC4; c++) {
            acc[c] *= corr;
        }
        for (var t = 0u; t < KEY_BLOCK; t++) {
            let p = exp(s[t] - mb);
            l += p;
            let vj = qkv_at(r, min(j0 + t, n - 1u), 2u);
            for (var c = 0u; c < HEAD_VEC4; c++) {
                acc[c] += p * qkv[vj + c];
            }
        }
        m = mb;
    }
    if (r.row < n) {
        let inv = 1.0 / l;
        let oi = o_at(r, r.row);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            o[oi + c] = acc[c] * inv;
        }
        lse[r.bh * n + r.row] = m + log(l);
    }
}

// Per query row: delta_i = dO_i . O_i, then dQ_i = scale * sum_j P_ij (dO_i . V_j - delta_i) K_j.
@compute @workgroup_size(ROWS)
fn attention_backward_query(@builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let r = rows(wid, lid, ROWS);
    let n = shape.tokens;
    var q: array<vec4<f32>, 16>;
    var g: array<vec4<f32>, 16>;
    var dq: array<vec4<f32>, 16>;
    let qi = qkv_at(r, r.clamped, 0u);
    let oi = o_at(r, r.clamped);
    var dd = vec4<f32>(0.0);
    for (var c = 0u; c < HEAD_VEC4; c++) {
        q[c] = qkv[qi + c] * shape.scale;
        g[c] = d_o[oi + c];
        dd += g[c] * o_in[oi + c];
        dq[c] = vec4<f32>(0.0);
    }
    let di = hsum(dd);
    let li = lse_in[r.bh * n + r.clamped];
    for (var j = 0u; j < n; j++) {
        let kj = qkv_at(r, j, 1u);
        let vj = qkv_at(r, j, 2u);
        var k: array<vec4<f32>, 16>;
        var sv = vec4<f32>(0.0);
        var pv = vec4<f32>(0.0);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            k[c] = qkv[kj + c];
            sv += q[c] * k[c];
            pv += g[c] * qkv[vj + c];
        }
        let p = exp(hsum(sv) - li);
        let ds = p * (hsum(pv) - di);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dq[c] += ds * k[c];
        }
    }
    if (r.row < n) {
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dqkv[qi + c] = dq[c] * shape.scale;
        }
        delta[r.bh * n + r.row] = di;
    }
}

// Per key row j: dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i P_ij (dO_i . V_j - delta_i) Q_i.
// Runs after attention_backward_query, which wrote delta.
@compute @workgroup_size(ROWS)
fn attention_backward_key(@builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let r = rows(wid, lid, ROWS);
    let n = shape.tokens;
    var k: array<vec4<f32>, 16>;
    var v: array<vec4<f32>, 16>;
    var dk: array<vec4<f32>, 16>;
    var dv: array<vec4<f32>, 16>;
    let kj = qkv_at(r, r.clamped, 1u);
    let vj = qkv_at(r, r.clamped, 2u);
    for (var c = 0u; c < HEAD_VEC4; c++) {
        k[c] = qkv[kj + c] * shape.scale;
        v[c] = qkv[vj + c];
        dk[c] = vec4<f32>(0.0);
        dv[c] = vec4<f32>(0.0);
    }
    for (var i = 0u; i < n; i++) {
        let qi = qkv_at(r, i, 0u);
        let gi = o_at(r, i);
        var qr: array<vec4<f32>, 16>;
        var gr: array<vec4<f32>, 16>;
        var sv = vec4<f32>(0.0);
        var pv = vec4<f32>(0.0);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            qr[c] = qkv[qi + c];
            gr[c] = d_o[gi + c];
            sv += qr[c] * k[c];
            pv += gr[c] * v[c];
        }
        let p = exp(hsum(sv) - lse_in[r.bh * n + i]);
        let ds = p * (hsum(pv) - delta[r.bh * n + i]);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dv[c] += p * gr[c];
            dk[c] += ds * qr[c];
        }
    }
    if (r.row < n) {
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dqkv[kj + c] = dk[c] * shape.scale;
            dqkv[vj + c] = dv[c];
        }
    }
}

// Inference only: P [B, A, N, N], one query row per invocation (two passes over the keys:
// log-sum-exp, then the probabilities).
@compute @workgroup_size(ROWS)
fn attention_probabilities(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let r = rows(wid, lid, ROWS);
    let n = shape.tokens;
    var q: array<vec4<f32>, 16>;
    let qi = qkv_at(r, r.clamped, 0u);
    for (var c = 0u; c < HEAD_VEC4; c++) {
        q[c] = qkv[qi + c] * shape.scale;
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = 0u; j < n; j++) {
        let kj = qkv_at(r, j, 1u);
        var sv = vec4<f32>(0.0);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            sv += q[c] * qkv[kj + c];
        }
        let s = hsum(sv);
        let mn = max(m, s);
        l = l * exp(m - mn) + exp(s - mn);
        m = mn;
    }
    let row_lse = m + log(l);
    if (r.row < n) {
        let base = (r.bh * n + r.row) * n;
        for (var j = 0u; j < n; j++) {
            let kj = qkv_at(r, j, 1u);
            var sv = vec4<f32>(0.0);
            for (var c = 0u; c < HEAD_VEC4; c++) {
                sv += q[c] * qkv[kj + c];
            }
            probs[base + j] = exp(hsum(sv) - row_lse);
        }
    }
}

// ---- Tiled variant (GPUs): K/V tiles in workgroup memory ----
// A workgroup holds TILE_ROWS consecutive query (or key) rows of one (batch, head), one per
// invocation, as the Rows variant does; the streamed rows come a block of STREAM rows at a
// time into workgroup memory, loaded once (as vec4, TILE_ROWS loads in flight) and read by
// every row of the workgroup: STREAM * HEAD_VEC4 global loads per block instead of
// TILE_ROWS times that. Online softmax as above; the backward is the same two passes
// (FlashAttention-2 without atomics), no N x N buffer. All invocations, including rows
// past N (clamped), take part in every barrier.

const TILE_ROWS: u32 = 64u;
const STREAM: u32 = 16u;
// [STREAM][16] vec4: k rows (forward, backward_query) or q rows (backward_key)
var<workgroup> tile_x: array<vec4<f32>, 256>;
// v rows (forward, backward_query) or dO rows (backward_key)
var<workgroup> tile_y: array<vec4<f32>, 256>;
// lse and delta of the streamed query rows (backward_key)
var<workgroup> tile_lse: array<f32, STREAM>;
var<workgroup> tile_delta: array<f32, STREAM>;

// Load rows j0..j0+STREAM (clamped to N-1) of qkv parts px and py into tile_x, tile_y.
fn stage_qkv(r: Rows, lid: u32, j0: u32, px: u32, py: u32) {
    let n = shape.tokens;
    for (var e = lid; e < STREAM * HEAD_VEC4; e += TILE_ROWS) {
        let t = e / HEAD_VEC4;
        let c = e % HEAD_VEC4;
        let j = min(j0 + t, n - 1u);
        tile_x[t * 16u + c] = qkv[qkv_at(r, j, px) + c];
        tile_y[t * 16u + c] = qkv[qkv_at(r, j, py) + c];
    }
}

@compute @workgroup_size(TILE_ROWS)
fn attention_forward_tiled(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let r = rows(wid, lid, TILE_ROWS);
    let n = shape.tokens;
    var q: array<vec4<f32>, 16>;
    var acc: array<vec4<f32>, 16>;
    let qi = qkv_at(r, r.clamped, 0u);
    for (var c = 0u; c < HEAD_VEC4; c++) {
        q[c] = qkv[qi + c] * shape.scale;
        acc[c] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j0 = 0u; j0 < n; j0 += STREAM) {
        stage_qkv(r, lid, j0, 1u, 2u);
        workgroupBarrier();
        for (var b0 = 0u; b0 < STREAM; b0 += KEY_BLOCK) {
            var s: array<f32, KEY_BLOCK>;
            var mb = m;
            for (var t = 0u; t < KEY_BLOCK; t++) {
                var dv = vec4<f32>(0.0);
                for (var c = 0u; c < HEAD_VEC4; c++) {
                    dv += q[c] * tile_x[(b0 + t) * 16u + c];
                }
                s[t] = select(NEG_BIG, hsum(dv), j0 + b0 + t < n);
                mb = max(mb, s[t]);
            }
            let corr = exp(m - mb);
            l *= corr;
            for (var c = 0u; c < HEAD_VEC4; c++) {
                acc[c] *= corr;
            }
            for (var t = 0u; t < KEY_BLOCK; t++) {
                let p = exp(s[t] - mb);
                l += p;
                for (var c = 0u; c < HEAD_VEC4; c++) {
                    acc[c] += p * tile_y[(b0 + t) * 16u + c];
                }
            }
            m = mb;
        }
        workgroupBarrier();
    }
    if (r.row < n) {
        let inv = 1.0 / l;
        let oi = o_at(r, r.row);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            o[oi + c] = acc[c] * inv;
        }
        lse[r.bh * n + r.row] = m + log(l);
    }
}

@compute @workgroup_size(TILE_ROWS)
fn attention_backward_query_tiled(@builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(local_invocation_index) lid: u32) {
    let r = rows(wid, lid, TILE_ROWS);
    let n = shape.tokens;
    var q: array<vec4<f32>, 16>;
    var g: array<vec4<f32>, 16>;
    var dq: array<vec4<f32>, 16>;
    let qi = qkv_at(r, r.clamped, 0u);
    let oi = o_at(r, r.clamped);
    var dd = vec4<f32>(0.0);
    for (var c = 0u; c < HEAD_VEC4; c++) {
        q[c] = qkv[qi + c] * shape.scale;
        g[c] = d_o[oi + c];
        dd += g[c] * o_in[oi + c];
        dq[c] = vec4<f32>(0.0);
    }
    let di = hsum(dd);
    let li = lse_in[r.bh * n + r.clamped];
    for (var j0 = 0u; j0 < n; j0 += STREAM) {
        stage_qkv(r, lid, j0, 1u, 2u);
        workgroupBarrier();
        for (var t = 0u; t < STREAM; t++) {
            var sv = vec4<f32>(0.0);
            var pv = vec4<f32>(0.0);
            for (var c = 0u; c < HEAD_VEC4; c++) {
                sv += q[c] * tile_x[t * 16u + c];
                pv += g[c] * tile_y[t * 16u + c];
            }
            // keys past N (clamped copies of key N-1) get probability 0
            let p = select(0.0, exp(hsum(sv) - li), j0 + t < n);
            let ds = p * (hsum(pv) - di);
            for (var c = 0u; c < HEAD_VEC4; c++) {
                dq[c] += ds * tile_x[t * 16u + c];
            }
        }
        workgroupBarrier();
    }
    if (r.row < n) {
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dqkv[qi + c] = dq[c] * shape.scale;
        }
        delta[r.bh * n + r.row] = di;
    }
}

@compute @workgroup_size(TILE_ROWS)
fn attention_backward_key_tiled(@builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let r = rows(wid, lid, TILE_ROWS);
    let n = shape.tokens;
    var k: array<vec4<f32>, 16>;
    var v: array<vec4<f32>, 16>;
    var dk: array<vec4<f32>, 16>;
    var dv: array<vec4<f32>, 16>;
    let kj = qkv_at(r, r.clamped, 1u);
    let vj = qkv_at(r, r.clamped, 2u);
    for (var c = 0u; c < HEAD_VEC4; c++) {
        k[c] = qkv[kj + c] * shape.scale;
        v[c] = qkv[vj + c];
        dk[c] = vec4<f32>(0.0);
        dv[c] = vec4<f32>(0.0);
    }
    for (var i0 = 0u; i0 < n; i0 += STREAM) {
        // query rows i0.. (q and dO) with their lse and delta
        for (var e = lid; e < STREAM * HEAD_VEC4; e += TILE_ROWS) {
            let t = e / HEAD_VEC4;
            let c = e % HEAD_VEC4;
            let i = min(i0 + t, n - 1u);
            tile_x[t * 16u + c] = qkv[qkv_at(r, i, 0u) + c];
            tile_y[t * 16u + c] = d_o[o_at(r, i) + c];
        }
        if (lid < STREAM) {
            let i = min(i0 + lid, n - 1u);
            tile_lse[lid] = lse_in[r.bh * n + i];
            tile_delta[lid] = delta[r.bh * n + i];
        }
        workgroupBarrier();
        for (var t = 0u; t < STREAM; t++) {
            var sv = vec4<f32>(0.0);
            var pv = vec4<f32>(0.0);
            for (var c = 0u; c < HEAD_VEC4; c++) {
                sv += tile_x[t * 16u + c] * k[c];
                pv += tile_y[t * 16u + c] * v[c];
            }
            let p = select(0.0, exp(hsum(sv) - tile_lse[t]), i0 + t < n);
            let ds = p * (hsum(pv) - tile_delta[t]);
            for (var c = 0u; c < HEAD_VEC4; c++) {
                dv[c] += p * tile_y[t * 16u + c];
                dk[c] += ds * tile_x[t * 16u + c];
            }
        }
        workgroupBarrier();
    }
    if (r.row < n) {
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dqkv[kj + c] = dk[c] * shape.scale;
            dqkv[vj + c] = dv[c];
        }
    }
}
