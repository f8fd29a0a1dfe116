// AdamW over a parameter arena (every tensor in a few chunks per role: values, grads, m, v;
// each chunk one buffer bound whole), with global gradient-norm clipping, all on the device:
//   sum_squares  (per chunk, `partials` workgroups, grid-strided over [start, end))
//                -> stats[wg] (the first chunk), += stats[wg] (the others)
//   clip_scale   (one workgroup)  -> stats[scale_at] = min(1, max_norm / (||g|| + 1e-6)),
//                                    stats[scale_at + 1] = ||g||
//   adamw_update (per chunk, one thread per element of [start, end)): g' = g * scale
//       m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2
//       p -= lr * (m / bc1) / (sqrt(v / bc2) + eps) + lr * wd * p   (wd where i < decay_end)
// sum_squares4 and adamw_update4 do the same on 4 consecutive floats per invocation, the
// components outside [start, end) masked (left as they are): a vec4 access shares the cost of
// addressing by 4 (on CPU adapters every storage access is a loop over the lanes). The host
// uses them when every buffer holds whole vec4s. cpu/adamw.wgsl reads the gradients through
// a texture instead, on CPU adapters.
// [start, end) is the chunk's part of the trainable range (the whole arena, or the head
// alone); the arena puts every weight-decayed tensor before the others, so decay is the
// prefix [0, decay_end) of each chunk.
// The padding between tensors is zero in every role and stays zero.
// The hyper-parameters change every step (warmup/cosine lr, bias corrections) and are written
// with queue.write_buffer before the step's submit: no device wait.

struct Meta {
    start: u32,
    end: u32,
    decay_end: u32,
    partials: u32,  // workgroups of sum_squares = partial sums at the start of stats
    scale_at: u32,  // index in stats of the clip scale (the norm follows), >= partials
    // cpu/adamw.wgsl: vec4 j of a buffer is texel (j % 2^texture_shift, j >> texture_shift)
    texture_shift: u32,
    accumulate: u32,  // 1: add to the partial sums of the chunks recorded before
    _pad0: u32,
}

struct Hyper {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,  // 1 - beta1^t
    bias_correction2: f32,  // 1 - beta2^t
    max_norm: f32,          // 0 = no clipping
}

@group(1) @binding(0) var<uniform> shape: Meta;

@group(0) @binding(0) var<storage, read> grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> stats: array<f32>;

var<workgroup> scratch: array<f32, 256>;

// Tree sum of scratch[0..256) into scratch[0].
fn workgroup_sum(lid: u32) {
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { scratch[lid] += scratch[lid + stride]; }
        workgroupBarrier();
    }
}

// A workgroup's sum into partial sum `w`, added to the earlier chunks' when accumulating.
fn store_partial(w: u32) {
    if (shape.accumulate != 0u) {
        stats[w] += scratch[0];
    } else {
        stats[w] = scratch[0];
    }
}

@compute @workgroup_size(256)
fn sum_squares(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = shape.start + wid.x * 256u + lid; i < shape.end; i += shape.partials * 256u) {
        let g = grad[i];
        s += g * g;
    }
    scratch[lid] = s;
    workgroup_sum(lid);
    if (lid == 0u) { store_partial(wid.x); }
}

@group(0) @binding(2) var<uniform> hyper: Hyper;

@compute @workgroup_size(256)
fn clip_scale(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < shape.partials; i += 256u) { s += stats[i]; }
    scratch[lid] = s;
    workgroup_sum(lid);
    if (lid == 0u) {
        let norm = sqrt(scratch[0]);
        var scale = 1.0;
        if (hyper.max_norm > 0.0) { scale = min(1.0, hyper.max_norm / (norm + 1e-6)); }
        stats[shape.scale_at] = scale;
        stats[shape.scale_at + 1u] = norm;
    }
}

@group(0) @binding(3) var<storage, read> clip: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> m: array<f32>;
@group(0) @binding(6) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adamw_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = shape.start + (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= shape.end) { return; }
    let g = grad[i] * clip[shape.scale_at];
    let mi = hyper.beta1 * m[i] + (1.0 - hyper.beta1) * g;
    let vi = hyper.beta2 * v[i] + (1.0 - hyper.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    var p = param[i];
    if (i < shape.decay_end) { p -= hyper.lr * hyper.weight_decay * p; }
    p -= hyper.lr * (mi / hyper.bias_correction1) / (sqrt(vi / hyper.bias_correction2) + hyper.eps);
    param[i] = p;
}

@group(0) @binding(7) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> v4: array<vec4<f32>>;

// Which of floats 4j .. 4j + 3 lie in [lo, hi).
fn inside(j: u32, lo: u32, hi: u32) -> vec4<bool> {
    let i = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
    return (i >= vec4<u32>(lo)) & (i < vec4<u32>(hi));
}

@compute @workgroup_size(256)
fn sum_squares4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var s = vec4<f32>(0.0);
    let end4 = (shape.end + 3u) / 4u;
    for (var j = shape.start / 4u + wid.x * 256u + lid; j < end4; j += shape.partials * 256u) {
        let g = select(vec4<f32>(0.0), grad4[j], inside(j, shape.start, shape.end));
        s += g * g;
    }
    scratch[lid] = (s.x + s.y) + (s.z + s.w);
    workgroup_sum(lid);
    if (lid == 0u) { store_partial(wid.x); }
}

// The update of vec4 j from its old gradient, moments and values.
fn update4_at(j: u32, grad_j: vec4<f32>, m_old: vec4<f32>, v_old: vec4<f32>, p_old: vec4<f32>) {
    let live = inside(j, shape.start, shape.end);
    let g = grad_j * clip[shape.scale_at];
    let mj = hyper.beta1 * m_old + (1.0 - hyper.beta1) * g;
    let vj = hyper.beta2 * v_old + (1.0 - hyper.beta2) * g * g;
    var p = p_old;
    p = select(p, p - hyper.lr * hyper.weight_decay * p, inside(j, 0u, shape.decay_end));
    p -= hyper.lr * (mj / hyper.bias_correction1) / (sqrt(vj / hyper.bias_correction2) + hyper.eps);
    m4[j] = select(m_old, mj, live);
    v4[j] = select(v_old, vj, live);
    param4[j] = select(p_old, p, live);
}

@compute @workgroup_size(256)
fn adamw_update4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let j = shape.start / 4u + (wid.x + wid.y * nwg.x) * 256u + lid;
    if (4u * j >= shape.end) { return; }
    update4_at(j, grad4[j], m4[j], v4[j], param4[j]);
}
