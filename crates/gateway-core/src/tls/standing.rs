//! A client certificate's standing over a connection's life. The handshake verified it against
//! the CAs and CRLs in force then; a reload may since have revoked it or dropped its CA, and a
//! CRL may have expired. Each request checks the connection's certificate again against the TLS
//! setup in force now (when that changed, or when the last check is older than
//! [`RECHECK_INTERVAL`]), so a revoked certificate is refused from its next request on, also on
//! connections opened before the reload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;

use super::identity::ClientIdentity;
use super::park_verifier::IdentityError;
use super::InboundTls;

/// How long one check of a connection's certificate holds while the TLS setup is unchanged
/// (covers a CRL passing its next-update time on a long-lived connection).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// The certificate chain a connection was authenticated with, and when and under which TLS
/// setup it was last found good (`None`: not yet on this connection).
pub struct PeerStanding {
    chain: Vec<CertificateDer<'static>>,
    last_good: Mutex<Option<(Arc<InboundTls>, Instant)>>,
}

impl PeerStanding {
    /// `chain`: the peer's certificates as a full handshake presented them (end entity first),
    /// verified under `tls` just now.
    pub fn new(chain: Vec<CertificateDer<'static>>, tls: Arc<InboundTls>) -> PeerStanding {
        PeerStanding {
            chain,
            last_good: Mutex::new(Some((tls, Instant::now()))),
        }
    }

    /// A resumed session: the chain comes from a session ticket, verified when the ticket's
    /// first handshake ran (up to the ticket lifetime ago), so the first request checks it.
    pub fn resumed(chain: Vec<CertificateDer<'static>>) -> PeerStanding {
        PeerStanding {
            chain,
            last_good: Mutex::new(None),
        }
    }

    /// Checks the certificate against `current` unless it was found good under that same setup
    /// within [`RECHECK_INTERVAL`]. The identity must not change: a certificate now vouched for
    /// by another park's CA is refused too.
    pub fn check(
        &self,
        current: &Arc<InboundTls>,
        identity: &ClientIdentity,
    ) -> Result<(), IdentityError> {
        let mut last = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tls, at)) = last.as_ref() {
            if Arc::ptr_eq(tls, current) && at.elapsed() < RECHECK_INTERVAL {
                return Ok(());
            }
        }
        let Some((end_entity, intermediates)) = self.chain.split_first() else {
            return Err(IdentityError::UnknownPark);
        };
        let now = current.verifier.reverify(end_entity, intermediates)?;
        if now.park != identity.park || now.organisation != identity.organisation {
            return Err(IdentityError::UnknownPark);
        }
        *last = Some((current.clone(), Instant::now()));
        Ok(())
    }
}
