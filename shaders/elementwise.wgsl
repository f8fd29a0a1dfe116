// Element-wise ops of timm's ViT options, one invocation per element:
//   scale_columns: y (+)= gamma[col] * x       LayerScale forward (accumulate: into the
//                                                residual stream) and its input gradient
//   multiply:      y = a * b                    LayerScale's gamma gradient, before the
//                                                column sums (reduce.wgsl)
//   axpby:         y = alpha * x + beta * y     the mean of DeiT's two heads' logits and its
//                                                gradient (y is not read when beta == 0)
//   quick_gelu:    y = y * sigmoid(1.702 y) in place (CLIP's activation after the fc1 GEMM);
//   quick_gelu_slope: the same, also saving the slope s + 1.702 y s (1 - s) for the
//                  backward GEMM's epilogue (its ActGrad::Slope)
//   copy_columns:  dst[r, dst_offset + c] = src[r, src_offset + c], c < width: the q and k
//                  columns of qkv in and out of their per-head norms
// Storage buffers only.

struct Meta {
    len: u32,
    cols: u32,
    accumulate: u32,
    alpha: f32,
    beta: f32,
    width: u32,
    src_stride: u32,
    src_offset: u32,
    dst_stride: u32,
    dst_offset: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(1) @binding(0) var<uniform> shape: Meta;

fn global_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@group(0) @binding(0) var<storage, read> sx: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read_write> sy: array<f32>;

@compute @workgroup_size(256)
fn scale_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    let v = gamma[i % shape.cols] * sx[i];
    if (shape.accumulate == 1u) { sy[i] += v; } else { sy[i] = v; }
}

@group(0) @binding(3) var<storage, read> ma: array<f32>;
@group(0) @binding(4) var<storage, read> mb: array<f32>;
@group(0) @binding(5) var<storage, read_write> my: array<f32>;

@compute @workgroup_size(256)
fn multiply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    my[i] = ma[i] * mb[i];
}

@group(0) @binding(6) var<storage, read> ax: array<f32>;
@group(0) @binding(7) var<storage, read_write> ay: array<f32>;

@compute @workgroup_size(256)
fn axpby(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    var v = shape.alpha * ax[i];
    if (shape.beta != 0.0) { v += shape.beta * ay[i]; }
    ay[i] = v;
}

fn sigmoid_1702(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-1.702 * x));
}

@group(0) @binding(8) var<storage, read_write> act: array<f32>;
@group(0) @binding(9) var<storage, read_write> slope: array<f32>;

@compute @workgroup_size(256)
fn quick_gelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    let x = act[i];
    act[i] = x * sigmoid_1702(x);
}

@compute @workgroup_size(256)
fn quick_gelu_slope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    let x = act[i];
    let s = sigmoid_1702(x);
    act[i] = x * s;
    slope[i] = s + 1.702 * x * s * (1.0 - s);
}

@group(0) @binding(10) var<storage, read> csrc: array<f32>;
@group(0) @binding(11) var<storage, read_write> cdst: array<f32>;

@compute @workgroup_size(256)
fn copy_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    let r = i / shape.width;
    let c = i % shape.width;
    cdst[r * shape.dst_stride + shape.dst_offset + c] = csrc[r * shape.src_stride + shape.src_offset + c];
}
