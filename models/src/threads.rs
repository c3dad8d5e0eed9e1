//! How many cores libtorch's CPU operators use, thread by thread.
//!
//! libtorch parallelises a CPU operator over an OpenMP team (libgomp in PyTorch's Linux
//! wheels) that belongs to the calling thread: each thread that ever runs a parallel operator
//! keeps its own team of worker threads for its whole life. When a process holds more OpenMP
//! threads than the machine has cores, libgomp's idle workers stop spinning between parallel
//! regions and sleep, and every region after that pays a wake-up. The many short regions of a
//! small model's step feel it most: sampling 64 tokens from a 2-block `lm` (batch 16, width
//! 128) ran at 2,100–2,400 tokens/s on a 2-core Intel Xeon (Sapphire Rapids) once two other
//! threads had run one parallel operator each, against 3,300–3,600 when those threads ran
//! their operators on themselves alone.
//!
//! So a process names the threads that compute (the student's training thread, the teacher's
//! engine): [`compute_thread`] gives them `--threads` cores; every other thread that may touch
//! a tensor (the async runtime's workers and blocking pool, the main thread) calls
//! [`helper_thread`] and runs its operators on itself, with no team.
//!
//! libtorch keeps one count per thread (OpenMP's, set by `tch::set_num_threads` for the
//! calling thread) and one count that a thread takes at its first parallel operator unless it
//! set its own (also set by `tch::set_num_threads`, by whichever thread calls it last). A
//! helper thread lowers that second count to 1, so a compute thread must set its own count:
//! [`compute_thread`] does, from [`default_count`] when none is given.

use std::sync::OnceLock;

/// The count libtorch gives a thread that sets none, as it was before any thread of this
/// process changed it (OpenMP's default: `OMP_NUM_THREADS`, else the cores available), read on
/// the first call: call it (or [`helper_thread`], which does) before anything sets a count.
pub fn default_count() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1))
}

/// Makes the calling thread a compute thread: libtorch's CPU operators called from it use `n`
/// threads (≥ 1), or [`default_count`] when `n` is `None`. Returns the count set. The count
/// that threads begin with becomes the same (libtorch has no call that leaves it).
pub fn compute_thread(n: Option<usize>) -> usize {
    // Record the default before this changes it.
    let default = default_count();
    let n = n.unwrap_or(default).max(1);
    set_here(n);
    n
}

/// Makes the calling thread a helper: libtorch's CPU operators called from it run on it alone,
/// with no OpenMP team of its own. Threads that start afterwards and set no count begin with 1
/// too ([`compute_thread`] sets its own); the count of a thread that set one is unchanged.
pub fn helper_thread() {
    // Record the default before this lowers it.
    default_count();
    set_here(1);
}

/// Sets the calling thread's count to `n` (and the count threads begin with).
fn set_here(n: usize) {
    // libtorch sets a thread's count at its first parallel operator (or count query) to the
    // count threads begin with, whatever the thread set before: have that happen first, so a
    // helper that starts later cannot lower this thread's count through it.
    let _ = tch::get_num_threads();
    tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
}
