//! `certs init` and the development PKI, end to end: real files in a temp folder, parsed back.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hetao_gateway_core::config::Config;
use hetao_pki::{init_dev_pki, DevPkiOptions, ParkCa, Validity};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{parse_x509_certificate, parse_x509_crl, GeneralName};

const CERTS: &[&str] = &[
    "gateway-ca.pem",
    "gateway.pem",
    "gateway-client.pem",
    "sz-ca.pem",
    "hk-ca.pem",
    "sz-endpoint.pem",
    "hk-endpoint.pem",
    "sz-crl.pem",
    "hk-crl.pem",
    "audit-signing.pub",
    "gateway.toml",
    "orgs/sz-shenzhen-bay-genomics-institute.pem",
    "orgs/sz-futian-quantum-devices-co.pem",
    "orgs/hk-hkstp-biomedical-ltd.pem",
    "orgs/hk-hong-kong-clinical-data-trust.pem",
];

const SECRETS: &[&str] = &[
    "gateway-ca.key",
    "gateway.key",
    "gateway-client.key",
    "sz-ca.key",
    "hk-ca.key",
    "sz-endpoint.key",
    "hk-endpoint.key",
    "audit-signing.key",
    "pseudonymisation.key",
    "orgs/sz-shenzhen-bay-genomics-institute.key",
    "orgs/sz-futian-quantum-devices-co.key",
    "orgs/hk-hkstp-biomedical-ltd.key",
    "orgs/hk-hong-kong-clinical-data-trust.key",
];

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
}

/// A temp folder with `schemas/` and `policies/` for the config to point at.
fn workspace() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&schemas).unwrap();
    std::fs::create_dir(&policies).unwrap();
    (dir, schemas, policies)
}

fn options(schemas: &Path, policies: &Path) -> DevPkiOptions {
    DevPkiOptions {
        schemas_dir: Some(schemas.to_path_buf()),
        policies_dir: Some(policies.to_path_buf()),
        ..DevPkiOptions::default()
    }
}

fn init_cli(out: &Path, schemas: &Path, policies: &Path, force: bool) -> std::process::Output {
    let mut cmd = binary();
    cmd.arg("certs")
        .arg("init")
        .arg("--out")
        .arg(out)
        .arg("--schemas")
        .arg(schemas)
        .arg("--policies")
        .arg(policies);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_init_writes_every_file_with_private_keys_0600() {
    let (dir, schemas, policies) = workspace();
    let out = dir.path().join("pki");
    let run = init_cli(&out, &schemas, &policies, false);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("development"), "{stdout}");
    assert!(stdout.contains("hetao-gateway serve --config"), "{stdout}");
    for name in CERTS {
        let p = out.join(name);
        assert!(p.is_file(), "{name} missing");
        assert!(std::fs::metadata(&p).unwrap().len() > 0, "{name} empty");
    }
    for name in SECRETS {
        let p = out.join(name);
        assert!(p.is_file(), "{name} missing");
        assert_eq!(mode(&p), 0o600, "{name} must be readable by its owner only");
    }
    assert!(out.join("audit").is_dir());
}

#[test]
fn certs_init_refuses_to_overwrite_without_force() {
    let (dir, schemas, policies) = workspace();
    let out = dir.path().join("pki");
    assert!(init_cli(&out, &schemas, &policies, false).status.success());
    let before = std::fs::read(out.join("sz-ca.key")).unwrap();

    let again = init_cli(&out, &schemas, &policies, false);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("sz-ca.key")).unwrap(), before);

    let forced = init_cli(&out, &schemas, &policies, true);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(out.join("sz-ca.key")).unwrap(), before);
    assert_eq!(mode(&out.join("sz-ca.key")), 0o600);
}

#[test]
fn written_gateway_toml_loads_and_every_path_exists() {
    let (dir, schemas, policies) = workspace();
    let files = init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let config = Config::load(&files.config).unwrap();

    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9443");
    let mut paths = vec![
        config.server.cert.clone(),
        config.server.key.clone(),
        config.upstream_client.cert.clone(),
        config.upstream_client.key.clone(),
        config.schemas.dir.clone(),
        config.policies.dir.clone(),
        config.audit.signing_key.clone(),
        config.audit.log.parent().unwrap().to_path_buf(),
    ];
    paths.push(config.policies.pseudonymisation_key.clone().unwrap());
    for park in config.parks.values() {
        paths.extend([park.client_ca.clone(), park.endpoint_ca.clone()]);
        assert_eq!(park.crl.len(), 1);
        paths.extend(park.crl.iter().cloned());
    }
    for p in &paths {
        assert!(p.exists(), "{} does not exist", p.display());
    }
    assert_eq!(config.parks["sz"].endpoint, "https://127.0.0.1:9001");
    assert_eq!(config.parks["hk"].endpoint, "https://127.0.0.1:9002");
    assert_eq!(config.parks["hk"].client_ca, config.parks["hk"].endpoint_ca);
    assert_eq!(config.audit.log, dir.path().join("audit/audit.jsonl"));
    // Every file the struct reports was written.
    for p in files.written_files() {
        assert!(p.is_file(), "{}", p.display());
    }
}

