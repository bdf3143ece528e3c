//! The cluster CA derived from the shared secret, and the leaf certificates it issues.
//!
//! # Guarantees
//!
//! - **Same secret, same CA.** The CA key is an Ed25519 key whose 32-byte seed is
//!   `HKDF-SHA256(salt = HKDF_SALT, ikm = secret, info = HKDF_INFO)`. The CA certificate has a fixed subject
//!   ([`CA_COMMON_NAME`]), fixed validity (1975-01-01 .. 4096-01-01) and a serial derived from the public key, and
//!   Ed25519 signatures are deterministic, so every node that shares the secret builds the *byte-identical* CA
//!   certificate. Different secrets give unrelated keys, so their leaves never verify against each other's CA.
//! - **Fresh leaves.** Each [`ClusterCa::issue_leaf`] generates a new random ECDSA P-256 key; the leaf's subject
//!   CN is the node id, its only subject alternative name is the DNS name [`super::SERVER_NAME`], it is valid
//!   from one hour before now (clock skew) to [`LEAF_VALIDITY`] after, and it may be used for both TLS server and
//!   client authentication.
//! - **The CA key does not outlive setup.** [`super::TlsSetup`] derives the CA, issues its leaf and drops the CA
//!   key; only the CA certificate (the trust anchor) is kept.
//!
//! The secret is used as HKDF input keying material without stretching: it must carry enough entropy on its own
//! (32 random bytes, base64-encoded, is the recommendation in `docs/transport.md`).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use ring::hkdf;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::SERVER_NAME;
use super::error::TlsError;
use crate::config::ClusterSecret;

/// HKDF-SHA256 salt of the CA key derivation. Changing it changes every cluster's CA (a new major version).
pub const HKDF_SALT: &[u8] = b"bifrost-cluster/ca/v1";

/// HKDF-SHA256 `info` of the CA key derivation: what the 32 output bytes are for.
pub const HKDF_INFO: &[u8] = b"bifrost-cluster/ca/ed25519-seed";

/// Subject common name of the derived CA certificate (the subject has no other attribute).
pub const CA_COMMON_NAME: &str = "bifrost-cluster CA";

/// How long a leaf certificate issued by [`ClusterCa::issue_leaf`] stays valid after it was issued: 365 days.
/// Leaves are issued at every process start, so a node restarted at least once a year never sees one expire.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far back a leaf's `notBefore` is set, to tolerate clock skew between nodes: one hour.
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);

/// The fixed 16-byte prefix of an Ed25519 PKCS#8 v1 document (RFC 8410): `SEQUENCE { INTEGER 0,
/// SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32 bytes) } }`. The 32-byte seed follows it.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A CA able to issue leaf certificates: the one derived from a cluster secret.
pub struct ClusterCa {
    key: KeyPair,
    params: CertificateParams,
    certificate: CertificateDer<'static>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ClusterCa")
            .field("subject", &CA_COMMON_NAME)
            .field("certificate_len", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Derives the cluster CA from `secret` (see the module docs for the exact derivation).
    pub fn derive(secret: &ClusterSecret) -> Result<Self, TlsError> {
        let mut pkcs8 = [0u8; 48];
        pkcs8[..16].copy_from_slice(&ED25519_PKCS8_V1_PREFIX);
        hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT)
            .extract(secret.expose_secret().as_bytes())
            .expand(&[HKDF_INFO], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut pkcs8[16..]))
            .map_err(|_| TlsError::Derive {
                what: "HKDF-SHA256 expansion of the cluster secret",
            })?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(&pkcs8[..]),
            &PKCS_ED25519,
        );
        // Do not leave the seed on the stack longer than needed (best effort; the key pair holds a copy).
        pkcs8.fill(0);
        let key = key.map_err(|source| TlsError::Certificate {
            what: "load the derived Ed25519 CA key",
            source,
        })?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Fixed validity, so the certificate bytes do not depend on the clock; the serial defaults to a hash of
        // the public key. (Peers only use the CA's subject and public key as the trust anchor, so even a CA
        // certificate built differently by another version would interoperate.)
        params.not_before = rcgen::date_time_ymd(1975, 1, 1);
        params.not_after = rcgen::date_time_ymd(4096, 1, 1);
        let certificate = params
            .self_signed(&key)
            .map_err(|source| TlsError::Certificate {
                what: "self-sign the derived CA certificate",
                source,
            })?
            .der()
            .clone();
        Ok(Self {
            key,
            params,
            certificate,
        })
    }

    /// The CA certificate (DER): the trust anchor every node of the cluster shares.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The CA's public key (raw 32-byte Ed25519 key). Equal on every node that shares the secret.
    pub fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }

    /// Issues a leaf certificate for `common_name` (the node id) with a fresh random ECDSA P-256 key, valid from
    /// one hour before now to [`LEAF_VALIDITY`] after now. Returns the certificate and its private key.
    pub fn issue_leaf(
        &self,
        common_name: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
        let issuer = Issuer::from_params(&self.params, &self.key);
        issue_leaf_with(common_name, Some(&issuer))
    }
}

