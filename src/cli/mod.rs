//! Subcommands of the binary beyond `check-config` and `run`: the local demo cluster and the status client.

pub mod demo;
pub mod status;
