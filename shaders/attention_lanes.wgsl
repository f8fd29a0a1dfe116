// The Lanes variant of attention.wgsl for CPU adapters: compiled appended to attention.wgsl
// (it uses that file's bindings, Meta and helpers), and only on devices with subgroups.

// ---- Lanes variant (CPU adapters): 8-lane subgroups share the streamed rows ----
// Needs Features::SUBGROUP and a subgroup size of exactly 8 (the host checks); a workgroup
// is one subgroup, lane t owns row wid.x * 8 + t.

const LANES: u32 = 8u;

// Everything below spells out the 8 lanes: subgroupBroadcast takes constant lane ids only,
// and arrays indexed by a loop counter become per-lane memory on llvmpipe.

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
    for (var c = 0u; c < HEAD_VEC4; c++) {
        q[c] = qkv[qi + c] * shape.scale;
        acc[c] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j0 = 0u; j0 < n; j0 += LANES) {
        // this lane loads key (and value) j0 + lane
        let mine = min(j0 + lane, n - 1u);
        let kj = qkv_at(r, mine, 1u);
        var sv = array<vec4<f32>, 8>();
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dots8(&sv, q[c], qkv[kj + c]);
        }
        let s_lo = select(vec4<f32>(NEG_BIG), hsum_lo(&sv), valid_lo(j0, n));
        let s_hi = select(vec4<f32>(NEG_BIG), hsum_hi(&sv), valid_hi(j0, n));
        let mx = max(s_lo, s_hi);
        let mb = max(m, max(max(mx.x, mx.y), max(mx.z, mx.w)));
        let corr = exp(m - mb);
        let p_lo = exp(s_lo - vec4<f32>(mb));
        let p_hi = exp(s_hi - vec4<f32>(mb));
        l = l * corr + hsum(p_lo + p_hi);
        let vj = qkv_at(r, mine, 2u);
        for (var c = 0u; c < HEAD_VEC4; c++) {
            acc[c] = acc[c] * corr + mix8(p_lo, p_hi, qkv[vj + c]);
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
    for (var c = 0u; c < HEAD_VEC4; c++) {
        q[c] = qkv[qi + c] * shape.scale;
        g[c] = d_o[oi + c];
        dd += g[c] * o_in[oi + c];
        dq[c] = vec4<f32>(0.0);
    }
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
        for (var c = 0u; c < HEAD_VEC4; c++) {
            k[c] = qkv[kj + c];
            dots8(&sv, q[c], k[c]);
            dots8(&pv, g[c], qkv[vj + c]);
        }
        let p_lo = select(vec4<f32>(0.0), exp(hsum_lo(&sv) - vec4<f32>(li)), valid_lo(j0, n));
        let p_hi = select(vec4<f32>(0.0), exp(hsum_hi(&sv) - vec4<f32>(li)), valid_hi(j0, n));
        let ds_lo = p_lo * (hsum_lo(&pv) - vec4<f32>(di));
        let ds_hi = p_hi * (hsum_hi(&pv) - vec4<f32>(di));
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dq[c] += mix8(ds_lo, ds_hi, k[c]);
        }
    }
    if (r.row < n) {
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dqkv[qi + c] = dq[c] * shape.scale;
        }
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
    for (var c = 0u; c < HEAD_VEC4; c++) {
        k[c] = qkv[kj + c] * shape.scale;
        v[c] = qkv[vj + c];
        dk[c] = vec4<f32>(0.0);
        dv[c] = vec4<f32>(0.0);
    }
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
        for (var c = 0u; c < HEAD_VEC4; c++) {
            qr[c] = qkv[qi + c];
            gr[c] = d_o[gi + c];
            dots8(&sv, k[c], qr[c]);
            dots8(&pv, v[c], gr[c]);
        }
        let p_lo = select(vec4<f32>(0.0), exp(hsum_lo(&sv) - lanes_lo(lse_mine)), valid_lo(i0, n));
        let p_hi = select(vec4<f32>(0.0), exp(hsum_hi(&sv) - lanes_hi(lse_mine)), valid_hi(i0, n));
        let ds_lo = p_lo * (hsum_lo(&pv) - lanes_lo(delta_mine));
        let ds_hi = p_hi * (hsum_hi(&pv) - lanes_hi(delta_mine));
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dv[c] += mix8(p_lo, p_hi, gr[c]);
            dk[c] += mix8(ds_lo, ds_hi, qr[c]);
        }
    }
    if (r.row < n) {
        for (var c = 0u; c < HEAD_VEC4; c++) {
            dqkv[kj + c] = dk[c] * shape.scale;
            dqkv[vj + c] = dv[c];
        }
    }
}
