//! Who sent a record: read from the verified client certificate, never from the request body.

use serde::{Deserialize, Serialize};

/// The sender of a record, as proven by its client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientIdentity {
    /// The park whose CA issued the certificate.
    pub park: String,
    /// The organisation: the certificate's Subject O.
    pub organisation: String,
    /// The certificate's full Subject, RFC 4514 style (`CN=..., O=..., C=...`).
    pub subject: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint_sha256: String,
}
