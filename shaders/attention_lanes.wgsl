// The Lanes variant of attention.wgsl for CPU adapters: compiled appended to attention.wgsl
// (it uses that file's bindings, Meta and helpers), and only on devices with subgroups.

// ---- Lanes variant (CPU adapters): 8-lane subgroups share the streamed rows ----
// Needs Features::SUBGROUP and a subgroup size of exactly 8 (the host checks); a workgroup
// is one subgroup, lane t owns row wid.x * 8 + t.

const LANES: u32 = 8u;

// Everything below spells out the 8 lanes: subgroupBroadcast takes constant lane ids only,
// and arrays indexed by a loop counter become per-lane memory on llvmpipe. For the same
// reason the loops over a row's HEAD_VEC4 vec4 are written out as 16 guarded steps
// (`if (HEAD_VEC4 > i)`, folded per pipeline): with constant indices q, k and the
// accumulators stay in registers (tiny, 65 tokens: forward 92 -> 75 ms, backward 258 ->
// 192 ms against the same code as loops).

// acc[t] += a * (lane t's x), t = 0..7: partial dot products of this lane's row with the 8
// streamed rows (summed with hsum at the end).
fn dots8(acc: ptr<function, array<vec4<f32>, 8>>, a: vec4<f32>, x: vec4<f32>) {
    (*acc)[0] += a * subgroupBroadcast(x, 0u);
    (*acc)[1] += a * subgroupBroadcast(x, 1u);
    (*acc)[2] += a * subgroupBroadcast(x, 2u);
    (*acc)[3] += a * subgroupBroadcast(x, 3u);
    (*acc)[4] += a * subgroupBroadcast(x, 4u);
    (*acc)[5] += a * subgroupBroadcast(x, 5u);
    (*acc)[6] += a * subgroupBroadcast(x, 6u);
    (*acc)[7] += a * subgroupBroadcast(x, 7u);
}

// The 8 dot products, lanes 0..3 and 4..7.
fn hsum_lo(acc: ptr<function, array<vec4<f32>, 8>>) -> vec4<f32> {
    return vec4<f32>(hsum((*acc)[0]), hsum((*acc)[1]), hsum((*acc)[2]), hsum((*acc)[3]));
}

fn hsum_hi(acc: ptr<function, array<vec4<f32>, 8>>) -> vec4<f32> {
    return vec4<f32>(hsum((*acc)[4]), hsum((*acc)[5]), hsum((*acc)[6]), hsum((*acc)[7]));
}

// sum_t w_t * (lane t's x), weights of lanes 0..3 in lo and 4..7 in hi.
fn mix8(lo: vec4<f32>, hi: vec4<f32>, x: vec4<f32>) -> vec4<f32> {
    return lo.x * subgroupBroadcast(x, 0u) + lo.y * subgroupBroadcast(x, 1u)
         + lo.z * subgroupBroadcast(x, 2u) + lo.w * subgroupBroadcast(x, 3u)
         + hi.x * subgroupBroadcast(x, 4u) + hi.y * subgroupBroadcast(x, 5u)
         + hi.z * subgroupBroadcast(x, 6u) + hi.w * subgroupBroadcast(x, 7u);
}

// A scalar of lanes 0..3 and of lanes 4..7.
fn lanes_lo(x: f32) -> vec4<f32> {
    return vec4<f32>(subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u),
                     subgroupBroadcast(x, 2u), subgroupBroadcast(x, 3u));
}

fn lanes_hi(x: f32) -> vec4<f32> {
    return vec4<f32>(subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u),
                     subgroupBroadcast(x, 6u), subgroupBroadcast(x, 7u));
}

// Which of the streamed rows first + 0..3 and first + 4..7 exist.
fn valid_lo(first: u32, n: u32) -> vec4<bool> {
    return vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(n);
}

fn valid_hi(first: u32, n: u32) -> vec4<bool> {
    return vec4<u32>(first) + vec4<u32>(4u, 5u, 6u, 7u) < vec4<u32>(n);
}

