//! Data-parallel training across processes: a small communicator interface with a
//! single-process implementation ([`Single`]) and, with the `mpi` cargo feature, one over
//! MPI (`mpi.rs`). The trainer talks to [`Communicator`] only, so it has no `cfg` in it.
//!
//! Every rank draws the same epoch permutation from (seed, epoch) and takes its slice of
//! each global batch; the gradients are summed over the ranks between backward and AdamW,
//! and every rank then applies the same AdamW to the same sums, so the ranks' parameters
//! stay bit-identical without being sent again.

#[cfg(feature = "mpi")]
mod mpi;

/// What data-parallel training needs of a process group. Collectives must be called by
/// every rank in the same order.
pub trait Communicator {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// This rank's index among the ranks on its machine (one adapter per rank).
    fn local_rank(&self) -> usize;
    /// `recv = sum over ranks of send` (both the same length); every rank gets the same sums.
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]);
    /// In place: each value becomes its sum over the ranks.
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
    fn all_reduce_sum_u64(&self, values: &mut [u64]);
    /// Rank 0's `values` overwrite every other rank's.
    fn broadcast_f32(&self, values: &mut [f32]);
    /// End every rank of the job with `code` (MPI_Abort): a rank that fails must not leave
    /// the others waiting in a collective.
    fn abort(&self, code: i32) -> !;
}

/// One process: the program as it runs when started plainly.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        recv.copy_from_slice(send);
    }
    fn all_reduce_sum_f64(&self, _values: &mut [f64]) {}
    fn all_reduce_sum_u64(&self, _values: &mut [u64]) {}
    fn broadcast_f32(&self, _values: &mut [f32]) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The launcher's world size when started by mpirun or srun (OpenMPI, PMI or PMIx
/// environment), else `None`.
pub fn launched_size() -> Option<usize> {
    let var = |k: &str| std::env::var(k).ok();
    if let Some(n) = var("OMPI_COMM_WORLD_SIZE").or_else(|| var("PMI_SIZE")) {
        return Some(n.trim().parse().unwrap_or(1));
    }
    // PMIx (srun --mpi=pmix) sets the rank; the size comes from MPI itself.
    var("PMIX_RANK").map(|_| 0)
}

#[derive(thiserror::Error, Debug)]
pub enum DistError {
    #[error(
        "started by an MPI launcher with {0} processes, but this binary was built without MPI: \
         rebuild with `cargo build --release --features mpi` (needs the Debian packages \
         libopenmpi-dev openmpi-bin libclang-dev), or start one process"
    )]
    NotBuiltWithMpi(usize),
    #[error("MPI could not be initialised (MPI_Init failed or was already called)")]
    Init,
}

/// The process group this process belongs to: MPI's world when launched by mpirun/srun
/// (and built with the `mpi` feature), else [`Single`].
pub fn init() -> Result<Box<dyn Communicator>, DistError> {
    match launched_size() {
        None => Ok(Box::new(Single)),
        Some(n) => connect(n),
    }
}

#[cfg(feature = "mpi")]
fn connect(_n: usize) -> Result<Box<dyn Communicator>, DistError> {
    Ok(Box::new(mpi::Mpi::init()?))
}

#[cfg(not(feature = "mpi"))]
fn connect(n: usize) -> Result<Box<dyn Communicator>, DistError> {
    if n > 1 {
        return Err(DistError::NotBuiltWithMpi(n));
    }
    Ok(Box::new(Single))
}

/// The adapter index (into `vit-wgpu info`'s list) for this rank: `--adapter` if given, else
/// the node-local rank modulo the adapters of the best type found (GPUs before CPUs).
pub fn adapter_for_rank(
    chosen: Option<usize>,
    local_rank: usize,
    types: &[wgpu::DeviceType],
) -> Option<usize> {
    if chosen.is_some() {
        return chosen;
    }
    let best = types.iter().map(|&t| crate::gpu::type_rank(t)).min()?;
    let same: Vec<usize> = (0..types.len())
        .filter(|&i| crate::gpu::type_rank(types[i]) == best)
        .collect();
    Some(same[local_rank % same.len()])
}

/// Splits a global batch over `size` ranks: rank r takes positions
/// `[r * local, (r + 1) * local)` of every global batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub size: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { rank: 0, size: 1 };

    /// The positions of global batch `[start, end)` this rank takes (a partial last batch is
    /// split in slices of the full-batch size, so the last ranks may take less or nothing).
    pub fn slice(&self, start: usize, end: usize, global_batch: usize) -> (usize, usize) {
        let local = global_batch.div_ceil(self.size);
        let lo = (start + self.rank * local).min(end);
        (lo, (lo + local).min(end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_a_global_batch_in_rank_order() {
        for size in [1, 2, 4] {
            let mut covered = Vec::new();
            for rank in 0..size {
                let (lo, hi) = Shard { rank, size }.slice(16, 24, 8);
                covered.extend(lo..hi);
            }
            assert_eq!(covered, (16..24).collect::<Vec<_>>(), "K = {size}");
        }
        // A partial last batch of 5 over 4 ranks of 2: 2, 2, 1, 0.
        let sizes: Vec<usize> = (0..4)
            .map(|rank| {
                let (lo, hi) = Shard { rank, size: 4 }.slice(8, 13, 8);
                hi - lo
            })
            .collect();
        assert_eq!(sizes, [2, 2, 1, 0]);
    }

    #[test]
    fn each_rank_takes_an_adapter_of_the_best_type_in_turn() {
        use wgpu::DeviceType::*;
        let types = [Cpu, DiscreteGpu, DiscreteGpu];
        let picks: Vec<_> = (0..4).map(|r| adapter_for_rank(None, r, &types)).collect();
        assert_eq!(picks, [Some(1), Some(2), Some(1), Some(2)]);
        assert_eq!(adapter_for_rank(Some(0), 3, &types), Some(0));
        assert_eq!(adapter_for_rank(None, 1, &[Cpu]), Some(0));
        assert_eq!(adapter_for_rank(None, 0, &[]), None);
    }
}
