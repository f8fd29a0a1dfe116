// The token sequence of timm's ViT descendants around the patch embedding, and pooling.
// One image's sequence: [cls (has_cls) ; extra tokens (distillation or registers) ; patches],
// the position embedding added from token pos_start on (0, or the first patch with
// no_embed_class). N = has_cls + extra + patches.
//   assemble:          x0[b,t,:] = token t (+ pos[t - pos_start])
//   patches_backward:  dpe[b*Np+p,:] = dx0[b, prefix+p, :]                  (gather)
//   prefix_pos_backward: s[t,:] = sum_b dx0[b,t,:] -> dpos (t >= pos_start), dcls (t = 0
//                      with has_cls), dextra (the extra tokens)
//   pool:              out[b,:] = scale * sum over t in [start, start+count) of x[b,t,:]
//   pool_backward:     dx[b,t,:] (+)= scale * dout[b,:] in the range; 0 (or left) elsewhere
// One invocation per output element. Storage buffers only. Unused bindings of a layout
// (no class token, no extra tokens) are bound to a placeholder the kernel never touches.

struct Meta {
    batch: u32,
    patches: u32,
    tokens: u32,
    dim: u32,
    has_cls: u32,
    extra: u32,
    pos_start: u32,
    start: u32,      // pool: first token
    count: u32,      // pool: tokens
    accumulate: u32, // pool_backward: add into dx
    scale: f32,      // pool: 1 / count for a mean
    _pad: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

fn global_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

fn prefix() -> u32 {
    return shape.has_cls + shape.extra;
}

@group(0) @binding(0) var<storage, read> pe: array<f32>;
@group(0) @binding(1) var<storage, read> cls: array<f32>;
@group(0) @binding(2) var<storage, read> extra: array<f32>;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<storage, read_write> x0: array<f32>;

@compute @workgroup_size(256)
fn assemble(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.batch * shape.tokens * d) { return; }
    let row = i / d;
    let col = i % d;
    let b = row / shape.tokens;
    let t = row % shape.tokens;
    var v: f32;
    if (t < shape.has_cls) {
        v = cls[col];
    } else if (t < prefix()) {
        v = extra[(t - shape.has_cls) * d + col];
    } else {
        v = pe[(b * shape.patches + t - prefix()) * d + col];
    }
    if (t >= shape.pos_start) {
        v += pos[(t - shape.pos_start) * d + col];
    }
    x0[i] = v;
}

@group(0) @binding(5) var<storage, read> dx0: array<f32>;
@group(0) @binding(6) var<storage, read_write> dpe: array<f32>;

@compute @workgroup_size(256)
fn patches_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.batch * shape.patches * d) { return; }
    let row = i / d;
    let b = row / shape.patches;
    let p = row % shape.patches;
    dpe[i] = dx0[(b * shape.tokens + prefix() + p) * d + i % d];
}

@group(0) @binding(7) var<storage, read_write> dpos: array<f32>;
@group(0) @binding(8) var<storage, read_write> dcls: array<f32>;
@group(0) @binding(9) var<storage, read_write> dextra: array<f32>;

@compute @workgroup_size(256)
fn prefix_pos_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.tokens * d) { return; }
    let t = i / d;
    let col = i % d;
    var s = 0.0;
    for (var b = 0u; b < shape.batch; b++) {
        s += dx0[b * shape.tokens * d + i];
    }
    if (t >= shape.pos_start) {
        dpos[(t - shape.pos_start) * d + col] = s;
    }
    if (t < shape.has_cls) {
        dcls[col] = s;
    } else if (t < prefix()) {
        dextra[(t - shape.has_cls) * d + col] = s;
    }
}

@group(0) @binding(10) var<storage, read> x: array<f32>;
@group(0) @binding(11) var<storage, read_write> pooled: array<f32>;

@compute @workgroup_size(256)
fn pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.batch * d) { return; }
    let b = i / d;
    let base = (b * shape.tokens + shape.start) * d + i % d;
    var s = 0.0;
    for (var t = 0u; t < shape.count; t++) {
        s += x[base + t * d];
    }
    pooled[i] = shape.scale * s;
}

@group(0) @binding(12) var<storage, read> dpooled: array<f32>;
@group(0) @binding(13) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    let d = shape.dim;
    if (i >= shape.batch * shape.tokens * d) { return; }
    let row = i / d;
    let b = row / shape.tokens;
    let t = row % shape.tokens;
    var v = 0.0;
    if (t >= shape.start && t < shape.start + shape.count) {
        v = shape.scale * dpooled[b * d + i % d];
    }
    if (shape.accumulate == 1u) {
        dx[i] += v;
    } else {
        dx[i] = v;
    }
}
