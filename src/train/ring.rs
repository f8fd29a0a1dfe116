//! The loss read-back ring: each step's per-image losses and correctness flags are copied
//! into a staging buffer and mapped asynchronously, so a step never waits for its own
//! results, and at most `RING` steps are in flight.

use crate::gpu::{mapped, start_map, take_mapped, Gpu, GpuError, MapReceiver};

const RING: usize = 3;
const CONTEXT: &str = "loss read-back";

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
    /// The map in flight, resolved by wgpu's callback; `None` when the slot is idle.
    map: Option<MapReceiver>,
    step: u64,
    submission: Option<wgpu::SubmissionIndex>,
}

pub struct LossRing {
    slots: Vec<Slot>,
    next: usize,
    batch: usize,
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
                map: None,
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
    pub async fn free_next(&mut self, gpu: &Gpu) -> Result<Option<StepResult>, GpuError> {
        self.collect(gpu, self.next, true).await
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
        slot.map = Some(start_map(&slot.buffer));
        self.next = (self.next + 1) % RING;
    }

    /// Results of the finished steps older than any step still in flight, in step order;
    /// with `wait`, of every step in flight. A step's result is never returned before an
    /// older one's (a later map can complete first), so the caller records them in order.
    pub async fn harvest(&mut self, gpu: &Gpu, wait: bool) -> Result<Vec<StepResult>, GpuError> {
        // Natively, callbacks of finished maps run in a poll; in the browser this returns at once.
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        let mut out = Vec::new();
        // From `next`, the slots hold the steps in flight oldest first.
        for k in 0..RING {
            let i = (self.next + k) % RING;
            match self.collect(gpu, i, wait).await? {
                Some(r) => out.push(r),
                None if self.slots[i].map.is_some() => break,
                None => {}
            }
        }
        Ok(out)
    }

    /// Slot `i`'s result if its map is done (with `wait`, once it is); `None` when the slot
    /// is idle or, without `wait`, still mapping.
    async fn collect(
        &mut self,
        gpu: &Gpu,
        i: usize,
        wait: bool,
    ) -> Result<Option<StepResult>, GpuError> {
        let slot = &mut self.slots[i];
        let Some(mut map) = slot.map.take() else {
            return Ok(None);
        };
        let result = match map.try_recv() {
            Some(r) => Some(r),
            None if !wait => {
                slot.map = Some(map);
                return Ok(None);
            }
            None => {
                gpu.drive(slot.submission.clone(), CONTEXT)?;
                map.await
            }
        };
        mapped(result, CONTEXT)?;
        let values: Vec<f32> = take_mapped(&slot.buffer, CONTEXT)?;
        let b = self.batch;
        Ok(Some(StepResult {
            step: slot.step,
            loss: values[..b].iter().sum::<f32>() / b as f32,
            accuracy: values[b..2 * b].iter().sum::<f32>() / b as f32,
        }))
    }
}
