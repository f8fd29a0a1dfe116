// Patch embedding around the GEMM and the CLS row.
//   patchify:        img [B,C,H,W] -> patches [B*Np, C*P*P], flatten order (c, ky, kx)
//   assemble_tokens: x0[b,0,:] = cls + pos[0];  x0[b,1+p,:] = pe[b*Np+p,:] + pos[1+p]
//   tokens_backward: dpe[b*Np+p,:] = dx0[b,1+p,:]                  (gather)
//   pos_cls_backward: dpos[t,:] = sum_b dx0[b,t,:];  dcls = dpos[0]
//   gather_cls / scatter_cls: the CLS rows of [B*N, D] <-> [B, D] (scatter zeroes the rest)
// One invocation per output element; all of these are memory bound and small.
// assemble_tokens4 / tokens_backward4: the same on a vec4 of D per invocation, used when
// D % 4 == 0 (on CPU adapters every storage access is a loop over the lanes, whose cost a
// vec4 shares by 4).

struct Meta {
    batch: u32,
    channels: u32,
    height: u32,
    width: u32,
    patch_size: u32,
    tokens: u32,  // N = 1 + Np
    dim: u32,     // D
    _pad: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

fn global_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@group(0) @binding(0) var<storage, read> img: array<f32>;
@group(0) @binding(1) var<storage, read_write> patches: array<f32>;

@compute @workgroup_size(256)
fn patchify(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let p = shape.patch_size;
    let row_len = shape.channels * p * p;
    let gw = shape.width / p;
    let np = (shape.height / p) * gw;
    if (i >= shape.batch * np * row_len) { return; }
    let row = i / row_len;
    let col = i % row_len;
    let b = row / np;
    let patch_index = row % np;
    let c = col / (p * p);
    let ky = (col / p) % p;
    let kx = col % p;
    let y = (patch_index / gw) * p + ky;
    let x = (patch_index % gw) * p + kx;
    patches[i] = img[((b * shape.channels + c) * shape.height + y) * shape.width + x];
}

@group(0) @binding(2) var<storage, read> pe: array<f32>;
@group(0) @binding(3) var<storage, read> cls: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<f32>;
@group(0) @binding(5) var<storage, read_write> x0: array<f32>;

@compute @workgroup_size(256)
fn assemble_tokens(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.batch * shape.tokens * d) { return; }
    let row = i / d;
    let col = i % d;
    let b = row / shape.tokens;
    let t = row % shape.tokens;
    var v: f32;
    if (t == 0u) {
        v = cls[col];
    } else {
        v = pe[(b * (shape.tokens - 1u) + t - 1u) * d + col];
    }
    x0[i] = v + pos[t * d + col];
}

@group(0) @binding(6) var<storage, read> dx0: array<f32>;
@group(0) @binding(7) var<storage, read_write> dpe: array<f32>;

@compute @workgroup_size(256)
fn tokens_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    let np = shape.tokens - 1u;
    if (i >= shape.batch * np * d) { return; }
    let row = i / d;
    let b = row / np;
    let p = row % np;
    dpe[i] = dx0[(b * shape.tokens + 1u + p) * d + i % d];
}

@group(0) @binding(8) var<storage, read_write> dpos: array<f32>;
@group(0) @binding(9) var<storage, read_write> dcls: array<f32>;

@compute @workgroup_size(256)
fn pos_cls_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.tokens * d) { return; }
    var s = 0.0;
    for (var b = 0u; b < shape.batch; b++) {
        s += dx0[b * shape.tokens * d + i];
    }
    dpos[i] = s;
    if (i < d) { dcls[i] = s; }
}

@group(0) @binding(10) var<storage, read> full: array<f32>;
@group(0) @binding(11) var<storage, read_write> cls_rows: array<f32>;

@compute @workgroup_size(256)
fn gather_cls(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.batch * d) { return; }
    cls_rows[i] = full[(i / d) * shape.tokens * d + i % d];
}

@group(0) @binding(12) var<storage, read> dcls_rows: array<f32>;
@group(0) @binding(13) var<storage, read_write> dfull: array<f32>;

// The CLS rows only: the host clears dfull first (a driver memset, where a kernel writing
// the zeros stored every float through a per-lane loop: 1.2-2.7 ms of a micro step).
@compute @workgroup_size(256)
fn scatter_cls(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.batch * d) { return; }
    dfull[(i / d) * shape.tokens * d + i % d] = dcls_rows[i];
}

@group(0) @binding(12) var<storage, read> pe4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read> cls4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> pos4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> x04: array<vec4<f32>>;

@compute @workgroup_size(256)
fn assemble_tokens4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d4 = shape.dim / 4u;
    if (i >= shape.batch * shape.tokens * d4) { return; }
    let row = i / d4;
    let col = i % d4;
    let b = row / shape.tokens;
    let t = row % shape.tokens;
    var v: vec4<f32>;
    if (t == 0u) {
        v = cls4[col];
    } else {
        v = pe4[(b * (shape.tokens - 1u) + t - 1u) * d4 + col];
    }
    x04[i] = v + pos4[t * d4 + col];
}

@group(0) @binding(16) var<storage, read> dx04: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read_write> dpe4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn tokens_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d4 = shape.dim / 4u;
    let np = shape.tokens - 1u;
    if (i >= shape.batch * np * d4) { return; }
    let row = i / d4;
    let b = row / np;
    let p = row % np;
    dpe4[i] = dx04[(b * shape.tokens + 1u + p) * d4 + i % d4];
}

// ---- the texture path (CPU adapters, D % 64 == 0): the rows read come from rgba32float
// copies (texel (c, row) = floats 4c..4c+4 of a row), where a storage load is a per-lane loop
// on llvmpipe ----

@group(0) @binding(18) var pe_texture: texture_storage_2d<rgba32float, read>;   // [B*Np, D]
@group(0) @binding(19) var cls_texture: texture_storage_2d<rgba32float, read>;  // [1, D]
@group(0) @binding(20) var pos_texture: texture_storage_2d<rgba32float, read>;  // [N, D]
@group(0) @binding(21) var dx0_texture: texture_storage_2d<rgba32float, read>;  // [B*N, D]

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
