// AdamW for CPU adapters (llvmpipe), appended to adamw.wgsl (WGSL has no includes): the vec4
// sum of squares and update reading the gradients from an rgba32float copy (a texel fetch is a
// few vector instructions on llvmpipe, a storage load a per-lane loop). The update reads the
// moments and values it also writes from storage: copies of them would cost more than they
// save, since the stores bound the update.

@group(0) @binding(11) var grad_texture: texture_storage_2d<rgba32float, read>;

fn texel(j: u32) -> vec2<u32> {
    return vec2<u32>(j & ((1u << shape.texture_shift) - 1u), j >> shape.texture_shift);
}

// Each run of 8 invocations (one SIMD register on llvmpipe, which runs them one after another)
// sums a contiguous chunk of the range, 8 texels a trip. In the grid-strided order that
// sum_squares4 keeps for GPUs each run crosses the whole range in 32 KiB strides, a new page
// every trip (4x slower on llvmpipe).
@compute @workgroup_size(256)
fn sum_squares_texture(@builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    var s = vec4<f32>(0.0);
    let start4 = shape.start / 4u;
    let end4 = (shape.end + 3u) / 4u;
    let runs = shape.partials * 32u;
    let chunk = ((end4 - start4 + runs - 1u) / runs + 7u) / 8u * 8u;
    let first = start4 + (wid.x * 32u + lid / 8u) * chunk;
    let last = min(first + chunk, end4);
    for (var j = first + lid % 8u; j < last; j += 8u) {
        let g = select(vec4<f32>(0.0), textureLoad(grad_texture, texel(j)),
                       inside(j, shape.start, shape.end));
        s += g * g;
    }
    scratch[lid] = (s.x + s.y) + (s.z + s.w);
    workgroup_sum(lid);
    if (lid == 0u) { store_partial(wid.x); }
}

@compute @workgroup_size(256)
fn adamw_update_texture(@builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let j = shape.start / 4u + (wid.x + wid.y * nwg.x) * 256u + lid;
    if (4u * j >= shape.end) { return; }
    update4_at(j, textureLoad(grad_texture, texel(j)), m4[j], v4[j], param4[j]);
}
