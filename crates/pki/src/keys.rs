//! The two non-certificate secrets of a deployment: the audit signing key (Ed25519) and the
//! pseudonymisation key. Formats are shared with the audit and policy modules (see the common
//! rules): PKCS#8 v2 `PRIVATE KEY` PEM, SPKI `PUBLIC KEY` PEM, 32+ bytes as lowercase hex.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::PkiError;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 raw key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A fresh audit signing key pair.
pub struct AuditSigningKey {
    /// PKCS#8 v2 DER as PEM, label `PRIVATE KEY`.
    pub private_pem: String,
    /// SPKI DER as PEM, label `PUBLIC KEY`: all an auditor needs.
    pub public_pem: String,
    /// First 16 hex characters of SHA-256 of the 32 raw public-key bytes.
    pub key_id: String,
}

impl AuditSigningKey {
    pub fn generate() -> Result<AuditSigningKey, PkiError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| PkiError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| PkiError::Parse {
            what: "generated audit signing key".into(),
            message: e.to_string(),
        })?;
        let raw = pair.public_key().as_ref();
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(raw);
        let digest = ring::digest::digest(&ring::digest::SHA256, raw);
        Ok(AuditSigningKey {
            private_pem: pem_encode("PRIVATE KEY", pkcs8.as_ref()),
            public_pem: pem_encode("PUBLIC KEY", &spki),
            key_id: hex::encode(&digest.as_ref()[..8]),
        })
    }
}

/// 32 random bytes as 64 lowercase hex characters and a newline.
pub fn pseudonymisation_key_hex() -> Result<String, PkiError> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| PkiError::Random)?;
    Ok(format!("{}\n", hex::encode(key)))
}

/// RFC 7468 PEM: standard base64 with padding, 64 characters a line.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // base64 output is ASCII, so byte chunks are character chunks.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_body(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn audit_key_signs_and_public_key_verifies_with_the_shared_formats() {
        let k = AuditSigningKey::generate().unwrap();
        assert!(k.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(k.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let pair = Ed25519KeyPair::from_pkcs8(&pem_body(&k.private_pem)).unwrap();
        let spki = pem_body(&k.public_pem);
        assert_eq!(spki.len(), 44);
        assert_eq!(spki[..12], ED25519_SPKI_PREFIX);
        let sig = pair.sign(b"chain head");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &spki[12..])
            .verify(b"chain head", sig.as_ref())
            .unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki[12..]);
        assert_eq!(k.key_id, hex::encode(&digest.as_ref()[..8]));
        assert_eq!(k.key_id.len(), 16);
    }

    #[test]
    fn pseudonymisation_key_is_64_lowercase_hex() {
        let k = pseudonymisation_key_hex().unwrap();
        let k = k.trim();
        assert_eq!(k.len(), 64);
        assert!(k
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}
