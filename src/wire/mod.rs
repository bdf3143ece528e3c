//! Wire (sans-IO): frame header and rkyv message types with validated decode. Filled by the replication issue.
