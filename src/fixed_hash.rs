//! Hash maps and sets with a fixed hasher, for the sans-IO planes and the simulator.
//!
//! Guarantee: iteration order depends only on the contents and the order of inserts, never on the process, so
//! a simulated run replays exactly from its seed (the planes send in the order they iterate, and the simulated
//! network draws each frame's latency in turn; `std`'s per-process random hasher made two processes with one
//! seed diverge). The keys stored here are local ids (links, peers), authenticated peers' replica ids and
//! addresses, and node ids of members, all bounded by the member count, so a fixed hasher gives an attacker no
//! lever that the member bound does not already remove.

/// A `std` hash map with [`foldhash::fast::FixedState`].
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// A `std` hash set with [`foldhash::fast::FixedState`].
pub(crate) type HashSet<T> = std::collections::HashSet<T, foldhash::fast::FixedState>;
