//! TLS: PEM loading, the inbound server config (client certificates required), the upstream
//! client config, and the sender identity.
//!
//! One crypto provider (ring) is passed explicitly everywhere: two providers in one build make
//! rustls panic at runtime, and relying on a process default hides which one is used.

pub mod identity;
pub mod park_verifier;
pub mod standing;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
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
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
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

/// The verifier of one park's senders: its CA, and its CRLs (an expired CRL refuses everyone of
/// that park rather than silently passing revoked certificates).
pub fn park_client_verifier(
    park: &ParkConfig,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let key = format!("parks.{}.client_ca", park.id);
    let roots = root_store(&key, &park.client_ca)?;
    let mut crls = Vec::new();
    for path in &park.crl {
        crls.extend(load_crls(&format!("parks.{}.crl", park.id), path)?);
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
}

/// Builds the partner-facing TLS config from the configuration: TLS 1.3 (1.2 only if configured),
/// ALPN h2 and http/1.1, client certificates required from a configured park CA.
pub fn inbound(config: &Config) -> Result<InboundTls, TlsError> {
    let mut parks = Vec::new();
    for park in config.parks.values() {
        parks.push((park.id.clone(), park_client_verifier(park)?));
    }
    let verifier = Arc::new(ParkClientVerifier::new(parks));
    let certs = load_certs("server.cert", &config.server.cert)?;
    let key = load_key("server.key", &config.server.key)?;
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
    // No resumption: a resumed TLS 1.3 session restores the client's certificate without
    // verifying it again, so a certificate revoked since (or a reloaded CRL) would ride on an old
    // ticket. Every connection pays for a full handshake and is checked against today's CRLs.
    server_config.session_storage = Arc::new(NoServerSessionStorage {});
    server_config.send_tls13_tickets = 0;
    Ok(InboundTls {
        server_config: Arc::new(server_config),
        verifier,
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
