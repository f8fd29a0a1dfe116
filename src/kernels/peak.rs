//! The adapter's arithmetic ceiling (shaders/peak_fma.wgsl), measured in the same run as
//! what is compared with it: `cargo bench` and the `bench` command divide their FLOP rates
//! by this, because absolute rates on a shared machine swing with its load.

use crate::gpu::{Gpu, GpuError, PassTimer};

/// FLOP/s of the peak_fma shader: median of three timed launches after a warm-up, with GPU
/// timestamps when the adapter has them, else wall clock. `iterations` sets the length of
/// one launch (256 ≈ 0.1 s on lavapipe's two cores; the benchmarks use 1024).
pub async fn measure_fma_ceiling(
    gpu: &Gpu,
    timer: Option<&PassTimer>,
    iterations: u32,
) -> Result<f64, GpuError> {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct Meta {
        iterations: u32,
        x: f32,
        y: f32,
        sentinel: f32,
    }
    let workgroups = 2048u32;
    let pipeline = gpu.pipeline(&super::PEAK_FMA, "peak_fma");
    let out = gpu.storage("peak out", 1024);
    let meta = Meta {
        iterations,
        x: 0.999,
        y: 0.001,
        sentinel: -12345.0,
    };
    let dispatch = gpu.dispatch(&pipeline, &[(0, &out)], &meta, [workgroups, 1, 1]);
    // invocations x iterations x 8 chains x 8 steps x 4 components x 2 (mul + add)
    let flops = workgroups as f64 * 64.0 * iterations as f64 * 16.0 * 4.0 * 4.0 * 2.0;
    let mut times = Vec::new();
    for run in 0..4 {
        let seconds = match timer {
            Some(t) => t.time(gpu, |pass| dispatch.record(pass)).await?,
            None => {
                let t0 = web_time::Instant::now();
                gpu.run(|pass| dispatch.record(pass));
                gpu.idle("peak").await?;
                t0.elapsed().as_secs_f64()
            }
        };
        if run > 0 {
            times.push(seconds);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(flops / times[times.len() / 2])
}
