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
    pub async fn time(
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
        let ticks: Vec<u64> = gpu.read(&self.resolve).await?;
        let dt = ticks[1].wrapping_sub(ticks[0]);
        Ok(dt as f64 * self.period_ns as f64 * 1e-9)
    }
}

/// One command's time in `profile_commands`: its kernel family (shader file, or "copies"),
/// what it launched (a dispatch's workgroups, a copy's texture size or buffer floats) and
/// its seconds.
pub struct LaunchTime {
    pub family: &'static str,
    pub what: String,
    pub seconds: f64,
}

/// The time of every command of a command list. With timestamps inside encoders the list
/// runs once, as in a step, with a timestamp between every two commands: each command's time
/// is what it costs in place (caches as the step leaves them, no submit of its own). Without
/// them every launch runs alone in a timed pass and copies are timed by wall clock, their
/// submit and wait included (a copy of lavapipe's read 2-5x its in-place cost that way).
pub async fn profile_commands(
    gpu: &Gpu,
    commands: &[super::Command],
) -> Result<Vec<LaunchTime>, GpuError> {
    let seconds = if gpu
        .features
        .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    {
        in_place_seconds(gpu, commands).await?
    } else {
        alone_seconds(gpu, commands).await?
    };
    Ok(commands
        .iter()
        .zip(seconds)
        .map(|(c, seconds)| {
            let (family, what) = describe(c);
            LaunchTime {
                family,
                what,
                seconds,
            }
        })
        .collect())
}

/// Commands per query set of `in_place_seconds` (wgpu allows 4096 queries per set).
const TIMED_PER_SUBMIT: usize = 2048;

/// Run `commands` in order, a chunk per submit, a timestamp before each and after the last.
async fn in_place_seconds(gpu: &Gpu, commands: &[super::Command]) -> Result<Vec<f64>, GpuError> {
    let period_ns = f64::from(gpu.queue.get_timestamp_period());
    let mut out = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(TIMED_PER_SUBMIT) {
        let count = chunk.len() as u32 + 1;
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: 8 * u64::from(count),
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        for (i, c) in chunk.iter().enumerate() {
            encoder.write_timestamp(&queries, i as u32);
            super::record_commands(&mut encoder, std::slice::from_ref(c));
        }
        encoder.write_timestamp(&queries, count - 1);
        encoder.resolve_query_set(&queries, 0..count, &resolve, 0);
        gpu.queue.submit([encoder.finish()]);
        let ticks: Vec<u64> = gpu.read(&resolve).await?;
        out.extend(
            ticks
                .windows(2)
                .map(|t| t[1].wrapping_sub(t[0]) as f64 * period_ns * 1e-9),
        );
    }
    Ok(out)
}

/// Every launch alone in a timed pass, every other command by wall clock.
async fn alone_seconds(gpu: &Gpu, commands: &[super::Command]) -> Result<Vec<f64>, GpuError> {
    use super::Command;
    let timer = PassTimer::new(gpu);
    let mut out = Vec::with_capacity(commands.len());
    for c in commands {
        out.push(match (c, &timer) {
            (Command::Dispatch(d), Some(t)) => t.time(gpu, |pass| d.record(pass)).await?,
            _ => {
                let t0 = web_time::Instant::now();
                gpu.submit_commands(std::slice::from_ref(c));
                gpu.idle("profile").await?;
                t0.elapsed().as_secs_f64()
            }
        });
    }
    Ok(out)
}

/// A command's kernel family and what it launched or copied.
fn describe(c: &super::Command) -> (&'static str, String) {
    use super::Command;
    match c {
        Command::Dispatch(d) => (d.family, format!("workgroups {:?}", d.workgroups)),
        Command::CopyBufferToTexture { size, .. } => (
            "copies",
            format!("to texture {}x{}", size.width, size.height),
        ),
        Command::CopyBuffer { src, .. } => ("copies", format!("buffer of {}", src.size() / 4)),
        Command::ClearBuffer(b) => ("copies", format!("clear of {}", b.size() / 4)),
    }
}
