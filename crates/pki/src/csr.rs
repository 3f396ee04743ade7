//! Certificate signing requests for the gateway's own certificates (`certs csr`): in production a
//! park CA signs them; the private keys never leave the gateway host.

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};

use super::dev::write_file_with;
use super::{
    distinguished_name, generate_key, key_usage_extension, KeyUsageBit, PkiError,
    GATEWAY_ORGANISATION,
};

/// Which of the gateway's two certificates a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayCertRole {
    /// `[server]`: what partner organisations connect to (serverAuth).
    Server,
    /// `[upstream_client]`: the gateway's identity towards the park endpoints (clientAuth).
    UpstreamClient,
}

impl GatewayCertRole {
    /// The file stem `gateway.toml` uses for this certificate: `gateway` (`gateway.key`,
    /// `gateway.pem`) and `gateway-client`.
    pub fn file_stem(self) -> &'static str {
        match self {
            GatewayCertRole::Server => "gateway",
            GatewayCertRole::UpstreamClient => "gateway-client",
        }
    }

    /// Subject CN when none is given: the first SAN of a server certificate, a fixed name for
    /// the upstream client (as the development PKI names it).
    fn default_common_name(self, sans: &[String]) -> Option<String> {
        match self {
            GatewayCertRole::Server => sans.first().cloned(),
            GatewayCertRole::UpstreamClient => Some("hetao-gateway upstream client".into()),
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone)]
pub struct CsrOptions {
    pub role: GatewayCertRole,
    /// Subject O (default [`GATEWAY_ORGANISATION`]).
    pub organisation: String,
    /// Subject CN; `None`: see [`GatewayCertRole`].
    pub common_name: Option<String>,
    /// DNS names and IP addresses (SANs). A server certificate needs at least one.
    pub sans: Vec<String>,
}

impl CsrOptions {
    pub fn new(role: GatewayCertRole, sans: Vec<String>) -> CsrOptions {
        CsrOptions {
            role,
            organisation: GATEWAY_ORGANISATION.to_string(),
            common_name: None,
            sans,
        }
    }
}

