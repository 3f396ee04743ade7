//! The two non-certificate secrets of a deployment: the audit signing key (Ed25519) and the
//! pseudonymisation key. Their formats belong to the gateway core, which reads them
//! (`hetao_gateway_core::audit::keys`, `hetao_gateway_core::policy::obligations`): they are
//! generated there too, so what `certs init` writes is by construction what the gateway reads.

use hetao_gateway_core::audit::keys::{AuditSigner, KeyError};
use hetao_gateway_core::policy::obligations::PseudonymKey;

use super::PkiError;

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
        let (signer, private_pem) = AuditSigner::generate().map_err(|e| match e {
            KeyError::Generate => PkiError::Random,
            other => PkiError::Parse {
                what: "generated audit signing key".into(),
                message: other.to_string(),
            },
        })?;
        Ok(AuditSigningKey {
            private_pem,
            public_pem: signer.public_key().to_pem(),
            key_id: signer.key_id().to_string(),
        })
    }
}

/// 32 random bytes as 64 lowercase hex characters and a newline.
pub fn pseudonymisation_key_hex() -> Result<String, PkiError> {
    PseudonymKey::generate_file_text().map_err(|_| PkiError::Random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn pem_body(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    /// Checked against ring and RFC 8410 directly, not against the core's own reader.
    #[test]
    fn audit_key_signs_and_public_key_verifies_with_the_shared_formats() {
        const ED25519_SPKI_PREFIX: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let k = AuditSigningKey::generate().unwrap();
        assert!(k.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(k.public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let pair = Ed25519KeyPair::from_pkcs8(&pem_body(&k.private_pem)).unwrap();
        let spki = pem_body(&k.public_pem);
        assert_eq!(spki.len(), 44);
        assert_eq!(spki[..12], ED25519_SPKI_PREFIX);
        assert_eq!(&spki[12..], pair.public_key().as_ref());
        let sig = pair.sign(b"chain head");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &spki[12..])
            .verify(b"chain head", sig.as_ref())
            .unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki[12..]);
        assert_eq!(k.key_id, hex::encode(&digest.as_ref()[..8]));
        assert_eq!(k.key_id.len(), 16);
    }

    #[test]
    fn pseudonymisation_key_is_64_lowercase_hex_the_gateway_reads() {
        let text = pseudonymisation_key_hex().unwrap();
        assert!(text.ends_with('\n'));
        let k = text.trim();
        assert_eq!(k.len(), 64);
        assert!(k
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        PseudonymKey::from_hex(&text).unwrap();
    }
}
