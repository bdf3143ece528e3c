//! Subcommands of the binary beyond `check-config` and `run`: the local demo cluster, the status client, the export and import of counters, and
//! the permission checks of secret-bearing files.

pub mod demo;
pub mod exchange;
pub mod file_permissions;
pub mod status;
