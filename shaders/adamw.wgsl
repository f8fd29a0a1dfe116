// AdamW over every parameter tensor, with global gradient-norm clipping, all on the device:
//   sum_squares (per tensor) -> partial[slot]
//   clip_scale (once)        -> partial[count] = min(1, max_norm / (||g|| + 1e-6)), partial[count+1] = ||g||
//   adamw_update (per tensor): g' = g * scale
//       m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2
//       p -= lr * (m / bc1) / (sqrt(v / bc2) + eps) + lr * wd * p     (wd only where decay = 1)
// The hyper-parameters change every step (warmup/cosine lr, bias corrections) and are written
// with queue.write_buffer before the step's submit: no device wait.

struct Meta {
    len: u32,
    slot: u32,      // this tensor's index into partial[]
    count: u32,     // number of tensors
    decay: u32,     // 1 = apply weight decay (weights); 0 for biases, norms, cls, pos
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
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;

var<workgroup> scratch: array<f32, 256>;

@compute @workgroup_size(256)
fn sum_squares(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < shape.len; i += 256u) {
        let g = grad[i];
        s += g * g;
    }
    scratch[lid] = s;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { scratch[lid] += scratch[lid + stride]; }
        workgroupBarrier();
    }
    if (lid == 0u) { partial[shape.slot] = scratch[0]; }
}

@group(0) @binding(2) var<uniform> hyper: Hyper;

@compute @workgroup_size(1)
fn clip_scale() {
    var total = 0.0;
    for (var i = 0u; i < shape.count; i++) { total += partial[i]; }
    let norm = sqrt(total);
    var scale = 1.0;
    if (hyper.max_norm > 0.0) { scale = min(1.0, hyper.max_norm / (norm + 1e-6)); }
    partial[shape.count] = scale;
    partial[shape.count + 1u] = norm;
}

@group(0) @binding(3) var<storage, read> clip: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> m: array<f32>;
@group(0) @binding(6) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adamw_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= shape.len) { return; }
    let g = grad[i] * clip[shape.count];
    let mi = hyper.beta1 * m[i] + (1.0 - hyper.beta1) * g;
    let vi = hyper.beta2 * v[i] + (1.0 - hyper.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    var p = param[i];
    if (shape.decay == 1u) { p -= hyper.lr * hyper.weight_decay * p; }
    p -= hyper.lr * (mi / hyper.bias_correction1) / (sqrt(vi / hyper.bias_correction2) + hyper.eps);
    param[i] = p;
}
