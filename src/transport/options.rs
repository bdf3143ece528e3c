//! Tuning of the QUIC endpoint. The defaults are what a LAN or one-region cluster wants; `docs/transport.md`
//! explains each choice.

use std::sync::Arc;
use std::time::Duration;

use super::error::TransportError;

/// Options of a [`super::Transport`]. Every field documents its unit, default and constraints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// How often an otherwise quiet connection sends a QUIC PING. Default: 1 s. Must be shorter than
    /// `idle_timeout` (a third of it or less is sensible).
    ///
    /// Keeps NAT and conntrack state alive and lets a dead peer be noticed within `idle_timeout` even when no
    /// deltas flow.
    pub keep_alive_interval: Duration,
    /// A connection that hears nothing from its peer for this long is closed (`FailureKind::Timeout`).
    /// Default: 10 s. Range: 1 ms ..= 2^62 ms (QUIC's limit); the effective value is the smaller of both sides'.
    ///
    /// With 1 s keep-alives, 10 s means ten lost PINGs in a row: a real outage, not packet loss.
    pub idle_timeout: Duration,
    /// Longest wait for a handshake, dialing ([`super::Transport::connect`]) and accepting. Default: 5 s.
    /// Must be non-zero.
    pub connect_timeout: Duration,
    /// Bytes of received datagrams buffered per connection before the oldest are dropped. Default: 4 MiB.
    /// Must be non-zero.
    ///
    /// Deltas arrive in bursts every flush interval; a few MiB absorbs a burst while the reader is busy merging.
    pub datagram_receive_buffer: usize,
    /// Bytes of outgoing datagrams buffered per connection before the oldest are dropped. Default: 1 MiB.
    /// Must be non-zero.
    pub datagram_send_buffer: usize,
}

impl TransportOptions {
    /// Default `keep_alive_interval`: 1 s.
    pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
    /// Default `idle_timeout`: 10 s.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `connect_timeout`: 5 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default `datagram_receive_buffer`: 4 MiB.
    pub const DEFAULT_DATAGRAM_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;
    /// Default `datagram_send_buffer`: 1 MiB.
    pub const DEFAULT_DATAGRAM_SEND_BUFFER: usize = 1024 * 1024;

    /// Checks the constraints and builds the quinn transport configuration.
    pub(crate) fn quinn_transport_config(
        &self,
    ) -> Result<Arc<quinn::TransportConfig>, TransportError> {
        let invalid = |field: &'static str, reason: &str| TransportError::InvalidOption {
            field,
            reason: reason.to_owned(),
        };
        if self.idle_timeout.is_zero() {
            return Err(invalid("idle_timeout", "must be non-zero"));
        }
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| invalid("idle_timeout", "must be at most 2^62 ms"))?;
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return Err(invalid(
                "keep_alive_interval",
                "must be non-zero and shorter than idle_timeout",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be non-zero"));
        }
        if self.datagram_receive_buffer == 0 {
            return Err(invalid("datagram_receive_buffer", "must be non-zero"));
        }
        if self.datagram_send_buffer == 0 {
            return Err(invalid("datagram_send_buffer", "must be non-zero"));
        }
        let mut config = quinn::TransportConfig::default();
        config
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive_interval))
            .datagram_receive_buffer_size(Some(self.datagram_receive_buffer))
            .datagram_send_buffer_size(self.datagram_send_buffer);
        Ok(Arc::new(config))
    }
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            keep_alive_interval: Self::DEFAULT_KEEP_ALIVE_INTERVAL,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            datagram_receive_buffer: Self::DEFAULT_DATAGRAM_RECEIVE_BUFFER,
            datagram_send_buffer: Self::DEFAULT_DATAGRAM_SEND_BUFFER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(TransportOptions::default().quinn_transport_config().is_ok());
    }

    #[test]
    fn keep_alive_must_be_shorter_than_idle_timeout() {
        let options = TransportOptions {
            keep_alive_interval: Duration::from_secs(10),
            ..TransportOptions::default()
        };
        match options.quinn_transport_config() {
            Err(TransportError::InvalidOption { field, .. }) => {
                assert_eq!(field, "keep_alive_interval")
            }
            other => panic!("expected InvalidOption, got {other:?}"),
        }
    }
}
