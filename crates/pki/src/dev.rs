//! `certs init`: a complete development PKI and a ready `gateway.toml` in one folder.
//!
//! The schemas and policies are not copied: `gateway.toml` points at the folders given in
//! [`DevPkiOptions`] (absolute paths), by default the repository's own `schemas/` and
//! `policies/` (found through the crate's build-time manifest directory), so edits to the shipped
//! rules take effect in a development setup without re-running `certs init`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys::{pseudonymisation_key_hex, AuditSigningKey};
use super::p12::client_pkcs12;
use super::{default_gateway_sans, park_display_name, GatewayCa, ParkCa, PkiError, Validity};

/// Leaf certificates of the development PKI live a year; CRLs thirty days.
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// ...except the gateway's server certificate, the one partners and scanners see: 90 days, the
/// most Mozilla's "modern" TLS configuration allows (sslyze --mozilla_config modern reports a
/// longer one as not compliant). `certs init --force` issues a new one.
const GATEWAY_SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
const CRL_LIFETIME_DAYS: i64 = 30;
const EXISTS_HINT: &str = "pass --force to overwrite the development PKI in that folder";

#[derive(Debug, Clone)]
pub struct DevPkiOptions {
    /// Park ids, in the order they appear in `gateway.toml`.
    pub parks: Vec<String>,
    /// (park, organisation) pairs to issue client certificates for.
    pub orgs: Vec<(String, String)>,
    /// SANs of the gateway's server certificate (also used for the park endpoints, which run on
    /// this machine in a development setup).
    pub gateway_sans: Vec<String>,
    /// Overwrite existing files instead of refusing.
    pub force: bool,
    /// Folder written as `[schemas] dir`; `None` = the repository's `schemas/`.
    pub schemas_dir: Option<PathBuf>,
    /// Folder written as `[policies] dir`; `None` = the repository's `policies/`.
    pub policies_dir: Option<PathBuf>,
    /// `[server] listen`.
    pub gateway_listen: SocketAddr,
    /// `[admin] listen`.
    pub admin_listen: SocketAddr,
    /// Endpoint URL per park; parks not listed get `https://127.0.0.1:9001` (sz),
    /// `:9002` (hk), and `:9003`, `:9004`, ... for the others in order.
    pub endpoints: BTreeMap<String, String>,
}

impl Default for DevPkiOptions {
    fn default() -> Self {
        let parks = vec!["sz".to_string(), "hk".to_string()];
        DevPkiOptions {
            orgs: default_orgs(&parks),
            parks,
            gateway_sans: default_gateway_sans(),
            force: false,
            schemas_dir: None,
            policies_dir: None,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9443)),
            endpoints: BTreeMap::new(),
        }
    }
}

/// The sample organisations of each park: two for `sz` and `hk`, one made-up laboratory for any
/// other park.
pub fn default_orgs(parks: &[String]) -> Vec<(String, String)> {
    let mut orgs = Vec::new();
    for park in parks {
        let names: Vec<String> = match park.as_str() {
            "sz" => vec![
                "Shenzhen Bay Genomics Institute".into(),
                "Futian Quantum Devices Co.".into(),
            ],
            "hk" => vec![
                "HKSTP Biomedical Ltd.".into(),
                "Hong Kong Clinical Data Trust".into(),
            ],
            other => vec![format!(
                "{} Demonstration Laboratory",
                park_display_name(other)
            )],
        };
        orgs.extend(names.into_iter().map(|n| (park.clone(), n)));
    }
    orgs
}

/// The sample organisation of `park` that sends records of `kind` in the demo, the shipped
/// policy tests and `examples/registry.toml`: the one whose registry entry holds the facts the
/// example records of that kind cite (white-list ids, permits, preregistrations).
pub fn sample_sender(park: &str, kind: &str) -> Option<&'static str> {
    Some(match (park, kind) {
        ("sz", "talent") => "Futian Quantum Devices Co.",
        ("sz", _) => "Shenzhen Bay Genomics Institute",
        ("hk", "data") => "Hong Kong Clinical Data Trust",
        ("hk", _) => "HKSTP Biomedical Ltd.",
        _ => return None,
    })
}

