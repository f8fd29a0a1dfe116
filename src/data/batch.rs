//! Batches of normalised f32 images, built on a background thread so the device never waits
//! for the CPU. Order and augmentation depend only on (seed, epoch, batch index), so a run
//! is reproducible and a resumed run sees exactly the batches it would have seen; each
//! sample's augmentation depends on its position in the epoch alone, so a rank's shard of a
//! batch (data-parallel training) holds exactly those positions of the whole batch.

use super::augment::{epoch_order, make_batch, Augment, Batch};
use super::stream::{self, Pool};
use super::{DataError, Dataset};
use crate::dist::Shard;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One epoch of batches, prepared on a background thread two batches ahead (in-memory
/// datasets) or on the stream's worker threads at most `queue_depth` batches ahead
/// (streamed folders: decoding, training transforms with `augment`, eval ones without).
///
/// The threads start on the first call to `next`, so [`Loader::skip_batches`] before that
/// costs nothing: a resumed run continues mid-epoch with the same batches. A streamed image
/// that cannot be read ends the iteration; [`Loader::finish`] returns its error.
pub struct Loader {
    ds: Arc<Dataset>,
    batch_size: usize,
    augment: Option<Augment>,
    seed: u64,
    epoch: u64,
    order: Arc<Vec<usize>>,
    num_batches: usize,
    /// This rank's slice of every batch (the whole batch in one process).
    shard: Shard,
    /// Next batch index to hand out.
    next_batch: usize,
    rx: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
    pool: Option<Pool>,
    error: Option<DataError>,
}

impl Loader {
    /// A loader over `ds` for `epoch`; the order is a permutation fixed by (seed, epoch)
    /// when `shuffle`, else the dataset order. With `drop_last` a final partial batch is
    /// left out (keeps shapes, and so device buffers, fixed).
    ///
    /// # Panics
    /// If `batch_size` is 0 (callers validate user input first).
    pub fn new(
        ds: Arc<Dataset>,
        batch_size: usize,
        shuffle: bool,
        augment: Option<Augment>,
        seed: u64,
        epoch: u64,
        drop_last: bool,
    ) -> Loader {
        assert!(batch_size > 0, "batch size must be at least 1");
        let order = epoch_order(ds.len, shuffle, seed, epoch);
        let num_batches = if drop_last {
            ds.len / batch_size
        } else {
            ds.len.div_ceil(batch_size)
        };
        Loader {
            ds,
            batch_size,
            augment,
            seed,
            epoch,
            order: Arc::new(order),
            num_batches,
            shard: Shard::WHOLE,
            next_batch: 0,
            rx: None,
            worker: None,
            pool: None,
            error: None,
        }
    }

    /// Builder: hand out only `shard`'s slice of each batch (data-parallel training: every
    /// rank draws the same order and takes its own positions of each global batch).
    pub fn shard(mut self, shard: Shard) -> Loader {
        self.shard = shard;
        self
    }

    /// The positions of batch `b` in the epoch's order that this loader hands out.
    fn positions(b: usize, batch_size: usize, len: usize, shard: Shard) -> (usize, usize) {
        let start = b * batch_size;
        shard.slice(start, (start + batch_size).min(len), batch_size)
    }

    /// The error that ended a streamed epoch early (a file that cannot be read), if any.
    pub fn finish(&mut self) -> Result<(), DataError> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Most batches a streamed loader held at once (being decoded or waiting), never more
    /// than its queue depth; 0 before iteration or for in-memory datasets.
    pub fn peak_batches_held(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.peak_held())
    }

    /// The streamed loader's bound on batches held (0 for in-memory datasets).
    pub fn queue_depth(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.depth())
    }

    fn spawn_stream(&mut self, st: Arc<stream::Stream>) {
        let ds = Arc::clone(&self.ds);
        let order = Arc::clone(&self.order);
        let (batch_size, augment, seed, epoch, shard) = (
            self.batch_size,
            self.augment,
            self.seed,
            self.epoch,
            self.shard,
        );
        let job = Arc::new(move |b: usize| {
            let range = Loader::positions(b, batch_size, order.len(), shard);
            stream::make_batch(&ds, &st, &order, range, augment, seed, epoch)
        });
        let (workers, depth) = (self.ds_stream_workers(), self.ds_stream_depth());
        self.pool = Some(Pool::new(
            job,
            self.next_batch,
            self.num_batches,
            workers,
            depth,
        ));
    }

    fn ds_stream_workers(&self) -> usize {
        self.ds.stream.as_ref().map_or(1, |s| s.options.workers)
    }

    fn ds_stream_depth(&self) -> usize {
        self.ds.stream.as_ref().map_or(2, |s| s.options.queue_depth)
    }

    /// Number of batches in the whole epoch (including any already consumed or skipped).
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// The epoch's image order (dataset indices).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Index of the batch the next call to `next` returns.
    pub fn position(&self) -> usize {
        self.next_batch
    }

    /// Skips `n` batches, e.g. to resume mid-epoch. Free before iteration starts.
    pub fn skip_batches(&mut self, n: usize) {
        if self.rx.is_none() && self.pool.is_none() {
            self.next_batch = (self.next_batch + n).min(self.num_batches);
        } else {
            for _ in 0..n {
                if self.next().is_none() {
                    break;
                }
            }
        }
    }

    /// Builder form of [`Loader::skip_batches`]: start at batch `start`.
    pub fn start_batch(mut self, start: usize) -> Loader {
        self.skip_batches(start);
        self
    }

    fn spawn(&mut self) {
        let (tx, rx) = sync_channel(2);
        let ds = Arc::clone(&self.ds);
        let order = Arc::clone(&self.order);
        let (start, end) = (self.next_batch, self.num_batches);
        let (batch_size, augment, seed, epoch, shard) = (
            self.batch_size,
            self.augment,
            self.seed,
            self.epoch,
            self.shard,
        );
        self.worker = Some(std::thread::spawn(move || {
            for b in start..end {
                let range = Loader::positions(b, batch_size, order.len(), shard);
                let batch = make_batch(&ds, &order, range, augment, seed, epoch);
                if tx.send(batch).is_err() {
                    break; // the loader was dropped
                }
            }
        }));
        self.rx = Some(rx);
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next_batch >= self.num_batches {
            return None;
        }
        if let Some(st) = self.ds.stream.clone() {
            if self.pool.is_none() {
                self.spawn_stream(st);
            }
            let pool = self.pool.as_mut()?;
            return match pool.take(self.next_batch) {
                Some(Ok(batch)) => {
                    self.next_batch += 1;
                    Some(batch)
                }
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.next_batch = self.num_batches;
                    None
                }
                None => {
                    // Every worker ended early: only a panic does that; pass it on.
                    if let Some(panic) = pool.shutdown() {
                        std::panic::resume_unwind(panic);
                    }
                    None
                }
            };
        }
        if self.rx.is_none() {
            self.spawn();
        }
        match self.rx.as_ref().map(|rx| rx.recv()) {
            Some(Ok(batch)) => {
                self.next_batch += 1;
                Some(batch)
            }
            _ => {
                // The worker ended early: only a panic does that; pass it on.
                if let Some(handle) = self.worker.take() {
                    if let Err(panic) = handle.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.num_batches - self.next_batch;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the receiver first makes a blocked `send` fail, so the join returns.
        self.rx = None;
        if let Some(handle) = self.worker.take() {
            let _ = handle.join();
        }
    }
}
