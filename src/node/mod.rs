//! Node runtime: wires the planes together on tokio, ticks the coarse clock, handles shutdown. Filled by the
//! replication issue.
