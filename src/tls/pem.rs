//! Loading certificates and private keys from PEM files (the transport's `files` trust mode, etcd's TLS files).
//!
//! Every error is a [`PemError`] naming the field the path came from and the path; what is wrong is said in
//! words, never with the file's content.

use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file could not be used. Nothing was loaded.
#[derive(Debug, thiserror::Error)]
#[error("{field} {}: {problem}", path.display())]
pub(crate) struct PemError {
    /// The config field (or option) the path came from, e.g. `cluster_config.security.ca_file`.
    pub(crate) field: &'static str,
    /// The path as given.
    pub(crate) path: PathBuf,
    /// What is wrong.
    pub(crate) problem: PemProblem,
}

/// What is wrong with a PEM file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PemProblem {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(io::Error),
    /// A section is not well-formed PEM (or not the DER it claims to be).
    #[error("{0}")]
    Malformed(pem::Error),
    /// No `CERTIFICATE` section in a file that must hold at least one.
    #[error("no CERTIFICATE section found")]
    NoCertificate,
    /// No `PRIVATE KEY` section (PKCS#8, PKCS#1 or SEC1).
    #[error("no PRIVATE KEY section (PKCS#8, PKCS#1 or SEC1) found")]
    NoPrivateKey,
}

fn error(field: &'static str, path: &Path, problem: PemProblem) -> PemError {
    PemError {
        field,
        path: path.to_owned(),
        problem,
    }
}

/// The bytes of the file at `path` (the config field `field`).
pub(crate) fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|e| error(field, path, PemProblem::Read(e)))
}

/// Every `CERTIFICATE` section of `bytes` (read from `path`), in order; at least one.
pub(crate) fn certificates(
    field: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certificates = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| match e {
            pem::Error::NoItemsFound => error(field, path, PemProblem::NoCertificate),
            other => error(field, path, PemProblem::Malformed(other)),
        })?;
    if certificates.is_empty() {
        return Err(error(field, path, PemProblem::NoCertificate));
    }
    Ok(certificates)
}

/// The first private key of `bytes` (read from `path`): PKCS#8, PKCS#1 or SEC1.
pub(crate) fn private_key(
    field: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => error(field, path, PemProblem::NoPrivateKey),
        other => error(field, path, PemProblem::Malformed(other)),
    })
}

/// [`read`] then [`certificates`].
pub(crate) fn load_certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certificates(field, path, &read(field, path)?)
}

/// [`read`] then [`private_key`].
pub(crate) fn load_private_key(
    field: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, PemError> {
    private_key(field, path, &read(field, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD: &str = "cluster_config.security.ca_file";

    #[test]
    fn errors_name_the_field_and_the_path_and_never_the_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let e = load_certificates(FIELD, &missing).expect_err("missing");
        assert!(matches!(e.problem, PemProblem::Read(_)));
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{FIELD} {}: cannot read: ", missing.display())),
            "{text}"
        );

        let path = dir.path().join("empty.pem");
        let secret_text = "not a certificate, and a secret-looking line";
        assert!(matches!(
            certificates(FIELD, &path, secret_text.as_bytes()).map_err(|e| e.problem),
            Err(PemProblem::NoCertificate)
        ));
        let e = private_key(FIELD, &path, secret_text.as_bytes()).expect_err("no key");
        assert!(matches!(e.problem, PemProblem::NoPrivateKey));
        assert!(!e.to_string().contains(secret_text), "{e}");

        let broken = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            certificates(FIELD, &path, broken).map_err(|e| e.problem),
            Err(PemProblem::Malformed(_))
        ));
    }

    #[test]
    fn every_certificate_section_is_returned_in_order() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).expect("a");
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).expect("b");
        let pem = format!("{}{}", a.cert.pem(), b.cert.pem());
        let path = Path::new("chain.pem");
        let certs = certificates(FIELD, path, pem.as_bytes()).expect("two");
        assert_eq!(certs, vec![a.cert.der().clone(), b.cert.der().clone()]);
        let key = private_key(FIELD, path, a.signing_key.serialize_pem().as_bytes()).expect("key");
        assert_eq!(key.secret_der(), a.signing_key.serialize_der());
    }
}