@compute @workgroup_size(8)
fn attention_forward_lanes(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(subgroup_invocation_id) lane: u32) {
    let r = rows(wid, lane, LANES);
    let n = shape.tokens;
    var q: array<vec4<f32>, 16>;
    var acc: array<vec4<f32>, 16>;
    let qi = qkv_at(r, r.clamped, 0u);
    if (HEAD_VEC4 > 0u) { q[0u] = qkv[qi + 0u] * shape.scale; }
    if (HEAD_VEC4 > 1u) { q[1u] = qkv[qi + 1u] * shape.scale; }
    if (HEAD_VEC4 > 2u) { q[2u] = qkv[qi + 2u] * shape.scale; }
    if (HEAD_VEC4 > 3u) { q[3u] = qkv[qi + 3u] * shape.scale; }
    if (HEAD_VEC4 > 4u) { q[4u] = qkv[qi + 4u] * shape.scale; }
    if (HEAD_VEC4 > 5u) { q[5u] = qkv[qi + 5u] * shape.scale; }
    if (HEAD_VEC4 > 6u) { q[6u] = qkv[qi + 6u] * shape.scale; }
    if (HEAD_VEC4 > 7u) { q[7u] = qkv[qi + 7u] * shape.scale; }
    if (HEAD_VEC4 > 8u) { q[8u] = qkv[qi + 8u] * shape.scale; }
    if (HEAD_VEC4 > 9u) { q[9u] = qkv[qi + 9u] * shape.scale; }
    if (HEAD_VEC4 > 10u) { q[10u] = qkv[qi + 10u] * shape.scale; }
    if (HEAD_VEC4 > 11u) { q[11u] = qkv[qi + 11u] * shape.scale; }
    if (HEAD_VEC4 > 12u) { q[12u] = qkv[qi + 12u] * shape.scale; }
    if (HEAD_VEC4 > 13u) { q[13u] = qkv[qi + 13u] * shape.scale; }
    if (HEAD_VEC4 > 14u) { q[14u] = qkv[qi + 14u] * shape.scale; }
    if (HEAD_VEC4 > 15u) { q[15u] = qkv[qi + 15u] * shape.scale; }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j0 = 0u; j0 < n; j0 += LANES) {
        // this lane loads key (and value) j0 + lane
        let mine = min(j0 + lane, n - 1u);
        let kj = qkv_at(r, mine, 1u);
        var sv = array<vec4<f32>, 8>();
        if (HEAD_VEC4 > 0u) { dots8(&sv, q[0u], qkv[kj + 0u]); }
        if (HEAD_VEC4 > 1u) { dots8(&sv, q[1u], qkv[kj + 1u]); }
        if (HEAD_VEC4 > 2u) { dots8(&sv, q[2u], qkv[kj + 2u]); }
        if (HEAD_VEC4 > 3u) { dots8(&sv, q[3u], qkv[kj + 3u]); }
        if (HEAD_VEC4 > 4u) { dots8(&sv, q[4u], qkv[kj + 4u]); }
        if (HEAD_VEC4 > 5u) { dots8(&sv, q[5u], qkv[kj + 5u]); }
        if (HEAD_VEC4 > 6u) { dots8(&sv, q[6u], qkv[kj + 6u]); }
        if (HEAD_VEC4 > 7u) { dots8(&sv, q[7u], qkv[kj + 7u]); }
        if (HEAD_VEC4 > 8u) { dots8(&sv, q[8u], qkv[kj + 8u]); }
        if (HEAD_VEC4 > 9u) { dots8(&sv, q[9u], qkv[kj + 9u]); }
        if (HEAD_VEC4 > 10u) { dots8(&sv, q[10u], qkv[kj + 10u]); }
        if (HEAD_VEC4 > 11u) { dots8(&sv, q[11u], qkv[kj + 11u]); }
        if (HEAD_VEC4 > 12u) { dots8(&sv, q[12u], qkv[kj + 12u]); }
        if (HEAD_VEC4 > 13u) { dots8(&sv, q[13u], qkv[kj + 13u]); }
        if (HEAD_VEC4 > 14u) { dots8(&sv, q[14u], qkv[kj + 14u]); }
        if (HEAD_VEC4 > 15u) { dots8(&sv, q[15u], qkv[kj + 15u]); }
        let s_lo = select(vec4<f32>(NEG_BIG), hsum_lo(&sv), valid_lo(j0, n));
        let s_hi = select(vec4<f32>(NEG_BIG), hsum_hi(&sv), valid_hi(j0, n));
        let mx = max(s_lo, s_hi);
        let mb = max(m, max(max(mx.x, mx.y), max(mx.z, mx.w)));
        let corr = exp(m - mb);
        let p_lo = exp(s_lo - vec4<f32>(mb));
        let p_hi = exp(s_hi - vec4<f32>(mb));
        l = l * corr + hsum(p_lo + p_hi);
        let vj = qkv_at(r, mine, 2u);
        if (HEAD_VEC4 > 0u) { acc[0u] = acc[0u] * corr + mix8(p_lo, p_hi, qkv[vj + 0u]); }
        if (HEAD_VEC4 > 1u) { acc[1u] = acc[1u] * corr + mix8(p_lo, p_hi, qkv[vj + 1u]); }
        if (HEAD_VEC4 > 2u) { acc[2u] = acc[2u] * corr + mix8(p_lo, p_hi, qkv[vj + 2u]); }
        if (HEAD_VEC4 > 3u) { acc[3u] = acc[3u] * corr + mix8(p_lo, p_hi, qkv[vj + 3u]); }
        if (HEAD_VEC4 > 4u) { acc[4u] = acc[4u] * corr + mix8(p_lo, p_hi, qkv[vj + 4u]); }
        if (HEAD_VEC4 > 5u) { acc[5u] = acc[5u] * corr + mix8(p_lo, p_hi, qkv[vj + 5u]); }
        if (HEAD_VEC4 > 6u) { acc[6u] = acc[6u] * corr + mix8(p_lo, p_hi, qkv[vj + 6u]); }
        if (HEAD_VEC4 > 7u) { acc[7u] = acc[7u] * corr + mix8(p_lo, p_hi, qkv[vj + 7u]); }
        if (HEAD_VEC4 > 8u) { acc[8u] = acc[8u] * corr + mix8(p_lo, p_hi, qkv[vj + 8u]); }
        if (HEAD_VEC4 > 9u) { acc[9u] = acc[9u] * corr + mix8(p_lo, p_hi, qkv[vj + 9u]); }
        if (HEAD_VEC4 > 10u) { acc[10u] = acc[10u] * corr + mix8(p_lo, p_hi, qkv[vj + 10u]); }
        if (HEAD_VEC4 > 11u) { acc[11u] = acc[11u] * corr + mix8(p_lo, p_hi, qkv[vj + 11u]); }
        if (HEAD_VEC4 > 12u) { acc[12u] = acc[12u] * corr + mix8(p_lo, p_hi, qkv[vj + 12u]); }
        if (HEAD_VEC4 > 13u) { acc[13u] = acc[13u] * corr + mix8(p_lo, p_hi, qkv[vj + 13u]); }
        if (HEAD_VEC4 > 14u) { acc[14u] = acc[14u] * corr + mix8(p_lo, p_hi, qkv[vj + 14u]); }
        if (HEAD_VEC4 > 15u) { acc[15u] = acc[15u] * corr + mix8(p_lo, p_hi, qkv[vj + 15u]); }
        m = mb;
    }
    if (r.row < n) {
        let inv = 1.0 / l;
        let oi = o_at(r, r.row);
        if (HEAD_VEC4 > 0u) { o[oi + 0u] = acc[0u] * inv; }
        if (HEAD_VEC4 > 1u) { o[oi + 1u] = acc[1u] * inv; }
        if (HEAD_VEC4 > 2u) { o[oi + 2u] = acc[2u] * inv; }
        if (HEAD_VEC4 > 3u) { o[oi + 3u] = acc[3u] * inv; }
        if (HEAD_VEC4 > 4u) { o[oi + 4u] = acc[4u] * inv; }
        if (HEAD_VEC4 > 5u) { o[oi + 5u] = acc[5u] * inv; }
        if (HEAD_VEC4 > 6u) { o[oi + 6u] = acc[6u] * inv; }
        if (HEAD_VEC4 > 7u) { o[oi + 7u] = acc[7u] * inv; }
        if (HEAD_VEC4 > 8u) { o[oi + 8u] = acc[8u] * inv; }
        if (HEAD_VEC4 > 9u) { o[oi + 9u] = acc[9u] * inv; }
        if (HEAD_VEC4 > 10u) { o[oi + 10u] = acc[10u] * inv; }
        if (HEAD_VEC4 > 11u) { o[oi + 11u] = acc[11u] * inv; }
        if (HEAD_VEC4 > 12u) { o[oi + 12u] = acc[12u] * inv; }
        if (HEAD_VEC4 > 13u) { o[oi + 13u] = acc[13u] * inv; }
        if (HEAD_VEC4 > 14u) { o[oi + 14u] = acc[14u] * inv; }
        if (HEAD_VEC4 > 15u) { o[oi + 15u] = acc[15u] * inv; }
        lse[r.bh * n + r.row] = m + log(l);
    }
}

