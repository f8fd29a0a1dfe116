// The adapter's arithmetic ceiling, for the benchmarks: each invocation runs 8 independent
// vec4 multiply-add chains, acc = acc * x + y, 8 steps per loop trip, written out.
// Measured on llvmpipe (2026-12-02, one run, GFLOP/s): written out, 4 chains reach 95-102,
// 6 108-113, 8 115-127, 16 115-127, 32 94-100; 8 chains at 1, 2, 4 or 16 steps per trip 55,
// 84, 108 and 94. The shader before then ran 16 chains in an inner `for` of 4 steps and
// reached 62-67 on the same machine: llvmpipe keeps a loop, with ~30 cycles of masked-loop
// bookkeeping per trip, so that ceiling was 0.55 of this one, the GEMMs measured above it,
// and the "of ceiling" ratios measured with it here read 1.8x too high (how near its peak it
// ran on the machines of earlier tables, where it measured 78-112, is not known).
// Written so a compiler that reassociates (llvmpipe does, and has no FMA instruction) can't
// fold it: x and y come from the uniform at run time, every chain starts from a different
// value, and the sum is stored only when it equals a value the host never passes, so the
// chains are live but (in practice) nothing is written.
// FLOPs = invocations * iterations * 8 chains * 8 steps * 4 components * 2.

struct Meta {
    iterations: u32,
    x: f32,
    y: f32,
    // never equal to the sum; makes the store conditional on every chain
    sentinel: f32,
}

@group(1) @binding(0) var<uniform> shape: Meta;
@group(0) @binding(0) var<storage, read_write> out: array<f32>;

// The 8 chains, one step.
fn step(a: ptr<function, array<vec4<f32>, 8>>, x: vec4<f32>, y: vec4<f32>) {
    (*a)[0] = (*a)[0] * x + y;
    (*a)[1] = (*a)[1] * x + y;
    (*a)[2] = (*a)[2] * x + y;
    (*a)[3] = (*a)[3] * x + y;
    (*a)[4] = (*a)[4] * x + y;
    (*a)[5] = (*a)[5] * x + y;
    (*a)[6] = (*a)[6] * x + y;
    (*a)[7] = (*a)[7] * x + y;
}

@compute @workgroup_size(64)
fn peak_fma(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let s = f32(id & 1023u) * 1e-3;
    let x = vec4<f32>(shape.x);
    let y = vec4<f32>(shape.y);
    let a0 = vec4<f32>(s, s + 0.01, s + 0.02, s + 0.03);
    var a = array<vec4<f32>, 8>(a0, a0 + 0.1, a0 + 0.2, a0 + 0.3, a0 + 0.4, a0 + 0.5, a0 + 0.6,
                                a0 + 0.7);
    for (var i = 0u; i < shape.iterations; i++) {
        // written out: a `for` over the 8 steps halves llvmpipe's rate (see above)
        step(&a, x, y);
        step(&a, x, y);
        step(&a, x, y);
        step(&a, x, y);
        step(&a, x, y);
        step(&a, x, y);
        step(&a, x, y);
        step(&a, x, y);
    }
    let sum = (a[0] + a[1] + a[2] + a[3]) + (a[4] + a[5] + a[6] + a[7]);
    let total = sum.x + sum.y + sum.z + sum.w;
    if (total == shape.sentinel) {
        out[id & 1023u] = total;
    }
}
