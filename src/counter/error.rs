//! Typed errors of the counter plane. Each variant says what it did to the store's state.

/// An error from the counter store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// The store already holds `limits.max_keys` cells. Nothing was created; existing keys keep working. The
    /// refusal is counted in [`crate::counter::StoreStats::refused_local_keys`].
    #[error("key {key:?} refused: the store is at limits.max_keys = {max_keys}")]
    KeyLimit {
        /// The refused key.
        key: String,
        /// The configured cap.
        max_keys: usize,
    },
    /// A merge of another replica's value would create a key, but the store already holds
    /// `limits.max_remote_keys` cells created by merges. Nothing was created; local keys are unaffected. Counted
    /// in [`crate::counter::StoreStats::refused_remote_keys`].
    #[error(
        "replicated key {key:?} refused: the store is at limits.max_remote_keys = {max_remote_keys}"
    )]
    RemoteKeyLimit {
        /// The refused key.
        key: String,
        /// The configured cap.
        max_remote_keys: usize,
    },
    /// The key is longer than `limits.max_key_length` bytes. Nothing was created.
    #[error("key of {len} bytes refused: longer than limits.max_key_length = {max}")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The key is empty. Nothing was created.
    #[error("empty key refused")]
    EmptyKey,
}
