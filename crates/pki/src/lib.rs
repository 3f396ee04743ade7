//! A development PKI (rcgen): one CA per park, the gateway's server and upstream-client
//! certificates, endpoint certificates, partner-organisation client certificates, CRLs, the audit
//! signing key and the pseudonymisation key. Used by `certs init`, `demo` and the tests.
//! FOR DEVELOPMENT AND TESTS ONLY: production certificates come from the parks' real CAs.
//!
//! Who trusts whom (the shape `init_dev_pki` writes and `gateway.toml` refers to):
//! - each park CA issues the client certificates of its partner organisations (the gateway
//!   verifies senders against it: `client_ca`) and the server certificate of its park endpoint
//!   (the gateway verifies the endpoint against it: `endpoint_ca`);
//! - the gateway CA issues the gateway's server certificate (senders verify the gateway against
//!   it) and the gateway's upstream-client certificate (park endpoints verify the gateway against
//!   it).
//!
//! Keys are ECDSA P-256: small, and the fastest handshakes ring offers.
#![forbid(unsafe_code)]

mod csr;
mod dev;
mod keys;
mod p12;

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RevokedCertParams, SerialNumber,
};

pub use csr::{gateway_csr, write_gateway_csrs, CsrFiles, CsrOptions, GatewayCertRole, GatewayCsr};
pub use dev::{
    default_orgs, init_dev_pki, org_slug, repository_policies_dir, repository_schemas_dir,
    sample_sender, DevPkiFiles, DevPkiOptions, OrgFiles, ParkFiles,
};
pub use keys::{pseudonymisation_key_hex, AuditSigningKey};
pub use p12::{client_pkcs12, Pkcs12Bundle};

/// Why a PKI operation failed. Names the file or the certificate where there is one.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed ({what}): {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what}: {message}")]
    Parse { what: String, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; {hint}")]
    Exists { path: String, hint: &'static str },
    #[error("invalid option {option}: {message}")]
    Option { option: String, message: String },
    #[error("random number generator failed")]
    Random,
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Serial number (for revocation), big-endian, exactly as written in the certificate.
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for IssuedCert {
    // The private key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &hex::encode(&self.serial))
            .finish_non_exhaustive()
    }
}

/// A certificate signed for a request (CSR): the key stayed with whoever made the request.
#[derive(Debug, Clone)]
pub struct SignedCert {
    pub cert_pem: String,
    /// Serial number, big-endian, exactly as written in the certificate.
    pub serial: Vec<u8>,
}

/// Validity of an issued certificate relative to now.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From one hour ago for this long.
    For(Duration),
    /// Expired: ended one hour ago.
    Expired,
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Development CAs live ten years: long enough never to be the reason a demo fails.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

// === impl Validity ===

impl Validity {
    /// (not_before, not_after). Backdated an hour so clocks a little apart still agree.
    fn window(self) -> (SystemTime, SystemTime) {
        let now = SystemTime::now();
        match self {
            Validity::For(d) => (now - HOUR, now - HOUR + d),
            Validity::Expired => (now - 2 * DAY, now - HOUR),
        }
    }
}

/// A signing certificate authority: the certificate rcgen signs with, its key, and the PEM text
/// handed out (for a CA loaded from files: the original PEM, byte for byte).
struct SigningCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    cert_pem: String,
    key_pem: String,
}

