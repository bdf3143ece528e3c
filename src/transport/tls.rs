//! Building the rustls server and client configurations from a [`Trust`].
//!
//! # Guarantees
//!
//! - TLS 1.3 only, cryptography from the ring provider (passed explicitly, never the process-wide default, so a
//!   second provider elsewhere in the dependency graph cannot make this panic), ALPN [`super::ALPN`].
//! - The server *requires* a client certificate in every mode; both sides present the same leaf.
//! - Session resumption and 0-RTT are off: every connection verifies certificates in a full handshake.
//! - A [`TlsSetup`] is immutable and cheap to clone; building one does file I/O (files mode) or generates keys
//!   (secret and insecure modes), so do it once at start.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::ALPN;
use super::cluster_ca::{ClusterCa, issue_leaf_with};
use super::error::TlsError;
use super::peer_identity::common_name;
use crate::config::{ClusterSecret, NodeId, Trust};
use crate::tls::pem::{load_certificates, load_private_key};
use crate::tls::verifiers::{AcceptAnyClientCert, AcceptAnyServerCert, CaOnlyServerVerifier};

/// Config field of the CA file, as named in errors.
const CA_FIELD: &str = "cluster_config.security.ca_file";
/// Config field of the certificate chain file, as named in errors.
const CERT_FIELD: &str = "cluster_config.security.cert_file";
/// Config field of the private key file, as named in errors.
const KEY_FIELD: &str = "cluster_config.security.key_file";

/// Which trust mode a [`TlsSetup`] was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrustMode {
    /// CA derived from the cluster secret; a fresh leaf per process.
    Secret,
    /// CA, certificate chain and key from PEM files.
    Files,
    /// Any peer certificate accepted. Development only.
    InsecureDev,
}

impl TrustMode {
    /// `secret`, `files` or `insecure-dev`, for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            TrustMode::Secret => "secret",
            TrustMode::Files => "files",
            TrustMode::InsecureDev => "insecure-dev",
        }
    }
}

impl fmt::Display for TrustMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS side of a [`super::Transport`]: rustls server and client configurations plus what they trust.
#[derive(Clone)]
pub struct TlsSetup {
    mode: TrustMode,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    ca_certificates: Vec<CertificateDer<'static>>,
    certificate: CertificateDer<'static>,
    local_node_id: Option<String>,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configurations hold the private key: keep them out of Debug.
        f.debug_struct("TlsSetup")
            .field("mode", &self.mode)
            .field("local_node_id", &self.local_node_id)
            .field("ca_certificates", &self.ca_certificates.len())
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// Builds the setup for `trust` (from [`crate::config::ClusterConfig::trust`]). `node_id` becomes the CN of
    /// the leaf certificate in the secret and insecure modes; in files mode the certificate's own CN is used,
    /// and a `WARN` is logged if it differs from `node_id`.
    pub fn from_trust(trust: &Trust, node_id: &NodeId) -> Result<Self, TlsError> {
        match trust {
            Trust::Secret(secret) => Self::from_secret(secret, node_id),
            Trust::Files {
                ca_file,
                cert_file,
                key_file,
            } => {
                let setup = Self::from_files(ca_file, cert_file, key_file)?;
                if setup.local_node_id.as_deref() != Some(node_id.as_str()) {
                    tracing::warn!(
                        node_id = %node_id,
                        certificate_cn = setup.local_node_id.as_deref().unwrap_or("<none>"),
                        cert_file = %cert_file.display(),
                        "the certificate's common name differs from node_id; peers will see the common name"
                    );
                }
                Ok(setup)
            }
            Trust::InsecureDev => Self::insecure_dev(node_id),
        }
    }

    /// Secret mode: derives the cluster CA from `secret`, issues a fresh leaf for `node_id` and trusts only
    /// leaves of the same CA. The CA key is dropped before this returns.
    pub fn from_secret(secret: &ClusterSecret, node_id: &NodeId) -> Result<Self, TlsError> {
        let ca = ClusterCa::derive(secret)?;
        let (leaf, key) = ca.issue_leaf(node_id.as_str())?;
        let anchor = ca.certificate().clone();
        drop(ca);
        let provider = provider();
        let roots = root_store(std::slice::from_ref(&anchor), "the derived cluster CA")?;
        let (client_verifier, server_verifier) =
            webpki_verifiers(roots, &provider, "the derived cluster CA")?;
        Self::assemble(
            TrustMode::Secret,
            provider,
            client_verifier,
            server_verifier,
            vec![leaf],
            key,
            vec![anchor],
            "the issued leaf certificate",
        )
    }