/// A fresh ECDSA P-256 key and a PKCS#10 request signed with it, both PEM.
pub struct GatewayCsr {
    pub role: GatewayCertRole,
    pub csr_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for GatewayCsr {
    // The private key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCsr")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Makes a key and a request: Subject O and CN, the SANs, KeyUsage digitalSignature and the
/// extended key usage of the role. The CA decides validity, serial and the rest.
pub fn gateway_csr(opts: &CsrOptions) -> Result<GatewayCsr, PkiError> {
    let what = format!("certificate request ({})", opts.role.file_stem());
    let bad = |option: &str, message: String| PkiError::Option {
        option: option.into(),
        message,
    };
    if opts.role == GatewayCertRole::Server && opts.sans.is_empty() {
        return Err(bad(
            "san",
            "a server certificate needs at least one DNS name or IP address".into(),
        ));
    }
    if opts.organisation.trim().is_empty() {
        return Err(bad("organisation", "the organisation is empty".into()));
    }
    let common_name = match &opts.common_name {
        Some(cn) if cn.trim().is_empty() => return Err(bad("cn", "the CN is empty".into())),
        Some(cn) => cn.clone(),
        None => opts
            .role
            .default_common_name(&opts.sans)
            .ok_or_else(|| bad("cn", "no CN given and no SAN to take it from".into()))?,
    };
    // `new` sorts each SAN into an IP address or a DNS name.
    let mut params =
        CertificateParams::new(opts.sans.clone()).map_err(|source| PkiError::Generate {
            what: what.clone(),
            source,
        })?;
    params.distinguished_name = distinguished_name(&opts.organisation, &common_name);
    // KeyUsage in DER form (see `key_usage_extension`); rcgen's own would pad it to nine bits.
    params.custom_extensions = vec![key_usage_extension(&[KeyUsageBit::DigitalSignature])];
    params.extended_key_usages = vec![match opts.role {
        GatewayCertRole::Server => ExtendedKeyUsagePurpose::ServerAuth,
        GatewayCertRole::UpstreamClient => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let key: KeyPair = generate_key(&what)?;
    let generate = |source| PkiError::Generate {
        what: what.clone(),
        source,
    };
    let csr_pem = params
        .serialize_request(&key)
        .map_err(generate)?
        .pem()
        .map_err(generate)?;
    Ok(GatewayCsr {
        role: opts.role,
        csr_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The two files of one request.
#[derive(Debug, Clone)]
pub struct CsrFiles {
    pub role: GatewayCertRole,
    /// `<stem>.key`, mode 0600.
    pub key: PathBuf,
    /// `<stem>.csr`: what the CA gets.
    pub csr: PathBuf,
}

/// Writes a key and a request per entry of `requests` into `out` (created if missing). Refuses,
/// before writing anything, when a file it would write exists and `force` is off: a replaced key
/// makes the certificate issued for the old one useless.
pub fn write_gateway_csrs(
    out: &Path,
    requests: &[CsrOptions],
    force: bool,
) -> Result<Vec<CsrFiles>, PkiError> {
    let files: Vec<CsrFiles> = requests
        .iter()
        .map(|r| CsrFiles {
            role: r.role,
            key: out.join(format!("{}.key", r.role.file_stem())),
            csr: out.join(format!("{}.csr", r.role.file_stem())),
        })
        .collect();
    for f in &files {
        for path in [&f.key, &f.csr] {
            if !force && path.exists() {
                return Err(exists(path));
            }
        }
    }
    // Every request is made before anything is written: a bad option writes nothing.
    let made = requests
        .iter()
        .map(gateway_csr)
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(out).map_err(|source| PkiError::Write {
        path: out.display().to_string(),
        source,
    })?;
    for (f, csr) in files.iter().zip(&made) {
        write_file_with(&f.key, csr.key_pem.as_bytes(), true, force, exists)?;
        write_file_with(&f.csr, csr.csr_pem.as_bytes(), false, force, exists)?;
    }
    Ok(files)
}

fn exists(path: &Path) -> PkiError {
    PkiError::Exists {
        path: path.display().to_string(),
        hint: "pass --force to replace it (a new key makes the certificate issued for the old one useless)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParkCa, Validity};

    #[test]
    fn a_server_request_needs_a_san() {
        let err = gateway_csr(&CsrOptions::new(GatewayCertRole::Server, vec![]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("san"), "{err}");
    }

    #[test]
    fn a_bad_request_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let requests = [
            CsrOptions::new(GatewayCertRole::UpstreamClient, vec![]),
            CsrOptions::new(GatewayCertRole::Server, vec![]),
        ];
        assert!(write_gateway_csrs(dir.path(), &requests, false).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_ca_refuses_a_request_whose_signature_does_not_verify() {
        let csr = gateway_csr(&CsrOptions::new(
            GatewayCertRole::Server,
            vec!["gw.hetao.example".into()],
        ))
        .unwrap();
        let ca = ParkCa::new("sz").unwrap();
        let day = std::time::Duration::from_secs(86_400);
        assert!(ca.sign_request(&csr.csr_pem, Validity::For(day)).is_ok());

        // Same request with another name in it: the signature no longer matches.
        let forged = pem_replace(&csr.csr_pem, b"gw.hetao.example", b"gw.hetao.exampl3");
        let err = ca
            .sign_request(&forged, Validity::For(day))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid certificate request"), "{err}");
    }

    /// Replaces bytes inside a PEM block's DER.
    fn pem_replace(pem: &str, from: &[u8], to: &[u8]) -> String {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let at = der.windows(from.len()).position(|w| w == from).unwrap();
        der[at..at + from.len()].copy_from_slice(to);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE REQUEST-----\n");
        pem
    }
}
