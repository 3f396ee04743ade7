//! TLS: PEM loading, the inbound server config (client certificates required), the upstream
//! client config, and the sender identity.
//!
//! One crypto provider (ring) is passed explicitly everywhere: two providers in one build make
//! rustls panic at runtime, and relying on a process default hides which one is used.

pub mod identity;
pub mod park_verifier;
pub mod standing;
pub mod tickets;

use std::path::Path;
use std::sync::Arc;

use ring::digest;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{Config, ParkConfig, TlsVersion};
pub use park_verifier::ParkClientVerifier;

/// Why TLS material could not be loaded. Always names the file and, where known, the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} = {path}: cannot read certificates: {message}")]
    Certificates {
        key: String,
        path: String,
        message: String,
    },
    #[error("{key} = {path}: cannot read private key: {message}")]
    PrivateKey {
        key: String,
        path: String,
        message: String,
    },
    #[error("{key} = {path}: cannot read revocation list: {message}")]
    Crl {
        key: String,
        path: String,
        message: String,
    },
    #[error("{key}: {message}")]
    Config { key: String, message: String },
}

/// The one crypto provider the gateway uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file; at least one is required.
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Certificates {
        key: key.to_string(),
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM `CERTIFICATE` block in the file".into()));
    }
    Ok(certs)
}

/// Reads the private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
/// A key file the group or others may read is refused before it is read (as OpenSSH does).
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    crate::key_file::check_private(path).map_err(|e| TlsError::PrivateKey {
        key: key.to_string(),
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::PrivateKey {
        key: key.to_string(),
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Reads every CRL in a PEM file.
pub fn load_crls(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Crl {
        key: key.to_string(),
        path: path.display().to_string(),
        message,
    };
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if crls.is_empty() {
        return Err(err("no PEM `X509 CRL` block in the file".into()));
    }
    Ok(crls)
}

/// A root store holding every certificate of a CA file.
pub fn root_store(key: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots.add(cert).map_err(|e| TlsError::Certificates {
            key: key.to_string(),
            path: path.display().to_string(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    match min {
        TlsVersion::Tls13 => TLS13_ONLY,
        TlsVersion::Tls12 => TLS12_AND_13,
    }
}

/// A digest of everything a TLS setup was built from (certificates, key, CAs, CRLs, versions):
/// equal digests mean a reload changed nothing the handshake depends on.
struct MaterialDigest(digest::Context);

impl MaterialDigest {
    fn new() -> MaterialDigest {
        MaterialDigest(digest::Context::new(&digest::SHA256))
    }
    /// Adds one labelled item; the length prefix keeps item boundaries unambiguous.
    fn add(&mut self, label: &str, bytes: &[u8]) {
        for part in [label.as_bytes(), bytes] {
            self.0.update(&(part.len() as u64).to_be_bytes());
            self.0.update(part);
        }
    }
    fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// The verifier of one park's senders: its CA, and its CRLs (an expired CRL refuses everyone of
/// that park rather than silently passing revoked certificates).
pub fn park_client_verifier(
    park: &ParkConfig,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    park_verifier_and_material(park, &mut MaterialDigest::new())
}

fn park_verifier_and_material(
    park: &ParkConfig,
    material: &mut MaterialDigest,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let key = format!("parks.{}.client_ca", park.id);
    material.add("park", park.id.as_bytes());
    for cert in load_certs(&key, &park.client_ca)? {
        material.add("client_ca", cert.as_ref());
    }
    let roots = root_store(&key, &park.client_ca)?;
    let mut crls = Vec::new();
    for path in &park.crl {
        crls.extend(load_crls(&format!("parks.{}.crl", park.id), path)?);
    }
    for crl in &crls {
        material.add("crl", crl.as_ref());
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .enforce_revocation_expiration();
    }
    builder.build().map_err(|e| TlsError::Config {
        key,
        message: format!("cannot build the client verifier: {e}"),
    })
}

/// The inbound TLS setup: the rustls server config and the verifier that tells which park a
/// client certificate belongs to.
pub struct InboundTls {
    pub server_config: Arc<ServerConfig>,
    pub verifier: Arc<ParkClientVerifier>,
    /// SHA-256 over the material the setup was built from: a reload that leaves it unchanged
    /// keeps the running setup (and its session tickets, and its connections).
    pub material: [u8; 32],
}

/// Builds the partner-facing TLS config from the configuration: TLS 1.3 (1.2 only if configured),
/// ALPN h2 and http/1.1, client certificates required from a configured park CA.
pub fn inbound(config: &Config) -> Result<InboundTls, TlsError> {
    let mut material = MaterialDigest::new();
    material.add(
        "min_tls_version",
        format!("{:?}", config.server.min_tls_version).as_bytes(),
    );
    let mut parks = Vec::new();
    for park in config.parks.values() {
        parks.push((
            park.id.clone(),
            park_verifier_and_material(park, &mut material)?,
        ));
    }
    let verifier = Arc::new(ParkClientVerifier::new(parks));
    let certs = load_certs("server.cert", &config.server.cert)?;
    let key = load_key("server.key", &config.server.key)?;
    for cert in &certs {
        material.add("server.cert", cert.as_ref());
    }
    material.add("server.key", key.secret_der());
    let mut server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(config.server.min_tls_version))
        .map_err(|e| TlsError::Config {
            key: "server.min_tls_version".into(),
            message: e.to_string(),
        })?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config {
            key: "server.key".into(),
            message: format!(
                "the key does not belong to the certificate in server.cert, or cannot sign ({e}); \
                 use the key file issued together with that certificate"
            ),
        })?;
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // TLS 1.3 resumption through stateless tickets whose keys belong to this setup only (see
    // `tickets` for why a resumed session is safe). The tickets are also what keeps a client
    // that leaves Nagle on from stalling: they are written right after the client's Finished,
    // and that write carries the ACK the client's kernel waits for before it sends the first
    // request (without it, the ACK waits for the server's delayed-ACK timer, ~40 ms).
    server_config.ticketer =
        tickets::rotating(config.limits.max_connection_age).map_err(|e| TlsError::Config {
            key: "limits.max_connection_age_secs".into(),
            message: format!("cannot create session ticket keys: {e}"),
        })?;
    server_config.send_tls13_tickets = tickets::TICKETS_PER_HANDSHAKE;
    // No server-side session-id cache: tickets (TLS 1.3, and TLS 1.2 where enabled) are the one
    // way to resume, and their keys die with this setup.
    server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server_config.max_early_data_size = 0;
    Ok(InboundTls {
        server_config: Arc::new(server_config),
        verifier,
        material: material.finish(),
    })
}

/// The gateway's client config towards one park's endpoint: that park's `endpoint_ca` verifies
/// the endpoint, the gateway's `upstream_client` certificate identifies the gateway.
pub fn upstream_client(
    config: &Config,
    park: &ParkConfig,
) -> Result<rustls::ClientConfig, TlsError> {
    let roots = root_store(&format!("parks.{}.endpoint_ca", park.id), &park.endpoint_ca)?;
    let certs = load_certs("upstream_client.cert", &config.upstream_client.cert)?;
    let key = load_key("upstream_client.key", &config.upstream_client.key)?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(config.server.min_tls_version))
        .map_err(|e| TlsError::Config {
            key: "server.min_tls_version".into(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Config {
            key: "upstream_client.key".into(),
            message: format!(
                "the key does not belong to the certificate in upstream_client.cert, or cannot \
                 sign ({e}); use the key file issued together with that certificate"
            ),
        })
}
