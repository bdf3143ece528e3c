//! Why a TLS handshake failed: decoding TLS alerts (from a QUIC close code or from rustls' text), classifying
//! them, and finding the rustls error inside another library's error.
//!
//! Pure: these functions inspect codes, errors and text; they do no I/O. The planes turn the result into their
//! own words (the transport's [`FailureKind`](crate::transport::FailureKind) and
//! [`RefusalReason`](crate::transport::RefusalReason), the etcd backend's hints).

use std::error::Error;

use rustls::AlertDescription;

/// The TLS alert carried by a QUIC `CRYPTO_ERROR` transport error code (RFC 9001 §4.8: `0x100 + alert`, so
/// `0x100..=0x1ff`), if the code is one.
pub(crate) fn quic_crypto_alert(code: u64) -> Option<u8> {
    if (0x100..0x200).contains(&code) {
        u8::try_from(code & 0xff).ok()
    } else {
        None
    }
}

/// The alert's name as rustls spells it (`UnknownCA`, `CertificateRequired`, `Unknown(200)`).
pub(crate) fn alert_name(alert: u8) -> String {
    format!("{:?}", AlertDescription::from(alert))
}

/// What a TLS alert says went wrong, whichever side sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlertCause {
    /// A certificate was required and none was sent (`certificate_required`).
    NoCertificate,
    /// The certificate does not chain to a trusted CA (`unknown_ca`).
    UnknownCa,
    /// A signature did not verify (`decrypt_error`). Derived CAs of different cluster secrets share their
    /// subject name, so a peer of another cluster finds "its" CA and fails here: a certificate problem.
    BadSignature,
    /// The certificate has expired or is not yet valid (`certificate_expired`).
    Expired,
    /// The certificate was refused for another reason (`bad_certificate`, `unsupported_certificate`,
    /// `certificate_revoked`, `certificate_unknown`, `access_denied`).
    BadCertificate,
    /// The OCSP status of the certificate was refused (`bad_certificate_status_response`).
    CertificateStatus,
    /// No common application protocol (`no_application_protocol`): not a peer of this protocol version.
    WrongAlpn,
    /// Any other alert (version, cipher suite, a protocol error).
    Other,
}

impl AlertCause {
    /// Whether the alert blames a certificate: by its chain, validity, signature or absence.
    pub(crate) fn blames_certificate(self) -> bool {
        match self {
            AlertCause::NoCertificate
            | AlertCause::UnknownCa
            | AlertCause::BadSignature
            | AlertCause::Expired
            | AlertCause::BadCertificate => true,
            AlertCause::CertificateStatus | AlertCause::WrongAlpn | AlertCause::Other => false,
        }
    }
}

/// Classifies the TLS alert `alert` (by its code).
pub(crate) fn alert_cause(alert: u8) -> AlertCause {
    use AlertDescription as A;
    match A::from(alert) {
        A::CertificateRequired => AlertCause::NoCertificate,
        A::UnknownCA => AlertCause::UnknownCa,
        A::DecryptError => AlertCause::BadSignature,
        A::CertificateExpired => AlertCause::Expired,
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateUnknown
        | A::AccessDenied => AlertCause::BadCertificate,
        A::BadCertificateStatusResponse => AlertCause::CertificateStatus,
        A::NoApplicationProtocol => AlertCause::WrongAlpn,
        _ => AlertCause::Other,
    }
}

/// How rustls writes a TLS alert received from the peer, before the alert's name (`received fatal alert:
/// BadCertificate`). Libraries that keep only an error's text (HTTP/2 stacks do) keep this.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) const ALERT_TEXT: &str = "received fatal alert: ";

/// The alert whose rustls name is `name` (see [`alert_name`]); `None` for a name rustls does not use.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn alert_named(name: &str) -> Option<AlertDescription> {
    (0..=u8::MAX).map(AlertDescription::from).find(|alert| {
        !matches!(alert, AlertDescription::Unknown(_)) && format!("{alert:?}") == name
    })
}

/// The rustls error in `error` or its sources, looking inside `std::io::Error`s too (tokio-rustls and rustls'
/// own `complete_io` report it wrapped in one).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn rustls_error_in<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        next = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_crypto_errors_carry_the_alert() {
        assert_eq!(quic_crypto_alert(0x100 + 116), Some(116));
        assert_eq!(quic_crypto_alert(0x1ff), Some(0xff));
        assert_eq!(quic_crypto_alert(0x0a), None);
        assert_eq!(quic_crypto_alert(0x200), None);
        assert_eq!(alert_name(116), "CertificateRequired");
    }

    #[test]
    fn alerts_are_classified_and_certificate_ones_blame_the_certificate() {
        use AlertDescription as A;
        let cases = [
            (A::CertificateRequired, AlertCause::NoCertificate, true),
            (A::UnknownCA, AlertCause::UnknownCa, true),
            (A::DecryptError, AlertCause::BadSignature, true),
            (A::CertificateExpired, AlertCause::Expired, true),
            (A::BadCertificate, AlertCause::BadCertificate, true),
            (A::AccessDenied, AlertCause::BadCertificate, true),
            (
                A::BadCertificateStatusResponse,
                AlertCause::CertificateStatus,
                false,
            ),
            (A::NoApplicationProtocol, AlertCause::WrongAlpn, false),
            (A::ProtocolVersion, AlertCause::Other, false),
        ];
        for (alert, cause, blames) in cases {
            assert_eq!(alert_cause(u8::from(alert)), cause, "{alert:?}");
            assert_eq!(cause.blames_certificate(), blames, "{alert:?}");
        }
    }

    #[test]
    fn alert_names_parse_back() {
        assert_eq!(
            alert_named("BadCertificate"),
            Some(AlertDescription::BadCertificate)
        );
        assert_eq!(alert_named("UnknownCA"), Some(AlertDescription::UnknownCA));
        assert_eq!(alert_named("Unknown"), None);
        assert_eq!(alert_named(""), None);
        let text = rustls::Error::AlertReceived(AlertDescription::CertificateRequired).to_string();
        let name = text.strip_prefix(ALERT_TEXT).expect("rustls' wording");
        assert_eq!(
            alert_named(name),
            Some(AlertDescription::CertificateRequired)
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_rustls_error_is_found_through_io_errors_and_sources() {
        let tls = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        let direct: &(dyn Error + 'static) = &tls;
        assert_eq!(rustls_error_in(direct), Some(&tls));
        let outer = Outer(std::io::Error::other(tls.clone()));
        assert_eq!(rustls_error_in(&outer), Some(&tls));
        let plain = Outer(std::io::Error::other("no tls here"));
        assert_eq!(rustls_error_in(&plain), None);
    }
}
