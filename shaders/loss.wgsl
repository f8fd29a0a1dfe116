// Softmax cross-entropy, fused: per row b of logits [B, K] with label y_b,
//   loss_b = logsumexp(z_b) - z_b[y_b]
//   dlogits_b = (softmax(z_b) - onehot(y_b)) * grad_scale      (grad_scale = 1/B for a mean)
//   correct_b = 1 if argmax(z_b) == y_b (first maximum) else 0
// One invocation per row: K is small (10-1000 classes).

struct Meta {
    rows: u32,
    classes: u32,
    grad_scale: f32,
    _pad: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> losses: array<f32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> correct: array<f32>;

@compute @workgroup_size(64)
fn cross_entropy_forward_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= shape.rows) { return; }
    let base = row * shape.classes;
    let label = labels[row];
    var zmax = logits[base];
    var best = 0u;
    for (var k = 1u; k < shape.classes; k++) {
        let z = logits[base + k];
        if (z > zmax) { zmax = z; best = k; }
    }
    var sum = 0.0;
    for (var k = 0u; k < shape.classes; k++) { sum += exp(logits[base + k] - zmax); }
    let lse = zmax + log(sum);
    losses[row] = lse - logits[base + min(label, shape.classes - 1u)];
    correct[row] = select(0.0, 1.0, best == label);
    for (var k = 0u; k < shape.classes; k++) {
        let p = exp(logits[base + k] - lse);
        dlogits[base + k] = (p - select(0.0, 1.0, k == label)) * shape.grad_scale;
    }
}
