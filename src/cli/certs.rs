//! `hetao-gateway certs ...`: the development PKI, and certificate signing requests for the
//! gateway's production certificates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use hetao_pki::{CsrOptions, DevPkiOptions, GatewayCertRole, ParkCa, Validity};

#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Write a development PKI and a ready gateway.toml (development and tests only).
    ///
    /// One CA per park, the gateway CA with the gateway's server and upstream-client
    /// certificates, a server certificate per park endpoint, a client certificate per sample
    /// organisation (PEM, and a PKCS#12 bundle with its password in a file beside it), empty
    /// CRLs, the audit signing key and the pseudonymisation key, in
    /// certs/dev/ unless --out says otherwise. FOR DEVELOPMENT AND TESTS ONLY.
    Init(InitArgs),
    /// Issue one more client certificate from a park CA written by `certs init` (PEM, and a
    /// PKCS#12 bundle with its password in a file beside it).
    IssueClient(IssueClientArgs),
    /// Make the gateway's private keys and certificate signing requests for a park CA to sign.
    ///
    /// For production: writes a fresh ECDSA P-256 key (mode 0600; it never leaves this host) and a
    /// PKCS#10 request (.csr) for the gateway's server certificate (gateway.key, gateway.csr) and
    /// for its upstream-client certificate (gateway-client.key, gateway-client.csr). Send the .csr
    /// files to the CA; save the certificates it returns as gateway.pem and gateway-client.pem
    /// next to the keys, then reload the gateway (SIGHUP or POST /reload). Refuses to replace an
    /// existing file unless --force. See certs/README.md.
    Csr(CsrArgs),
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Folder to write into (created if missing); certs/dev/ is ignored by git.
    #[arg(long, value_name = "DIR", default_value = "certs/dev")]
    pub out: PathBuf,
    /// Park ids, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sz,hk",
        value_name = "IDS"
    )]
    pub parks: Vec<String>,
    /// Organisations as PARK:NAME, comma separated or repeated
    /// (default: two sample organisations per park).
    #[arg(long, value_delimiter = ',', value_name = "PARK:NAME")]
    pub orgs: Vec<String>,
    /// DNS names / IP addresses of the gateway and endpoint server certificates
    /// (default: localhost, 127.0.0.1, ::1).
    #[arg(long = "san", value_delimiter = ',', value_name = "NAME")]
    pub sans: Vec<String>,
    /// Schemas folder written into gateway.toml (default: the repository's schemas/).
    #[arg(long, value_name = "DIR")]
    pub schemas: Option<PathBuf>,
    /// Policies folder written into gateway.toml (default: the repository's policies/).
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Overwrite files from an earlier `certs init` in the same folder.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct IssueClientArgs {
    /// The park whose CA issues the certificate (reads PARK-ca.pem and PARK-ca.key from --dir).
    #[arg(long, value_name = "ID")]
    pub park: String,
    /// Folder written by `certs init`.
    #[arg(long, default_value = "certs/dev", value_name = "DIR")]
    pub dir: PathBuf,
    /// Organisation (Subject O): the gateway's policies match on it.
    #[arg(long, value_name = "NAME")]
    pub org: String,
    /// Person or system (Subject CN).
    #[arg(long, value_name = "NAME")]
    pub cn: String,
    /// Days of validity; 0 issues an already expired certificate (for tests).
    #[arg(long, default_value_t = 365)]
    pub days: u64,
    /// Output path stem: writes STEM.pem and STEM.key, and STEM.p12 with its password in
    /// STEM.p12.pass (default: DIR/orgs/PARK-<org-slug>-<cn-slug>).
    #[arg(long, value_name = "STEM")]
    pub out: Option<PathBuf>,
}

/// Which requests `certs csr` makes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsrFor {
    /// The server certificate partner organisations connect to ([server]; serverAuth).
    Server,
    /// The gateway's identity towards the park endpoints ([upstream_client]; clientAuth).
    UpstreamClient,
    /// Both.
    Both,
}

#[derive(clap::Args, Debug)]
pub struct CsrArgs {
    /// Folder to write the keys and requests into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Which certificate to request.
    #[arg(long = "for", value_enum, default_value_t = CsrFor::Both, value_name = "WHICH")]
    pub for_: CsrFor,
    /// Subject O of the certificates.
    #[arg(long, visible_alias = "org", default_value = hetao_pki::GATEWAY_ORGANISATION, value_name = "NAME")]
    pub organisation: String,
    /// Subject CN (default: the first --san for the server certificate, "hetao-gateway upstream
    /// client" for the upstream-client certificate).
    #[arg(long, value_name = "NAME")]
    pub cn: Option<String>,
    /// DNS name or IP address partner organisations use to reach the gateway (repeatable or
    /// comma separated). Default: this machine's host name, on the server request only; names
    /// given here go into every request made.
    #[arg(long = "san", value_delimiter = ',', value_name = "NAME")]
    pub sans: Vec<String>,
    /// Replace existing keys and requests (the certificates issued for the old keys stop
    /// matching).
    #[arg(long)]
    pub force: bool,
}

