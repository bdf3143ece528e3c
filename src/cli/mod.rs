//! Subcommands of the binary beyond `check-config` and `run`: the local demo cluster, the status client, and
//! the permission checks of secret-bearing files.

pub mod demo;
pub mod file_permissions;
pub mod status;
