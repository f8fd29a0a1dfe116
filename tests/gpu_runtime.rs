//! The runtime's own checks on what a kernel wrapper binds: WebGPU rules that wgpu-core does
//! not enforce natively, but browsers (Dawn) do.

mod common;

use common::gpu;
use vit_wgpu::gpu::{Out, Shader};

const COPY: Shader = Shader {
    name: "test_copy.wgsl",
    source: "
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
struct Meta { n: u32 }
@group(1) @binding(0) var<uniform> shape: Meta;
@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < shape.n { dst[id.x] = src[id.x]; }
}",
};

#[test]
fn distinct_buffers_at_a_writable_binding_dispatch() {
    let g = gpu();
    let p = g.pipeline(&COPY, "copy");
    let values: Vec<f32> = (0..64).map(|i| i as f32 * 0.5 - 3.0).collect();
    let (a, b) = (g.upload("a", &values), g.storage("b", 64));
    let d = g.dispatch(&p, &[(0, &a), (1, &Out(&b))], &[64u32], [1, 1, 1]);
    g.submit_commands(&[d.into()]);
    let copied: Vec<f32> = pollster::block_on(g.read(&b)).expect("read back");
    assert_eq!(copied, values);
}

#[test]
#[should_panic(
    expected = "one buffer range at @binding(0) and @binding(1), one of them read_write"
)]
fn one_buffer_at_a_writable_and_another_binding_is_refused() {
    let g = gpu();
    let p = g.pipeline(&COPY, "copy");
    let a = g.storage("a", 64);
    let _ = g.dispatch(&p, &[(0, &a), (1, &Out(&a))], &[64u32], [1, 1, 1]);
}