pub async fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Init(args) => init(args),
        CertsCommand::IssueClient(args) => issue_client(args),
        CertsCommand::Csr(args) => csr(args),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let parks: Vec<String> = args.parks.iter().map(|p| p.trim().to_string()).collect();
    let orgs = if args.orgs.is_empty() {
        hetao_pki::default_orgs(&parks)
    } else {
        args.orgs
            .iter()
            .map(|o| match o.split_once(':') {
                Some((park, name)) => Ok((park.trim().to_string(), name.trim().to_string())),
                None => anyhow::bail!(
                    "--orgs `{o}`: write PARK:NAME, e.g. --orgs \"sz:Shenzhen Bay Genomics Institute\""
                ),
            })
            .collect::<anyhow::Result<_>>()?
    };
    let opts = DevPkiOptions {
        parks,
        orgs,
        gateway_sans: if args.sans.is_empty() {
            hetao_pki::default_gateway_sans()
        } else {
            args.sans
        },
        force: args.force,
        schemas_dir: args.schemas.map(absolute).transpose()?,
        policies_dir: args.policies.map(absolute).transpose()?,
        ..DevPkiOptions::default()
    };
    let out = absolute(args.out)?;
    let files = hetao_pki::init_dev_pki(&out, &opts)
        .with_context(|| format!("certs init --out {}", out.display()))?;

    let show = |p: &Path| p.strip_prefix(&out).unwrap_or(p).display().to_string();
    println!(
        "Development PKI written to {} — for development and tests only, never production.",
        out.display()
    );
    println!();
    println!(
        "  gateway CA         {}  (+ {})",
        show(&files.gateway_ca_cert),
        show(&files.gateway_ca_key)
    );
    println!(
        "  gateway server     {}  {}",
        show(&files.gateway_cert),
        show(&files.gateway_key)
    );
    println!(
        "  gateway → parks    {}  {}",
        show(&files.gateway_client_cert),
        show(&files.gateway_client_key)
    );
    for p in &files.parks {
        println!(
            "  {:<18} {}  (+ {}), CRL {}",
            format!("{} park CA", p.park),
            show(&p.ca_cert),
            show(&p.ca_key),
            show(&p.crl)
        );
        println!(
            "  {:<18} {}  {}  ({})",
            format!("{} endpoint", p.park),
            show(&p.endpoint_cert),
            show(&p.endpoint_key),
            p.endpoint_url
        );
    }
    for o in &files.orgs {
        println!(
            "  {:<18} {}  {}  ({})",
            format!("{} sender", o.park),
            show(&o.cert),
            show(&o.key),
            o.organisation
        );
        println!(
            "  {:<18} {}  (password in {})",
            "",
            show(&o.p12),
            show(&o.p12_password)
        );
    }
    println!(
        "  audit signing key  {}  (public: {}, key id {})",
        show(&files.audit_signing_key),
        show(&files.audit_public_key),
        files.audit_key_id
    );
    println!("  pseudonymisation   {}", show(&files.pseudonymisation_key));
    println!("  configuration      {}", show(&files.config));
    println!();
    println!(
        "Private keys, PKCS#12 bundles and their passwords are readable by you only (mode 0600)."
    );
    println!("Clients in any language: examples/clients/ and docs/clients.md.");
    for (what, dir) in [
        ("schemas", &files.schemas_dir),
        ("policies", &files.policies_dir),
    ] {
        if !dir.is_dir() {
            println!(
                "warning: the {what} folder {} does not exist yet; pass --{what} DIR or edit gateway.toml",
                dir.display()
            );
        }
    }
    println!();
    println!("Next:");
    println!("  hetao-gateway serve --config {}", files.config.display());
    if let Some(org) = files.orgs.first() {
        let url = format!("https://{}/v1/records", opts.gateway_listen);
        println!(
            "  hetao-gateway send --url {url} --ca {} --cert {} --key {} RECORD.json",
            files.gateway_ca_cert.display(),
            org.cert.display(),
            org.key.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn issue_client(args: IssueClientArgs) -> anyhow::Result<ExitCode> {
    let cert = args.dir.join(format!("{}-ca.pem", args.park));
    let key = args.dir.join(format!("{}-ca.key", args.park));
    let ca = ParkCa::from_files(&args.park, &cert, &key)
        .context("run `hetao-gateway certs init --out DIR` first and pass --dir DIR")?;
    let validity = if args.days == 0 {
        Validity::Expired
    } else {
        Validity::For(Duration::from_secs(args.days * 24 * 3600))
    };
    let issued = ca.issue_client(&args.org, &args.cn, validity)?;
    let stem = match args.out {
        Some(stem) => stem,
        None => args.dir.join("orgs").join(format!(
            "{}-{}-{}",
            args.park,
            hetao_pki::org_slug(&args.org),
            hetao_pki::org_slug(&args.cn)
        )),
    };
    let cert_path = stem.with_extension("pem");
    let key_path = stem.with_extension("key");
    let p12_path = stem.with_extension("p12");
    let pass_path = stem.with_extension("p12.pass");
    if let Some(parent) = cert_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    for p in [&cert_path, &key_path, &p12_path, &pass_path] {
        // symlink_metadata: a dangling symbolic link counts as something in the way.
        if std::fs::symlink_metadata(p).is_ok() {
            anyhow::bail!("{} already exists; choose another --out", p.display());
        }
    }
    // The same identity as `certs init` writes it for the sample organisations: PEM, and a
    // PKCS#12 bundle (with the park CA) whose password is in a file beside it.
    let alias = stem
        .file_name()
        .map_or_else(|| "client".into(), |n| n.to_string_lossy().into_owned());
    let bundle =
        hetao_pki::client_pkcs12(&alias, &issued.cert_pem, &issued.key_pem, ca.cert_pem())?;
    write_new(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
    write_new(&key_path, issued.key_pem.as_bytes(), 0o600)?;
    write_new(&p12_path, &bundle.der, 0o600)?;
    write_new(&pass_path, bundle.password_file_text().as_bytes(), 0o600)?;
    println!(
        "Issued a development client certificate of park {} for O={}, CN={} (serial {}):",
        args.park,
        args.org,
        args.cn,
        hex::encode(&issued.serial)
    );
    println!("  {}\n  {}", cert_path.display(), key_path.display());
    println!(
        "  {}  (PKCS#12; password in {})",
        p12_path.display(),
        pass_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn csr(args: CsrArgs) -> anyhow::Result<ExitCode> {
    let roles: &[GatewayCertRole] = match args.for_ {
        CsrFor::Server => &[GatewayCertRole::Server],
        CsrFor::UpstreamClient => &[GatewayCertRole::UpstreamClient],
        CsrFor::Both => &[GatewayCertRole::Server, GatewayCertRole::UpstreamClient],
    };
    let sans: Vec<String> = args.sans.iter().map(|s| s.trim().to_string()).collect();
    let mut requests = Vec::new();
    for &role in roles {
        let sans = match (role, sans.is_empty()) {
            (_, false) => sans.clone(),
            (GatewayCertRole::Server, true) => vec![host_name()?],
            (GatewayCertRole::UpstreamClient, true) => Vec::new(),
        };
        requests.push(CsrOptions {
            organisation: args.organisation.clone(),
            common_name: args.cn.clone(),
            ..CsrOptions::new(role, sans)
        });
    }
    let files = hetao_pki::write_gateway_csrs(&args.out, &requests, args.force)
        .with_context(|| format!("certs csr --out {}", args.out.display()))?;

    println!("Keys (mode 0600, keep them on this host) and certificate signing requests:");
    for (f, r) in files.iter().zip(&requests) {
        let what = match f.role {
            GatewayCertRole::Server => "server",
            GatewayCertRole::UpstreamClient => "upstream client",
        };
        let sans = if r.sans.is_empty() {
            String::new()
        } else {
            format!(", SAN {}", r.sans.join(", "))
        };
        println!(
            "  {what:<16} {}  {}  (O={}{sans})",
            f.key.display(),
            f.csr.display(),
            r.organisation
        );
    }
    println!();
    println!("Next: send the .csr files to the park CA. Save each certificate it returns next to");
    println!("its key with the same name and .pem (gateway.pem, gateway-client.pem), check with");
    println!("`hetao-gateway serve --config FILE --check`, then reload (SIGHUP or POST /reload).");
    Ok(ExitCode::SUCCESS)
}

/// This machine's host name (the default SAN of the server request).
fn host_name() -> anyhow::Result<String> {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let name = text.trim();
            if !name.is_empty() {
                return Ok(name.to_string());
            }
        }
    }
    anyhow::bail!(
        "cannot tell this machine's host name; pass --san with the name partners connect to"
    )
}

/// Creates `path` anew with `mode` (O_CREAT | O_EXCL: never through a symbolic link, never over
/// an existing file).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// gateway.toml must name the schemas and policies folders absolutely: it lives elsewhere.
fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    Ok(cwd.join(p))
}
