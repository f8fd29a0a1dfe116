// Inverted dropout with a counter-based hash of (seed, salt, step, element index), so the
// backward pass regenerates the mask instead of storing it.
//   forward:  y (+)= x * keep / (1 - p)
//   backward: dx = dy * keep / (1 - p)
// keep = hash >= threshold, threshold = p * 2^32 (computed on the host).
// Storage buffers only; CPU adapters read through textures instead (cpu/dropout.wgsl).

struct Meta {
    len: u32,
    threshold: u32,
    scale: f32,     // 1 / (1 - p)
    seed: u32,      // run seed mixed with a per-site salt
    accumulate: u32,
    // cpu/dropout.wgsl: vec4 j of a buffer is texel (j % 2^texture_shift, j >> texture_shift)
    texture_shift: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Step {
    step: u32,
    offset: u32,    // element index of this batch's first element in the global batch
}

@group(1) @binding(0) var<uniform> shape: Meta;

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn keep_scale(i: u32, step: u32) -> f32 {
    let h = pcg(i ^ pcg(step ^ pcg(shape.seed)));
    return select(0.0, shape.scale, h >= shape.threshold);
}

fn global_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn dropout_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    let v = x[i] * keep_scale(i + step.offset, step.step);
    if (shape.accumulate == 1u) { y[i] += v; } else { y[i] = v; }
}

@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn dropout_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (i >= shape.len) { return; }
    dx[i] = dy[i] * keep_scale(i + step.offset, step.step);
}

// The same with a vec4 per invocation when the length is a multiple of 4: on CPU adapters a
// storage access is a loop over the lanes, whose cost a vec4 shares by four.

fn keep_scale4(i: u32, step: u32) -> vec4<f32> {
    let s = pcg(step ^ pcg(shape.seed));
    let h = vec4<u32>(pcg(i ^ s), pcg((i + 1u) ^ s), pcg((i + 2u) ^ s), pcg((i + 3u) ^ s));
    return select(vec4<f32>(0.0), vec4<f32>(shape.scale), h >= vec4<u32>(shape.threshold));
}

@group(0) @binding(5) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> y4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn dropout_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (4u * i >= shape.len) { return; }
    let v = x4[i] * keep_scale4(4u * i + step.offset, step.step);
    if (shape.accumulate == 1u) { y4[i] += v; } else { y4[i] = v; }
}

@group(0) @binding(7) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dx4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn dropout_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (4u * i >= shape.len) { return; }
    dx4[i] = dy4[i] * keep_scale4(4u * i + step.offset, step.step);
}