#[test]
fn issued_client_certificate_names_the_organisation_and_is_for_client_auth() {
    let (dir, schemas, policies) = workspace();
    let files = init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let org = files
        .orgs
        .iter()
        .find(|o| o.organisation == "HKSTP Biomedical Ltd.")
        .unwrap();
    let der = cert_der(&org.cert);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let o = cert.subject().iter_organization().next().unwrap();
    assert_eq!(o.as_str().unwrap(), "HKSTP Biomedical Ltd.");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());
    assert_eq!(hex::encode(cert.raw_serial()), org.serial_hex);

    let ca_der = cert_der(&files.park("hk").unwrap().ca_cert);
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
    let cn = ca.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "Hong Kong Park CA (development)");
}

#[test]
fn gateway_certificates_carry_the_default_sans_and_the_gateway_organisation() {
    let (dir, schemas, policies) = workspace();
    let files = init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let der = cert_der(&files.gateway_cert);
    let (_, server) = parse_x509_certificate(&der).unwrap();
    let sans = server.subject_alternative_name().unwrap().unwrap().value;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &sans.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(ip) => ips.push(ip.len()),
            _ => {}
        }
    }
    assert_eq!(dns, ["localhost"]);
    assert_eq!(ips, [4, 16]); // 127.0.0.1 and ::1
    assert!(
        server
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );

    let der = cert_der(&files.gateway_client_cert);
    let (_, client) = parse_x509_certificate(&der).unwrap();
    let o = client.subject().iter_organization().next().unwrap();
    assert_eq!(o.as_str().unwrap(), "Hetao Gateway");
    assert!(
        client
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
}

#[test]
fn crl_from_a_reloaded_ca_lists_the_revoked_serial() {
    let (dir, schemas, policies) = workspace();
    let files = init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let sz = files.park("sz").unwrap();
    let ca = ParkCa::from_files("sz", &sz.ca_cert, &sz.ca_key).unwrap();
    let revoked = ca
        .issue_client(
            "Futian Quantum Devices Co.",
            "lost laptop",
            Validity::For(std::time::Duration::from_secs(86_400)),
        )
        .unwrap();
    let kept = ca
        .issue_client(
            "Futian Quantum Devices Co.",
            "desk",
            Validity::For(std::time::Duration::from_secs(86_400)),
        )
        .unwrap();
    let pem = ca
        .crl_pem(
            std::slice::from_ref(&revoked.serial),
            chrono::Duration::days(7),
        )
        .unwrap();
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, crl) = parse_x509_crl(der.as_ref()).unwrap();
    let serials: Vec<Vec<u8>> = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    assert_eq!(serials, vec![revoked.serial.clone()]);
    assert!(!serials.contains(&kept.serial));

    // Signed by the park CA: its issuer is the CA and the signature verifies with its key.
    let ca_der = cert_der(&sz.ca_cert);
    let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(crl.issuer().as_raw(), ca_cert.subject().as_raw());
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        ca_cert.public_key().subject_public_key.data.to_vec(),
    )
    .verify(crl.tbs_cert_list.as_ref(), &crl.signature_value.data)
    .unwrap();
    let next = crl.next_update().unwrap().timestamp();
    assert!(next > chrono::Utc::now().timestamp() + 6 * 86_400);

    // The CRL certs init wrote is empty and valid about 30 days.
    let der = CertificateRevocationListDer::from_pem_file(&sz.crl).unwrap();
    let (_, initial) = parse_x509_crl(der.as_ref()).unwrap();
    assert_eq!(initial.iter_revoked_certificates().count(), 0);
    let days =
        (initial.next_update().unwrap().timestamp() - chrono::Utc::now().timestamp()) / 86_400;
    assert!((29..=30).contains(&days), "{days}");
}

#[test]
fn certs_init_force_replaces_a_planted_symlink_instead_of_writing_through_it() {
    let (dir, schemas, policies) = workspace();
    let out = dir.path().join("pki");
    assert!(init_cli(&out, &schemas, &policies, false).status.success());
    // Someone with write access to the folder points the server key at another file.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "do not overwrite").unwrap();
    let key = out.join("gateway.key");
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(&victim, &key).unwrap();
    // ... and leaves a dangling link where the config goes.
    let config = out.join("gateway.toml");
    std::fs::remove_file(&config).unwrap();
    let nowhere = dir.path().join("nowhere.toml");
    std::os::unix::fs::symlink(&nowhere, &config).unwrap();

    let forced = init_cli(&out, &schemas, &policies, true);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "do not overwrite"
    );
    assert!(
        !nowhere.exists(),
        "nothing is created through a dangling link"
    );
    for path in [&key, &config] {
        let m = std::fs::symlink_metadata(path).unwrap();
        assert!(
            m.file_type().is_file(),
            "{} is a plain file now",
            path.display()
        );
    }
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn issue_client_refuses_a_dangling_symlink_where_it_would_write() {
    let (dir, schemas, policies) = workspace();
    init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let stem = dir.path().join("extra/bob");
    std::fs::create_dir_all(dir.path().join("extra")).unwrap();
    let target = dir.path().join("planted.pem");
    std::os::unix::fs::symlink(&target, stem.with_extension("pem")).unwrap();
    let run = binary()
        .args(["certs", "issue-client", "--park", "sz", "--dir"])
        .arg(dir.path())
        .args([
            "--org",
            "Shenzhen Bay Genomics Institute",
            "--cn",
            "Bob",
            "--out",
        ])
        .arg(&stem)
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!target.exists(), "nothing was written through the link");
    assert!(!stem.with_extension("key").exists());
}

