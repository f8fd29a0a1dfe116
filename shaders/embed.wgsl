// Patch embedding around the GEMM and the CLS row.
//   patchify:        img [B,C,H,W] -> patches [B*Np, C*P*P], flatten order (c, ky, kx)
//   assemble_tokens: x0[b,0,:] = cls + pos[0];  x0[b,1+p,:] = pe[b*Np+p,:] + pos[1+p]
//   tokens_backward: dpe[b*Np+p,:] = dx0[b,1+p,:]                  (gather)
//   pos_cls_backward: dpos[t,:] = sum_b dx0[b,t,:];  dcls = dpos[0]
//   gather_cls / scatter_cls: the CLS rows of [B*N, D] <-> [B, D] (scatter zeroes the rest)
// One invocation per output element; all of these are memory bound and small.
// assemble_tokens4 / tokens_backward4: the same on a vec4 of D per invocation, used when
// D % 4 == 0 (on CPU adapters every storage access is a loop over the lanes, whose cost a
// vec4 shares by 4). Storage buffers only; CPU adapters read the token kernels' rows
// through textures instead (cpu/embed.wgsl).

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

@group(0) @binding(14) var<storage, read> pe4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> cls4: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read> pos4: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read_write> x04: array<vec4<f32>>;

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

@group(0) @binding(18) var<storage, read> dx04: array<vec4<f32>>;
@group(0) @binding(19) var<storage, read_write> dpe4: array<vec4<f32>>;

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
