//! What went wrong with an etcd call, in words an operator can act on: etcd's errors mapped to
//! [`DiscoveryError`]s naming the endpoints, and, when the error says too little, a diagnosis of our own (a
//! plain TCP connect, a TLS handshake presenting the same client certificate), bounded by
//! [`Inner::diagnosis_deadline`].
//!
//! Alerts and rustls errors are decoded by the crate's shared TLS diagnosis (`crate::tls::diagnosis`); the
//! hints (what to check) are etcd's own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::tls::Tls;
use super::{BACKEND, Inner};
use crate::discovery::{DiscoveryError, error_chain};
use crate::tls::diagnosis::{ALERT_TEXT, alert_named, rustls_error_in};

// gRPC status codes (grpc/doc/statuscodes.md), compared as numbers: the `tonic` crate is not a direct
// dependency.
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAVAILABLE: i32 = 14;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// What etcd at `endpoint` (an `https://` URL) says to a TLS handshake of our own presenting the same
/// client certificate: the TLS failure and what to check (e.g. the alert refusing the client certificate,
/// or the connection closed during the handshake), or `None` when etcd accepts it (its first HTTP/2 frames
/// arrive), closes after the handshake without an alert, cannot be reached, or `deadline` passes first.
/// Sends no application data. Used when the etcd client's error lost the TLS cause (HTTP/2
/// keeps only a "connection closed" when etcd's alert races the client's first request).
async fn tls_probe(tls: &Tls, endpoint: &str, deadline: Instant) -> Option<(String, &'static str)> {
    let url = url::Url::parse(endpoint).ok()?;
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default()?;
    let addr = tokio::time::timeout_at(deadline, tokio::net::lookup_host((host.as_str(), port)))
        .await
        .ok()?
        .ok()?
        .next()?;
    let name = ServerName::try_from(host).ok()?;
    let config = Arc::clone(&tls.probe);
    let deadline = deadline.into_std();
    match tokio::task::spawn_blocking(move || blocking_tls_probe(config, name, addr, deadline))
        .await
        .ok()??
    {
        Ok(cause) => {
            let hint = rustls_hint(&cause, tls);
            Some((cause.to_string(), hint))
        }
        Err(ClosedInHandshake) => Some((CLOSED_IN_HANDSHAKE.into(), NOT_TLS_HINT)),
    }
}

/// The peer closed (or reset) the connection before the TLS handshake completed.
struct ClosedInHandshake;

fn blocking_tls_probe(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    addr: SocketAddr,
    deadline: std::time::Instant,
) -> Option<Result<rustls::Error, ClosedInHandshake>> {
    use std::io::Read;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut socket = std::net::TcpStream::connect_timeout(&addr, left()?).ok()?;
    let mut connection = rustls::ClientConnection::new(config, name).ok()?;
    loop {
        let timeout = left()?;
        socket.set_read_timeout(Some(timeout)).ok()?;
        socket.set_write_timeout(Some(timeout)).ok()?;
        if let Err(error) = connection.complete_io(&mut socket) {
            // A TLS error comes wrapped in an io::Error; the connection closed (or reset) in the handshake
            // tells too; anything else (a timeout) tells nothing.
            if let Some(cause) = rustls_error_in(&error) {
                return Some(Ok(cause.clone()));
            }
            let closed = matches!(
                error.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            );
            if closed && connection.is_handshaking() {
                return Some(Err(ClosedInHandshake));
            }
            return None;
        }
        if connection.is_handshaking() {
            continue;
        }
        let mut byte = [0_u8; 1];
        match connection.reader().read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // Data: etcd accepted us. Ok(0) or another error: closed without an alert.
            _ => return None,
        }
    }
}

impl Inner {
    /// How long a diagnosis may take: 1 s or 1/6 of `dial_timeout`, whichever is shorter.
    fn diagnosis_deadline(&self) -> Instant {
        Instant::now() + (self.dial_timeout / 6).min(Duration::from_secs(1))
    }

    /// ` (endpoint: TLS handshake failed: ...; ...)` for the endpoints whose [`tls_probe`] finds a TLS
    /// error, bounded by [`Inner::diagnosis_deadline`]; empty when none does.
    pub(super) async fn probe_all(&self, tls: &Tls) -> String {
        let deadline = self.diagnosis_deadline();
        let mut causes = Vec::new();
        for endpoint in &self.endpoints {
            if let Some((cause, hint)) = tls_probe(tls, endpoint, deadline).await {
                causes.push(format!("{endpoint}: {}", tls.failure(&cause, hint)));
            }
        }
        if causes.is_empty() {
            String::new()
        } else {
            format!(" ({})", causes.join("; "))
        }
    }

