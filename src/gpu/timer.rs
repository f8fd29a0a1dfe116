//! GPU timestamps around a compute pass, for the benchmarks.

use super::{Gpu, GpuError};

/// Two timestamps (pass begin and end) resolved into a readable buffer.
pub struct PassTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f32,
}

impl PassTimer {
    /// `None` when the adapter has no timestamp queries; callers fall back to wall time.
    pub fn new(gpu: &Gpu) -> Option<PassTimer> {
        if !gpu.has_timestamps() {
            return None;
        }
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("pass timer"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pass timer resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(PassTimer {
            queries,
            resolve,
            period_ns: gpu.queue.get_timestamp_period(),
        })
    }

    pub fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Run `record` in one timed pass and return its GPU time in seconds (waits).
    pub fn time(
        &self,
        gpu: &Gpu,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) -> Result<f64, GpuError> {
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed"),
                timestamp_writes: Some(self.writes()),
            });
            record(&mut pass);
        }
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolve, 0);
        gpu.queue.submit([encoder.finish()]);
        let ticks: Vec<u64> = gpu.read(&self.resolve)?;
        let dt = ticks[1].wrapping_sub(ticks[0]);
        Ok(dt as f64 * self.period_ns as f64 * 1e-9)
    }
}

/// GPU time per kernel family (shader file) of a command list: every launch runs alone in
/// a timed pass, copies are timed by wall clock under "copies". Slower than a real step
/// (one submit per command); for the `bench --profile` breakdown only.
pub fn profile_commands(
    gpu: &Gpu,
    commands: &[super::Command],
) -> Result<std::collections::BTreeMap<&'static str, f64>, GpuError> {
    let mut out = std::collections::BTreeMap::new();
    let timer = PassTimer::new(gpu);
    for c in commands {
        match (c, &timer) {
            (super::Command::Dispatch(d), Some(t)) => {
                let s = t.time(gpu, |pass| d.record(pass))?;
                *out.entry(d.family).or_insert(0.0) += s;
            }
            _ => {
                let t0 = std::time::Instant::now();
                gpu.submit_commands(std::slice::from_ref(c));
                gpu.wait("profile")?;
                let family = match c {
                    super::Command::Dispatch(d) => d.family,
                    _ => "copies",
                };
                *out.entry(family).or_insert(0.0) += t0.elapsed().as_secs_f64();
            }
        }
    }
    Ok(out)
}
