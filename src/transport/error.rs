//! Typed errors of the transport plane, and the classification of failed connections.
//!
//! Every variant names what is at fault (the file, the peer address, the option) and says what happened to
//! state: a [`TlsError`] means no [`super::TlsSetup`] was built; a [`TransportError`] from `bind` means nothing is
//! bound (the UDP socket is released again if the TCP listener failed); one from `connect` means no connection
//! exists; a [`LinkError`] concerns one link, and the link is unusable after the `ConnectionLost` variants.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::diagnosis::{alert_cause, alert_name, quic_crypto_alert};
use crate::tls::pem::{PemError, PemProblem};

/// Why a TLS setup could not be built. Nothing was built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {field} {path}: {source}")]
    ReadFile {
        /// The config field the path came from (`cluster_config.security.ca_file`, ...).
        field: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A PEM file could not be parsed, or holds no item of the expected kind.
    #[error("invalid PEM in {field} {path}: {reason}")]
    Pem {
        /// The config field the path came from.
        field: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What is wrong, in words (never the file's content).
        reason: String,
    },
    /// rustls refused a certificate, key or configuration (e.g. a key that does not match the certificate).
    #[error("TLS setup failed: {what}: {source}")]
    Rustls {
        /// The step that failed, naming the file when one is involved.
        what: String,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The certificate verifier could not be built (e.g. the CA file holds no usable trust anchor).
    #[error("TLS setup failed: {what}: {source}")]
    Verifier {
        /// The step that failed, naming the file when one is involved.
        what: String,
        /// The rustls verifier builder error.
        source: rustls::server::VerifierBuilderError,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {what}: {source}")]
    Certificate {
        /// The step that failed.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// The key derivation from the cluster secret failed (not expected with a valid secret).
    #[error("cluster secret key derivation failed: {what}")]
    Derive {
        /// The step that failed.
        what: &'static str,
    },
    /// The rustls configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

impl TlsError {
    /// The error for a PEM file of the files trust mode: [`TlsError::ReadFile`] when it could not be read,
    /// [`TlsError::Pem`] otherwise.
    pub(crate) fn from_pem(error: PemError) -> TlsError {
        let PemError {
            field,
            path,
            problem,
        } = error;
        match problem {
            PemProblem::Read(source) => TlsError::ReadFile {
                field,
                path,
                source,
            },
            other => TlsError::Pem {
                field,
                path,
                reason: other.to_string(),
            },
        }
    }
}

/// What went wrong with a connection attempt, for logs and for callers that treat causes differently (a bad
/// certificate is a configuration problem; a timeout may be a partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// A certificate was rejected: by us (unknown CA, expired, no certificate sent) or by the peer (it sent a
    /// certificate alert).
    BadCertificate,
    /// The TLS handshake failed for another reason (no common ALPN protocol, cipher suite or version).
    Handshake,
    /// No handshake completed in time, or the connection went idle.
    Timeout,
    /// The peer closed or reset the connection, or refused it.
    Closed,
    /// The local endpoint was closed.
    LocallyClosed,
    /// Anything else (a protocol violation, an unsupported version).
    Other,
}

impl FailureKind {
    /// A short name for logs: `bad certificate`, `handshake failure`, `timeout`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::BadCertificate => "bad certificate",
            FailureKind::Handshake => "handshake failure",
            FailureKind::Timeout => "timeout",
            FailureKind::Closed => "closed by peer",
            FailureKind::LocallyClosed => "closed locally",
            FailureKind::Other => "connection error",
        }
    }

    /// Classifies a quinn connection error and describes it in words (the TLS alert by name when there is one).
    pub(crate) fn classify(error: &quinn::ConnectionError) -> (FailureKind, String) {
        use quinn::ConnectionError as E;
        match error {
            E::TransportError(e) => match quic_crypto_alert(u64::from(e.code)) {
                Some(alert) => {
                    // rustls' reason says whether the peer's certificate was at fault ("invalid peer
                    // certificate: UnknownIssuer", "peer sent no certificates").
                    let kind = if e.reason.contains("certificate") {
                        FailureKind::BadCertificate
                    } else {
                        alert_kind(alert)
                    };
                    let hint = if e.reason.contains("BadSignature")
                        || e.reason.contains("UnknownIssuer")
                    {
                        " (the peer's certificate is not signed by this cluster's CA: another cluster secret or CA?)"
                    } else {
                        ""
                    };
                    (
                        kind,
                        format!(
                            "local TLS error ({}): {}{hint}",
                            alert_name(alert),
                            e.reason
                        ),
                    )
                }
                None => (FailureKind::Other, e.to_string()),
            },
            E::ConnectionClosed(close) => match quic_crypto_alert(u64::from(close.error_code)) {
                Some(alert) => (
                    alert_kind(alert),
                    format!("peer sent TLS alert {}", alert_name(alert)),
                ),
                None => (FailureKind::Closed, close.to_string()),
            },
            E::ApplicationClosed(close) => (FailureKind::Closed, close.to_string()),
            E::Reset => (FailureKind::Closed, "reset by peer".to_owned()),
            E::TimedOut => (
                FailureKind::Timeout,
                "no answer within the idle timeout".to_owned(),
            ),
            E::LocallyClosed => (FailureKind::LocallyClosed, "closed locally".to_owned()),
            E::VersionMismatch | E::CidsExhausted => (FailureKind::Other, error.to_string()),
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate alert is a certificate problem; any other alert is a handshake failure.
fn alert_kind(alert: u8) -> FailureKind {
    if alert_cause(alert).blames_certificate() {
        FailureKind::BadCertificate
    } else {
        FailureKind::Handshake
    }
}

/// Why the transport could not be bound or a connection could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// [`super::Transport::bind`] was called outside a tokio runtime.
    #[error("the transport needs a tokio runtime: call Transport::bind from inside one")]
    NoRuntime,
    /// An option is out of range. Nothing was bound.
    #[error("invalid transport option {field}: {reason}")]
    InvalidOption {
        /// The [`super::TransportOptions`] field.
        field: &'static str,
        /// The rule that was broken.
        reason: String,
    },
    /// The UDP socket of the QUIC endpoint could not be bound or set up. Nothing was bound.
    #[error("cannot bind the QUIC endpoint on UDP {addr}: {source}")]
    BindUdp {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// The TCP health-check listener could not be bound on the QUIC endpoint's port. The UDP socket was
    /// released again.
    #[error(
        "cannot bind the TCP health-check listener on {addr} (same port as the QUIC endpoint): {source}"
    )]
    BindTcp {
        /// The address asked for (the QUIC endpoint's address).
        addr: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// The TLS configuration could not be turned into a QUIC one. Nothing was bound.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The dial could not even start (closed endpoint, invalid address).
    #[error("cannot dial {peer}: {source}")]
    Dial {
        /// The peer's address.
        peer: SocketAddr,
        /// The quinn error.
        source: quinn::ConnectError,
    },
    /// The connection failed during the handshake. No connection exists.
    #[error("connection with {peer} failed ({kind}): {detail}")]
    Connection {
        /// The peer's address.
        peer: SocketAddr,
        /// The cause, classified.
        kind: FailureKind,
        /// The cause in words (the TLS alert or rustls' reason when there is one).
        detail: String,
        /// The quinn error.
        source: quinn::ConnectionError,
    },
    /// No handshake completed within [`super::TransportOptions::connect_timeout`]. The attempt was abandoned.
    #[error("connection with {peer} timed out after {after:?} without completing the handshake")]
    Timeout {
        /// The peer's address.
        peer: SocketAddr,
        /// The timeout that elapsed.
        after: Duration,
    },
}

impl TransportError {
    /// The classified cause of a failed connection attempt (`None` for setup errors).
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            TransportError::Connection { kind, .. } => Some(*kind),
            TransportError::Timeout { .. } => Some(FailureKind::Timeout),
            TransportError::Dial { .. } => Some(FailureKind::LocallyClosed),
            _ => None,
        }
    }
}

/// An error on an established [`super::Link`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The datagram is larger than the link currently accepts. Nothing was sent; the link is still usable.
    /// `max` follows the path MTU: re-read [`super::Link::max_datagram_size`] and split the batch.
    #[error("datagram of {len} bytes to {peer} exceeds the current maximum of {max} bytes")]
    DatagramTooLarge {
        /// The peer's address.
        peer: SocketAddr,
        /// The datagram's length.
        len: usize,
        /// The current maximum.
        max: usize,
    },
    /// The peer did not enable datagrams (not a bifrost-cluster transport?). Nothing was sent.
    #[error("peer {peer} does not accept datagrams")]
    DatagramsUnsupported {
        /// The peer's address.
        peer: SocketAddr,
    },
    /// The connection is gone; the link is unusable and should be dropped.
    #[error("connection with {peer} lost ({kind}): {detail}")]
    ConnectionLost {
        /// The peer's address.
        peer: SocketAddr,
        /// The cause, classified.
        kind: FailureKind,
        /// The cause in words.
        detail: String,
        /// The quinn error.
        source: quinn::ConnectionError,
    },
}

impl LinkError {
    pub(crate) fn lost(peer: SocketAddr, source: quinn::ConnectionError) -> Self {
        let (kind, detail) = FailureKind::classify(&source);
        LinkError::ConnectionLost {
            peer,
            kind,
            detail,
            source,
        }
    }
}
