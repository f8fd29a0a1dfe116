// The token kernels for CPU adapters (llvmpipe, D % 64 == 0), appended to embed.wgsl (WGSL
// has no includes): the rows read come from rgba32float copies (texel (c, row) = floats
// 4c..4c+4 of a row), where a storage load is a per-lane loop on llvmpipe.

@group(0) @binding(20) var pe_texture: texture_storage_2d<rgba32float, read>;   // [B*Np, D]
@group(0) @binding(21) var cls_texture: texture_storage_2d<rgba32float, read>;  // [1, D]
@group(0) @binding(22) var pos_texture: texture_storage_2d<rgba32float, read>;  // [N, D]
@group(0) @binding(23) var dx0_texture: texture_storage_2d<rgba32float, read>;  // [B*N, D]

@compute @workgroup_size(256)
fn assemble_tokens_texture(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d4 = shape.dim / 4u;
    if (i >= shape.batch * shape.tokens * d4) { return; }
    let row = i / d4;
    let c = i % d4;
    let b = row / shape.tokens;
    let t = row % shape.tokens;
    var v: vec4<f32>;
    if (t == 0u) {
        v = textureLoad(cls_texture, vec2<u32>(c, 0u));
    } else {
        v = textureLoad(pe_texture, vec2<u32>(c, row - b - 1u));  // b * (N - 1) + t - 1
    }
    x04[i] = v + textureLoad(pos_texture, vec2<u32>(c, t));
}

@compute @workgroup_size(256)
fn tokens_backward_texture(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d4 = shape.dim / 4u;
    let np = shape.tokens - 1u;
    if (i >= shape.batch * np * d4) { return; }
    let row = i / d4;
    let b = row / np;
    dpe4[i] = textureLoad(dx0_texture, vec2<u32>(i % d4, row + b + 1u));  // b * N + 1 + p
}

// A vec4 of dpos per invocation.
@compute @workgroup_size(256)
fn pos_cls_backward_texture(@builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d4 = shape.dim / 4u;
    if (i >= shape.tokens * d4) { return; }
    let t = i / d4;
    let c = i % d4;
    var s = vec4<f32>(0.0);
    for (var b = 0u; b < shape.batch; b++) {
        s += textureLoad(dx0_texture, vec2<u32>(c, b * shape.tokens + t));
    }
    let at = 4u * i;
    dpos[at] = s.x;
    dpos[at + 1u] = s.y;
    dpos[at + 2u] = s.z;
    dpos[at + 3u] = s.w;
    if (t == 0u) {
        dcls[at] = s.x;
        dcls[at + 1u] = s.y;
        dcls[at + 2u] = s.z;
        dcls[at + 3u] = s.w;
    }
}