#[test]
fn issue_client_subcommand_issues_from_the_ca_certs_init_wrote() {
    let (dir, schemas, policies) = workspace();
    let files = init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let stem = dir.path().join("extra/alice");
    let run = binary()
        .args(["certs", "issue-client", "--park", "sz", "--dir"])
        .arg(dir.path())
        .args([
            "--org",
            "Shenzhen Bay Genomics Institute",
            "--cn",
            "Alice Chen",
            "--out",
        ])
        .arg(&stem)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cert = stem.with_extension("pem");
    assert_eq!(mode(&stem.with_extension("key")), 0o600);
    let der = cert_der(&cert);
    let (_, x) = parse_x509_certificate(&der).unwrap();
    let cn = x.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "Alice Chen");
    let ca_der = cert_der(&files.park("sz").unwrap().ca_cert);
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(x.issuer().as_raw(), ca.subject().as_raw());
}

#[test]
fn audit_and_pseudonymisation_keys_use_the_shared_formats() {
    let (dir, schemas, policies) = workspace();
    let files = init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let private = std::fs::read_to_string(&files.audit_signing_key).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    let public = std::fs::read_to_string(&files.audit_public_key).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(files.audit_key_id.len(), 16);
    let key = std::fs::read_to_string(&files.pseudonymisation_key).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(hex::decode(key.trim()).is_ok());
}

/// What the gateway will do with these CRLs: rustls' verifier refuses the revoked certificate,
/// accepts the others, and (with expiration enforced) refuses everything under a stale CRL.
#[test]
fn rustls_verifier_honours_the_crl_and_refuses_a_stale_one() {
    use rustls::server::WebPkiClientVerifier;
    use std::sync::Arc;

    let ca = ParkCa::new("sz").unwrap();
    let day = std::time::Duration::from_secs(86_400);
    let revoked = ca
        .issue_client("Org", "revoked", Validity::For(day))
        .unwrap();
    let good = ca.issue_client("Org", "good", Validity::For(day)).unwrap();
    let verifier = |crl_pem: String| {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let crl = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
        WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls([crl])
        .enforce_revocation_expiration()
        .build()
        .unwrap()
    };
    let der =
        |c: &hetao_pki::IssuedCert| CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
    let now = rustls_pki_types::UnixTime::now();

    let fresh = verifier(
        ca.crl_pem(
            std::slice::from_ref(&revoked.serial),
            chrono::Duration::days(1),
        )
        .unwrap(),
    );
    let err = fresh
        .verify_client_cert(&der(&revoked), &[], now)
        .unwrap_err();
    assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
    assert!(fresh.verify_client_cert(&der(&good), &[], now).is_ok());

    let stale = verifier(ca.crl_pem(&[], chrono::Duration::hours(-1)).unwrap());
    let err = stale.verify_client_cert(&der(&good), &[], now).unwrap_err();
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");

    let expired = ca.issue_client("Org", "late", Validity::Expired).unwrap();
    let err = fresh
        .verify_client_cert(&der(&expired), &[], now)
        .unwrap_err();
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
}

// === Strict DER ===

/// A strict DER reader for what the PKI writes, on the `asn1` crate (rust-asn1: the parser under
/// Python's `cryptography`). It refuses a DEFAULT value that is encoded (`EncodedDefault`), a
/// non-minimal integer or length, an unsorted SET OF, a malformed time or string. The RFC 5280 /
/// RFC 2986 structures are spelled out below, and every extension value is parsed by its own
/// ASN.1 type: an extension this reader does not know is an error, so nothing is left unchecked.
/// x509-parser (used elsewhere) and RustCrypto's `der` both accept encoded defaults.
mod strict_der {
    // Fields are here to be parsed; most are never read afterwards.
    #![allow(dead_code)]
    // `asn1::ParseError` is large by design; the lint fires inside the crate's own derive.
    #![allow(clippy::result_large_err)]

    use asn1::{BigUint, BitString, ObjectIdentifier, SequenceOf, SetOf, Tlv};

