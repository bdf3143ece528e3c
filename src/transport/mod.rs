//! Transport: the quinn endpoint on `gossip.port`, mutual TLS and peer links. Filled by the replication issue.
