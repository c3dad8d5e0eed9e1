//! `threads`: a helper thread runs its operators alone, and compute threads keep their count
//! whatever the helpers do (its own test binary: it sets the process's counts).

use distill_models::threads::{compute_thread, default_count, helper_thread};
use tch::{Kind, Tensor};

/// A parallel operator: large enough for libtorch to split it over the thread's team.
fn parallel_op() -> f64 {
    let a = Tensor::ones([1 << 20], (Kind::Float, tch::Device::Cpu));
    (&a + &a).sum(Kind::Double).double_value(&[])
}

fn on_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the thread panicked")
}

#[test]
fn helpers_run_alone_and_compute_threads_keep_their_count() {
    let default = default_count();
    assert!(default >= 1);
    // A compute thread with a count of its own.
    assert_eq!(compute_thread(Some(3)), 3);
    assert_eq!(tch::get_num_threads(), 3);
    let helper = on_new_thread(|| {
        helper_thread();
        // The thread's first parallel operator (libtorch's per-thread initialisation) does not
        // undo it.
        assert_eq!(parallel_op(), 2.0 * f64::from(1 << 20));
        tch::get_num_threads()
    });
    assert_eq!(helper, 1);
    // The compute thread keeps its count after the helper ran.
    parallel_op();
    assert_eq!(tch::get_num_threads(), 3);
    // A thread started after a helper begins with 1 unless it is a compute thread, which
    // takes the process's default (as it was before any count was set) or its own.
    assert_eq!(on_new_thread(tch::get_num_threads), 1);
    assert_eq!(on_new_thread(|| compute_thread(None)), default);
    assert_eq!(
        on_new_thread(|| {
            compute_thread(Some(2));
            parallel_op();
            tch::get_num_threads()
        }),
        2
    );
    assert_eq!(on_new_thread(|| compute_thread(Some(0))), 1);
    // A compute thread that has not run an operator yet when a helper starts keeps its count
    // at its first operator.
    let (set, helped) = (std::sync::mpsc::channel(), std::sync::mpsc::channel());
    let compute = std::thread::spawn(move || {
        compute_thread(Some(2));
        set.0.send(()).unwrap();
        helped.1.recv().unwrap();
        parallel_op();
        tch::get_num_threads()
    });
    set.1.recv().unwrap();
    on_new_thread(helper_thread);
    helped.0.send(()).unwrap();
    assert_eq!(compute.join().unwrap(), 2);
}