    const BASIC_CONSTRAINTS: ObjectIdentifier = asn1::oid!(2, 5, 29, 19);
    const KEY_USAGE: ObjectIdentifier = asn1::oid!(2, 5, 29, 15);
    const EXTENDED_KEY_USAGE: ObjectIdentifier = asn1::oid!(2, 5, 29, 37);
    const SUBJECT_ALT_NAME: ObjectIdentifier = asn1::oid!(2, 5, 29, 17);
    const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = asn1::oid!(2, 5, 29, 14);
    const AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier = asn1::oid!(2, 5, 29, 35);
    const CRL_NUMBER: ObjectIdentifier = asn1::oid!(2, 5, 29, 20);
    const CRL_REASON: ObjectIdentifier = asn1::oid!(2, 5, 29, 21);
    const EXTENSION_REQUEST: ObjectIdentifier = asn1::oid!(1, 2, 840, 113549, 1, 9, 14);

    #[derive(asn1::Asn1Read)]
    struct AlgorithmIdentifier<'a> {
        algorithm: ObjectIdentifier,
        parameters: Option<Tlv<'a>>,
    }

    /// The string types our names use.
    #[derive(asn1::Asn1Read)]
    enum DirectoryString<'a> {
        Printable(asn1::PrintableString<'a>),
        Utf8(asn1::Utf8String<'a>),
        Ia5(asn1::IA5String<'a>),
    }

    #[derive(asn1::Asn1Read)]
    struct AttributeTypeAndValue<'a> {
        attribute_type: ObjectIdentifier,
        value: DirectoryString<'a>,
    }

    type Name<'a> = SequenceOf<'a, SetOf<'a, AttributeTypeAndValue<'a>>>;

    #[derive(asn1::Asn1Read)]
    enum Time {
        Utc(asn1::UtcTime),
        Generalized(asn1::X509GeneralizedTime),
    }

    #[derive(asn1::Asn1Read)]
    struct Validity {
        not_before: Time,
        not_after: Time,
    }

    #[derive(asn1::Asn1Read)]
    struct SubjectPublicKeyInfo<'a> {
        algorithm: AlgorithmIdentifier<'a>,
        subject_public_key: BitString<'a>,
    }

    #[derive(asn1::Asn1Read)]
    struct Extension<'a> {
        extn_id: ObjectIdentifier,
        #[default(false)]
        critical: bool,
        extn_value: &'a [u8],
    }

    #[derive(asn1::Asn1Read)]
    struct TbsCertificate<'a> {
        #[explicit(0)]
        #[default(0)]
        version: u8,
        serial_number: BigUint<'a>,
        signature: AlgorithmIdentifier<'a>,
        issuer: Name<'a>,
        validity: Validity,
        subject: Name<'a>,
        subject_public_key_info: SubjectPublicKeyInfo<'a>,
        #[implicit(1)]
        issuer_unique_id: Option<BitString<'a>>,
        #[implicit(2)]
        subject_unique_id: Option<BitString<'a>>,
        #[explicit(3)]
        extensions: Option<SequenceOf<'a, Extension<'a>>>,
    }

    #[derive(asn1::Asn1Read)]
    struct Certificate<'a> {
        tbs_certificate: TbsCertificate<'a>,
        signature_algorithm: AlgorithmIdentifier<'a>,
        signature_value: BitString<'a>,
    }

    #[derive(asn1::Asn1Read)]
    struct RevokedCertificate<'a> {
        user_certificate: BigUint<'a>,
        revocation_date: Time,
        crl_entry_extensions: Option<SequenceOf<'a, Extension<'a>>>,
    }

    #[derive(asn1::Asn1Read)]
    struct TbsCertList<'a> {
        version: Option<u8>,
        signature: AlgorithmIdentifier<'a>,
        issuer: Name<'a>,
        this_update: Time,
        next_update: Option<Time>,
        revoked_certificates: Option<SequenceOf<'a, RevokedCertificate<'a>>>,
        #[explicit(0)]
        crl_extensions: Option<SequenceOf<'a, Extension<'a>>>,
    }

    #[derive(asn1::Asn1Read)]
    struct CertificateList<'a> {
        tbs_cert_list: TbsCertList<'a>,
        signature_algorithm: AlgorithmIdentifier<'a>,
        signature_value: BitString<'a>,
    }

    #[derive(asn1::Asn1Read)]
    struct Attribute<'a> {
        attribute_type: ObjectIdentifier,
        values: SetOf<'a, Tlv<'a>>,
    }

    #[derive(asn1::Asn1Read)]
    struct CertificationRequestInfo<'a> {
        version: u8,
        subject: Name<'a>,
        subject_pk_info: SubjectPublicKeyInfo<'a>,
        #[implicit(0, required)]
        attributes: SetOf<'a, Attribute<'a>>,
    }

    #[derive(asn1::Asn1Read)]
    struct CertificationRequest<'a> {
        certification_request_info: CertificationRequestInfo<'a>,
        signature_algorithm: AlgorithmIdentifier<'a>,
        signature: BitString<'a>,
    }

    #[derive(asn1::Asn1Read)]
    struct BasicConstraints {
        #[default(false)]
        ca: bool,
        path_len_constraint: Option<u64>,
    }

    #[derive(asn1::Asn1Read)]
    enum GeneralName<'a> {
        #[implicit(1)]
        Rfc822Name(asn1::IA5String<'a>),
        #[implicit(2)]
        DnsName(asn1::IA5String<'a>),
        #[implicit(6)]
        Uri(asn1::IA5String<'a>),
        #[implicit(7)]
        IpAddress(&'a [u8]),
    }

    #[derive(asn1::Asn1Read)]
    struct AuthorityKeyIdentifier<'a> {
        #[implicit(0)]
        key_identifier: Option<&'a [u8]>,
        #[implicit(1)]
        authority_cert_issuer: Option<SequenceOf<'a, GeneralName<'a>>>,
        #[implicit(2)]
        authority_cert_serial_number: Option<BigUint<'a>>,
    }

    /// A strictly parsed certificate: Ok, or what is wrong and where.
    pub fn certificate(der: &[u8]) -> Result<(), String> {
        let cert = asn1::parse_single::<Certificate>(der).map_err(|e| format!("{e:?}"))?;
        let tbs = cert.tbs_certificate;
        if tbs.version != 2 {
            return Err(format!("version {} (extensions need v3)", tbs.version));
        }
        match tbs.extensions {
            Some(extensions) => check_extensions(extensions),
            None => Err("no extensions".into()),
        }
    }

    /// A strictly parsed CRL.
    pub fn crl(der: &[u8]) -> Result<(), String> {
        let crl = asn1::parse_single::<CertificateList>(der).map_err(|e| format!("{e:?}"))?;
        let tbs = crl.tbs_cert_list;
        if tbs.version != Some(1) {
            return Err(format!("version {:?} (extensions need v2)", tbs.version));
        }
        if let Some(revoked) = tbs.revoked_certificates {
            // RFC 5280 5.1.2.6: absent, not empty, when nothing is revoked.
            if revoked.clone().next().is_none() {
                return Err("an empty revokedCertificates list".into());
            }
            for entry in revoked {
                if let Some(extensions) = entry.crl_entry_extensions {
                    check_extensions(extensions)?;
                }
            }
        }
        match tbs.crl_extensions {
            Some(extensions) => check_extensions(extensions),
            None => Err("no CRL extensions".into()),
        }
    }

    /// A strictly parsed PKCS#10 request, the extensions it requests included.
    pub fn csr(der: &[u8]) -> Result<(), String> {
        let csr = asn1::parse_single::<CertificationRequest>(der).map_err(|e| format!("{e:?}"))?;
        let info = csr.certification_request_info;
        if info.version != 0 {
            return Err(format!("version {}", info.version));
        }
        for attribute in info.attributes {
            if attribute.attribute_type != EXTENSION_REQUEST {
                return Err(format!("unexpected attribute {}", attribute.attribute_type));
            }
            for value in attribute.values {
                let extensions = value
                    .parse::<SequenceOf<Extension>>()
                    .map_err(|e| format!("extensionRequest: {e:?}"))?;
                check_extensions(extensions)?;
            }
        }
        Ok(())
    }

    /// Parses one BasicConstraints extension value (for the parser's own test).
    pub fn basic_constraints(der: &[u8]) -> Result<(), String> {
        asn1::parse_single::<BasicConstraints>(der)
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }

    /// Every extension checked; every problem reported (not only the first).
    fn check_extensions(extensions: SequenceOf<Extension>) -> Result<(), String> {
        let mut seen = Vec::new();
        let mut problems = Vec::new();
        for ext in extensions {
            let oid = ext.extn_id.clone();
            if seen.contains(&oid) {
                problems.push(format!("extension {oid} appears twice"));
            }
            if let Err(e) = check_extension(&oid, ext.extn_value) {
                problems.push(format!("extension {oid}: {e}"));
            }
            seen.push(oid);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn check_extension(oid: &ObjectIdentifier, v: &[u8]) -> Result<(), String> {
        let parsed = if *oid == BASIC_CONSTRAINTS {
            asn1::parse_single::<BasicConstraints>(v).map(|_| ())
        } else if *oid == KEY_USAGE {
            let bits = asn1::parse_single::<BitString>(v).map_err(|e| format!("{e:?}"))?;
            return named_bit_list(&bits).map_err(|e| format!("KeyUsage: {e}"));
        } else if *oid == EXTENDED_KEY_USAGE {
            asn1::parse_single::<SequenceOf<ObjectIdentifier, 1>>(v).map(|_| ())
        } else if *oid == SUBJECT_ALT_NAME {
            asn1::parse_single::<SequenceOf<GeneralName, 1>>(v).map(|_| ())
        } else if *oid == SUBJECT_KEY_IDENTIFIER {
            asn1::parse_single::<&[u8]>(v).map(|_| ())
        } else if *oid == AUTHORITY_KEY_IDENTIFIER {
            asn1::parse_single::<AuthorityKeyIdentifier>(v).map(|_| ())
        } else if *oid == CRL_NUMBER {
            asn1::parse_single::<BigUint>(v).map(|_| ())
        } else if *oid == CRL_REASON {
            asn1::parse_single::<asn1::Enumerated>(v).map(|_| ())
        } else {
            return Err("unknown to this strict reader".into());
        };
        parsed.map_err(|e| format!("{e:?}"))
    }

    /// X.690 11.2.2: a named bit list (KeyUsage) is encoded with its trailing zero bits removed.
    fn named_bit_list(bits: &BitString) -> Result<(), String> {
        match bits.as_bytes().last() {
            None => Err("no bit set".into()),
            Some(0) => Err("a trailing zero byte".into()),
            Some(last) if u32::from(bits.padding_bits()) != last.trailing_zeros() => Err(format!(
                "{} unused bits, but the last byte {last:#04x} has {} trailing zero bits",
                bits.padding_bits(),
                last.trailing_zeros()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Every certificate and CRL in the `.pem` files under `dir`, parsed strictly: (certificates,
/// CRLs) counted, and every failure as "file: error".
fn strict_parse_folder(dir: &Path) -> (usize, usize, Vec<String>) {
    let (mut certs, mut crls, mut failures) = (0, 0, Vec::new());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            for cert in CertificateDer::pem_file_iter(&path).unwrap() {
                certs += 1;
                if let Err(e) = strict_der::certificate(&cert.unwrap()) {
                    failures.push(format!("{}: {e}", path.display()));
                }
            }
            for crl in CertificateRevocationListDer::pem_file_iter(&path).unwrap() {
                crls += 1;
                if let Err(e) = strict_der::crl(&crl.unwrap()) {
                    failures.push(format!("{}: {e}", path.display()));
                }
            }
        }
    }
    (certs, crls, failures)
}

#[test]
fn strict_der_reader_refuses_an_encoded_default_and_a_padded_key_usage() {
    // BasicConstraints { cA FALSE } written out: the encoding the first version of the PKI used.
    let err = strict_der::basic_constraints(&[0x30, 0x03, 0x01, 0x01, 0x00]).unwrap_err();
    assert!(err.contains("EncodedDefault"), "{err}");
    strict_der::basic_constraints(&[0x30, 0x00]).unwrap();
    strict_der::basic_constraints(&[0x30, 0x03, 0x01, 0x01, 0xff]).unwrap();

    // A whole certificate as rcgen writes it with `IsCa::ExplicitNoCa`.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let cert = params.self_signed(&key).unwrap();
    let err = strict_der::certificate(cert.der()).unwrap_err();
    assert!(
        err.contains("EncodedDefault") && err.contains("BasicConstraints::ca"),
        "{err}"
    );

    // KeyUsage digitalSignature as nine bits (`03 03 07 80 00`), rcgen's own encoding.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    let err = strict_der::certificate(cert.der()).unwrap_err();
    assert!(err.contains("KeyUsage"), "{err}");
}

#[test]
fn every_certificate_and_crl_certs_init_writes_is_strict_der() {
    let (dir, schemas, policies) = workspace();
    let out = dir.path().join("pki");
    let run = init_cli(&out, &schemas, &policies, false);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (certs, crls, failures) = strict_parse_folder(&out);
    // Gateway CA, server, upstream client; two park CAs and endpoints; four organisations.
    assert_eq!((certs, crls), (11, 2));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_and_crl_of_the_demo_is_strict_der() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-out");
    let zone = hetao_gateway::cli::demo::Zone::start(&dir, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (certs, crls, failures) = strict_parse_folder(&dir);
    zone.stop().await.unwrap();
    assert_eq!((certs, crls), (11, 2));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The certificates and CRLs the integration tests' PKI (tests/common) issues, each kind of them.
#[test]
fn every_certificate_and_crl_of_the_test_pki_is_strict_der() {
    let pki = common::TestPki::new();
    let year = common::YEAR;
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let mut certs: Vec<(&str, String)> = vec![
        ("sz CA", pki.sz.cert_pem().to_string()),
        ("hk CA", pki.hk.cert_pem().to_string()),
        ("gateway CA", pki.gateway_ca.cert_pem().to_string()),
        ("sz organisation", pki.sz_org.cert_pem.clone()),
        ("hk organisation", pki.hk_org.cert_pem.clone()),
    ];
    let issued = [
        (
            "sz endpoint",
            pki.sz.issue_server(&names, Validity::For(year)),
        ),
        (
            "gateway server",
            pki.gateway_ca.issue_server(&names, Validity::For(year)),
        ),
        (
            "gateway upstream client",
            pki.gateway_ca.issue_upstream_client(Validity::For(year)),
        ),
        (
            "wrong-CA sender",
            pki.gateway_ca.issue_client("Org", "x", Validity::For(year)),
        ),
        (
            "expired sender",
            pki.sz.issue_client("Org", "late", Validity::Expired),
        ),
        (
            "sender from a reloaded CA",
            ParkCa::from_pem("sz", pki.sz.cert_pem(), pki.sz.key_pem())
                .unwrap()
                .issue_client("Org", "later", Validity::For(year)),
        ),
    ];
    for (what, cert) in issued {
        certs.push((what, cert.unwrap().cert_pem));
    }
    let revoked = vec![pki.sz_org.serial.clone(), pki.hk_org.serial.clone()];
    let crls = [
        (
            "sz CRL revoking two",
            pki.sz.crl_pem(&revoked, chrono::Duration::days(1)),
        ),
        (
            "empty sz CRL",
            pki.sz.crl_pem(&[], chrono::Duration::days(30)),
        ),
        (
            "stale hk CRL",
            pki.hk.crl_pem(&[], chrono::Duration::hours(-1)),
        ),
        (
            "gateway CA CRL",
            pki.gateway_ca.crl_pem(&revoked, chrono::Duration::days(1)),
        ),
    ];

    let mut failures = Vec::new();
    for (what, pem) in &certs {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        if let Err(e) = strict_der::certificate(&der) {
            failures.push(format!("{what}: {e}"));
        }
    }
    for (what, pem) in crls {
        let der = CertificateRevocationListDer::from_pem_slice(pem.unwrap().as_bytes()).unwrap();
        if let Err(e) = strict_der::crl(&der) {
            failures.push(format!("{what}: {e}"));
        }
    }
    assert_eq!(certs.len(), 11);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn certs_init_writes_to_certs_dev_without_out_and_issue_client_reads_it_there() {
    let (dir, schemas, policies) = workspace();
    let run = binary()
        .current_dir(dir.path())
        .args(["certs", "init", "--schemas"])
        .arg(&schemas)
        .arg("--policies")
        .arg(&policies)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = dir.path().join("certs/dev");
    assert!(Config::load(&out.join("gateway.toml")).is_ok());
    for name in CERTS.iter().chain(SECRETS) {
        assert!(out.join(name).is_file(), "certs/dev/{name} missing");
    }

    // `issue-client` finds the CA there without --dir.
    let run = binary()
        .current_dir(dir.path())
        .args([
            "certs",
            "issue-client",
            "--park",
            "hk",
            "--org",
            "HKSTP Biomedical Ltd.",
        ])
        .args(["--cn", "Lab 2"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("orgs/hk-hkstp-biomedical-ltd-lab-2.pem").is_file());
}

// === certs csr ===

fn csr_cli(out: &Path, extra: &[&str]) -> std::process::Output {
    binary()
        .args(["certs", "csr", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// A request as x509-parser reads it, after checking its signature with the public key it
/// carries (ECDSA P-256, as `certs csr` makes them).
fn verified_csr(der: &[u8]) -> x509_parser::certification_request::X509CertificationRequest<'_> {
    use x509_parser::prelude::FromDer;
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der).unwrap();
    assert!(rest.is_empty());
    let info = &csr.certification_request_info;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &info.subject_pki.subject_public_key.data,
    )
    .verify(info.raw, &csr.signature_value.data)
    .expect("the request's signature verifies with its own public key");
    csr
}

fn csr_der(path: &Path) -> Vec<u8> {
    rustls_pki_types::CertificateSigningRequestDer::from_pem_file(path)
        .unwrap()
        .as_ref()
        .to_vec()
}

#[test]
fn certs_csr_writes_0600_keys_and_signed_requests_with_the_subject_and_sans_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prod");
    let run = csr_cli(
        &out,
        &[
            "--organisation",
            "Hetao Gateway Operator Ltd.",
            "--san",
            "gw.hetao.example",
            "--san",
            "203.0.113.7,gw2.hetao.example",
        ],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    for (stem, cn, server) in [
        ("gateway", "gw.hetao.example", true),
        ("gateway-client", "hetao-gateway upstream client", false),
    ] {
        let key_path = out.join(format!("{stem}.key"));
        assert_eq!(mode(&key_path), 0o600, "{stem}.key");
        let der = csr_der(&out.join(format!("{stem}.csr")));
        strict_der::csr(&der).unwrap();
        let csr = verified_csr(&der);
        let info = &csr.certification_request_info;

        // The key file holds the private half of the key the request carries.
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
        assert_eq!(key.public_key_der(), info.subject_pki.raw);

        let o = info.subject.iter_organization().next().unwrap();
        assert_eq!(o.as_str().unwrap(), "Hetao Gateway Operator Ltd.");
        let got_cn = info.subject.iter_common_name().next().unwrap();
        assert_eq!(got_cn.as_str().unwrap(), cn);

        let mut dns = Vec::new();
        let mut ips = Vec::new();
        let mut eku = None;
        for ext in csr.requested_extensions().unwrap() {
            match ext {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(d) => dns.push(d.to_string()),
                            GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                            other => panic!("unexpected SAN {other:?}"),
                        }
                    }
                }
                x509_parser::extensions::ParsedExtension::ExtendedKeyUsage(e) => {
                    eku = Some((e.server_auth, e.client_auth))
                }
                _ => {}
            }
        }
        assert_eq!(dns, ["gw.hetao.example", "gw2.hetao.example"], "{stem}");
        assert_eq!(ips, [vec![203, 0, 113, 7]], "{stem}");
        assert_eq!(eku, Some((server, !server)), "{stem}");
    }
}

#[test]
fn certs_csr_for_the_upstream_client_only_names_no_host() {
    let dir = tempfile::tempdir().unwrap();
    let run = csr_cli(dir.path(), &["--for", "upstream-client"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!dir.path().join("gateway.key").exists());
    let der = csr_der(&dir.path().join("gateway-client.csr"));
    let csr = verified_csr(&der);
    let o = csr
        .certification_request_info
        .subject
        .iter_organization()
        .next()
        .unwrap();
    assert_eq!(o.as_str().unwrap(), "Hetao Gateway");
    let sans = csr.requested_extensions().unwrap().any(|e| {
        matches!(
            e,
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(_)
        )
    });
    assert!(!sans);
}

#[test]
fn certs_csr_refuses_to_replace_a_key_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let san = ["--san", "gw.hetao.example"];
    assert!(csr_cli(dir.path(), &san).status.success());
    let key = dir.path().join("gateway.key");
    let before = std::fs::read(&key).unwrap();

    let again = csr_cli(dir.path(), &san);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("gateway.key already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);

    let forced = csr_cli(dir.path(), &["--san", "gw.hetao.example", "--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(&key).unwrap(), before);
    assert_eq!(mode(&key), 0o600);
}

/// Moves TLS records between a client and a server until both finish the handshake (or one
/// refuses the other).
fn handshake(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) -> Result<(), rustls::Error> {
    for _ in 0..10 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        let mut rd = bytes.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets()?;
        }
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        let mut rd = bytes.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

/// The production path end to end: `certs csr` on the gateway host, a park CA signs both
/// requests, and the gateway's own TLS loading (`tls::inbound`, `tls::upstream_client`) takes the
/// certificates with their keys; a sender and a park endpoint then complete real handshakes
/// with it.
#[test]
fn park_ca_signs_the_requests_and_the_gateway_tls_setup_accepts_the_certificates() {
    use std::sync::Arc;

    let (dir, schemas, policies) = workspace();
    let files = init_dev_pki(dir.path(), &options(&schemas, &policies)).unwrap();
    let csr_dir = dir.path().join("csr");
    let run = csr_cli(&csr_dir, &["--san", "localhost", "--san", "127.0.0.1"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The sz park CA signs both; the certificates and keys replace the development ones.
    let sz = files.park("sz").unwrap();
    let ca = ParkCa::from_files("sz", &sz.ca_cert, &sz.ca_key).unwrap();
    for stem in ["gateway", "gateway-client"] {
        let csr = std::fs::read_to_string(csr_dir.join(format!("{stem}.csr"))).unwrap();
        let signed = ca.sign_request(&csr, Validity::For(common::YEAR)).unwrap();
        let der = CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
        strict_der::certificate(&der).unwrap();
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert_eq!(x.raw_serial(), signed.serial.as_slice());
        std::fs::write(dir.path().join(format!("{stem}.pem")), &signed.cert_pem).unwrap();
        std::fs::copy(
            csr_dir.join(format!("{stem}.key")),
            dir.path().join(format!("{stem}.key")),
        )
        .unwrap();
    }
    let config = Config::load(&files.config).unwrap();
    let inbound = hetao_gateway_core::tls::inbound(&config).unwrap();
    let park = &config.parks["sz"];
    let upstream = hetao_gateway_core::tls::upstream_client(&config, park).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let sz_roots = || {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(&sz.ca_cert).unwrap())
            .unwrap();
        Arc::new(roots)
    };
    let localhost = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    // A sender of the sz park connects to the gateway: it verifies the CSR-signed server
    // certificate against the sz CA, the gateway verifies the sender.
    let org = &files.orgs[0];
    let sender = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(sz_roots())
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(&org.cert).unwrap()],
            rustls_pki_types::PrivateKeyDer::from_pem_file(&org.key).unwrap(),
        )
        .unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(sender), localhost.clone()).unwrap();
    let mut server = rustls::ServerConnection::new(inbound.server_config.clone()).unwrap();
    handshake(&mut client, &mut server).unwrap();

    // The gateway connects to the sz endpoint with its CSR-signed upstream-client certificate;
    // the endpoint verifies it against the sz CA.
    let endpoint_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(sz_roots(), provider.clone())
            .build()
            .unwrap();
    let endpoint = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(endpoint_verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&sz.endpoint_cert).unwrap()],
            rustls_pki_types::PrivateKeyDer::from_pem_file(&sz.endpoint_key).unwrap(),
        )
        .unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(upstream), localhost).unwrap();
    let mut server = rustls::ServerConnection::new(Arc::new(endpoint)).unwrap();
    handshake(&mut client, &mut server).unwrap();
    let presented = server.peer_certificates().unwrap();
    assert_eq!(
        presented[0].as_ref(),
        cert_der(&dir.path().join("gateway-client.pem"))
    );
}