/// Issues a leaf for `common_name`: signed by `issuer`, or self-signed when `issuer` is `None` (the insecure
/// development mode).
pub(crate) fn issue_leaf_with(
    common_name: &str,
    issuer: Option<&Issuer<'_, &KeyPair>>,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Certificate {
            what: "generate the leaf key pair",
            source,
        })?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(|source| {
        TlsError::Certificate {
            what: "set the leaf's subject alternative name",
            source,
        }
    })?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = issuer.is_some();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - LEAF_BACKDATE;
    params.not_after = now + LEAF_VALIDITY;

    let certificate = match issuer {
        Some(issuer) => params.signed_by(&key, issuer),
        None => params.self_signed(&key),
    }
    .map_err(|source| TlsError::Certificate {
        what: "sign the leaf certificate",
        source,
    })?;
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((certificate.der().clone(), private_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::peer_identity::common_name;

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::new(text).unwrap_or_else(|e| panic!("test secret: {e}"))
    }

    #[test]
    fn same_secret_gives_byte_identical_ca() {
        let a = ClusterCa::derive(&secret("0123456789abcdef-cluster-one"))
            .unwrap_or_else(|e| panic!("{e}"));
        let b = ClusterCa::derive(&secret("0123456789abcdef-cluster-one"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.public_key_raw(), b.public_key_raw());
        assert_eq!(a.certificate(), b.certificate());
        assert_eq!(a.public_key_raw().len(), 32);
    }

    #[test]
    fn different_secrets_give_different_cas() {
        let a = ClusterCa::derive(&secret("0123456789abcdef-cluster-one"))
            .unwrap_or_else(|e| panic!("{e}"));
        let b = ClusterCa::derive(&secret("0123456789abcdef-cluster-two"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.public_key_raw(), b.public_key_raw());
    }

    #[test]
    fn derivation_matches_hkdf_sha256_vector() {
        // Pins the derivation: if salt, info or algorithm change, every existing cluster's CA changes.
        let ca = ClusterCa::derive(&secret("0123456789abcdef")).unwrap_or_else(|e| panic!("{e}"));
        let mut seed = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, b"bifrost-cluster/ca/v1")
            .extract(b"0123456789abcdef")
            .expand(&[b"bifrost-cluster/ca/ed25519-seed"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut seed))
            .unwrap_or_else(|_| panic!("hkdf"));
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .unwrap_or_else(|_| panic!("seed"));
        use ring::signature::KeyPair as _;
        assert_eq!(ca.public_key_raw(), pair.public_key().as_ref());
    }

    fn chains_to(leaf: &CertificateDer<'static>, ca: &ClusterCa) -> bool {
        use std::sync::Arc;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.certificate().clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
        verifier
            .verify_client_cert(leaf, &[], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    #[test]
    fn leaf_names_the_node_and_chains_to_the_ca() {
        let ca = ClusterCa::derive(&secret("0123456789abcdef-cluster-one"))
            .unwrap_or_else(|e| panic!("{e}"));
        let other = ClusterCa::derive(&secret("0123456789abcdef-cluster-two"))
            .unwrap_or_else(|e| panic!("{e}"));
        let (leaf, _key) = ca.issue_leaf("node_1").unwrap_or_else(|e| panic!("{e}"));
        assert!(chains_to(&leaf, &ca));
        assert!(!chains_to(&leaf, &other));
        assert_eq!(common_name(&leaf).as_deref(), Some("node_1"));
        assert_eq!(
            common_name(ca.certificate()).as_deref(),
            Some(CA_COMMON_NAME)
        );
        let (another, _) = ca.issue_leaf("node_1").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(leaf, another, "every leaf has a fresh key");
    }
}
