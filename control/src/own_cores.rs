//! Where podrouterd's own threads run: off the CPUs its workers are
//! pinned to (`[dataplane] cores`), when the process may use others.
//!
//! A worker that sleeps in epoll is woken by the next frame; if another
//! task of normal priority is running on its CPU at that moment, the
//! scheduler may let that task finish its slice first (this kernel:
//! `CONFIG_HZ=250`, `PREEMPT_NONE`, checked at the tick), so the frame
//! waits milliseconds. The daemon's control thread is such a task (its
//! once-a-second tick sweeps the flow table), and so are the API
//! server's, BGP's and the metrics threads. Threads inherit their
//! creator's CPU mask, so setting it on the main thread before any other
//! thread starts keeps them all off the workers' cores; each worker then
//! pins itself to its own core.
//!
//! Invariants: nothing changes when no worker core is configured, or when
//! the worker cores are every CPU the process may use (a 1-CPU node, or
//! `cores` naming all of them): the threads keep the mask they had.

/// The CPUs podrouterd's own threads should run on: those of `allowed`
/// that no worker is pinned to; `None` to leave the mask as it is.
pub fn cores_for_the_rest(allowed: &[usize], worker_cores: &[usize]) -> Option<Vec<usize>> {
    if worker_cores.is_empty() {
        return None;
    }
    let rest: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !worker_cores.contains(c))
        .collect();
    (!rest.is_empty()).then_some(rest)
}

/// Restricts the calling thread (call it on the main thread before any
/// other thread starts) to the CPUs no worker is pinned to; logs what it
/// did. A failure is logged and changes nothing: the daemon works as
/// before, only without this separation.
pub fn keep_off_worker_cores(worker_cores: &[usize]) {
    let allowed = match podrouter_router::sys::current_thread_cores() {
        Ok(a) => a,
        Err(e) => {
            log::warn!("cannot read this process's CPUs: {e}");
            return;
        }
    };
    let Some(rest) = cores_for_the_rest(&allowed, worker_cores) else {
        return;
    };
    match podrouter_router::sys::set_current_thread_cores(&rest) {
        Ok(()) => log::info!(
            "podrouterd's own threads run on CPUs {rest:?}, off the workers' {worker_cores:?}"
        ),
        Err(e) => log::warn!(
            "cannot keep podrouterd's own threads off the workers' CPUs {worker_cores:?}: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_is_every_allowed_cpu_but_the_workers() {
        assert_eq!(cores_for_the_rest(&[0, 1], &[1]), Some(vec![0]));
        assert_eq!(cores_for_the_rest(&[0, 1, 2, 3], &[1, 3]), Some(vec![0, 2]));
        // A worker core outside the process's CPUs takes nothing away.
        assert_eq!(cores_for_the_rest(&[0, 1], &[5]), Some(vec![0, 1]));
    }

    #[test]
    fn nothing_changes_without_worker_cores_or_without_a_cpu_left() {
        assert_eq!(cores_for_the_rest(&[0, 1], &[]), None);
        assert_eq!(cores_for_the_rest(&[0], &[0]), None);
        assert_eq!(cores_for_the_rest(&[0, 1], &[0, 1]), None);
    }

    #[test]
    fn a_thread_kept_off_a_core_stays_off_it_and_its_children_too() {
        let allowed = podrouter_router::sys::current_thread_cores().unwrap();
        if allowed.len() < 2 {
            eprintln!("SKIP: one CPU only");
            return;
        }
        let worker = allowed[allowed.len() - 1];
        // On a thread of its own: the mask must not leak into other tests.
        std::thread::spawn(move || {
            keep_off_worker_cores(&[worker]);
            let mine = podrouter_router::sys::current_thread_cores().unwrap();
            assert!(!mine.contains(&worker), "{mine:?} still has {worker}");
            let child = std::thread::spawn(podrouter_router::sys::current_thread_cores)
                .join()
                .unwrap()
                .unwrap();
            assert_eq!(child, mine, "a thread it spawns inherits the mask");
            // A worker still pins itself to its core.
            podrouter_router::sys::pin_current_thread_to_core(worker).unwrap();
            assert_eq!(
                podrouter_router::sys::current_thread_cores().unwrap(),
                vec![worker]
            );
        })
        .join()
        .unwrap();
    }
}
