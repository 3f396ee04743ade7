//! TLS 1.3 session tickets: stateless, encrypted under keys that rotate, and never outliving a
//! connection's maximum age.
//!
//! A resumed session brings back the client certificate of the handshake that issued the ticket
//! without running the certificate verifier again. That is safe here because
//! - every request, on a resumed session too, checks the certificate against the CAs and CRLs in
//!   force now ([`super::standing::PeerStanding`]; a resumed session is checked on its first
//!   request whatever the age of its ticket);
//! - each TLS setup has its own ticket keys: a reload that changes certificates, CAs or CRLs
//!   builds a new setup, so tickets issued before it no longer decrypt and the client falls back
//!   to a full handshake against the new material;
//! - a ticket lives no longer than `limits.max_connection_age_secs`, the longest a connection
//!   may go without a full handshake anyway.
//!
//! 0-RTT early data stays off (`max_early_data_size = 0`, rustls's default): a record sent before
//! the handshake completes could be replayed by anyone who recorded it.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::GetRandomFailed;
use rustls::server::ProducesTickets;
use rustls::ticketer::TicketRotator;

/// How many tickets a full handshake gets: two, as nginx (OpenSSL) sends, so a client can open
/// two connections in parallel on resumption.
pub const TICKETS_PER_HANDSHAKE: usize = 2;

/// A ticket producer whose keys rotate every half of `lifetime`; a ticket decrypts for at most
/// `lifetime` (the current key and the one before it) and tells the client that lifetime.
pub fn rotating(lifetime: Duration) -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    let half = u32::try_from(lifetime.as_secs() / 2)
        .unwrap_or(u32::MAX / 2)
        .max(1);
    Ok(Arc::new(TicketRotator::new(half, fresh_key)?))
}

/// One ring-backed AEAD ticket key (ChaCha20-Poly1305, random key). rustls's `Ticketer` is itself
/// a rotator with a 6-hour period; wrapped here it is only ever used for less than `lifetime / 2`
/// of the outer rotator, so with the default maximum age its own rotation never runs.
fn fresh_key() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
    rustls::crypto::ring::Ticketer::new()
        .map(|key| Box::new(TicketKey(key)) as Box<dyn ProducesTickets>)
        .map_err(|_| GetRandomFailed)
}

#[derive(Debug)]
struct TicketKey(Arc<dyn ProducesTickets>);

impl ProducesTickets for TicketKey {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }
    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_live_no_longer_than_the_lifetime_given() {
        let hour = rotating(Duration::from_secs(3600)).unwrap();
        assert!(hour.enabled());
        assert_eq!(hour.lifetime(), 3600);
        let odd = rotating(Duration::from_secs(61)).unwrap();
        assert!(odd.lifetime() <= 61);
    }

    #[test]
    fn a_ticket_decrypts_under_its_own_setup_only() {
        let ours = rotating(Duration::from_secs(3600)).unwrap();
        let other = rotating(Duration::from_secs(3600)).unwrap();
        let ticket = ours.encrypt(b"session state").unwrap();
        assert_eq!(
            ours.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        assert_eq!(other.decrypt(&ticket), None, "another setup's keys open it");
    }
}
