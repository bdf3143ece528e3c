//! Loading the PEM files of the "files" trust mode. Every error names the config field and the path.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::TlsError;

/// Config field of the CA file, as named in errors.
pub(crate) const CA_FIELD: &str = "cluster_config.security.ca_file";
/// Config field of the certificate chain file, as named in errors.
pub(crate) const CERT_FIELD: &str = "cluster_config.security.cert_file";
/// Config field of the private key file, as named in errors.
pub(crate) const KEY_FIELD: &str = "cluster_config.security.key_file";

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        field,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(field: &'static str, path: &Path, error: pem::Error) -> TlsError {
    let reason = match error {
        pem::Error::NoItemsFound => match field {
            KEY_FIELD => "no PRIVATE KEY section (PKCS#8, PKCS#1 or SEC1) found".to_owned(),
            _ => "no CERTIFICATE section found".to_owned(),
        },
        other => other.to_string(),
    };
    TlsError::Pem {
        field,
        path: path.to_owned(),
        reason,
    }
}

/// Every `CERTIFICATE` section of a PEM file, in order; at least one.
pub(crate) fn load_certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(field, path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(field, path, e))?;
    if certificates.is_empty() {
        return Err(pem_error(field, path, pem::Error::NoItemsFound));
    }
    Ok(certificates)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(KEY_FIELD, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| pem_error(KEY_FIELD, path, e))
}
