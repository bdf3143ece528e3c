//! Atomics shim: `std` atomics normally, loom's under `--cfg bifrost_loom`, so the lock-free cell can be model
//! checked without changing its code. (A cfg name of our own: `--cfg loom` would also change how tokio builds.)

#[cfg(not(bifrost_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(bifrost_loom))]
pub(crate) use std::sync::{Mutex, OnceLock};

#[cfg(bifrost_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(bifrost_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(bifrost_loom)]
pub(crate) use std::sync::OnceLock;

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