/// The repository's `schemas/` (build-time path; this crate lives in `crates/pki/`).
pub fn repository_schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// The repository's `policies/` (build-time path).
pub fn repository_policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// `Shenzhen Bay Genomics Institute` → `shenzhen-bay-genomics-institute`.
pub fn org_slug(organisation: &str) -> String {
    let mut slug = String::new();
    for c in organisation.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "org".into()
    } else {
        slug
    }
}

/// The files of one park.
#[derive(Debug, Clone)]
pub struct ParkFiles {
    pub park: String,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Server certificate of the park's endpoint, issued by the park CA.
    pub endpoint_cert: PathBuf,
    pub endpoint_key: PathBuf,
    /// Empty CRL of the park CA, valid 30 days.
    pub crl: PathBuf,
    /// `endpoint` as written in `gateway.toml`.
    pub endpoint_url: String,
}

/// A partner organisation's client certificate.
#[derive(Debug, Clone)]
pub struct OrgFiles {
    pub park: String,
    pub organisation: String,
    pub common_name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The same identity as a PKCS#12 bundle (certificate, park CA, key; mode 0600)...
    pub p12: PathBuf,
    /// ...and the password that opens it, on one line (mode 0600).
    pub p12_password: PathBuf,
    /// Serial number, hex (to revoke it in a CRL).
    pub serial_hex: String,
}

/// Everything `init_dev_pki` wrote (absolute paths when `out` was absolute).
#[derive(Debug, Clone)]
pub struct DevPkiFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub gateway_ca_cert: PathBuf,
    pub gateway_ca_key: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
    pub gateway_client_cert: PathBuf,
    pub gateway_client_key: PathBuf,
    pub parks: Vec<ParkFiles>,
    pub orgs: Vec<OrgFiles>,
    pub audit_signing_key: PathBuf,
    pub audit_public_key: PathBuf,
    /// Key id of the audit public key (as in receipts and checkpoints).
    pub audit_key_id: String,
    pub pseudonymisation_key: PathBuf,
    /// The development organisation registry (`[registry] file`).
    pub registry: PathBuf,
    /// Where the gateway will write its audit log (the folder exists, the file not yet).
    pub audit_log: PathBuf,
    pub schemas_dir: PathBuf,
    pub policies_dir: PathBuf,
}

impl DevPkiFiles {
    pub fn park(&self, park: &str) -> Option<&ParkFiles> {
        self.parks.iter().find(|p| p.park == park)
    }

    /// Every file written (certificates, keys, CRLs, config).
    pub fn written_files(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = vec![
            &self.gateway_ca_cert,
            &self.gateway_ca_key,
            &self.gateway_cert,
            &self.gateway_key,
            &self.gateway_client_cert,
            &self.gateway_client_key,
        ];
        for p in &self.parks {
            v.extend([
                p.ca_cert.as_path(),
                &p.ca_key,
                &p.endpoint_cert,
                &p.endpoint_key,
                &p.crl,
            ]);
        }
        for o in &self.orgs {
            v.extend([o.cert.as_path(), &o.key, &o.p12, &o.p12_password]);
        }
        v.extend([
            self.audit_signing_key.as_path(),
            &self.audit_public_key,
            &self.pseudonymisation_key,
            &self.registry,
            &self.config,
        ]);
        v
    }

    /// Rewrites `gateway.toml` with other listen addresses and endpoint URLs (the demo binds
    /// endpoints on free ports after the PKI exists).
    pub fn rewrite_config(
        &self,
        gateway_listen: SocketAddr,
        admin_listen: SocketAddr,
        endpoints: &BTreeMap<String, String>,
    ) -> Result<(), PkiError> {
        let mut parks = self.parks.clone();
        for p in &mut parks {
            if let Some(url) = endpoints.get(&p.park) {
                p.endpoint_url = url.clone();
            }
        }
        let text = gateway_toml(self, &parks, gateway_listen, admin_listen);
        write_file(&self.config, text.as_bytes(), false, true)
    }
}

