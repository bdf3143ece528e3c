//! Hot-path call counts (for `/metrics`) without slowing the hot path: every thread counts its own calls in
//! its own cache line with a plain load and store (it is the only writer, so no read-modify-write and no
//! contention), and a reader sums every thread's counts. A thread that exits folds its counts into a retired
//! total first, so nothing is lost and the registry does not grow with thread churn.
//!
//! Counts are per process (every store of the process, the traffic plane's own adds included), monotone, and
//! may lag a call in flight on another thread by that call. A thread's first call registers its slot under a
//! mutex (once per thread), and a thread's exit folds its counts under the same mutex; every other call takes
//! no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One thread's counts, alone in its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ThreadCalls {
    adds: AtomicU64,
    acquires: AtomicU64,
}

/// Every live thread's counts, and what exited threads counted.
struct Registry {
    live: Vec<Arc<ThreadCalls>>,
    retired_adds: u64,
    retired_acquires: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    retired_adds: 0,
    retired_acquires: 0,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    match REGISTRY.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// This thread's slot: registered on first use, retired on thread exit.
struct Local(Arc<ThreadCalls>);

impl Local {
    fn new() -> Local {
        let calls = Arc::new(ThreadCalls::default());
        registry().live.push(Arc::clone(&calls));
        Local(calls)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut r = registry();
        // Relaxed: this thread is the only writer, and the mutex orders the fold against readers.
        r.retired_adds += self.0.adds.load(Ordering::Relaxed);
        r.retired_acquires += self.0.acquires.load(Ordering::Relaxed);
        r.live.retain(|c| !Arc::ptr_eq(c, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = Local::new();
}

/// Counts one add (`CounterHandle::add`, `CounterStore::add`).
#[inline(always)]
pub(crate) fn count_add() {
    let _ = LOCAL.try_with(|l| {
        // Relaxed: single writer; readers only need an eventually current, monotone value.
        let v = l.0.adds.load(Ordering::Relaxed);
        l.0.adds.store(v.wrapping_add(1), Ordering::Relaxed);
    });
}

/// Counts one acquire (`CounterHandle::acquire`, `try_acquire`).
#[inline(always)]
pub(crate) fn count_acquire() {
    let _ = LOCAL.try_with(|l| {
        // Relaxed: as in `count_add`.
        let v = l.0.acquires.load(Ordering::Relaxed);
        l.0.acquires.store(v.wrapping_add(1), Ordering::Relaxed);
    });
}

/// Calls counted so far in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Adds (through a handle or by key).
    pub adds: u64,
    /// Acquires (`try_acquire`, `acquire`).
    pub acquires: u64,
}

/// Sums every thread's counts.
pub fn call_counts() -> CallCounts {
    let r = registry();
    let mut total = CallCounts {
        adds: r.retired_adds,
        acquires: r.retired_acquires,
    };
    for c in &r.live {
        // Relaxed: statistics.
        total.adds = total.adds.wrapping_add(c.adds.load(Ordering::Relaxed));
        total.acquires = total
            .acquires
            .wrapping_add(c.acquires.load(Ordering::Relaxed));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_threads_that_exited_are_kept() {
        let before = call_counts();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1_000 {
                        count_add();
                    }
                    count_acquire();
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let after = call_counts();
        // Other tests may count concurrently: at least ours are there.
        assert!(after.adds - before.adds >= 4_000);
        assert!(after.acquires - before.acquires >= 4);
    }
}
