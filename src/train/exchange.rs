//! One data-parallel training step: forward and backward on this rank's shard, the
//! trainable range of the gradient arena (in its chunks) read back and summed over every
//! rank in one all-reduce (with the shard's loss and correct counts appended), written back, then AdamW.
//! Every rank applies the same AdamW to the same sums, so parameters stay identical.
//!
//! Unlike the single-process step (one submit, no wait) this one waits for its backward:
//! the host all-reduce needs the gradients. Overlapping buckets of the reduce with the rest
//! of the backward (as DDP and Horovod do) is the next step; see the README.

use crate::dist::Communicator;
use crate::gpu::{Gpu, GpuError};
use crate::model::Vit;
use std::time::Instant;

/// The read-back buffers and host vectors of the gradient all-reduce, allocated once.
pub struct GradExchange {
    /// Per arena chunk the trainable range holds part of: (chunk, range in it, read-back).
    pieces: Vec<(usize, std::ops::Range<usize>, wgpu::Buffer)>,
    /// [losses of the shard | correct flags of the shard]
    staging: wgpu::Buffer,
    /// Trainable gradient floats (all pieces).
    len: usize,
    batch: usize,
    send: Vec<f32>,
    recv: Vec<f32>,
    /// Seconds spent in the all-reduce, over `steps` steps.
    pub reduce_seconds: f64,
    pub steps: u64,
    /// Benchmarks: a one-number all-reduce first, so `reduce_seconds` excludes the wait for
    /// the slowest rank, which goes to `wait_seconds`.
    pub separate_wait: bool,
    pub wait_seconds: f64,
}

/// The global batch's summed loss and number of correct predictions after a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GlobalSums {
    pub loss: f32,
    pub correct: f32,
}

impl GradExchange {
    pub fn new(gpu: &Gpu, model: &Vit) -> GradExchange {
        let readback = |floats: usize| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("gradient readback"),
                size: (floats * 4) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let pieces: Vec<_> = model
            .arena
            .layout
            .pieces(model.trainable())
            .into_iter()
            .map(|(c, r)| (c, r.clone(), readback(r.len())))
            .collect();
        let len = pieces.iter().map(|(_, r, _)| r.len()).sum();
        GradExchange {
            pieces,
            staging: readback(2 * model.batch),
            batch: model.batch,
            len,
            send: vec![0.0; len + 2],
            recv: vec![0.0; len + 2],
            reduce_seconds: 0.0,
            steps: 0,
            separate_wait: false,
            wait_seconds: 0.0,
        }
    }

    /// Gradients of this rank's shard (batch and step already written), summed over the
    /// ranks, then AdamW. Returns the global batch's loss and correct sums.
    pub async fn step(
        &mut self,
        gpu: &Gpu,
        model: &Vit,
        comm: &dyn Communicator,
    ) -> Result<GlobalSums, GpuError> {
        let grads = match &model.arena.grads {
            Some(g) => g,
            None => panic!("internal: a training step on an inference model"),
        };
        let n = self.len;
        let (b, f) = (self.batch as u64 * 4, 4u64);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        model.record_gradients(&mut encoder);
        for (c, r, readback) in &self.pieces {
            let (at, bytes) = (r.start as u64 * f, r.len() as u64 * f);
            encoder.copy_buffer_to_buffer(&grads[*c], at, readback, 0, bytes);
        }
        encoder.copy_buffer_to_buffer(&model.losses, 0, &self.staging, 0, b);
        encoder.copy_buffer_to_buffer(&model.correct, 0, &self.staging, b, b);
        gpu.queue.submit([encoder.finish()]);
        self.read_staging(gpu).await?;
        if self.separate_wait {
            let t0 = Instant::now();
            comm.all_reduce_sum_u64(&mut [0]);
            self.wait_seconds += t0.elapsed().as_secs_f64();
        }
        let t0 = Instant::now();
        comm.all_reduce_sum_f32(&self.send, &mut self.recv);
        self.reduce_seconds += t0.elapsed().as_secs_f64();
        self.steps += 1;
        let mut at = 0;
        for (c, r, _) in &self.pieces {
            let sums = bytemuck::cast_slice(&self.recv[at..at + r.len()]);
            gpu.queue.write_buffer(&grads[*c], r.start as u64 * f, sums);
            at += r.len();
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        model.record_optimizer(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        Ok(GlobalSums {
            loss: self.recv[n],
            correct: self.recv[n + 1],
        })
    }

    /// Map the read-back buffers (waits for the backward) into `send`: the gradients, then
    /// the shard's loss sum and correct count.
    async fn read_staging(&mut self, gpu: &Gpu) -> Result<(), GpuError> {
        let context = "gradient read-back";
        let mut at = 0;
        for (_, _, readback) in &self.pieces {
            let piece: Vec<f32> = gpu.read_staging(readback, context).await?;
            self.send[at..at + piece.len()].copy_from_slice(&piece);
            at += piece.len();
        }
        let sums: Vec<f32> = gpu.read_staging(&self.staging, context).await?;
        self.send[at] = sums[..self.batch].iter().sum();
        self.send[at + 1] = sums[self.batch..].iter().sum();
        Ok(())
    }
}

/// Rank 0's parameters and optimizer moments overwrite every other rank's (at start and
/// after a resume), so all ranks start from one state whatever each one loaded.
pub async fn broadcast_model(
    gpu: &Gpu,
    model: &Vit,
    comm: &dyn Communicator,
) -> Result<(), GpuError> {
    if comm.size() < 2 {
        return Ok(());
    }
    let a = &model.arena;
    for buffer in [Some(&a.values), a.m.as_ref(), a.v.as_ref()]
        .into_iter()
        .flatten()
        .flatten()
    {
        let mut host: Vec<f32> = gpu.read(buffer).await?;
        comm.broadcast_f32(&mut host);
        gpu.write(buffer, &host);
    }
    Ok(())
}
