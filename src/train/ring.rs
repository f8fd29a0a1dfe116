//! The loss read-back ring: each step's per-image losses and correctness flags are copied
//! into a staging buffer and mapped asynchronously, so a step never waits for its own
//! results, and at most `RING` steps are in flight.

use crate::gpu::{Gpu, GpuError};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

const RING: usize = 3;

const IDLE: u8 = 0;
const MAPPING: u8 = 1;
const MAPPED: u8 = 2;
const FAILED: u8 = 3;

/// One step's mean loss and accuracy, read back from the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResult {
    pub step: u64,
    pub loss: f32,
    pub accuracy: f32,
}

/// A staging buffer that receives one step's per-image losses and correctness flags.
struct Slot {
    buffer: wgpu::Buffer,
    /// IDLE, MAPPING, MAPPED or FAILED; set by the map callback.
    state: Arc<AtomicU8>,
    step: u64,
    submission: Option<wgpu::SubmissionIndex>,
}

pub struct LossRing {
    slots: Vec<Slot>,
    next: usize,
    batch: usize,
}

fn device_error(message: String) -> GpuError {
    GpuError::Device {
        context: "loss read-back".into(),
        message,
    }
}

impl LossRing {
    pub fn new(gpu: &Gpu, batch: usize) -> LossRing {
        let slots = (0..RING)
            .map(|_| Slot {
                buffer: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("loss readback"),
                    size: (batch * 8) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(AtomicU8::new(IDLE)),
                step: 0,
                submission: None,
            })
            .collect();
        LossRing {
            slots,
            next: 0,
            batch,
        }
    }

    /// Wait for the slot about to be reused (a step `RING` steps old) and return its result.
    /// Call before [`LossRing::record_copy`]: this bounds the steps in flight.
    pub fn free_next(&mut self, gpu: &Gpu) -> Result<Option<StepResult>, GpuError> {
        self.collect(gpu, self.next, true)
    }

    /// Copy this step's losses and correctness flags into the next slot (recorded after the
    /// step's own commands, in the same encoder).
    pub fn record_copy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        losses: &wgpu::Buffer,
        correct: &wgpu::Buffer,
    ) {
        let slot = &self.slots[self.next];
        let bytes = (self.batch * 4) as u64;
        encoder.copy_buffer_to_buffer(losses, 0, &slot.buffer, 0, bytes);
        encoder.copy_buffer_to_buffer(correct, 0, &slot.buffer, bytes, bytes);
    }

    /// The step's commands were submitted: start mapping its slot and move on.
    pub fn submitted(&mut self, step: u64, submission: wgpu::SubmissionIndex) {
        let slot = &mut self.slots[self.next];
        slot.submission = Some(submission);
        slot.step = step;
        slot.state.store(MAPPING, Ordering::Release);
        let flag = slot.state.clone();
        slot.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            flag.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
        });
        self.next = (self.next + 1) % RING;
    }

    /// Results of the finished steps older than any step still in flight, in step order;
    /// with `wait`, of every step in flight. A step's result is never returned before an
    /// older one's (a later map can complete first), so the caller records them in order.
    pub fn harvest(&mut self, gpu: &Gpu, wait: bool) -> Result<Vec<StepResult>, GpuError> {
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        let mut out = Vec::new();
        // From `next`, the slots hold the steps in flight oldest first.
        for k in 0..RING {
            let i = (self.next + k) % RING;
            match self.collect(gpu, i, wait)? {
                Some(r) => out.push(r),
                None if self.slots[i].state.load(Ordering::Acquire) == MAPPING => break,
                None => {}
            }
        }
        Ok(out)
    }

    fn collect(&mut self, gpu: &Gpu, i: usize, wait: bool) -> Result<Option<StepResult>, GpuError> {
        let slot = &mut self.slots[i];
        if slot.state.load(Ordering::Acquire) == IDLE {
            return Ok(None);
        }
        while wait && slot.state.load(Ordering::Acquire) == MAPPING {
            let poll = match slot.submission.clone() {
                Some(index) => wgpu::PollType::Wait {
                    submission_index: Some(index),
                    timeout: None,
                },
                None => wgpu::PollType::wait_indefinitely(),
            };
            gpu.device
                .poll(poll)
                .map_err(|e| device_error(e.to_string()))?;
        }
        match slot.state.load(Ordering::Acquire) {
            MAPPING => return Ok(None),
            FAILED => return Err(device_error("mapping the staging buffer failed".into())),
            _ => {}
        }
        let values: Vec<f32> = {
            let view = slot
                .buffer
                .get_mapped_range(..)
                .map_err(|e| device_error(e.to_string()))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        slot.buffer.unmap();
        slot.state.store(IDLE, Ordering::Release);
        let b = self.batch;
        Ok(Some(StepResult {
            step: slot.step,
            loss: values[..b].iter().sum::<f32>() / b as f32,
            accuracy: values[b..2 * b].iter().sum::<f32>() / b as f32,
        }))
    }
}