/// Writes a complete development PKI and a ready `gateway.toml` into `out` (created if missing).
/// Refuses, before writing anything, when a file it would write exists and `force` is off.
pub fn init_dev_pki(out: &Path, opts: &DevPkiOptions) -> Result<DevPkiFiles, PkiError> {
    validate(opts)?;
    let orgs_dir = out.join("orgs");
    let audit_dir = out.join("audit");

    // Plan every path first so an existing file stops us before anything is written.
    let mut next_port = 9003u16;
    let parks: Vec<ParkFiles> = opts
        .parks
        .iter()
        .map(|park| {
            let endpoint_url = match opts.endpoints.get(park) {
                Some(url) => url.clone(),
                None => {
                    let port = match park.as_str() {
                        "sz" => 9001,
                        "hk" => 9002,
                        _ => {
                            next_port += 1;
                            next_port - 1
                        }
                    };
                    format!("https://127.0.0.1:{port}")
                }
            };
            ParkFiles {
                park: park.clone(),
                ca_cert: out.join(format!("{park}-ca.pem")),
                ca_key: out.join(format!("{park}-ca.key")),
                endpoint_cert: out.join(format!("{park}-endpoint.pem")),
                endpoint_key: out.join(format!("{park}-endpoint.key")),
                crl: out.join(format!("{park}-crl.pem")),
                endpoint_url,
            }
        })
        .collect();
    let orgs: Vec<OrgFiles> = opts
        .orgs
        .iter()
        .map(|(park, organisation)| {
            let stem = format!("{park}-{}", org_slug(organisation));
            OrgFiles {
                park: park.clone(),
                organisation: organisation.clone(),
                common_name: format!("{organisation} records system"),
                cert: orgs_dir.join(format!("{stem}.pem")),
                key: orgs_dir.join(format!("{stem}.key")),
                p12: orgs_dir.join(format!("{stem}.p12")),
                p12_password: orgs_dir.join(format!("{stem}.p12.pass")),
                serial_hex: String::new(),
            }
        })
        .collect();
    let mut files = DevPkiFiles {
        dir: out.to_path_buf(),
        config: out.join("gateway.toml"),
        gateway_ca_cert: out.join("gateway-ca.pem"),
        gateway_ca_key: out.join("gateway-ca.key"),
        gateway_cert: out.join("gateway.pem"),
        gateway_key: out.join("gateway.key"),
        gateway_client_cert: out.join("gateway-client.pem"),
        gateway_client_key: out.join("gateway-client.key"),
        parks,
        orgs,
        audit_signing_key: out.join("audit-signing.key"),
        audit_public_key: out.join("audit-signing.pub"),
        audit_key_id: String::new(),
        pseudonymisation_key: out.join("pseudonymisation.key"),
        registry: out.join("registry.toml"),
        audit_log: audit_dir.join("audit.jsonl"),
        schemas_dir: opts
            .schemas_dir
            .clone()
            .unwrap_or_else(repository_schemas_dir),
        policies_dir: opts
            .policies_dir
            .clone()
            .unwrap_or_else(repository_policies_dir),
    };
    let mut seen = std::collections::HashSet::new();
    for path in files.written_files() {
        if !seen.insert(path.to_path_buf()) {
            return Err(PkiError::Option {
                option: "orgs".into(),
                message: format!(
                    "two organisations would share the file {}; give them more distinct names",
                    path.display()
                ),
            });
        }
        if !opts.force && path.exists() {
            return Err(PkiError::Exists {
                path: path.display().to_string(),
                hint: EXISTS_HINT,
            });
        }
    }

    for dir in [out, orgs_dir.as_path()] {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.display().to_string(),
            source,
        })?;
    }
    // The audit log names senders and decisions: its folder is the gateway user's alone,
    // whatever the umask (as the gateway itself creates it).
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&audit_dir)
            .map_err(|source| PkiError::Write {
                path: audit_dir.display().to_string(),
                source,
            })?;
    }
    let force = opts.force;
    let validity = Validity::For(LEAF_LIFETIME);

    let gateway_ca = GatewayCa::new()?;
    write_pair(
        &files.gateway_ca_cert,
        gateway_ca.cert_pem(),
        &files.gateway_ca_key,
        gateway_ca.key_pem(),
        force,
    )?;
    let server =
        gateway_ca.issue_server(&opts.gateway_sans, Validity::For(GATEWAY_SERVER_LIFETIME))?;
    write_pair(
        &files.gateway_cert,
        &server.cert_pem,
        &files.gateway_key,
        &server.key_pem,
        force,
    )?;
    let upstream = gateway_ca.issue_upstream_client(validity)?;
    write_pair(
        &files.gateway_client_cert,
        &upstream.cert_pem,
        &files.gateway_client_key,
        &upstream.key_pem,
        force,
    )?;

    for park in &files.parks {
        let ca = ParkCa::new(&park.park)?;
        write_pair(
            &park.ca_cert,
            ca.cert_pem(),
            &park.ca_key,
            ca.key_pem(),
            force,
        )?;
        let endpoint = ca.issue_server(&opts.gateway_sans, validity)?;
        write_pair(
            &park.endpoint_cert,
            &endpoint.cert_pem,
            &park.endpoint_key,
            &endpoint.key_pem,
            force,
        )?;
        let crl = ca.crl_pem(&[], chrono::Duration::days(CRL_LIFETIME_DAYS))?;
        write_file(&park.crl, crl.as_bytes(), false, force)?;
        for org in files.orgs.iter_mut().filter(|o| o.park == park.park) {
            let cert = ca.issue_client(&org.organisation, &org.common_name, validity)?;
            write_pair(&org.cert, &cert.cert_pem, &org.key, &cert.key_pem, force)?;
            // The key again, encrypted: secret like the key itself, and so is its password.
            let alias = format!("{}-{}", org.park, org_slug(&org.organisation));
            let bundle = client_pkcs12(&alias, &cert.cert_pem, &cert.key_pem, ca.cert_pem())?;
            write_file(&org.p12, &bundle.der, true, force)?;
            write_file(
                &org.p12_password,
                bundle.password_file_text().as_bytes(),
                true,
                force,
            )?;
            org.serial_hex = hex::encode(&cert.serial);
        }
    }

    let audit_key = AuditSigningKey::generate()?;
    write_file(
        &files.audit_signing_key,
        audit_key.private_pem.as_bytes(),
        true,
        force,
    )?;
    write_file(
        &files.audit_public_key,
        audit_key.public_pem.as_bytes(),
        false,
        force,
    )?;
    files.audit_key_id = audit_key.key_id;
    write_file(
        &files.pseudonymisation_key,
        pseudonymisation_key_hex()?.as_bytes(),
        true,
        force,
    )?;

    write_file(
        &files.registry,
        dev_registry_text(&files)?.as_bytes(),
        false,
        force,
    )?;

    let text = gateway_toml(&files, &files.parks, opts.gateway_listen, opts.admin_listen);
    write_file(&files.config, text.as_bytes(), false, force)?;
    Ok(files)
}