@compute @workgroup_size(8)
fn attention_backward_query_lanes(@builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(subgroup_invocation_id) lane: u32) {
    let r = rows(wid, lane, LANES);
    let n = shape.tokens;
    var q: array<vec4<f32>, 16>;
    var g: array<vec4<f32>, 16>;
    var dq: array<vec4<f32>, 16>;
    let qi = qkv_at(r, r.clamped, 0u);
    let oi = o_at(r, r.clamped);
    var dd = vec4<f32>(0.0);
    if (HEAD_VEC4 > 0u) { q[0u] = qkv[qi + 0u] * shape.scale; g[0u] = d_o[oi + 0u]; dd += g[0u] * o_in[oi + 0u]; }
    if (HEAD_VEC4 > 1u) { q[1u] = qkv[qi + 1u] * shape.scale; g[1u] = d_o[oi + 1u]; dd += g[1u] * o_in[oi + 1u]; }
    if (HEAD_VEC4 > 2u) { q[2u] = qkv[qi + 2u] * shape.scale; g[2u] = d_o[oi + 2u]; dd += g[2u] * o_in[oi + 2u]; }
    if (HEAD_VEC4 > 3u) { q[3u] = qkv[qi + 3u] * shape.scale; g[3u] = d_o[oi + 3u]; dd += g[3u] * o_in[oi + 3u]; }
    if (HEAD_VEC4 > 4u) { q[4u] = qkv[qi + 4u] * shape.scale; g[4u] = d_o[oi + 4u]; dd += g[4u] * o_in[oi + 4u]; }
    if (HEAD_VEC4 > 5u) { q[5u] = qkv[qi + 5u] * shape.scale; g[5u] = d_o[oi + 5u]; dd += g[5u] * o_in[oi + 5u]; }
    if (HEAD_VEC4 > 6u) { q[6u] = qkv[qi + 6u] * shape.scale; g[6u] = d_o[oi + 6u]; dd += g[6u] * o_in[oi + 6u]; }
    if (HEAD_VEC4 > 7u) { q[7u] = qkv[qi + 7u] * shape.scale; g[7u] = d_o[oi + 7u]; dd += g[7u] * o_in[oi + 7u]; }
    if (HEAD_VEC4 > 8u) { q[8u] = qkv[qi + 8u] * shape.scale; g[8u] = d_o[oi + 8u]; dd += g[8u] * o_in[oi + 8u]; }
    if (HEAD_VEC4 > 9u) { q[9u] = qkv[qi + 9u] * shape.scale; g[9u] = d_o[oi + 9u]; dd += g[9u] * o_in[oi + 9u]; }
    if (HEAD_VEC4 > 10u) { q[10u] = qkv[qi + 10u] * shape.scale; g[10u] = d_o[oi + 10u]; dd += g[10u] * o_in[oi + 10u]; }
    if (HEAD_VEC4 > 11u) { q[11u] = qkv[qi + 11u] * shape.scale; g[11u] = d_o[oi + 11u]; dd += g[11u] * o_in[oi + 11u]; }
    if (HEAD_VEC4 > 12u) { q[12u] = qkv[qi + 12u] * shape.scale; g[12u] = d_o[oi + 12u]; dd += g[12u] * o_in[oi + 12u]; }
    if (HEAD_VEC4 > 13u) { q[13u] = qkv[qi + 13u] * shape.scale; g[13u] = d_o[oi + 13u]; dd += g[13u] * o_in[oi + 13u]; }
    if (HEAD_VEC4 > 14u) { q[14u] = qkv[qi + 14u] * shape.scale; g[14u] = d_o[oi + 14u]; dd += g[14u] * o_in[oi + 14u]; }
    if (HEAD_VEC4 > 15u) { q[15u] = qkv[qi + 15u] * shape.scale; g[15u] = d_o[oi + 15u]; dd += g[15u] * o_in[oi + 15u]; }
    let di = hsum(dd);
    let li = lse_in[r.bh * n + r.clamped];
    for (var j0 = 0u; j0 < n; j0 += LANES) {
        // this lane loads key and value j0 + lane
        let mine = min(j0 + lane, n - 1u);
        let kj = qkv_at(r, mine, 1u);
        let vj = qkv_at(r, mine, 2u);
        var k: array<vec4<f32>, 16>;
        var sv = array<vec4<f32>, 8>();
        var pv = array<vec4<f32>, 8>();
        if (HEAD_VEC4 > 0u) { k[0u] = qkv[kj + 0u]; dots8(&sv, q[0u], k[0u]); dots8(&pv, g[0u], qkv[vj + 0u]); }
        if (HEAD_VEC4 > 1u) { k[1u] = qkv[kj + 1u]; dots8(&sv, q[1u], k[1u]); dots8(&pv, g[1u], qkv[vj + 1u]); }
        if (HEAD_VEC4 > 2u) { k[2u] = qkv[kj + 2u]; dots8(&sv, q[2u], k[2u]); dots8(&pv, g[2u], qkv[vj + 2u]); }
        if (HEAD_VEC4 > 3u) { k[3u] = qkv[kj + 3u]; dots8(&sv, q[3u], k[3u]); dots8(&pv, g[3u], qkv[vj + 3u]); }
        if (HEAD_VEC4 > 4u) { k[4u] = qkv[kj + 4u]; dots8(&sv, q[4u], k[4u]); dots8(&pv, g[4u], qkv[vj + 4u]); }
        if (HEAD_VEC4 > 5u) { k[5u] = qkv[kj + 5u]; dots8(&sv, q[5u], k[5u]); dots8(&pv, g[5u], qkv[vj + 5u]); }
        if (HEAD_VEC4 > 6u) { k[6u] = qkv[kj + 6u]; dots8(&sv, q[6u], k[6u]); dots8(&pv, g[6u], qkv[vj + 6u]); }
        if (HEAD_VEC4 > 7u) { k[7u] = qkv[kj + 7u]; dots8(&sv, q[7u], k[7u]); dots8(&pv, g[7u], qkv[vj + 7u]); }
        if (HEAD_VEC4 > 8u) { k[8u] = qkv[kj + 8u]; dots8(&sv, q[8u], k[8u]); dots8(&pv, g[8u], qkv[vj + 8u]); }
        if (HEAD_VEC4 > 9u) { k[9u] = qkv[kj + 9u]; dots8(&sv, q[9u], k[9u]); dots8(&pv, g[9u], qkv[vj + 9u]); }
        if (HEAD_VEC4 > 10u) { k[10u] = qkv[kj + 10u]; dots8(&sv, q[10u], k[10u]); dots8(&pv, g[10u], qkv[vj + 10u]); }
        if (HEAD_VEC4 > 11u) { k[11u] = qkv[kj + 11u]; dots8(&sv, q[11u], k[11u]); dots8(&pv, g[11u], qkv[vj + 11u]); }
        if (HEAD_VEC4 > 12u) { k[12u] = qkv[kj + 12u]; dots8(&sv, q[12u], k[12u]); dots8(&pv, g[12u], qkv[vj + 12u]); }
        if (HEAD_VEC4 > 13u) { k[13u] = qkv[kj + 13u]; dots8(&sv, q[13u], k[13u]); dots8(&pv, g[13u], qkv[vj + 13u]); }
        if (HEAD_VEC4 > 14u) { k[14u] = qkv[kj + 14u]; dots8(&sv, q[14u], k[14u]); dots8(&pv, g[14u], qkv[vj + 14u]); }
        if (HEAD_VEC4 > 15u) { k[15u] = qkv[kj + 15u]; dots8(&sv, q[15u], k[15u]); dots8(&pv, g[15u], qkv[vj + 15u]); }
        let p_lo = select(vec4<f32>(0.0), exp(hsum_lo(&sv) - vec4<f32>(li)), valid_lo(j0, n));
        let p_hi = select(vec4<f32>(0.0), exp(hsum_hi(&sv) - vec4<f32>(li)), valid_hi(j0, n));
        let ds_lo = p_lo * (hsum_lo(&pv) - vec4<f32>(di));
        let ds_hi = p_hi * (hsum_hi(&pv) - vec4<f32>(di));
        if (HEAD_VEC4 > 0u) { dq[0u] += mix8(ds_lo, ds_hi, k[0u]); }
        if (HEAD_VEC4 > 1u) { dq[1u] += mix8(ds_lo, ds_hi, k[1u]); }
        if (HEAD_VEC4 > 2u) { dq[2u] += mix8(ds_lo, ds_hi, k[2u]); }
        if (HEAD_VEC4 > 3u) { dq[3u] += mix8(ds_lo, ds_hi, k[3u]); }
        if (HEAD_VEC4 > 4u) { dq[4u] += mix8(ds_lo, ds_hi, k[4u]); }
        if (HEAD_VEC4 > 5u) { dq[5u] += mix8(ds_lo, ds_hi, k[5u]); }
        if (HEAD_VEC4 > 6u) { dq[6u] += mix8(ds_lo, ds_hi, k[6u]); }
        if (HEAD_VEC4 > 7u) { dq[7u] += mix8(ds_lo, ds_hi, k[7u]); }
        if (HEAD_VEC4 > 8u) { dq[8u] += mix8(ds_lo, ds_hi, k[8u]); }
        if (HEAD_VEC4 > 9u) { dq[9u] += mix8(ds_lo, ds_hi, k[9u]); }
        if (HEAD_VEC4 > 10u) { dq[10u] += mix8(ds_lo, ds_hi, k[10u]); }
        if (HEAD_VEC4 > 11u) { dq[11u] += mix8(ds_lo, ds_hi, k[11u]); }
        if (HEAD_VEC4 > 12u) { dq[12u] += mix8(ds_lo, ds_hi, k[12u]); }
        if (HEAD_VEC4 > 13u) { dq[13u] += mix8(ds_lo, ds_hi, k[13u]); }
        if (HEAD_VEC4 > 14u) { dq[14u] += mix8(ds_lo, ds_hi, k[14u]); }
        if (HEAD_VEC4 > 15u) { dq[15u] += mix8(ds_lo, ds_hi, k[15u]); }
    }
    if (r.row < n) {
        if (HEAD_VEC4 > 0u) { dqkv[qi + 0u] = dq[0u] * shape.scale; }
        if (HEAD_VEC4 > 1u) { dqkv[qi + 1u] = dq[1u] * shape.scale; }
        if (HEAD_VEC4 > 2u) { dqkv[qi + 2u] = dq[2u] * shape.scale; }
        if (HEAD_VEC4 > 3u) { dqkv[qi + 3u] = dq[3u] * shape.scale; }
        if (HEAD_VEC4 > 4u) { dqkv[qi + 4u] = dq[4u] * shape.scale; }
        if (HEAD_VEC4 > 5u) { dqkv[qi + 5u] = dq[5u] * shape.scale; }
        if (HEAD_VEC4 > 6u) { dqkv[qi + 6u] = dq[6u] * shape.scale; }
        if (HEAD_VEC4 > 7u) { dqkv[qi + 7u] = dq[7u] * shape.scale; }
        if (HEAD_VEC4 > 8u) { dqkv[qi + 8u] = dq[8u] * shape.scale; }
        if (HEAD_VEC4 > 9u) { dqkv[qi + 9u] = dq[9u] * shape.scale; }
        if (HEAD_VEC4 > 10u) { dqkv[qi + 10u] = dq[10u] * shape.scale; }
        if (HEAD_VEC4 > 11u) { dqkv[qi + 11u] = dq[11u] * shape.scale; }
        if (HEAD_VEC4 > 12u) { dqkv[qi + 12u] = dq[12u] * shape.scale; }
        if (HEAD_VEC4 > 13u) { dqkv[qi + 13u] = dq[13u] * shape.scale; }
        if (HEAD_VEC4 > 14u) { dqkv[qi + 14u] = dq[14u] * shape.scale; }
        if (HEAD_VEC4 > 15u) { dqkv[qi + 15u] = dq[15u] * shape.scale; }
        delta[r.bh * n + r.row] = di;
    }
}