    /// Why nothing answered, when a plain TCP connect tells (e.g. "connection refused") or, for `https://`
    /// endpoints that accept TCP, a [`tls_probe`]: each endpoint is tried once, all together bounded by
    /// [`Inner::diagnosis_deadline`].
    pub(super) async fn diagnose(&self) -> String {
        let deadline = self.diagnosis_deadline();
        let mut causes = Vec::new();
        for endpoint in &self.endpoints {
            let Ok(url) = url::Url::parse(endpoint) else {
                continue;
            };
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                continue;
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect((host, port)))
                .await
            {
                Ok(Ok(_)) => {
                    if let Some(tls) = &self.tls
                        && let Some((cause, hint)) = tls_probe(tls, endpoint, deadline).await
                    {
                        causes.push(format!("{endpoint}: {}", tls.failure(&cause, hint)));
                    }
                }
                Ok(Err(e)) => causes.push(format!("{endpoint}: {e}")),
                Err(_) => causes.push(format!("{endpoint}: TCP connect timed out")),
            }
        }
        if causes.is_empty() {
            String::new()
        } else {
            format!(" ({})", causes.join("; "))
        }
    }

    pub(super) fn map_error(&self, what: &str, error: &etcd_client::Error) -> DiscoveryError {
        use etcd_client::Error as E;
        if let Some(tls) = &self.tls
            && let Some((cause, hint)) = tls_failure(error, tls)
        {
            return DiscoveryError::Unreachable {
                backend: BACKEND,
                target: self.target.clone(),
                reason: format!("{what}: {}", tls.failure(&cause, hint)),
            };
        }
        match error {
            E::GRpcStatus(status) => match i32::from(status.code()) {
                GRPC_PERMISSION_DENIED | GRPC_UNAUTHENTICATED => DiscoveryError::Forbidden {
                    backend: BACKEND,
                    reason: format!(
                        "etcd at {} refused {what}: {}; the etcd user needs readwrite permission on the \
                         key prefix {} (etcdctl role grant-permission --prefix=true <role> readwrite {})",
                        self.target,
                        status.message(),
                        self.prefix,
                        self.prefix
                    ),
                },
                GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED | GRPC_UNKNOWN | GRPC_CANCELLED => {
                    DiscoveryError::Unreachable {
                        backend: BACKEND,
                        target: self.target.clone(),
                        reason: format!("{what}: {}", describe(error)),
                    }
                }
                _ => DiscoveryError::BadAnswer {
                    backend: BACKEND,
                    reason: format!("{what} at {}: {}", self.target, describe(error)),
                },
            },
            E::TransportError(_) | E::IoError(_) | E::InvalidUri(_) | E::EndpointError(_) => {
                DiscoveryError::Unreachable {
                    backend: BACKEND,
                    target: self.target.clone(),
                    reason: format!("{what}: {}", describe(error)),
                }
            }
            _ => DiscoveryError::BadAnswer {
                backend: BACKEND,
                reason: format!("{what} at {}: {}", self.target, describe(error)),
            },
        }
    }
}

/// The rustls error somewhere in `error` (tokio-rustls reports it inside an `io::Error`).
fn rustls_cause(error: &etcd_client::Error) -> Option<&rustls::Error> {
    match error {
        // The status is a field, not a source, of the etcd error.
        etcd_client::Error::GRpcStatus(status) => rustls_error_in(status),
        other => rustls_error_in(other),
    }
}

