// Dropout for CPU adapters (llvmpipe), appended to dropout.wgsl (WGSL has no includes):
// x and y's old values, or dy, read from rgba32float copies of their buffers (a texel fetch
// is a few vector instructions on llvmpipe, a storage load a per-lane loop), as in
// adamw.wgsl.

@group(0) @binding(9) var x_texture: texture_storage_2d<rgba32float, read>;
@group(0) @binding(10) var y_texture: texture_storage_2d<rgba32float, read>;
@group(0) @binding(11) var dy_texture: texture_storage_2d<rgba32float, read>;

fn texel(j: u32) -> vec2<u32> {
    return vec2<u32>(j & ((1u << shape.texture_shift) - 1u), j >> shape.texture_shift);
}

// y += x * mask / (1 - p), the accumulating forward (the residual stream's).
@compute @workgroup_size(256)
fn dropout_forward_texture(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (4u * i >= shape.len) { return; }
    let t = texel(i);
    y4[i] = textureLoad(y_texture, t)
        + textureLoad(x_texture, t) * keep_scale4(4u * i + step.offset, step.step);
}

@compute @workgroup_size(256)
fn dropout_backward_texture(@builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = global_id(wid, nwg, lid);
    if (4u * i >= shape.len) { return; }
    dx4[i] = textureLoad(dy_texture, texel(i)) * keep_scale4(4u * i + step.offset, step.step);
}
