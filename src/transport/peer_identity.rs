//! Reading the node id out of a peer's certificate.
//!
//! The node id is the first common name (CN) of the end-entity certificate's subject. With trust from a secret
//! or from files the certificate was verified against the cluster CA before this is read, so the CN is what the
//! CA vouched for; in insecure development mode it is only the peer's claim.

use std::any::Any;

use rustls::pki_types::CertificateDer;

/// The first subject common name of a DER certificate, if the certificate parses and has a UTF-8 CN.
///
/// Never panics on malformed input: it returns `None`.
pub fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

/// The node id of the peer of an established quinn connection (rustls stores the peer's chain as
/// `Vec<CertificateDer>`, end entity first).
pub(crate) fn peer_node_id(connection: &quinn::Connection) -> Option<String> {
    let identity: Box<dyn Any> = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    common_name(chain.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(
            common_name(&CertificateDer::from(vec![0x30, 0x03, 0x02])),
            None
        );
        assert_eq!(common_name(&CertificateDer::from(Vec::new())), None);
    }
}
