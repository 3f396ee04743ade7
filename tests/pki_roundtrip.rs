//! `certs init` and the development PKI, end to end: real files in a temp folder, parsed back.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

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
