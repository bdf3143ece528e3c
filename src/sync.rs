//! Atomics shim: `std` atomics normally, loom's under `--cfg bifrost_loom`, so the lock-free cell can be model
//! checked without changing its code. (A cfg name of our own: `--cfg loom` would also change how tokio builds.)

#[cfg(not(bifrost_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(bifrost_loom))]
pub(crate) use std::sync::{Mutex, OnceLock};

#[cfg(bifrost_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(bifrost_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(bifrost_loom)]
pub(crate) use std::sync::OnceLock;
