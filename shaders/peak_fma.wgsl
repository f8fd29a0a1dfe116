// The adapter's arithmetic ceiling, for the benchmarks: each invocation runs 16 independent
// vec4 multiply-add chains, acc = acc * x + y, for `iterations` steps (measured on
// llvmpipe: 16 chains beat 6 or 8; the unrolled inner loop hides the loop's own cost).
// Written so a compiler that reassociates (llvmpipe does, and has no FMA instruction) can't
// fold it: x and y come from the uniform at run time, every chain starts from a different
// value, and the sum is stored only when it equals a value the host never passes, so the
// chains are live but (in practice) nothing is written.
// FLOPs = invocations * iterations * 16 chains * 4 steps * 4 components * 2.

struct Meta {
    iterations: u32,
    x: f32,
    y: f32,
    // never equal to the sum; makes the store conditional on every chain
    sentinel: f32,
}

@group(1) @binding(0) var<uniform> shape: Meta;
@group(0) @binding(0) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn peak_fma(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let s = f32(id & 1023u) * 1e-3;
    let x = vec4<f32>(shape.x);
    let y = vec4<f32>(shape.y);
    var a0 = vec4<f32>(s, s + 0.01, s + 0.02, s + 0.03);
    var a1 = a0 + 0.1;
    var a2 = a0 + 0.2;
    var a3 = a0 + 0.3;
    var a4 = a0 + 0.4;
    var a5 = a0 + 0.5;
    var a6 = a0 + 0.6;
    var a7 = a0 + 0.7;
    var a8 = a0 + 0.8;
    var a9 = a0 + 0.9;
    var a10 = a0 + 1.0;
    var a11 = a0 + 1.1;
    var a12 = a0 + 1.2;
    var a13 = a0 + 1.3;
    var a14 = a0 + 1.4;
    var a15 = a0 + 1.5;
    for (var i = 0u; i < shape.iterations; i++) {
        // four steps per iteration so the loop's own overhead doesn't count
        for (var u = 0u; u < 4u; u++) {
            a0 = a0 * x + y;
            a1 = a1 * x + y;
            a2 = a2 * x + y;
            a3 = a3 * x + y;
            a4 = a4 * x + y;
            a5 = a5 * x + y;
            a6 = a6 * x + y;
            a7 = a7 * x + y;
            a8 = a8 * x + y;
            a9 = a9 * x + y;
            a10 = a10 * x + y;
            a11 = a11 * x + y;
            a12 = a12 * x + y;
            a13 = a13 * x + y;
            a14 = a14 * x + y;
            a15 = a15 * x + y;
        }
    }
    let sum = (a0 + a1 + a2 + a3) + (a4 + a5 + a6 + a7) + (a8 + a9 + a10 + a11) + (a12 + a13 + a14 + a15);
    let total = sum.x + sum.y + sum.z + sum.w;
    if (total == shape.sentinel) {
        out[id & 1023u] = total;
    }
}
