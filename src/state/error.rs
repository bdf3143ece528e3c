//! Errors of the shared-state plane. Each variant says what the call did to the state.

/// Why a shared-state call was refused. Nothing was changed by a refused call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The config map holds `max_entries` keys (tombstones included); existing keys can still be written.
    #[error("config map full: at most {max_entries} keys (tombstones included); nothing written")]
    Full {
        /// The bound.
        max_entries: usize,
    },
    /// The key is longer than `max_key_bytes`.
    #[error("config key of {len} bytes: at most {max}; nothing written")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The key is empty.
    #[error("empty config key; nothing written")]
    EmptyKey,
    /// The value is larger than `max_value_bytes`.
    #[error("config value of {len} bytes: at most {max}; nothing written")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The traffic key (or one of the counters behind it) was refused by the counter store.
    #[error("traffic key refused: {0}")]
    Counter(#[from] crate::counter::CounterError),
}