/// The TLS failure in `error`, if it is one: its cause and what to check (a `; ...` suffix, or empty).
fn tls_failure(error: &etcd_client::Error, tls: &Tls) -> Option<(String, &'static str)> {
    if let Some(cause) = rustls_cause(error) {
        return Some((cause.to_string(), rustls_hint(cause, tls)));
    }
    // An alert sent by etcd after the handshake (refusing the client certificate, in TLS 1.3) reaches the
    // client through HTTP/2, which keeps only the text of the rustls error: "received fatal alert: <Name>".
    let text = describe(error);
    if text.contains(HANDSHAKE_EOF) {
        return Some((CLOSED_IN_HANDSHAKE.into(), NOT_TLS_HINT));
    }
    if text.contains(NO_NATIVE_CERTS) {
        return Some((
            "the system trust store has no certificate".into(),
            "; install the system's CA certificates (Debian: ca-certificates) or set EtcdOptions::ca_file",
        ));
    }
    let start = text.find(ALERT_TEXT)?;
    let name: String = text[start + ALERT_TEXT.len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let hint = alert_named(&name).map_or("", |alert| alert_hint(alert, tls));
    Some((format!("{ALERT_TEXT}{name}"), hint))
}

/// What to check after the TLS error `cause` (a `; ...` suffix, or empty).
fn rustls_hint(cause: &rustls::Error, tls: &Tls) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match cause {
        E::InvalidCertificate(C::UnknownIssuer) if !tls.custom_ca => {
            "; etcd's certificate is not issued by a CA of the system trust store: set \
                 EtcdOptions::ca_file to the CA that issued it"
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            "; etcd's certificate is not issued by the CA(s) of EtcdOptions::ca_file"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "; etcd's certificate does not name the endpoint's host (DNS name or IP address SAN)"
        }
        E::AlertReceived(alert) => alert_hint(*alert, tls),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => NOT_TLS_HINT,
        _ => "",
    }
}

/// How the etcd client (tokio-rustls) says that the server closed the connection during the handshake.
const HANDSHAKE_EOF: &str = "tls handshake eof";
/// What we say then.
const CLOSED_IN_HANDSHAKE: &str = "the endpoint closed the connection during the handshake";
/// The hint for an endpoint that may not speak TLS.
const NOT_TLS_HINT: &str =
    "; does the endpoint speak TLS? (an etcd serving plain http needs an http:// endpoint)";
/// How the etcd client (tonic) says that the system trust store is empty.
const NO_NATIVE_CERTS: &str = "no native certs found";

/// What to check after etcd sent the TLS alert `alert`.
fn alert_hint(alert: AlertDescription, tls: &Tls) -> &'static str {
    use AlertDescription as A;
    match alert {
        A::CertificateRequired | A::BadCertificate if !tls.client_cert => {
            "; etcd requires a client certificate (--client-cert-auth): set EtcdOptions::client_cert_file and \
             client_key_file"
        }
        A::CertificateRequired
        | A::BadCertificate
        | A::UnknownCA
        | A::CertificateUnknown
        | A::UnsupportedCertificate
        | A::CertificateExpired
        | A::CertificateRevoked => {
            "; etcd refused the client certificate: it must be issued by etcd's --trusted-ca-file CA, be \
             valid now and allow client authentication"
        }
        _ => "",
    }
}

/// An error with its sources, `a: b: c`.
fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let mut text = format!("{} ({})", status.message(), status.code().description());
            if let Some(source) = std::error::Error::source(status) {
                let chain = error_chain(source);
                if !text.contains(&chain) {
                    text.push_str(": ");
                    text.push_str(&chain);
                }
            }
            text
        }
        other => error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::super::EtcdOptions;
    use super::*;

    fn system_trust() -> Tls {
        Tls::load(&EtcdOptions::default()).expect("no files to read")
    }

    #[test]
    fn an_alert_kept_only_as_text_is_parsed_back_with_its_hint() {
        let tls = system_trust();
        let error = etcd_client::Error::WatchError(
            "h2 protocol error: received fatal alert: CertificateRequired".into(),
        );
        let (cause, hint) = tls_failure(&error, &tls).expect("a TLS failure");
        assert_eq!(cause, "received fatal alert: CertificateRequired");
        assert!(hint.contains("client_cert_file"), "{hint}");
        // An alert name rustls does not use is still reported, with no hint.
        let error = etcd_client::Error::WatchError("received fatal alert: Nonsense".into());
        assert_eq!(
            tls_failure(&error, &tls),
            Some(("received fatal alert: Nonsense".to_owned(), ""))
        );
        let error = etcd_client::Error::WatchError("connection refused".into());
        assert_eq!(tls_failure(&error, &tls), None);
    }

    #[test]
    fn rustls_errors_and_alerts_get_the_hint_for_the_trust_used() {
        let tls = system_trust();
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(rustls_hint(&unknown, &tls).contains("system trust store"));
        let refused = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        assert!(
            rustls_hint(&refused, &tls).contains("refused the client certificate"),
            "a certificate alert after a client certificate was sent"
        );
        assert_eq!(
            alert_hint(AlertDescription::CertificateRequired, &tls),
            alert_hint(AlertDescription::BadCertificate, &tls)
        );
        assert_eq!(alert_hint(AlertDescription::ProtocolVersion, &tls), "");
    }
}
