//! Hot-path call counts (for `/metrics` and the status page) of the counter API (`add`, `acquire`, and of the
//! acquires the refusals), at the cost of about one
//! nanosecond: every thread counts its own calls in its own cache line with a plain load and store (it is the
//! only writer, so no read-modify-write and no contention), found through one `const` thread-local pointer, and
//! a reader sums every thread's counts. A thread that exits folds its counts into a retired total first, so
//! nothing is lost and the registry does not grow with thread churn. The traffic plane's records are not counted
//! here: its own request counts say how many there were.
//!
//! Counts are per process (every store of the process), monotone, and may lag a call in flight on another thread
//! by that call. A thread's first call registers its slot under a mutex (once per thread), and a thread's exit
//! folds its counts under the same mutex; every other call takes no lock.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::LockClean;

/// One thread's counts, alone in its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct ThreadCalls {
    adds: AtomicU64,
    acquires: AtomicU64,
    refusals: AtomicU64,
}

/// Every live thread's counts, and what exited threads counted.
struct Registry {
    live: Vec<Arc<ThreadCalls>>,
    retired_adds: u64,
    retired_acquires: u64,
    retired_refusals: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: Vec::new(),
    retired_adds: 0,
    retired_acquires: 0,
    retired_refusals: 0,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // Poison policy (crate::sync): the live list and the retired totals stay whole after a panic elsewhere.
    REGISTRY.lock_clean()
}

/// This thread's registration: folds the counts into the retired totals when the thread exits.
struct Local(Arc<ThreadCalls>);

impl Drop for Local {
    fn drop(&mut self) {
        // From now on this thread counts into the shared sink (a call from another thread-local's destructor).
        SLOT.with(|slot| slot.set(&SINK));
        let mut r = registry();
        // Relaxed: this thread is the only writer, and the mutex orders the fold against readers.
        r.retired_adds += self.0.adds.load(Ordering::Relaxed);
        r.retired_acquires += self.0.acquires.load(Ordering::Relaxed);
        r.retired_refusals += self.0.refusals.load(Ordering::Relaxed);
        r.live.retain(|c| !Arc::ptr_eq(c, &self.0));
    }
}

/// Where a thread counts after its slot was retired (only calls made during its own teardown). Shared, so its
/// plain load-and-store may lose a count there; every other call is counted exactly.
static SINK: ThreadCalls = ThreadCalls {
    adds: AtomicU64::new(0),
    acquires: AtomicU64::new(0),
    refusals: AtomicU64::new(0),
};

thread_local! {
    /// This thread's counts: null until the first call registers them. A `const` initializer and no `Drop`,
    /// so reading it is one thread-local load with no lazy-initialization check.
    static SLOT: Cell<*const ThreadCalls> = const { Cell::new(std::ptr::null()) };
    /// Owns the registration; its destructor retires the slot.
    static GUARD: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Registers this thread's counts (first call on the thread).
#[cold]
#[inline(never)]
fn register() -> *const ThreadCalls {
    let calls = Arc::new(ThreadCalls::default());
    registry().live.push(Arc::clone(&calls));
    let ptr = Arc::as_ptr(&calls);
    let registered = GUARD
        .try_with(|g| *g.borrow_mut() = Some(Local(calls)))
        .is_ok();
    // A thread already tearing down its thread-locals cannot own a registration: it counts into the sink.
    let ptr = if registered {
        ptr
    } else {
        &SINK as *const ThreadCalls
    };
    SLOT.with(|slot| slot.set(ptr));
    ptr
}

/// This thread's counts.
#[inline(always)]
fn slot() -> &'static ThreadCalls {
    let mut ptr = SLOT.with(Cell::get);
    if ptr.is_null() {
        ptr = register();
    }
    // SAFETY: `ptr` is either `&SINK` (a static) or the `Arc<ThreadCalls>` owned by this thread's `GUARD`
    // (and by the registry). `GUARD`'s destructor repoints `SLOT` to the sink before that `Arc` is dropped,
    // and only this thread reads its `SLOT`, so the pointee outlives every use through `SLOT`.
    unsafe { &*ptr }
}

/// Counts one add (`CounterHandle::add`, `CounterStore::add`).
#[inline(always)]
pub(crate) fn count_add() {
    bump(&slot().adds);
}

/// Counts one acquire (`CounterHandle::acquire`, `try_acquire`).
#[inline(always)]
pub(crate) fn count_acquire() {
    bump(&slot().acquires);
}

/// Counts one acquire that refused (over the limit); also counted by [`count_acquire`]. Only on the refusal
/// path, so an allowed acquire pays nothing for it.
#[inline(always)]
pub(crate) fn count_refusal() {
    bump(&slot().refusals);
}

/// One more in a count this thread alone writes: a plain load and store, no read-modify-write.
#[inline(always)]
fn bump(count: &AtomicU64) {
    // Relaxed: one writer per thread's slot (racing bumps of the shared `SINK` may lose a count, see there);
    // nothing else is published through it, readers only need an eventually current value.
    count.store(
        count.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// Calls counted so far in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Adds (through a handle or by key).
    pub adds: u64,
    /// Acquires (`try_acquire`, `acquire`).
    pub acquires: u64,
    /// Of those, acquires that refused (over the limit): `acquires - refusals` were admitted.
    pub refusals: u64,
}

/// This thread's own counts (tests: calls on other threads, other tests' included, never change them).
#[cfg(test)]
pub(crate) fn thread_call_counts() -> CallCounts {
    let calls = slot();
    // Relaxed: this thread is the only writer of its slot.
    CallCounts {
        adds: calls.adds.load(Ordering::Relaxed),
        acquires: calls.acquires.load(Ordering::Relaxed),
        refusals: calls.refusals.load(Ordering::Relaxed),
    }
}

/// Sums every thread's counts.
pub fn call_counts() -> CallCounts {
    let r = registry();
    // Relaxed: statistics.
    let mut total = CallCounts {
        adds: r
            .retired_adds
            .wrapping_add(SINK.adds.load(Ordering::Relaxed)),
        acquires: r
            .retired_acquires
            .wrapping_add(SINK.acquires.load(Ordering::Relaxed)),
        refusals: r
            .retired_refusals
            .wrapping_add(SINK.refusals.load(Ordering::Relaxed)),
    };
    for c in &r.live {
        // Relaxed: statistics.
        total.adds = total.adds.wrapping_add(c.adds.load(Ordering::Relaxed));
        total.acquires = total
            .acquires
            .wrapping_add(c.acquires.load(Ordering::Relaxed));
        total.refusals = total
            .refusals
            .wrapping_add(c.refusals.load(Ordering::Relaxed));
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
                    count_refusal();
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
        assert!(after.refusals - before.refusals >= 4);
    }
}