/// The development registry's facts (examples/registry.toml), built into the binary so an
/// installed `hetao-gateway` writes the same file as a checkout.
const DEV_REGISTRY: &str = include_str!("../../../examples/registry.toml");

/// `registry.toml` for a development PKI: the example facts of the organisations of the parks
/// it serves, and an entry without facts for every other organisation it issued a certificate
/// to (so the registry knows every sender, and a rule needing a fact it lacks still denies).
fn dev_registry_text(files: &DevPkiFiles) -> Result<String, PkiError> {
    let bad = |message: String| PkiError::Option {
        option: "registry".into(),
        message,
    };
    let mut doc: toml::Table =
        toml::from_str(DEV_REGISTRY).map_err(|e| bad(format!("examples/registry.toml: {e}")))?;
    let served: std::collections::BTreeSet<&str> =
        files.parks.iter().map(|p| p.park.as_str()).collect();
    let field = |t: &toml::Value, k: &str| {
        t.get(k)
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let mut entries: Vec<toml::Value> = match doc.remove("organisation") {
        Some(toml::Value::Array(list)) => list,
        _ => Vec::new(),
    };
    entries.retain(|e| served.contains(field(e, "park").as_str()));
    for org in &files.orgs {
        let known = entries
            .iter()
            .any(|e| field(e, "park") == org.park && field(e, "name") == org.organisation);
        if !known {
            let mut t = toml::Table::new();
            t.insert("park".into(), toml::Value::String(org.park.clone()));
            t.insert("name".into(), toml::Value::String(org.organisation.clone()));
            t.insert(
                "note".into(),
                toml::Value::String("issued by certs init; holds no facts yet".into()),
            );
            entries.push(toml::Value::Table(t));
        }
    }
    doc.insert("organisation".into(), toml::Value::Array(entries));
    let body = toml::to_string(&doc).map_err(|e| bad(e.to_string()))?;
    Ok(format!(
        "# Development organisation registry written by `hetao-gateway certs init`: the\n\
         # eligibility facts (white-list ids, permits, quotas, authorised hosts) the parks hold\n\
         # about each organisation. Made-up values for trying the gateway; format in\n\
         # docs/registry.md. Reloaded with the rules (SIGHUP or POST /reload).\n\n{body}"
    ))
}

fn validate(opts: &DevPkiOptions) -> Result<(), PkiError> {
    let bad = |option: &str, message: String| PkiError::Option {
        option: option.into(),
        message,
    };
    if opts.parks.is_empty() {
        return Err(bad("parks", "at least one park is needed".into()));
    }
    for park in &opts.parks {
        let ok = !park.is_empty()
            && park.len() <= 32
            && park
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad(
                "parks",
                format!("`{park}`: a park id is 1-32 lowercase letters, digits, `-` or `_`"),
            ));
        }
    }
    let mut unique = opts.parks.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != opts.parks.len() {
        return Err(bad("parks", "a park is listed twice".into()));
    }
    for (park, org) in &opts.orgs {
        if !opts.parks.contains(park) {
            return Err(bad(
                "orgs",
                format!(
                    "`{park}:{org}`: park `{park}` is not among the parks {:?}",
                    opts.parks
                ),
            ));
        }
        if org.trim().is_empty() {
            return Err(bad(
                "orgs",
                format!("`{park}:`: the organisation name is empty"),
            ));
        }
    }
    if opts.gateway_sans.is_empty() {
        return Err(bad(
            "san",
            "at least one DNS name or IP address is needed".into(),
        ));
    }
    for park in opts.endpoints.keys() {
        if !opts.parks.contains(park) {
            return Err(bad(
                "endpoints",
                format!("park `{park}` is not among the parks"),
            ));
        }
    }
    Ok(())
}

