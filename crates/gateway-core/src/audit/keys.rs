//! The audit signing key (Ed25519, ring) and what is signed with it: checkpoints and receipts.
//!
//! This module owns the key formats; `certs init` and the demo (hetao-pki) generate keys here.
//! The signing key is PEM `PRIVATE KEY` holding PKCS#8 DER as produced by
//! `Ed25519KeyPair::generate_pkcs8`; the public key is PEM `PUBLIC KEY` holding SPKI DER. A key id
//! is the first 16 hex chars of SHA-256 over the 32 raw key bytes.
//!
//! Every signed message starts with its own domain tag or format (the chain-head message here,
//! C2SP notes in `note.rs`), so one kind of signature can never be presented as another.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// SPKI DER prefix of an Ed25519 public key (RFC 8410); the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

const CHECKPOINT_DOMAIN: &str = "hetao-audit-checkpoint/v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("audit key {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit key {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("cannot generate an audit signing key: the system random source failed")]
    Generate,
}

/// The message a checkpoint signs: everything up to `covers_seq`, whose hash is `chain_head`.
pub fn checkpoint_message(covers_seq: u64, chain_head: &str) -> Vec<u8> {
    format!("{CHECKPOINT_DOMAIN}\n{covers_seq}\n{chain_head}").into_bytes()
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn key_id_of(raw: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, raw);
    hex::encode(d)[..16].to_string()
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The gateway's audit signing key.
pub struct AuditSigner {
    key_pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// A fresh key from the system's random source, with its private key PEM (what the signing
    /// key file holds).
    pub fn generate() -> Result<(Self, String), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        let private_pem = to_pem("PRIVATE KEY", pkcs8.as_ref());
        let signer = AuditSigner::from_pem(private_pem.as_bytes(), "generated key")?;
        Ok((signer, private_pem))
    }

    /// Reads a signing key file; one the group or others may read is refused before it is read.
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        crate::key_file::check_private(path).map_err(|e| KeyError::Invalid {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_pem(&read_key_file(path)?, &path.display().to_string())
    }

    /// `origin` names where the PEM came from, for error messages.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Self, KeyError> {
        let invalid = |message: String| KeyError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| invalid(format!("expected a PEM `PRIVATE KEY` (PKCS#8): {e}")))?;
        // `maybe_unchecked` also accepts PKCS#8 v1 (what `openssl genpkey -algorithm ed25519`
        // writes) besides ring's own v2 documents.
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| invalid(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let key_id = key_id_of(key_pair.public_key().as_ref());
        Ok(AuditSigner { key_pair, key_id })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> AuditPublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.key_pair.public_key().as_ref());
        AuditPublicKey::from_raw(raw)
    }

    fn sign_b64(&self, msg: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key_pair.sign(msg).as_ref())
    }

    pub fn sign_checkpoint(&self, covers_seq: u64, chain_head: &str) -> String {
        self.sign_b64(&checkpoint_message(covers_seq, chain_head))
    }

    /// A raw Ed25519 signature, for signed notes (`note.rs`), whose text carries its own format.
    pub fn sign_raw(&self, msg: &[u8]) -> Vec<u8> {
        self.key_pair.sign(msg).as_ref().to_vec()
    }
}

/// An auditor's view of the key: all that is needed to check checkpoints and receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPublicKey {
    raw: [u8; 32],
    key_id: String,
}

impl AuditPublicKey {
    pub fn from_raw(raw: [u8; 32]) -> Self {
        AuditPublicKey {
            key_id: key_id_of(&raw),
            raw,
        }
    }

    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        Self::from_pem(&read_key_file(path)?, &path.display().to_string())
    }

    pub fn from_pem(pem: &[u8], origin: &str) -> Result<Self, KeyError> {
        let invalid = |message: String| KeyError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|e| invalid(format!("expected a PEM `PUBLIC KEY`: {e}")))?;
        let der: &[u8] = spki.as_ref();
        if der.len() != 44 || der[..12] != ED25519_SPKI_PREFIX {
            return Err(invalid("not an Ed25519 public key (RFC 8410 SPKI)".into()));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&der[12..]);
        Ok(Self::from_raw(raw))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn to_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        to_pem("PUBLIC KEY", &der)
    }

    fn verify_b64(&self, msg: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(msg, &sig)
            .is_ok()
    }

    pub fn verify_checkpoint(&self, covers_seq: u64, chain_head: &str, signature: &str) -> bool {
        self.verify_b64(&checkpoint_message(covers_seq, chain_head), signature)
    }

    /// The 32 raw key bytes.
    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    /// Checks a raw Ed25519 signature (signed notes).
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(msg, sig)
            .is_ok()
    }
}

/// A fresh signing key: `(private key PEM, public key PEM)`.
pub fn generate_signing_key() -> Result<(String, String), KeyError> {
    let (signer, private_pem) = AuditSigner::generate()?;
    Ok((private_pem, signer.public_key().to_pem()))
}

/// The public key PEM belonging to a signing key file (what to hand to auditors).
pub fn public_key_pem_from_signing_key_file(path: &Path) -> Result<String, KeyError> {
    Ok(AuditSigner::from_pem_file(path)?.public_key().to_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_pem_and_signs() {
        let (private_pem, public_pem) = generate_signing_key().unwrap();
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let signer = AuditSigner::from_pem(private_pem.as_bytes(), "t").unwrap();
        let public = AuditPublicKey::from_pem(public_pem.as_bytes(), "t").unwrap();
        assert_eq!(signer.key_id(), public.key_id());
        assert_eq!(public.key_id().len(), 16);
        let sig = signer.sign_checkpoint(5, "ab");
        assert!(public.verify_checkpoint(5, "ab", &sig));
        assert!(!public.verify_checkpoint(6, "ab", &sig));
    }

    #[test]
    fn public_key_pem_is_not_a_signing_key() {
        let (_, public_pem) = generate_signing_key().unwrap();
        let err = AuditSigner::from_pem(public_pem.as_bytes(), "pub.pem").unwrap_err();
        assert!(err.to_string().contains("pub.pem"), "{err}");
    }
}
