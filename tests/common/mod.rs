//! Shared by the kernel tests: one device for the whole test binary, random data, and the
//! relative-error check that prints the worst element.
#![allow(dead_code)]

use rand::SeedableRng;
use std::sync::OnceLock;
use vit_wgpu::gpu::{Gpu, GpuOptions};

pub const TOLERANCE: f64 = 1e-4;

/// The test device. Fails (never skips) when no adapter exists, saying how to get one.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&GpuOptions::default()) {
        Ok(gpu) => {
            eprintln!("test adapter: {}", gpu.describe());
            gpu
        }
        Err(e) => panic!(
            "these tests need a wgpu adapter: {e}\n\
             (CI and machines without a GPU: `apt-get install mesa-vulkan-drivers`)"
        ),
    })
}

/// A fresh seed each run (printed, so a failure can be replayed with VIT_TEST_SEED).
pub fn rng() -> rand::rngs::StdRng {
    let seed = std::env::var("VIT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (set VIT_TEST_SEED={seed} to replay)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn random(rng: &mut impl rand::Rng, n: usize) -> Vec<f32> {
    vit_wgpu::reference::random_vec(rng, n, 1.0)
}

/// Assert ||ours-ref||/||ref|| < tol, naming the tensor and the worst element.
pub fn assert_close(what: &str, ours: &[f32], reference: &[f32], tol: f64) -> f64 {
    let (err, worst) = vit_wgpu::reference::relative_error(ours, reference);
    assert!(
        err < tol,
        "{what}: relative error {err:.3e} >= {tol:.0e}; worst element [{worst}]: ours {} vs reference {}",
        ours[worst],
        reference[worst]
    );
    eprintln!("{what}: relative error {err:.3e}");
    err
}

/// A device buffer filled with NaN, so any element the kernel fails to write shows up.
pub fn poisoned(n: usize) -> wgpu::Buffer {
    let g = gpu();
    let b = g.storage("output", n);
    g.poison(&b);
    b
}

pub fn read(b: &wgpu::Buffer) -> Vec<f32> {
    gpu().read(b).expect("read-back")
}

pub fn read_n(b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let mut v = read(b);
    v.truncate(n);
    v
}