/// A TOML string literal (quotes and escapes as needed).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A path as written in the config: relative to the config's folder when it lies inside it.
fn config_path(files: &DevPkiFiles, path: &Path) -> String {
    let rel = path.strip_prefix(&files.dir).unwrap_or(path);
    quoted(&rel.to_string_lossy())
}

fn gateway_toml(
    files: &DevPkiFiles,
    parks: &[ParkFiles],
    gateway_listen: SocketAddr,
    admin_listen: SocketAddr,
) -> String {
    let p = |path: &Path| config_path(files, path);
    let mut t = String::new();
    t.push_str(
        "# hetao-gateway configuration, written by `hetao-gateway certs init`.\n\
         # DEVELOPMENT PKI: every certificate and key next to this file was generated on this\n\
         # machine for testing. Never use them in production.\n\
         # Paths are relative to this file's folder.\n\n",
    );
    t.push_str("[server]            # where partner organisations connect (mutual TLS)\n");
    t.push_str(&format!(
        "listen = {}\n",
        quoted(&gateway_listen.to_string())
    ));
    t.push_str(&format!(
        "cert = {}  # issued by gateway-ca.pem: senders verify the gateway with it\n",
        p(&files.gateway_cert)
    ));
    t.push_str(&format!("key = {}\n\n", p(&files.gateway_key)));
    t.push_str("[admin]             # /healthz, /readyz, /metrics\n");
    t.push_str(&format!(
        "listen = {}\n\n",
        quoted(&admin_listen.to_string())
    ));
    t.push_str(
        "[upstream_client]   # the gateway's own identity towards the park endpoints (gateway CA)\n",
    );
    t.push_str(&format!("cert = {}\n", p(&files.gateway_client_cert)));
    t.push_str(&format!("key = {}\n", p(&files.gateway_client_key)));
    for park in parks {
        t.push_str(&format!(
            "\n[parks.{}]           # {} park\n",
            park.park,
            park_display_name(&park.park)
        ));
        t.push_str(&format!(
            "client_ca = {}          # CA that issues this park's senders' certificates\n",
            p(&park.ca_cert)
        ));
        t.push_str(&format!(
            "endpoint = {}  # where records bound for this park are forwarded\n",
            quoted(&park.endpoint_url)
        ));
        t.push_str(&format!(
            "endpoint_ca = {}        # CA that verifies that endpoint\n",
            p(&park.ca_cert)
        ));
        t.push_str(&format!(
            "crl = {}               # revocation list of the park CA\n",
            p(&park.crl)
        ));
    }
    t.push_str("\n[schemas]           # JSON Schemas of the envelope and each kind\n");
    t.push_str(&format!("dir = {}\n\n", p(&files.schemas_dir)));
    t.push_str("[policies]          # declared flow policies\n");
    t.push_str(&format!("dir = {}\n", p(&files.policies_dir)));
    t.push_str(&format!(
        "pseudonymisation_key = {}  # HMAC key of the pseudonymise obligation\n\n",
        p(&files.pseudonymisation_key)
    ));
    t.push_str("[registry]          # eligibility facts held by the parks (docs/registry.md)\n");
    t.push_str(&format!("file = {}\n\n", p(&files.registry)));
    t.push_str("[audit]             # tamper-evident audit log\n");
    t.push_str(&format!("log = {}\n", p(&files.audit_log)));
    t.push_str(&format!(
        "signing_key = {}  # public key for auditors: audit-signing.pub (key id {})\n",
        p(&files.audit_signing_key),
        files.audit_key_id
    ));
    t
}

fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
    force: bool,
) -> Result<(), PkiError> {
    write_file(cert_path, cert_pem.as_bytes(), false, force)?;
    write_file(key_path, key_pem.as_bytes(), true, force)
}

/// Writes a file of the development PKI (see [`write_file_with`]).
fn write_file(path: &Path, bytes: &[u8], secret: bool, overwrite: bool) -> Result<(), PkiError> {
    write_file_with(path, bytes, secret, overwrite, |path| PkiError::Exists {
        path: path.display().to_string(),
        hint: EXISTS_HINT,
    })
}

/// Writes `bytes`; secrets get mode 0600 from creation on (never readable by others, not even
/// briefly), and again after an overwrite, since `mode` only applies to new files. Without
/// `overwrite` an existing file is left alone and `exists` says why.
pub(crate) fn write_file_with(
    path: &Path,
    bytes: &[u8],
    secret: bool,
    overwrite: bool,
    exists: impl FnOnce(&Path) -> PkiError,
) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    if overwrite {
        // Never write through what is there: a symbolic link planted in the folder (or left
        // dangling) is removed, not followed, and the file is created anew below.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(err(std::io::Error::other("a folder is in the way")));
            }
            Ok(_) => std::fs::remove_file(path).map_err(err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    // O_CREAT | O_EXCL: fails on any existing entry, a symbolic link included (dangling or not),
    // so nothing is ever written through a link.
    // Secrets 0600; everything else 0644, whatever the umask (a permissive one must not leave
    // the registry or the config writable by others: the gateway refuses those).
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            exists(path)
        } else {
            err(source)
        }
    })?;
    if secret {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_slugs_are_file_name_safe() {
        assert_eq!(
            org_slug("Shenzhen Bay Genomics Institute"),
            "shenzhen-bay-genomics-institute"
        );
        assert_eq!(org_slug("HKSTP Biomedical Ltd."), "hkstp-biomedical-ltd");
        assert_eq!(org_slug("深圳"), "org");
    }

    #[test]
    fn other_parks_get_ports_from_9003() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevPkiOptions {
            parks: vec!["sz".into(), "qh".into(), "hk".into(), "mo".into()],
            orgs: vec![],
            ..DevPkiOptions::default()
        };
        let files = init_dev_pki(dir.path(), &opts).unwrap();
        let urls: Vec<&str> = files
            .parks
            .iter()
            .map(|p| p.endpoint_url.as_str())
            .collect();
        assert_eq!(
            urls,
            [
                "https://127.0.0.1:9001",
                "https://127.0.0.1:9003",
                "https://127.0.0.1:9002",
                "https://127.0.0.1:9004"
            ]
        );
    }

    #[test]
    fn an_organisation_of_an_unknown_park_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevPkiOptions {
            orgs: vec![("mo".into(), "Macao Org".into())],
            ..DevPkiOptions::default()
        };
        let err = init_dev_pki(dir.path(), &opts).unwrap_err().to_string();
        assert!(err.contains("park `mo`"), "{err}");
    }
}
