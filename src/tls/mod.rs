//! The TLS pieces every plane that speaks TLS shares: certificate verifiers, PEM loading and the diagnosis of a
//! failed handshake. The transport (QUIC between nodes) and the etcd discovery backend (gRPC over HTTP/2) both
//! build on it, so a rule about certificates is written, and fixed, once.
//!
//! # Guarantees
//!
//! - [`verifiers`]: the only custom certificate verifiers of the crate. Every one of them checks the handshake
//!   signature with the ring provider's algorithms (the peer must hold the key of the certificate it presents),
//!   whatever it accepts as a chain.
//! - [`pem`]: every PEM file is read and parsed by the same code; every error names the config field (or
//!   option) the path came from and the path, and never echoes the file's content.
//! - [`diagnosis`]: TLS alerts and rustls errors are decoded and classified by the same code, whichever plane
//!   saw them. It is pure: it inspects errors and codes and does no I/O.

pub(crate) mod diagnosis;
pub(crate) mod pem;
pub(crate) mod verifiers;
