//! A client-certificate verifier that knows which park's CA vouched for a sender.
//!
//! Each park has its own webpki verifier (its CA, its CRLs). A certificate is accepted when one of
//! them accepts it, and the identity (park, Subject O, subject, fingerprint) is derived right there
//! from the verified certificate. The handshake cannot hand that identity to the HTTP layer, so it
//! is kept in a small cache keyed by the certificate's SHA-256; the connection looks it up by the
//! fingerprint of the certificate rustls reports after the handshake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::identity::ClientIdentity;

/// Identities of recently verified certificates; bounded so a flood of distinct certificates cannot
/// grow it without limit (a miss just verifies again).
const CACHE_CAPACITY: usize = 4096;

pub struct ParkClientVerifier {
    parks: Vec<(String, Arc<dyn ClientCertVerifier>)>,
    hints: Vec<DistinguishedName>,
    verified: Mutex<HashMap<[u8; 32], Arc<ClientIdentity>>>,
}

impl std::fmt::Debug for ParkClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkClientVerifier")
            .field(
                "parks",
                &self
                    .parks
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a verified certificate still cannot identify a sender.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed: {0}")]
    Unparseable(String),
    #[error("the client certificate has no organisation (Subject O)")]
    NoOrganisation,
    #[error("the client certificate names {count} organisations (Subject O); a sender is one organisation")]
    SeveralOrganisations { count: usize },
    #[error("no configured park CA accepts the client certificate")]
    UnknownPark,
    #[error("the client certificate is no longer accepted: {0}")]
    Refused(#[source] rustls::Error),
}

impl ParkClientVerifier {
    pub fn new(parks: Vec<(String, Arc<dyn ClientCertVerifier>)>) -> Self {
        let hints = parks
            .iter()
            .flat_map(|(_, v)| v.root_hint_subjects().iter().cloned())
            .collect();
        ParkClientVerifier {
            parks,
            hints,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The identity of a client whose handshake this verifier accepted.
    pub fn identity_of(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<ClientIdentity>, IdentityError> {
        let fingerprint = sha256(end_entity.as_ref());
        if let Some(id) = self.cache().get(&fingerprint) {
            return Ok(id.clone());
        }
        // Evicted from the cache since the handshake: verify again.
        let park = self
            .verifying_park(end_entity, intermediates, UnixTime::now())
            .map_err(|_| IdentityError::UnknownPark)?;
        let identity = Arc::new(describe(park, end_entity.as_ref(), fingerprint)?);
        self.remember(fingerprint, identity.clone());
        Ok(identity)
    }

    /// Verifies a client certificate again, as in a handshake now: against the CAs and CRLs of
    /// this verifier, bypassing the cache (used when the TLS setup changed since the handshake).
    pub fn reverify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<ClientIdentity, IdentityError> {
        let park = self
            .verifying_park(end_entity, intermediates, UnixTime::now())
            .map_err(IdentityError::Refused)?;
        describe(park, end_entity.as_ref(), sha256(end_entity.as_ref()))
    }

    fn verifying_park(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<&str, rustls::Error> {
        let mut last = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        for (park, verifier) in &self.parks {
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(_) => return Ok(park),
                // Prefer the most telling error (revoked, expired) over "unknown issuer" from
                // the parks whose CA did not issue it.
                Err(e) => {
                    if !matches!(
                        e,
                        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    ) {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<ClientIdentity>>> {
        // A poisoned cache only means another handshake panicked mid-insert; the map is still
        // usable, and refusing all clients would be worse.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, fingerprint: [u8; 32], identity: Arc<ClientIdentity>) {
        let mut cache = self.cache();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(fingerprint, identity);
    }
}

impl ClientCertVerifier for ParkClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let park = self.verifying_park(end_entity, intermediates, now)?;
        let fingerprint = sha256(end_entity.as_ref());
        // A certificate that names no organisation cannot be attributed: refuse it in the
        // handshake rather than accept a sender the policies cannot match.
        let identity = describe(park, end_entity.as_ref(), fingerprint).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        self.remember(fingerprint, Arc::new(identity));
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.parks.first() {
            Some((_, v)) => v.verify_tls12_signature(message, cert, dss),
            None => Err(rustls::Error::General("no park configured".into())),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.parks.first() {
            Some((_, v)) => v.verify_tls13_signature(message, cert, dss),
            None => Err(rustls::Error::General("no park configured".into())),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.parks
            .first()
            .map(|(_, v)| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Reads the identity out of a certificate already verified for `park`.
fn describe(
    park: &str,
    der: &[u8],
    fingerprint: [u8; 32],
) -> Result<ClientIdentity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let subject = cert.subject();
    // Two O values would make the sender whichever one a reader takes first.
    let count = subject.iter_organization().count();
    if count > 1 {
        return Err(IdentityError::SeveralOrganisations { count });
    }
    let organisation = subject
        .iter_organization()
        .find_map(|attr| attr.as_str().ok())
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .ok_or(IdentityError::NoOrganisation)?
        .to_string();
    Ok(ClientIdentity {
        park: park.to_string(),
        organisation,
        subject: subject.to_string(),
        fingerprint_sha256: hex::encode(fingerprint),
    })
}