impl SigningCa {
    fn generate(common_name: &str, organisation: &str) -> Result<SigningCa, PkiError> {
        let what = || format!("CA {common_name}");
        let key = generate_key(&what())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(organisation, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.custom_extensions = vec![key_usage_extension(&[
            KeyUsageBit::DigitalSignature,
            KeyUsageBit::KeyCertSign,
            KeyUsageBit::CrlSign,
        ])];
        let now = SystemTime::now();
        params.not_before = (now - HOUR).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate {
                what: what(),
                source,
            })?;
        Ok(SigningCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert,
            key,
        })
    }

    /// Loads a CA from its PEM certificate and key. rcgen signs with a `Certificate` value, so
    /// one is rebuilt from the parsed Subject (same attribute order and string types, so issued
    /// certificates name their issuer byte for byte) and the original key identifier.
    fn from_pem(what: &str, cert_pem: &str, key_pem: &str) -> Result<SigningCa, PkiError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        use x509_parser::der_parser::asn1_rs::Tag;
        use x509_parser::extensions::ParsedExtension;

        let parse_err = |message: String| PkiError::Parse {
            what: what.to_string(),
            message,
        };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| parse_err(format!("no PEM certificate found ({e})")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| parse_err(format!("not an X.509 certificate ({e})")))?;
        if !x509.is_ca() {
            return Err(parse_err(
                "the certificate is not a CA (basicConstraints cA is not set)".into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| parse_err(format!("the private key cannot be read ({e})")))?;
        if key.public_key_der() != x509.public_key().raw {
            return Err(parse_err(
                "the private key does not belong to the certificate".into(),
            ));
        }

        let mut dn = DistinguishedName::new();
        for rdn in x509.subject().iter() {
            for attr in rdn.iter() {
                let oid: Vec<u64> = attr
                    .attr_type()
                    .iter()
                    .ok_or_else(|| parse_err("Subject attribute with an unusual OID".into()))?
                    .collect();
                let data = attr.attr_value().data;
                let text = || {
                    std::str::from_utf8(data)
                        .map(str::to_owned)
                        .map_err(|_| parse_err("Subject attribute is not text".into()))
                };
                let value = match attr.attr_value().header.tag() {
                    Tag::PrintableString => DnValue::PrintableString(
                        text()?
                            .try_into()
                            .map_err(|e| parse_err(format!("Subject: {e}")))?,
                    ),
                    Tag::Utf8String => DnValue::Utf8String(text()?),
                    Tag::Ia5String => DnValue::Ia5String(
                        text()?
                            .try_into()
                            .map_err(|e| parse_err(format!("Subject: {e}")))?,
                    ),
                    other => {
                        return Err(parse_err(format!(
                            "Subject attribute encoded as {other:?} is not supported"
                        )))
                    }
                };
                dn.push(DnType::from_oid(&oid), value);
            }
        }

        // Only the issuer's name, key identifier and key usages matter here: this certificate is
        // never written out (the original PEM is handed out instead).
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate {
                what: what.to_string(),
                source,
            })?;
        Ok(SigningCa {
            cert,
            key,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// A new key and an end-entity certificate for it.
    fn issue(
        &self,
        what: &str,
        params: CertificateParams,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        let key = generate_key(what)?;
        let (cert, serial) = self.sign_end_entity(what, params, &key, validity)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// Signs an end-entity certificate for `public_key`: random serial, the validity window,
    /// authority and subject key identifiers, KeyUsage digitalSignature and an empty
    /// BasicConstraints (see [`end_entity_basic_constraints`]). Returns it with its serial.
    fn sign_end_entity(
        &self,
        what: &str,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        validity: Validity,
    ) -> Result<(rcgen::Certificate, Vec<u8>), PkiError> {
        let serial = random_serial()?;
        let (not_before, not_after) = validity.window();
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        // Never `IsCa::ExplicitNoCa` nor rcgen's `key_usages`: both are written in forms DER
        // forbids. The three extensions below say the same in DER.
        params.is_ca = IsCa::NoCa;
        params.key_usages = Vec::new();
        params.custom_extensions.extend([
            end_entity_basic_constraints(),
            key_usage_extension(&[KeyUsageBit::DigitalSignature]),
            subject_key_identifier(public_key),
        ]);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.cert, &self.key)
            .map_err(|source| PkiError::Generate {
                what: what.to_string(),
                source,
            })?;
        Ok((cert, serial))
    }

    /// Signs a PKCS#10 request: its signature must verify; its Subject, SANs and extended key
    /// usages are taken over, everything else is this CA's leaf profile.
    fn sign_request(
        &self,
        what: &str,
        csr_pem: &str,
        validity: Validity,
    ) -> Result<SignedCert, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::Parse {
                what: what.to_string(),
                message: format!("not a valid certificate request ({e})"),
            }
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = csr.params.distinguished_name;
        params.subject_alt_names = csr.params.subject_alt_names;
        params.extended_key_usages = csr.params.extended_key_usages;
        let (cert, serial) = self.sign_end_entity(what, params, &csr.public_key, validity)?;
        Ok(SignedCert {
            cert_pem: cert.pem(),
            serial,
        })
    }

    fn client(
        &self,
        organisation: &str,
        common_name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(organisation, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(
            &format!("client certificate {common_name} ({organisation})"),
            params,
            validity,
        )
    }

    fn server(
        &self,
        organisation: &str,
        sans: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        let what = format!("server certificate for {}", sans.join(", "));
        let first = sans.first().ok_or_else(|| PkiError::Option {
            option: "sans".into(),
            message: "a server certificate needs at least one DNS name or IP address".into(),
        })?;
        // `new` sorts each SAN into an IP address or a DNS name.
        let mut params =
            CertificateParams::new(sans.to_vec()).map_err(|source| PkiError::Generate {
                what: what.clone(),
                source,
            })?;
        params.distinguished_name = distinguished_name(organisation, first);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(&what, params, validity)
    }

    fn crl(
        &self,
        what: &str,
        serials: &[Vec<u8>],
        next_update_in: chrono::Duration,
    ) -> Result<String, PkiError> {
        let now = SystemTime::now();
        let offset = Duration::from_secs(next_update_in.num_seconds().unsigned_abs());
        let next_update = if next_update_in < chrono::Duration::zero() {
            now - offset
        } else {
            now + offset
        };
        // this_update must precede next_update; a stale CRL was issued a day before it lapsed.
        let this_update = (now - Duration::from_secs(60)).min(next_update - DAY);
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let params = CertificateRevocationListParams {
            this_update: this_update.into(),
            next_update: next_update.into(),
            // Seconds since the epoch: increases from one CRL to the next, as RFC 5280 asks.
            crl_number: SerialNumber::from(unix),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: (now - Duration::from_secs(60)).into(),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.cert.params().key_identifier_method.clone(),
        };
        let crl = params
            .signed_by(&self.cert, &self.key)
            .map_err(|source| PkiError::Generate {
                what: what.to_string(),
                source,
            })?;
        crl.pem().map_err(|source| PkiError::Generate {
            what: what.to_string(),
            source,
        })
    }
}

// === impl ParkCa ===

/// A park's certificate authority: issues its partner organisations' client certificates and
/// its endpoint's server certificate.
pub struct ParkCa {
    pub park: String,
    ca: SigningCa,
}

impl ParkCa {
    /// A new self-signed CA for `park`
    /// (`CN=<Park name> Park CA (development), O=Hetao <Park name> development PKI`).
    pub fn new(park: &str) -> Result<ParkCa, PkiError> {
        let name = park_display_name(park);
        let ca = SigningCa::generate(
            &format!("{name} Park CA (development)"),
            &format!("Hetao {name} development PKI"),
        )?;
        Ok(ParkCa {
            park: park.to_string(),
            ca,
        })
    }

    /// Loads the CA of `park` back from PEM text (as written by `certs init`) to issue more.
    pub fn from_pem(park: &str, cert_pem: &str, key_pem: &str) -> Result<ParkCa, PkiError> {
        let ca = SigningCa::from_pem(&format!("CA of park {park}"), cert_pem, key_pem)?;
        Ok(ParkCa {
            park: park.to_string(),
            ca,
        })
    }

    /// Loads the CA of `park` from a PEM certificate file and a PEM key file.
    pub fn from_files(park: &str, cert: &Path, key: &Path) -> Result<ParkCa, PkiError> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        let ca = SigningCa::from_pem(
            &format!("CA {} / {}", cert.display(), key.display()),
            &cert_pem,
            &key_pem,
        )?;
        Ok(ParkCa {
            park: park.to_string(),
            ca,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM): only `certs init` needs it, to write it out.
    pub fn key_pem(&self) -> &str {
        &self.ca.key_pem
    }

    /// A client certificate for a partner organisation (Subject O = `organisation`,
    /// CN = `common_name`, EKU clientAuth, random serial).
    pub fn issue_client(
        &self,
        organisation: &str,
        common_name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        self.ca.client(organisation, common_name, validity)
    }

    /// A server certificate (for the park's endpoint) with the given DNS names / IP addresses as
    /// SANs; Subject O names the park, CN the first SAN.
    pub fn issue_server(
        &self,
        sans: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        let org = format!("Hetao {} park endpoint", park_display_name(&self.park));
        self.ca.server(&org, sans, validity)
    }

    /// Signs a certificate signing request (e.g. one `certs csr` made for the gateway), as the
    /// park's production CA would: Subject, SANs and extended key usages from the request.
    pub fn sign_request(&self, csr_pem: &str, validity: Validity) -> Result<SignedCert, PkiError> {
        self.ca.sign_request(
            &format!("certificate request signed by the CA of park {}", self.park),
            csr_pem,
            validity,
        )
    }

    /// A CRL revoking `serials`, valid until `next_update_in` from now (negative = already stale).
    pub fn crl_pem(
        &self,
        serials: &[Vec<u8>],
        next_update_in: chrono::Duration,
    ) -> Result<String, PkiError> {
        self.ca.crl(
            &format!("CRL of park {}", self.park),
            serials,
            next_update_in,
        )
    }
}

// === impl GatewayCa ===

/// The gateway operator's certificate authority: issues the gateway's server certificate (which
/// senders verify) and its upstream-client certificate (which park endpoints verify).
pub struct GatewayCa {
    ca: SigningCa,
}

/// Subject O of the gateway's own certificates.
pub const GATEWAY_ORGANISATION: &str = "Hetao Gateway";

impl GatewayCa {
    /// A new self-signed CA (`CN=Hetao Gateway CA (development), O=Hetao Gateway development PKI`).
    pub fn new() -> Result<GatewayCa, PkiError> {
        Ok(GatewayCa {
            ca: SigningCa::generate(
                "Hetao Gateway CA (development)",
                "Hetao Gateway development PKI",
            )?,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<GatewayCa, PkiError> {
        Ok(GatewayCa {
            ca: SigningCa::from_pem("gateway CA", cert_pem, key_pem)?,
        })
    }

    pub fn from_files(cert: &Path, key: &Path) -> Result<GatewayCa, PkiError> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        Ok(GatewayCa {
            ca: SigningCa::from_pem(
                &format!("CA {} / {}", cert.display(), key.display()),
                &cert_pem,
                &key_pem,
            )?,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.ca.key_pem
    }

    /// The gateway's server certificate (`O=Hetao Gateway`, SANs as given; see
    /// [`default_gateway_sans`]).
    pub fn issue_server(
        &self,
        sans: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        self.ca.server(GATEWAY_ORGANISATION, sans, validity)
    }

    /// The certificate the gateway presents to park endpoints (`O=Hetao Gateway`, clientAuth).
    pub fn issue_upstream_client(&self, validity: Validity) -> Result<IssuedCert, PkiError> {
        self.ca.client(
            GATEWAY_ORGANISATION,
            "hetao-gateway upstream client",
            validity,
        )
    }

    /// Any other client certificate from the gateway CA (tests: a sender from the wrong CA).
    pub fn issue_client(
        &self,
        organisation: &str,
        common_name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        self.ca.client(organisation, common_name, validity)
    }

    pub fn crl_pem(
        &self,
        serials: &[Vec<u8>],
        next_update_in: chrono::Duration,
    ) -> Result<String, PkiError> {
        self.ca
            .crl("CRL of the gateway CA", serials, next_update_in)
    }
}

/// `localhost`, `127.0.0.1`, `::1`: the SANs a gateway on this machine is reached by.
pub fn default_gateway_sans() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// "Shenzhen" for `sz`, "Hong Kong" for `hk`; other ids title-cased word by word
/// (`qianhai-west` → "Qianhai West").
pub fn park_display_name(park: &str) -> String {
    match park {
        "sz" => "Shenzhen".into(),
        "hk" => "Hong Kong".into(),
        other => other
            .split(['-', '_'])
            .filter(|w| !w.is_empty())
            .map(|w| {
                let mut chars = w.chars();
                match chars.next() {
                    Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

// === DER-exact extensions ===
//
// rcgen 0.13 writes two extensions in forms DER forbids, which strict parsers refuse (Python's
// `cryptography`: "ParseError { kind: EncodedDefault, location: [BasicConstraints::ca] }"):
// `IsCa::ExplicitNoCa` encodes BasicConstraints' DEFAULT `cA FALSE`, and `key_usages` always takes
// nine bits (`03 03 07 80 00` for digitalSignature) where X.690 11.2.2 drops a named bit list's
// trailing zero bits (`03 02 07 80`). The PKI writes these extensions itself.

const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const OID_SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];

/// KeyUsage bits (RFC 5280 4.2.1.3), numbered as in the BIT STRING.
#[derive(Debug, Clone, Copy)]
enum KeyUsageBit {
    DigitalSignature = 0,
    KeyCertSign = 5,
    CrlSign = 6,
}

/// Critical KeyUsage with exactly `bits` set, trailing zero bits dropped.
fn key_usage_extension(bits: &[KeyUsageBit]) -> CustomExtension {
    // Bit n of the BIT STRING is the n-th most significant bit of the first byte (all our
    // bits fit in one).
    let byte = bits
        .iter()
        .fold(0u8, |byte, bit| byte | (0x80 >> (*bit as u8)));
    let content = if byte == 0 {
        vec![0x03, 0x01, 0x00]
    } else {
        vec![0x03, 0x02, byte.trailing_zeros() as u8, byte]
    };
    let mut ext = CustomExtension::from_oid_content(OID_KEY_USAGE, content);
    ext.set_criticality(true);
    ext
}

/// Critical BasicConstraints of an end-entity certificate: an empty SEQUENCE, `cA` left at its
/// DEFAULT FALSE (as DER requires) and no path length. Present rather than absent so that no
/// verifier can mistake a leaf for a CA (RFC 5280 4.2.1.9).
fn end_entity_basic_constraints() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(OID_BASIC_CONSTRAINTS, vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

/// SubjectKeyIdentifier by RFC 7093 method 1: the first 160 bits of the SHA-256 of the
/// subjectPublicKey bits.
fn subject_key_identifier(public_key: &impl PublicKeyData) -> CustomExtension {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key.der_bytes());
    let mut content = vec![0x04, 20];
    content.extend_from_slice(&digest.as_ref()[..20]);
    CustomExtension::from_oid_content(OID_SUBJECT_KEY_IDENTIFIER, content)
}

fn distinguished_name(organisation: &str, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organisation);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
        what: what.to_string(),
        source,
    })
}

/// 16 random bytes, first byte in 0x01..=0x7f: a positive DER integer with no padding byte, so
/// the bytes in [`IssuedCert::serial`] are exactly those in the certificate and in a CRL.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    use ring::rand::SecureRandom;
    let mut serial = vec![0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Random)?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(serial)
}

fn read_pair(cert: &Path, key: &Path) -> Result<(String, String), PkiError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| PkiError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::parse_x509_certificate;
    use x509_parser::prelude::parse_x509_crl;

    fn parse(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn park_ca_is_a_ca_with_a_readable_name() {
        let ca = ParkCa::new("sz").unwrap();
        let der = parse(ca.cert_pem());
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert!(x.is_ca());
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "Shenzhen Park CA (development)");
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
    }

    #[test]
    fn key_usage_is_encoded_without_trailing_zero_bits() {
        let ds = key_usage_extension(&[KeyUsageBit::DigitalSignature]);
        assert_eq!(ds.content(), [0x03, 0x02, 0x07, 0x80]);
        assert!(ds.criticality());
        let ca = key_usage_extension(&[
            KeyUsageBit::DigitalSignature,
            KeyUsageBit::KeyCertSign,
            KeyUsageBit::CrlSign,
        ]);
        // Bits 0, 5 and 6: 1000 0110, the last (bit 7) unused.
        assert_eq!(ca.content(), [0x03, 0x02, 0x01, 0x86]);
    }

    #[test]
    fn leaves_are_end_entities_with_the_usages_they_had() {
        let ca = ParkCa::new("sz").unwrap();
        let c = ca.issue_client("Org", "a", Validity::For(DAY)).unwrap();
        let der = parse(&c.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        let bc = x.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca && bc.value.path_len_constraint.is_none());
        let ku = x.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature());
        assert_eq!(ku.value.flags, 1);
        let ski = x
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &x.public_key().subject_public_key.data,
        );
        assert_eq!(ski, &digest.as_ref()[..20]);
    }

    #[test]
    fn display_names_of_other_parks_are_title_cased() {
        assert_eq!(park_display_name("hk"), "Hong Kong");
        assert_eq!(park_display_name("qianhai-west"), "Qianhai West");
    }

    #[test]
    fn serials_are_random_and_match_the_certificate() {
        let ca = ParkCa::new("hk").unwrap();
        let a = ca.issue_client("Org", "a", Validity::For(DAY)).unwrap();
        let b = ca.issue_client("Org", "b", Validity::For(DAY)).unwrap();
        assert_ne!(a.serial, b.serial);
        let der = parse(&a.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert_eq!(x.raw_serial(), a.serial.as_slice());
    }

    #[test]
    fn expired_certificate_ended_in_the_past() {
        let ca = ParkCa::new("sz").unwrap();
        let c = ca.issue_client("Org", "late", Validity::Expired).unwrap();
        let der = parse(&c.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert!(x.validity().not_after.timestamp() < chrono::Utc::now().timestamp());
    }

    #[test]
    fn ca_loaded_from_pem_issues_certificates_chaining_to_the_original() {
        let original = ParkCa::new("sz").unwrap();
        let loaded = ParkCa::from_pem("sz", original.cert_pem(), original.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), original.cert_pem());
        let issued = loaded
            .issue_client("Org", "later", Validity::For(DAY))
            .unwrap();
        let ca_der = parse(original.cert_pem());
        let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert_eq!(x.issuer().as_raw(), ca.subject().as_raw());
        let ca_key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            ca.public_key().subject_public_key.data.to_vec(),
        );
        ca_key
            .verify(x.tbs_certificate.as_ref(), &x.signature_value.data)
            .unwrap();
    }

    #[test]
    fn ca_from_pem_refuses_a_key_of_another_ca() {
        let a = ParkCa::new("sz").unwrap();
        let b = ParkCa::new("hk").unwrap();
        let err = ParkCa::from_pem("sz", a.cert_pem(), b.key_pem())
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn stale_crl_has_next_update_in_the_past() {
        let ca = ParkCa::new("sz").unwrap();
        let pem = ca.crl_pem(&[], chrono::Duration::hours(-1)).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateRevocationListDer| d.to_vec())
            .unwrap();
        let (_, crl) = parse_x509_crl(&der).unwrap();
        let next = crl.next_update().unwrap().timestamp();
        assert!(next < chrono::Utc::now().timestamp());
        assert!(crl.last_update().timestamp() < next);
    }
}
