//! Synchronization shim and the crate's one lock policy.
//!
//! - Atomics: `std` atomics normally, loom's under `--cfg bifrost_loom`, so the lock-free cell can be model
//!   checked without changing its code. (A cfg name of our own: `--cfg loom` would also change how tokio
//!   builds.)
//! - Locks: every `std` (or loom) mutex of the crate is taken with [`LockClean::lock_clean`], which has one
//!   poison policy, written once here.
//!
//! # Poison policy
//!
//! **A poisoned lock is recovered**: [`LockClean::lock_clean`] returns the guard whether or not another thread
//! panicked while holding the lock. A mutex is poisoned when a thread panics while holding it; the panic has
//! already been reported by that thread, and refusing the lock forever after would turn one bug into a node
//! that can no longer count, discover or log. Recovering is sound because every mutex taken this way protects
//! data that stays valid at every point a panic can occur: counters, snapshots, caches and task handles, each
//! updated by single assignments, inserts or removals that leave a well-formed value behind (at worst an entry
//! is missing or stale, which the next round or the next merge repairs). A new mutex whose critical section can
//! leave its data half-updated must not use this helper: restructure it (compute, then assign) instead.

#[cfg(not(bifrost_loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(bifrost_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(bifrost_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(bifrost_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Taking a lock under the crate's poison policy (see the module docs): a poisoned lock is recovered.
pub(crate) trait LockClean {
    /// The guard the lock hands out.
    type Guard<'a>
    where
        Self: 'a;

    /// Locks, blocking until the lock is free; a lock poisoned by a panic elsewhere is recovered, not refused.
    fn lock_clean(&self) -> Self::Guard<'_>;
}

impl<T: ?Sized> LockClean for std::sync::Mutex<T> {
    type Guard<'a>
        = std::sync::MutexGuard<'a, T>
    where
        Self: 'a;

    fn lock_clean(&self) -> Self::Guard<'_> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(bifrost_loom)]
impl<T: ?Sized> LockClean for loom::sync::Mutex<T> {
    type Guard<'a>
        = loom::sync::MutexGuard<'a, T>
    where
        Self: 'a;

    fn lock_clean(&self) -> Self::Guard<'_> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Marks a point where the code relies on the single total order of `SeqCst` accesses (a Dekker-style
/// handshake: each side writes, then reads what the other wrote).
///
/// The real accesses around every call site are `SeqCst`, which the C11 model already orders; this is a no-op
/// there. loom models `SeqCst` accesses as `AcqRel` (loom's README, "Unsupported features") and would report
/// false alarms, but supports `fence(SeqCst)`: under `--cfg bifrost_loom` this emits one, so the model checks
/// the ordering the real code gets.
#[inline(always)]
pub(crate) fn seqcst_handshake() {
    #[cfg(bifrost_loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

#[cfg(all(test, not(bifrost_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let mutex = std::sync::Arc::new(Mutex::new(vec![1, 2]));
        let in_thread = std::sync::Arc::clone(&mutex);
        let panicked = std::thread::spawn(move || {
            let mut guard = in_thread.lock_clean();
            guard.push(3);
            panic!("poison the lock on purpose");
        })
        .join();
        assert!(panicked.is_err());
        assert!(mutex.is_poisoned());
        assert_eq!(*mutex.lock_clean(), vec![1, 2, 3]);
    }
}
