//! [`Communicator`] over MPI (rsmpi): MPI_COMM_WORLD, built-in sums only.

use super::{Communicator, DistError};
use mpi::collective::CommunicatorCollectives;
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::{Equivalence, Root};

/// Elements per MPI call: counts are C ints.
const CHUNK: usize = 1 << 30;

pub struct Mpi {
    /// Finalises MPI when dropped (after the last collective).
    _universe: Universe,
    world: SimpleCommunicator,
    local_rank: usize,
}

impl Mpi {
    /// MPI_Init (threads may exist; only this one calls MPI). A panic on any rank aborts the
    /// job instead of unwinding into MPI_Finalize while the others wait in a collective.
    pub fn init() -> Result<Mpi, DistError> {
        let (universe, _) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or(DistError::Init)?;
        let world = universe.world();
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        let rank = world.rank();
        let size = world.size();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            eprintln!("rank {rank}/{size}: aborting the job after a panic:");
            default_hook(info);
            SimpleCommunicator::world().abort(101);
        }));
        Ok(Mpi {
            _universe: universe,
            world,
            local_rank,
        })
    }

    fn sum<T: Equivalence + Copy>(&self, send: &[T], recv: &mut [T]) {
        for (s, r) in send.chunks(CHUNK).zip(recv.chunks_mut(CHUNK)) {
            self.world.all_reduce_into(s, r, SystemOperation::sum());
        }
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn all_reduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        self.sum(send, recv);
    }
    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.sum(&send, values);
    }
    fn all_reduce_sum_u64(&self, values: &mut [u64]) {
        let send = values.to_vec();
        self.sum(&send, values);
    }
    fn broadcast_f32(&self, values: &mut [f32]) {
        let root = self.world.process_at_rank(0);
        for chunk in values.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
