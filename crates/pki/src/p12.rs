//! PKCS#12 bundles of client identities: the certificate, its issuing CA and the private key in
//! one password-protected file, the form Java's `KeyStore`, .NET and many tools load an identity
//! from. `certs init` writes one per organisation beside its PEM pair, with a random password in a
//! file of its own.
//!
//! The profile is the one OpenSSL 3 and Java 17 write by default: PBES2 with
//! PBKDF2-HMAC-SHA-256 and AES-256-CBC for the key and the certificates, and an HMAC-SHA-256
//! integrity MAC. No RC2 or 3DES: OpenSSL 3 refuses those without its legacy provider.

use p12_keystore::{EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain};
use ring::rand::SecureRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::PkiError;

/// PBKDF2 iterations for the encryption and the MAC: Java 17's default (OpenSSL 3 writes 2048).
const ITERATIONS: u64 = 10_000;

/// Random bytes of a bundle password: 192 bits, as 48 hex characters.
const PASSWORD_BYTES: usize = 24;

/// A PKCS#12 bundle and the password that opens it.
pub struct Pkcs12Bundle {
    /// The PFX, DER encoded (the `.p12` file).
    pub der: Vec<u8>,
    /// Lowercase hex, ASCII only: every client reads it the same way (PKCS#12 passwords are
    /// BMPString-encoded, and non-ASCII passwords are where implementations disagree).
    pub password: String,
}

impl std::fmt::Debug for Pkcs12Bundle {
    // The password stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs12Bundle")
            .field("bytes", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl Pkcs12Bundle {
    /// The password file's text: the password on one line (what `openssl pkcs12 -passin file:`
    /// and the example clients read).
    pub fn password_file_text(&self) -> String {
        format!("{}\n", self.password)
    }
}

/// Bundles a client certificate with its private key (PKCS#8 PEM) and the CA that issued it,
/// under a fresh random password. `alias` is the key entry's friendly name (Java's alias).
pub fn client_pkcs12(
    alias: &str,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Pkcs12Bundle, PkiError> {
    let parse_err = |what: &str, message: String| PkiError::Parse {
        what: format!("PKCS#12 bundle {alias}: {what}"),
        message,
    };
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| parse_err("certificate", e.to_string()))?;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| parse_err("CA certificate", e.to_string()))?;
    // PKCS#12 key bags hold PKCS#8: refuse anything else rather than bundle a key no reader takes.
    let key = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| parse_err("private key", e.to_string()))?
    {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => return Err(parse_err("private key", "not PKCS#8".into())),
    };
    let chain = [leaf.as_ref(), ca.as_ref()]
        .into_iter()
        .map(|der| {
            p12_keystore::Certificate::from_der(der)
                .map_err(|e| parse_err("certificate chain", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The local key id ties the key bag to its certificate bag; any stable bytes do, and a digest
    // of the certificate is what OpenSSL uses (SHA-1 there; SHA-256 truncated to 20 bytes here).
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let local_key_id = &digest.as_ref()[..20];

    let mut store = KeyStore::new();
    store.add_entry(
        alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(key, local_key_id, chain)),
    );
    let password = random_password()?;
    let der = store
        .writer(&password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(|e| parse_err("encoding", e.to_string()))?;
    Ok(Pkcs12Bundle { der, password })
}

fn random_password() -> Result<String, PkiError> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParkCa, Validity};
    use std::time::Duration;

    fn bundle() -> (ParkCa, crate::IssuedCert, Pkcs12Bundle) {
        let ca = ParkCa::new("sz").unwrap();
        let cert = ca
            .issue_client(
                "Shenzhen Bay Genomics Institute",
                "lims-01",
                Validity::For(Duration::from_secs(3600)),
            )
            .unwrap();
        let b = client_pkcs12("sz-sbgi", &cert.cert_pem, &cert.key_pem, ca.cert_pem()).unwrap();
        (ca, cert, b)
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn a_bundle_opens_with_its_password_and_holds_the_key_and_the_chain() {
        let (ca, cert, b) = bundle();
        assert_eq!(b.password.len(), 2 * PASSWORD_BYTES);
        assert!(b.password.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(b.password_file_text(), format!("{}\n", b.password));
        let store = KeyStore::from_pkcs12(&b.der, &b.password).unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, "sz-sbgi");
        let key = match PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap() {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => unreachable!(),
        };
        assert_eq!(chain.key(), key.as_slice());
        let ders: Vec<&[u8]> = chain.chain().iter().map(|c| c.as_der()).collect();
        assert_eq!(
            ders,
            vec![pem_der(&cert.cert_pem).as_slice(), &pem_der(ca.cert_pem())]
        );
        assert!(KeyStore::from_pkcs12(&b.der, "not the password").is_err());
    }

    #[test]
    fn every_bundle_gets_its_own_password() {
        let (_, _, a) = bundle();
        let (_, _, b) = bundle();
        assert_ne!(a.password, b.password);
    }

    /// The algorithms by their object identifiers, found in the DER: PBES2, PBKDF2,
    /// HMAC-SHA-256 (as PBKDF2's PRF and as the MAC's digest SHA-256), AES-256-CBC; and neither
    /// of the legacy PKCS#12 PBE schemes (RC2, 3DES).
    #[test]
    fn a_bundle_uses_pbes2_aes_256_and_an_hmac_sha_256_mac() {
        let (_, _, b) = bundle();
        let has = |oid: &[u8]| b.der.windows(oid.len()).any(|w| w == oid);
        const PBES2: &[u8] = &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
        ];
        const PBKDF2: &[u8] = &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c,
        ];
        const HMAC_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
        const AES_256_CBC: &[u8] = &[
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a,
        ];
        const SHA256: &[u8] = &[
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        ];
        // pbeWithSHAAnd... (1.2.840.113549.1.12.1.*): the legacy RC2/3DES/RC4 family.
        const LEGACY_PBE_ARC: &[u8] = &[
            0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01,
        ];
        for (name, oid) in [
            ("PBES2", PBES2),
            ("PBKDF2", PBKDF2),
            ("HMAC-SHA-256", HMAC_SHA256),
            ("AES-256-CBC", AES_256_CBC),
            ("SHA-256", SHA256),
        ] {
            assert!(has(oid), "no {name}");
        }
        assert!(!has(LEGACY_PBE_ARC), "a legacy PKCS#12 PBE scheme");
    }
}
