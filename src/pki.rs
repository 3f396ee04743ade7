//! A development PKI (rcgen): one CA per park, the gateway's server and upstream-client
//! certificates, endpoint certificates, partner-organisation client certificates, CRLs, the audit
//! signing key and the pseudonymisation key. Used by `certs init`, `demo` and the tests.
//! FOR DEVELOPMENT AND TESTS ONLY: production certificates come from the parks' real CAs.
//! INTERFACE STUB: to be implemented (see issue 5).

use std::path::Path;
use std::time::Duration;

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Serial number (for revocation).
    pub serial: Vec<u8>,
}

/// A park's certificate authority.
pub struct ParkCa {
    pub park: String,
}

/// Validity of an issued certificate relative to now.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From one hour ago for this long.
    For(Duration),
    /// Expired: ended one hour ago.
    Expired,
}

impl ParkCa {
    /// A new self-signed CA for `park` (`CN=<Park> Park CA, O=Hetao <park> development PKI`).
    pub fn new(_park: &str) -> Result<ParkCa, rcgen::Error> {
        unimplemented!()
    }
    pub fn cert_pem(&self) -> &str {
        unimplemented!()
    }
    /// A client certificate for a partner organisation (Subject O = `organisation`, CN = `common_name`).
    pub fn issue_client(
        &self,
        _organisation: &str,
        _common_name: &str,
        _validity: Validity,
    ) -> Result<IssuedCert, rcgen::Error> {
        unimplemented!()
    }
    /// A server certificate with the given DNS names / IP addresses as SANs.
    pub fn issue_server(
        &self,
        _sans: &[String],
        _validity: Validity,
    ) -> Result<IssuedCert, rcgen::Error> {
        unimplemented!()
    }
    /// A CRL revoking `serials`, valid until `next_update_in` from now (negative = already stale).
    pub fn crl_pem(
        &self,
        _serials: &[Vec<u8>],
        _next_update_in: chrono::Duration,
    ) -> Result<String, rcgen::Error> {
        unimplemented!()
    }
}

/// `certs init`: writes a complete development PKI and a ready `gateway.toml` into `out`.
pub fn init_dev_pki(_out: &Path, _opts: &DevPkiOptions) -> anyhow::Result<()> {
    unimplemented!()
}

#[derive(Debug, Clone)]
pub struct DevPkiOptions {
    pub parks: Vec<String>,
    /// (park, organisation) pairs to issue client certificates for.
    pub orgs: Vec<(String, String)>,
    pub gateway_sans: Vec<String>,
    pub force: bool,
}
