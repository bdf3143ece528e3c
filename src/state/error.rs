//! Errors of the shared-state plane. Each variant says what the call did to the state.

use std::fmt;

/// Which bound of the config map a write ran into; it displays as the config field that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Live keys: `limits.config_max_entries`.
    Entries,
    /// Bytes of live keys and values: `limits.config_max_bytes`.
    Bytes,
}

impl Limit {
    /// The config field that sets the bound.
    pub fn field(self) -> &'static str {
        match self {
            Limit::Entries => "limits.config_max_entries",
            Limit::Bytes => "limits.config_max_bytes",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// Why a shared-state call was refused. Nothing was changed by a refused call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The config map is at one of its bounds (live keys or live bytes; tombstones do not count); existing
    /// keys can still be written within the bytes bound, and a delete frees room at once.
    #[error(
        "config map full: {limit} = {max} reached; nothing written (delete entries to make room)"
    )]
    Full {
        /// The bound reached.
        limit: Limit,
        /// Its value (keys, or bytes).
        max: usize,
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