@compute @workgroup_size(8)
fn attention_backward_key_lanes(@builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(subgroup_invocation_id) lane: u32) {
    let r = rows(wid, lane, LANES);
    let n = shape.tokens;
    var k: array<vec4<f32>, 16>;
    var v: array<vec4<f32>, 16>;
    var dk: array<vec4<f32>, 16>;
    var dv: array<vec4<f32>, 16>;
    let kj = qkv_at(r, r.clamped, 1u);
    let vj = qkv_at(r, r.clamped, 2u);
    if (HEAD_VEC4 > 0u) { k[0u] = qkv[kj + 0u] * shape.scale; v[0u] = qkv[vj + 0u]; }
    if (HEAD_VEC4 > 1u) { k[1u] = qkv[kj + 1u] * shape.scale; v[1u] = qkv[vj + 1u]; }
    if (HEAD_VEC4 > 2u) { k[2u] = qkv[kj + 2u] * shape.scale; v[2u] = qkv[vj + 2u]; }
    if (HEAD_VEC4 > 3u) { k[3u] = qkv[kj + 3u] * shape.scale; v[3u] = qkv[vj + 3u]; }
    if (HEAD_VEC4 > 4u) { k[4u] = qkv[kj + 4u] * shape.scale; v[4u] = qkv[vj + 4u]; }
    if (HEAD_VEC4 > 5u) { k[5u] = qkv[kj + 5u] * shape.scale; v[5u] = qkv[vj + 5u]; }
    if (HEAD_VEC4 > 6u) { k[6u] = qkv[kj + 6u] * shape.scale; v[6u] = qkv[vj + 6u]; }
    if (HEAD_VEC4 > 7u) { k[7u] = qkv[kj + 7u] * shape.scale; v[7u] = qkv[vj + 7u]; }
    if (HEAD_VEC4 > 8u) { k[8u] = qkv[kj + 8u] * shape.scale; v[8u] = qkv[vj + 8u]; }
    if (HEAD_VEC4 > 9u) { k[9u] = qkv[kj + 9u] * shape.scale; v[9u] = qkv[vj + 9u]; }
    if (HEAD_VEC4 > 10u) { k[10u] = qkv[kj + 10u] * shape.scale; v[10u] = qkv[vj + 10u]; }
    if (HEAD_VEC4 > 11u) { k[11u] = qkv[kj + 11u] * shape.scale; v[11u] = qkv[vj + 11u]; }
    if (HEAD_VEC4 > 12u) { k[12u] = qkv[kj + 12u] * shape.scale; v[12u] = qkv[vj + 12u]; }
    if (HEAD_VEC4 > 13u) { k[13u] = qkv[kj + 13u] * shape.scale; v[13u] = qkv[vj + 13u]; }
    if (HEAD_VEC4 > 14u) { k[14u] = qkv[kj + 14u] * shape.scale; v[14u] = qkv[vj + 14u]; }
    if (HEAD_VEC4 > 15u) { k[15u] = qkv[kj + 15u] * shape.scale; v[15u] = qkv[vj + 15u]; }
    for (var i0 = 0u; i0 < n; i0 += LANES) {
        // this lane loads query i0 + lane: its q and dO rows, lse and delta
        let mine = min(i0 + lane, n - 1u);
        let qi = qkv_at(r, mine, 0u);
        let gi = o_at(r, mine);
        let lse_mine = lse_in[r.bh * n + mine];
        let delta_mine = delta[r.bh * n + mine];
        var qr: array<vec4<f32>, 16>;
        var gr: array<vec4<f32>, 16>;
        var sv = array<vec4<f32>, 8>();
        var pv = array<vec4<f32>, 8>();
        if (HEAD_VEC4 > 0u) { qr[0u] = qkv[qi + 0u]; gr[0u] = d_o[gi + 0u]; dots8(&sv, k[0u], qr[0u]); dots8(&pv, v[0u], gr[0u]); }
        if (HEAD_VEC4 > 1u) { qr[1u] = qkv[qi + 1u]; gr[1u] = d_o[gi + 1u]; dots8(&sv, k[1u], qr[1u]); dots8(&pv, v[1u], gr[1u]); }
        if (HEAD_VEC4 > 2u) { qr[2u] = qkv[qi + 2u]; gr[2u] = d_o[gi + 2u]; dots8(&sv, k[2u], qr[2u]); dots8(&pv, v[2u], gr[2u]); }
        if (HEAD_VEC4 > 3u) { qr[3u] = qkv[qi + 3u]; gr[3u] = d_o[gi + 3u]; dots8(&sv, k[3u], qr[3u]); dots8(&pv, v[3u], gr[3u]); }
        if (HEAD_VEC4 > 4u) { qr[4u] = qkv[qi + 4u]; gr[4u] = d_o[gi + 4u]; dots8(&sv, k[4u], qr[4u]); dots8(&pv, v[4u], gr[4u]); }
        if (HEAD_VEC4 > 5u) { qr[5u] = qkv[qi + 5u]; gr[5u] = d_o[gi + 5u]; dots8(&sv, k[5u], qr[5u]); dots8(&pv, v[5u], gr[5u]); }
        if (HEAD_VEC4 > 6u) { qr[6u] = qkv[qi + 6u]; gr[6u] = d_o[gi + 6u]; dots8(&sv, k[6u], qr[6u]); dots8(&pv, v[6u], gr[6u]); }
        if (HEAD_VEC4 > 7u) { qr[7u] = qkv[qi + 7u]; gr[7u] = d_o[gi + 7u]; dots8(&sv, k[7u], qr[7u]); dots8(&pv, v[7u], gr[7u]); }
        if (HEAD_VEC4 > 8u) { qr[8u] = qkv[qi + 8u]; gr[8u] = d_o[gi + 8u]; dots8(&sv, k[8u], qr[8u]); dots8(&pv, v[8u], gr[8u]); }
        if (HEAD_VEC4 > 9u) { qr[9u] = qkv[qi + 9u]; gr[9u] = d_o[gi + 9u]; dots8(&sv, k[9u], qr[9u]); dots8(&pv, v[9u], gr[9u]); }
        if (HEAD_VEC4 > 10u) { qr[10u] = qkv[qi + 10u]; gr[10u] = d_o[gi + 10u]; dots8(&sv, k[10u], qr[10u]); dots8(&pv, v[10u], gr[10u]); }
        if (HEAD_VEC4 > 11u) { qr[11u] = qkv[qi + 11u]; gr[11u] = d_o[gi + 11u]; dots8(&sv, k[11u], qr[11u]); dots8(&pv, v[11u], gr[11u]); }
        if (HEAD_VEC4 > 12u) { qr[12u] = qkv[qi + 12u]; gr[12u] = d_o[gi + 12u]; dots8(&sv, k[12u], qr[12u]); dots8(&pv, v[12u], gr[12u]); }
        if (HEAD_VEC4 > 13u) { qr[13u] = qkv[qi + 13u]; gr[13u] = d_o[gi + 13u]; dots8(&sv, k[13u], qr[13u]); dots8(&pv, v[13u], gr[13u]); }
        if (HEAD_VEC4 > 14u) { qr[14u] = qkv[qi + 14u]; gr[14u] = d_o[gi + 14u]; dots8(&sv, k[14u], qr[14u]); dots8(&pv, v[14u], gr[14u]); }
        if (HEAD_VEC4 > 15u) { qr[15u] = qkv[qi + 15u]; gr[15u] = d_o[gi + 15u]; dots8(&sv, k[15u], qr[15u]); dots8(&pv, v[15u], gr[15u]); }
        let p_lo = select(vec4<f32>(0.0), exp(hsum_lo(&sv) - lanes_lo(lse_mine)), valid_lo(i0, n));
        let p_hi = select(vec4<f32>(0.0), exp(hsum_hi(&sv) - lanes_hi(lse_mine)), valid_hi(i0, n));
        let ds_lo = p_lo * (hsum_lo(&pv) - lanes_lo(delta_mine));
        let ds_hi = p_hi * (hsum_hi(&pv) - lanes_hi(delta_mine));
        if (HEAD_VEC4 > 0u) { dv[0u] += mix8(p_lo, p_hi, gr[0u]); dk[0u] += mix8(ds_lo, ds_hi, qr[0u]); }
        if (HEAD_VEC4 > 1u) { dv[1u] += mix8(p_lo, p_hi, gr[1u]); dk[1u] += mix8(ds_lo, ds_hi, qr[1u]); }
        if (HEAD_VEC4 > 2u) { dv[2u] += mix8(p_lo, p_hi, gr[2u]); dk[2u] += mix8(ds_lo, ds_hi, qr[2u]); }
        if (HEAD_VEC4 > 3u) { dv[3u] += mix8(p_lo, p_hi, gr[3u]); dk[3u] += mix8(ds_lo, ds_hi, qr[3u]); }
        if (HEAD_VEC4 > 4u) { dv[4u] += mix8(p_lo, p_hi, gr[4u]); dk[4u] += mix8(ds_lo, ds_hi, qr[4u]); }
        if (HEAD_VEC4 > 5u) { dv[5u] += mix8(p_lo, p_hi, gr[5u]); dk[5u] += mix8(ds_lo, ds_hi, qr[5u]); }
        if (HEAD_VEC4 > 6u) { dv[6u] += mix8(p_lo, p_hi, gr[6u]); dk[6u] += mix8(ds_lo, ds_hi, qr[6u]); }
        if (HEAD_VEC4 > 7u) { dv[7u] += mix8(p_lo, p_hi, gr[7u]); dk[7u] += mix8(ds_lo, ds_hi, qr[7u]); }
        if (HEAD_VEC4 > 8u) { dv[8u] += mix8(p_lo, p_hi, gr[8u]); dk[8u] += mix8(ds_lo, ds_hi, qr[8u]); }
        if (HEAD_VEC4 > 9u) { dv[9u] += mix8(p_lo, p_hi, gr[9u]); dk[9u] += mix8(ds_lo, ds_hi, qr[9u]); }
        if (HEAD_VEC4 > 10u) { dv[10u] += mix8(p_lo, p_hi, gr[10u]); dk[10u] += mix8(ds_lo, ds_hi, qr[10u]); }
        if (HEAD_VEC4 > 11u) { dv[11u] += mix8(p_lo, p_hi, gr[11u]); dk[11u] += mix8(ds_lo, ds_hi, qr[11u]); }
        if (HEAD_VEC4 > 12u) { dv[12u] += mix8(p_lo, p_hi, gr[12u]); dk[12u] += mix8(ds_lo, ds_hi, qr[12u]); }
        if (HEAD_VEC4 > 13u) { dv[13u] += mix8(p_lo, p_hi, gr[13u]); dk[13u] += mix8(ds_lo, ds_hi, qr[13u]); }
        if (HEAD_VEC4 > 14u) { dv[14u] += mix8(p_lo, p_hi, gr[14u]); dk[14u] += mix8(ds_lo, ds_hi, qr[14u]); }
        if (HEAD_VEC4 > 15u) { dv[15u] += mix8(p_lo, p_hi, gr[15u]); dk[15u] += mix8(ds_lo, ds_hi, qr[15u]); }
    }
    if (r.row < n) {
        if (HEAD_VEC4 > 0u) { dqkv[kj + 0u] = dk[0u] * shape.scale; dqkv[vj + 0u] = dv[0u]; }
        if (HEAD_VEC4 > 1u) { dqkv[kj + 1u] = dk[1u] * shape.scale; dqkv[vj + 1u] = dv[1u]; }
        if (HEAD_VEC4 > 2u) { dqkv[kj + 2u] = dk[2u] * shape.scale; dqkv[vj + 2u] = dv[2u]; }
        if (HEAD_VEC4 > 3u) { dqkv[kj + 3u] = dk[3u] * shape.scale; dqkv[vj + 3u] = dv[3u]; }
        if (HEAD_VEC4 > 4u) { dqkv[kj + 4u] = dk[4u] * shape.scale; dqkv[vj + 4u] = dv[4u]; }
        if (HEAD_VEC4 > 5u) { dqkv[kj + 5u] = dk[5u] * shape.scale; dqkv[vj + 5u] = dv[5u]; }
        if (HEAD_VEC4 > 6u) { dqkv[kj + 6u] = dk[6u] * shape.scale; dqkv[vj + 6u] = dv[6u]; }
        if (HEAD_VEC4 > 7u) { dqkv[kj + 7u] = dk[7u] * shape.scale; dqkv[vj + 7u] = dv[7u]; }
        if (HEAD_VEC4 > 8u) { dqkv[kj + 8u] = dk[8u] * shape.scale; dqkv[vj + 8u] = dv[8u]; }
        if (HEAD_VEC4 > 9u) { dqkv[kj + 9u] = dk[9u] * shape.scale; dqkv[vj + 9u] = dv[9u]; }
        if (HEAD_VEC4 > 10u) { dqkv[kj + 10u] = dk[10u] * shape.scale; dqkv[vj + 10u] = dv[10u]; }
        if (HEAD_VEC4 > 11u) { dqkv[kj + 11u] = dk[11u] * shape.scale; dqkv[vj + 11u] = dv[11u]; }
        if (HEAD_VEC4 > 12u) { dqkv[kj + 12u] = dk[12u] * shape.scale; dqkv[vj + 12u] = dv[12u]; }
        if (HEAD_VEC4 > 13u) { dqkv[kj + 13u] = dk[13u] * shape.scale; dqkv[vj + 13u] = dv[13u]; }
        if (HEAD_VEC4 > 14u) { dqkv[kj + 14u] = dk[14u] * shape.scale; dqkv[vj + 14u] = dv[14u]; }
        if (HEAD_VEC4 > 15u) { dqkv[kj + 15u] = dk[15u] * shape.scale; dqkv[vj + 15u] = dv[15u]; }
    }
}
