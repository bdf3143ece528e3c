//! A per-thread, direct-mapped cache of resolved cells for the lookup-by-string path.
//!
//! Entering the lock-free map's read guard costs a full fence on every call; a hit here costs a hash, a
//! thread-local access and a key comparison. Guarantees:
//! - Exact: an entry is used only when store id, hash, window and key bytes all match.
//! - Never stale in effect: a cell reclaimed from its store is retired first, and a retired cell refuses every
//!   add and merge (see the cell's docs); the caller then evicts the entry and resolves through the map.
//! - Store ids are never reused within a process, so an entry can never be mistaken for a later store's cell.
//! - Bounded: [`SETS`] × [`WAYS`] entries per thread (about 100 KiB), allocated on the thread's first lookup.
//!   Several ways per set, so hot keys that share a set do not evict each other on every call.

use std::cell::RefCell;
use std::sync::Arc;

use super::cell::Cell;
use super::window::Window;

/// Sets per thread.
pub const SETS: usize = 1024;
/// Entries per set.
pub const WAYS: usize = 4;

struct Entry {
    store: u64,
    hash: u64,
    cell: Arc<Cell>,
}

thread_local! {
    static CACHE: RefCell<Vec<[Option<Entry>; WAYS]>> = const { RefCell::new(Vec::new()) };
}

/// Hands out store ids; never reused.
static NEXT_STORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh store id.
pub(crate) fn new_store_id() -> u64 {
    // Relaxed: a unique ticket; nothing is published through it.
    NEXT_STORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[inline]
fn set(hash: u64) -> usize {
    // SETS is a power of two; the caller's hash is well mixed in its low bits.
    (hash as usize) & (SETS - 1)
}

/// The cache's hash of `(key, window)`: the key bytes hashed once, the window folded in arithmetically.
#[inline]
pub(crate) fn hash(hasher: &impl std::hash::BuildHasher, key: &str, window: Window) -> u64 {
    let h = hasher.hash_one(key.as_bytes());
    // The window's canonical code: count, unit, alignment and an anchored window's phase.
    (h ^ window.code().wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(23)
}

/// Runs `f` on the cached cell of `(key, window)` in `store`, if cached. `f` returns `None` to evict the entry
/// (the cell was found retired), which also makes this return `None`.
#[inline]
pub(crate) fn with_cached<R>(
    store: u64,
    hash: u64,
    key: &str,
    window: Window,
    f: impl FnOnce(&Arc<Cell>) -> Option<R>,
) -> Option<R> {
    CACHE.with_borrow_mut(|cache| {
        let ways = cache.get_mut(set(hash))?;
        let way = ways.iter().position(|entry| {
            entry.as_ref().is_some_and(|e| {
                e.store == store
                    && e.hash == hash
                    && e.cell.window() == window
                    && **e.cell.key() == *key
            })
        })?;
        let result = ways[way].as_ref().and_then(|e| f(&e.cell));
        if result.is_none() {
            ways[way] = None;
        }
        result
    })
}

/// Remembers `cell` for `(store, hash)` in the first way of its set; the others shift down one way and the last
/// is dropped (least recently inserted goes first).
pub(crate) fn remember(store: u64, hash: u64, cell: &Arc<Cell>) {
    CACHE.with_borrow_mut(|cache| {
        if cache.is_empty() {
            cache.resize_with(SETS, || [const { None }; WAYS]);
        }
        let ways = &mut cache[set(hash)];
        ways.rotate_right(1);
        ways[0] = Some(Entry {
            store,
            hash,
            cell: Arc::clone(cell),
        });
    })
}