    /// Files mode: trusts the CA certificates in `ca_file` (every `CERTIFICATE` section is a trust anchor) and
    /// presents the chain in `cert_file` (end entity first) with the key in `key_file`. Errors name the file.
    pub fn from_files(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let anchors = load_certificates(CA_FIELD, ca_file).map_err(TlsError::from_pem)?;
        let chain = load_certificates(CERT_FIELD, cert_file).map_err(TlsError::from_pem)?;
        let key = load_private_key(KEY_FIELD, key_file).map_err(TlsError::from_pem)?;
        let provider = provider();
        let ca_what = format!("CA file {}", ca_file.display());
        let roots = root_store(&anchors, &ca_what)?;
        let (client_verifier, server_verifier) = webpki_verifiers(roots, &provider, &ca_what)?;
        let cert_what = format!(
            "certificate {} with key {}",
            cert_file.display(),
            key_file.display()
        );
        Self::assemble(
            TrustMode::Files,
            provider,
            client_verifier,
            server_verifier,
            chain,
            key,
            anchors,
            &cert_what,
        )
    }

    /// Insecure development mode: a self-signed leaf for `node_id`; any peer certificate is accepted (the peer
    /// must still present one and prove it holds its key; traffic is still encrypted). Logs a `WARN` every time.
    pub fn insecure_dev(node_id: &NodeId) -> Result<Self, TlsError> {
        tracing::warn!(
            node_id = %node_id,
            "INSECURE: cluster transport built with security.insecure_dev: ANY peer certificate is accepted, \
             peers are NOT authenticated (traffic is still encrypted). Development only, never in production."
        );
        let (leaf, key) = issue_leaf_with(node_id.as_str(), None)?;
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        Self::assemble(
            TrustMode::InsecureDev,
            provider,
            Arc::new(AcceptAnyClientCert::new(algorithms)),
            Arc::new(AcceptAnyServerCert::new(algorithms)),
            vec![leaf],
            key,
            Vec::new(),
            "the self-signed leaf certificate",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        mode: TrustMode,
        provider: Arc<CryptoProvider>,
        client_verifier: Arc<dyn ClientCertVerifier>,
        server_verifier: Arc<dyn ServerCertVerifier>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca_certificates: Vec<CertificateDer<'static>>,
        cert_what: &str,
    ) -> Result<Self, TlsError> {
        let rustls_error = |step: &str| {
            let what = format!("{step} ({cert_what})");
            move |source| TlsError::Rustls { what, source }
        };
        let Some(certificate) = chain.first().cloned() else {
            return Err(TlsError::Rustls {
                what: format!("empty certificate chain ({cert_what})"),
                source: rustls::Error::NoCertificatesPresented,
            });
        };
        let local_node_id = common_name(&certificate);

        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_error("select TLS 1.3 for the server"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_error("load the server certificate and key"))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.max_early_data_size = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_error("select TLS 1.3 for the client"))?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(rustls_error("load the client certificate and key"))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = Resumption::disabled();
        client.enable_early_data = false;

        Ok(Self {
            mode,
            server: Arc::new(server),
            client: Arc::new(client),
            ca_certificates,
            certificate,
            local_node_id,
        })
    }

    /// The trust mode.
    pub fn mode(&self) -> TrustMode {
        self.mode
    }

    /// The rustls server configuration (client certificates required, TLS 1.3, ALPN set).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// The rustls client configuration (presents this node's certificate, TLS 1.3, ALPN set).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }

    /// The trust anchors: the derived CA in secret mode, the CA file's certificates in files mode, none in
    /// insecure mode.
    pub fn ca_certificates(&self) -> &[CertificateDer<'static>] {
        &self.ca_certificates
    }

    /// This node's own (end-entity) certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The common name of this node's certificate: what peers see as this node's id.
    pub fn local_node_id(&self) -> Option<&str> {
        self.local_node_id.as_deref()
    }
}

/// The ring provider, passed explicitly everywhere (see the module docs).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(anchors: &[CertificateDer<'static>], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, anchor) in anchors.iter().enumerate() {
        roots
            .add(anchor.clone())
            .map_err(|source| TlsError::Rustls {
                what: format!("use certificate #{} of {what} as a trust anchor", index + 1),
                source,
            })?;
    }
    Ok(roots)
}

/// The client-certificate verifier (server side) and the server-certificate verifier (client side).
type Verifiers = (Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>);

fn webpki_verifiers(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
    what: &str,
) -> Result<Verifiers, TlsError> {
    let roots = Arc::new(roots);
    let verifier_error = |side: &str| {
        let what = format!("build the {side} certificate verifier from {what}");
        move |source| TlsError::Verifier { what, source }
    };
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
            .build()
            .map_err(verifier_error("client"))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
        .build()
        .map_err(verifier_error("server"))?;
    Ok((
        client_verifier,
        Arc::new(CaOnlyServerVerifier::new(server_verifier)),
    ))
}
