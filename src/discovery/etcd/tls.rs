//! The TLS settings of `https://` endpoints: what the etcd client is given, and the rustls configuration of
//! the diagnosis handshake (the same client certificate, any server certificate). The files are read and
//! checked once, when the backend is built, by the crate's shared PEM loader (`crate::tls::pem`); every error
//! names the option and the file.

use std::sync::Arc;

use etcd_client::{Certificate, Identity, TlsOptions};

use super::{BACKEND, EtcdOptions};
use crate::discovery::DiscoveryError;
use crate::tls::pem::{self, PemError, PemProblem};
use crate::tls::verifiers::AcceptAnyServerCert;

/// TLS settings for `https://` endpoints, checked when the backend is built.
pub(super) struct Tls {
    /// What the etcd client is given.
    pub(super) client: TlsOptions,
    /// Whether `EtcdOptions::ca_file` replaces the system's trust store.
    pub(super) custom_ca: bool,
    /// Whether a client certificate is presented (mutual TLS).
    pub(super) client_cert: bool,
    /// For the diagnosis handshake (`diagnosis::tls_probe`): the same client certificate, any server certificate.
    pub(super) probe: Arc<rustls::ClientConfig>,
    /// For logs: where the trust comes from, and whether a client certificate is presented.
    pub(super) summary: String,
}

/// The options holding TLS files, as named in errors.
const CA_FILE: &str = "EtcdOptions::ca_file";
const CLIENT_CERT_FILE: &str = "EtcdOptions::client_cert_file";
const CLIENT_KEY_FILE: &str = "EtcdOptions::client_key_file";

/// A PEM file of the options that cannot be used, as a setup error naming the option and the file.
fn setup_error(error: PemError) -> DiscoveryError {
    let problem = match &error.problem {
        PemProblem::Read(e) => format!("cannot read: {e}"),
        PemProblem::NoCertificate => {
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".to_owned()
        }
        PemProblem::Malformed(e) if error.field != CLIENT_KEY_FILE => {
            format!("bad PEM certificate: {e}")
        }
        PemProblem::Malformed(e) => format!("no usable PEM private key: {e}"),
        PemProblem::NoPrivateKey => format!(
            "no usable PEM private key: {}",
            rustls::pki_types::pem::Error::NoItemsFound
        ),
    };
    DiscoveryError::Setup {
        backend: BACKEND,
        reason: format!("{} {}: {problem}", error.field, error.path.display()),
    }
}

impl Tls {
    /// Reads and checks the files of `options`.
    pub(super) fn load(options: &EtcdOptions) -> Result<Tls, DiscoveryError> {
        let mut client = TlsOptions::new();
        let mut summary = String::new();
        match &options.ca_file {
            Some(path) => {
                let pem = pem::read(CA_FILE, path).map_err(setup_error)?;
                pem::certificates(CA_FILE, path, &pem).map_err(setup_error)?;
                client = client.ca_certificate(Certificate::from_pem(pem));
                summary.push_str(&format!("trusting the CA file {}", path.display()));
            }
            None => {
                client = client.with_native_roots();
                summary.push_str("trusting the system trust store");
            }
        }
        let provider = rustls::crypto::ring::default_provider();
        let algorithms = provider.signature_verification_algorithms;
        let probe = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| DiscoveryError::Setup {
                backend: BACKEND,
                reason: format!("TLS: {e}"),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(algorithms)));
        let (client_cert, mut probe) = match (&options.client_cert_file, &options.client_key_file) {
            (None, None) => (false, probe.with_no_client_auth()),
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = pem::read(CLIENT_CERT_FILE, cert_path).map_err(setup_error)?;
                let chain = pem::certificates(CLIENT_CERT_FILE, cert_path, &cert_pem)
                    .map_err(setup_error)?;
                let key_pem = pem::read(CLIENT_KEY_FILE, key_path).map_err(setup_error)?;
                let key =
                    pem::private_key(CLIENT_KEY_FILE, key_path, &key_pem).map_err(setup_error)?;
                client = client.identity(Identity::from_pem(cert_pem, key_pem));
                summary.push_str(&format!(
                    ", presenting the client certificate {}",
                    cert_path.display()
                ));
                let probe = probe.with_client_auth_cert(chain, key).map_err(|e| {
                    DiscoveryError::Setup {
                        backend: BACKEND,
                        reason: format!(
                            "EtcdOptions::client_cert_file {} and client_key_file {} do not make a usable \
                             client certificate: {e}",
                            cert_path.display(),
                            key_path.display()
                        ),
                    }
                })?;
                (true, probe)
            }
            _ => {
                return Err(DiscoveryError::Setup {
                    backend: BACKEND,
                    reason:
                        "EtcdOptions::client_cert_file and client_key_file must be given together"
                            .into(),
                });
            }
        };
        probe.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            custom_ca: options.ca_file.is_some(),
            client,
            client_cert,
            probe: Arc::new(probe),
            summary,
        })
    }

    /// `TLS handshake failed: {cause} ({summary}){hint}`.
    pub(super) fn failure(&self, cause: &str, hint: &str) -> String {
        format!("{TLS_FAILED}: {cause} ({}){hint}", self.summary)
    }
}

/// Starts the text of every TLS failure.
pub(super) const TLS_FAILED: &str = "TLS handshake failed";
