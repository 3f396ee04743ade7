//! Partners' own HTTPS clients against a real gateway: the files in examples/clients/ (curl,
//! Python `requests` and `http.client`, Java's `HttpClient` with a PKCS#12 key store, Go's
//! `net/http`, Node's `https`), run as a partner runs them, each sending
//! - a record: 200 with a receipt;
//! - the same file again: the first answer, `"replayed": true`;
//! - a body over the limit: a 413 JSON answer the client reads (not a broken pipe or a reset);
//! - records past the organisation's rate limit: 429 with `Retry-After`;
//! - a record without a client certificate: refused in the TLS handshake, never reaching HTTP;
//!
//! and sslyze's check against Mozilla's "modern" TLS configuration. A language whose toolchain
//! is not installed is skipped with the reason printed (`.ci/run` installs them all).

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{example, repo, Options, TestGateway};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

/// Every child process is killed past this (a JVM compiling its source on a busy machine takes
/// a few seconds; nothing should take a minute).
const CHILD_TIMEOUT: Duration = Duration::from_secs(90);

/// Small enough that an oversized body is cheap, large enough for every example record.
const MAX_BODY: usize = 16 * 1024;
/// Over the limit but within what the gateway reads and discards before answering (8x the
/// limit), so even a client that sends its whole body before reading must get the answer.
const OVERSIZED: usize = 4 * MAX_BODY;

/// An allowed record of the Shenzhen organisation the test PKI issues (sz → hk materials).
const ALLOWED: &str = "materials-sz-hk-quantum-equipment.json";

// === The clients ===

/// How a client loads its identity.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Identity {
    /// CLIENT_CERT and CLIENT_KEY: the PEM pair.
    Pem,
    /// CLIENT_P12 and CLIENT_P12_PASSWORD_FILE: the PKCS#12 bundle.
    P12,
    /// Neither: no client certificate.
    Without,
}

/// One example client: the command that runs it (the record file is appended) and how it loads
/// its identity.
struct Client {
    name: &'static str,
    command: Vec<String>,
    identity: Identity,
}

fn example_client(file: &str) -> String {
    repo("examples/clients").join(file).display().to_string()
}

/// Runs `program args` once; `Err` with the reason when it cannot run (not installed).
async fn probe(program: &str, args: &[&str]) -> Result<(), String> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CHILD_TIMEOUT, run).await {
        Err(_) => Err(format!(
            "`{program}` did not answer within {CHILD_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!("`{program}` cannot run: {e}")),
        Ok(Ok(out)) if !out.status.success() => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Whether a toolchain is there; prints why a test skips when it is not.
async fn available(test: &str, program: &str, args: &[&str]) -> bool {
    match probe(program, args).await {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipping {test}: {why} (.ci/run installs it)");
            false
        }
    }
}

// === A gateway and the files a partner has ===

/// A gateway with a small body limit and a tight rate limit, and the files its partner
/// organisation (the Shenzhen one of the test PKI) has: the gateway CA, its PEM pair and its
/// PKCS#12 bundle (written by the same code as `certs init`), and records to send.
struct World {
    gw: TestGateway,
    files: PathBuf,
    fresh: std::cell::Cell<u32>,
}

impl World {
    /// `burst` requests pass, then every further one is 429 (the rate refills one request in
    /// 1000 s: never within a test).
    async fn start(burst: u32) -> World {
        let gw = TestGateway::start_with(Options {
            extra_toml: format!(
                "[limits]\nmax_body_bytes = {MAX_BODY}\n\
                 [rate_limit]\nper_org_per_second = 0.001\nburst = {burst}\n"
            ),
            ..Options::default()
        })
        .await;
        let files = gw.path("partner");
        std::fs::create_dir(&files).unwrap();
        let org = &gw.pki.sz_org;
        std::fs::write(files.join("org.pem"), &org.cert_pem).unwrap();
        common::write_secret(&files, "org.key", &org.key_pem);
        let bundle =
            hetao_pki::client_pkcs12("sz-org", &org.cert_pem, &org.key_pem, gw.pki.sz.cert_pem())
                .unwrap();
        std::fs::write(files.join("org.p12"), &bundle.der).unwrap();
        common::write_secret(&files, "org.p12.pass", &bundle.password_file_text());
        let mut big = example(ALLOWED);
        big["padding"] = json!("x".repeat(OVERSIZED));
        std::fs::write(files.join("big.json"), serde_json::to_vec(&big).unwrap()).unwrap();
        World {
            gw,
            files,
            fresh: std::cell::Cell::new(0),
        }
    }

    /// A new allowed record (fresh record id, `created_at` now) in a file of its own.
    fn fresh_record(&self) -> PathBuf {
        let n = self.fresh.get() + 1;
        self.fresh.set(n);
        let path = self.files.join(format!("record-{n}.json"));
        std::fs::write(&path, serde_json::to_vec(&example(ALLOWED)).unwrap()).unwrap();
        path
    }

    fn big_record(&self) -> PathBuf {
        self.files.join("big.json")
    }

    /// Runs `client` on `record` with `identity`, as a partner would: everything it needs in
    /// environment variables, nothing inherited that could change its behaviour.
    async fn send(&self, client: &Client, identity: Identity, record: &Path) -> Sent {
        let mut cmd = tokio::process::Command::new(&client.command[0]);
        cmd.args(&client.command[1..])
            .arg(record)
            .current_dir(&self.files)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for var in [
            "CLIENT_CERT",
            "CLIENT_KEY",
            "CLIENT_P12",
            "CLIENT_P12_PASSWORD_FILE",
        ] {
            cmd.env_remove(var);
        }
        // A proxy from the environment must not see loopback traffic.
        cmd.env("NO_PROXY", "localhost,127.0.0.1")
            .env("no_proxy", "localhost,127.0.0.1")
            .env("GATEWAY_URL", self.gw.url())
            .env("GATEWAY_CA", self.gw.path("gateway-ca.pem"));
        match identity {
            Identity::Pem => {
                cmd.env("CLIENT_CERT", self.files.join("org.pem"))
                    .env("CLIENT_KEY", self.files.join("org.key"));
            }
            Identity::P12 => {
                cmd.env("CLIENT_P12", self.files.join("org.p12"))
                    .env("CLIENT_P12_PASSWORD_FILE", self.files.join("org.p12.pass"));
            }
            Identity::Without => {}
        }
        let out = tokio::time::timeout(CHILD_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{}: no exit within {CHILD_TIMEOUT:?}", client.name))
            .unwrap_or_else(|e| panic!("{}: cannot run: {e}", client.name));
        Sent::parse(
            out.status.success(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        )
    }
}

/// What a client printed: `status: N`, maybe `retry-after: V`, an empty line, the answer.
/// (`stdout` and `stderr` are there for the assertion messages, through `Debug`.)
#[derive(Debug)]
#[allow(dead_code)]
struct Sent {
    exited_ok: bool,
    status: Option<u16>,
    retry_after: Option<String>,
    json: Value,
    stdout: String,
    stderr: String,
}

impl Sent {
    fn parse(exited_ok: bool, stdout: &str, stderr: &str) -> Sent {
        let (head, body) = stdout.split_once("\n\n").unwrap_or((stdout, ""));
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        Sent {
            exited_ok,
            status: field("status:").and_then(|s| s.parse().ok()),
            retry_after: field("retry-after:"),
            json: serde_json::from_str(body.trim()).unwrap_or(Value::Null),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
        }
    }
}

// === The checks, the same for every client ===

/// Runs every check with `client` against a fresh gateway.
async fn exercise(client: Client) {
    // Three requests pass (record, retry, oversized body); the fourth is over the limit.
    let world = World::start(3).await;
    let name = client.name;
    let id = client.identity;

    let record = world.fresh_record();
    let first = world.send(&client, id, &record).await;
    assert_eq!(first.status, Some(200), "{name}: a record: {first:#?}");
    assert!(first.exited_ok, "{name}: {first:#?}");
    assert_eq!(first.json["decision"], "allow", "{name}: {first:#?}");
    assert!(
        first.json["receipt"].is_object(),
        "{name}: no receipt: {first:#?}"
    );
    assert!(first.json.get("replayed").is_none(), "{name}: {first:#?}");

    let again = world.send(&client, id, &record).await;
    assert_eq!(again.status, Some(200), "{name}: the retry: {again:#?}");
    assert_eq!(again.json["replayed"], true, "{name}: {again:#?}");
    assert_eq!(again.json["audit_seq"], first.json["audit_seq"], "{name}");
    assert_eq!(again.json["receipt"], first.json["receipt"], "{name}");
    // Accepted once upstream, not twice.
    assert_eq!(world.gw.hk_endpoint.received().len(), 1, "{name}");

    let big = world.send(&client, id, &world.big_record()).await;
    assert_eq!(big.status, Some(413), "{name}: an oversized body: {big:#?}");
    assert_eq!(big.json["error"], "payload_too_large", "{name}: {big:#?}");

    refused_without_certificate(&world, &client).await;

    let limited = world.send(&client, id, &world.fresh_record()).await;
    assert_eq!(
        limited.status,
        Some(429),
        "{name}: past the rate limit: {limited:#?}"
    );
    assert_eq!(
        limited.json["error"], "rate_limited",
        "{name}: {limited:#?}"
    );
    let retry_after: u64 = limited
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no Retry-After in seconds: {limited:#?}"));
    assert!(retry_after >= 1, "{name}: Retry-After {retry_after}");
}

/// Without a client certificate the client gets no HTTP answer at all, and the gateway's audit
/// log shows nothing reached the HTTP layer.
async fn refused_without_certificate(world: &World, client: &Client) {
    let name = client.name;
    let entries = world.gw.audit_entries().len();
    let refused = world
        .send(client, Identity::Without, &world.fresh_record())
        .await;
    assert!(
        !refused.exited_ok && refused.status.is_none(),
        "{name}: without a client certificate: {refused:#?}"
    );
    assert!(!refused.stderr.trim().is_empty(), "{name}: no error shown");
    assert_eq!(world.gw.audit_entries().len(), entries, "{name}");
    let metrics = world.gw.gateway.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hetao_tls_handshake_failures_total") && !l.ends_with(" 0")),
        "{name}: no handshake failure counted"
    );
}

// === One test per client ===

fn curl(flags: &[&str]) -> Client {
    let mut command = vec!["sh".to_string(), example_client("curl.sh")];
    command.extend(flags.iter().map(|f| f.to_string()));
    Client {
        name: "curl",
        command,
        identity: Identity::Pem,
    }
}

#[tokio::test]
async fn curl_over_http1_1_gets_every_answer() {
    if available("curl", "curl", &["--version"]).await {
        exercise(curl(&["--http1.1"])).await;
    }
}

#[tokio::test]
async fn curl_over_http2_gets_every_answer() {
    if available("curl", "curl", &["--version"]).await {
        exercise(curl(&["--http2"])).await;
    }
}

/// `Expect: 100-continue` on a body over the limit: the 413 comes before the body is sent, and
/// a record sent the same way is still accepted.
#[tokio::test]
async fn curl_with_expect_100_continue_gets_413_for_a_large_body_and_200_for_a_record() {
    if !available("curl", "curl", &["--version"]).await {
        return;
    }
    let world = World::start(10).await;
    let client = curl(&["--http1.1", "--expect-continue"]);
    let big = world
        .send(&client, Identity::Pem, &world.big_record())
        .await;
    assert_eq!(big.status, Some(413), "{big:#?}");
    assert_eq!(big.json["error"], "payload_too_large", "{big:#?}");
    let record = world
        .send(&client, Identity::Pem, &world.fresh_record())
        .await;
    assert_eq!(record.status, Some(200), "{record:#?}");
    assert_eq!(record.json["decision"], "allow");
}

#[tokio::test]
async fn python_requests_gets_every_answer() {
    if available("python requests", "python3", &["-c", "import requests"]).await {
        exercise(Client {
            name: "python requests",
            command: vec!["python3".into(), example_client("requests_client.py")],
            identity: Identity::Pem,
        })
        .await;
    }
}

#[tokio::test]
async fn python_http_client_gets_every_answer() {
    if available("python http.client", "python3", &["--version"]).await {
        exercise(Client {
            name: "python http.client",
            command: vec!["python3".into(), example_client("http_client.py")],
            identity: Identity::Pem,
        })
        .await;
    }
}

/// Java's HttpClient (HTTP/2 by ALPN) with the identity from the PKCS#12 bundle, run from
/// source as `java Client.java`.
#[tokio::test]
async fn java_http_client_with_a_pkcs12_key_store_gets_every_answer() {
    if available("java", "java", &["-version"]).await {
        exercise(Client {
            name: "java",
            command: vec!["java".into(), example_client("Client.java")],
            identity: Identity::P12,
        })
        .await;
    }
}

/// Go's net/http: built once (`go build`, as a partner deploys it), then run for each check.
#[tokio::test]
async fn go_net_http_gets_every_answer() {
    if !available("go", "go", &["version"]).await {
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let binary = out_dir.path().join("client");
    let build = tokio::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(example_client("main.go"))
        .current_dir(out_dir.path())
        .kill_on_drop(true)
        .output();
    let build = tokio::time::timeout(CHILD_TIMEOUT, build)
        .await
        .expect("go build finishes")
        .unwrap();
    assert!(
        build.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    exercise(Client {
        name: "go",
        command: vec![binary.display().to_string()],
        identity: Identity::Pem,
    })
    .await;
}

/// Node's https with the identity from the PKCS#12 bundle (read by Node's OpenSSL).
#[tokio::test]
async fn node_https_with_the_pkcs12_bundle_gets_every_answer() {
    if available("node", "node", &["--version"]).await {
        exercise(Client {
            name: "node",
            command: vec!["node".into(), example_client("client.mjs")],
            identity: Identity::P12,
        })
        .await;
    }
}

/// Node again with the PEM pair, so both identity forms of the example are run.
#[tokio::test]
async fn node_https_with_the_pem_pair_is_accepted() {
    if !available("node", "node", &["--version"]).await {
        return;
    }
    let world = World::start(10).await;
    let client = Client {
        name: "node",
        command: vec!["node".into(), example_client("client.mjs")],
        identity: Identity::Pem,
    };
    let sent = world
        .send(&client, Identity::Pem, &world.fresh_record())
        .await;
    assert_eq!(sent.status, Some(200), "{sent:#?}");
    assert_eq!(sent.json["decision"], "allow");
}

// === The PKCS#12 bundles the certs commands write, opened by other implementations ===

/// `certs init` (one bundle per sample organisation) and `certs issue-client` (one more) write
/// a PKCS#12 bundle beside each PEM pair, with its password in a file; both 0600; OpenSSL 3,
/// Java's keytool and Python's `cryptography` open it with that password and find the PEM
/// certificate, its park CA and the key. (And the gateway's server certificate lives 90 days.)
#[tokio::test]
async fn certs_init_and_issue_client_write_pkcs12_bundles_that_openssl_keytool_and_python_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let init = hetao(&["certs", "init", "--out", &out.display().to_string()]).await;
    let extra = out.join("extra").join("sz-lab-3");
    let issue = hetao(&[
        "certs",
        "issue-client",
        "--park",
        "sz",
        "--dir",
        &out.display().to_string(),
        "--org",
        "Futian Quantum Devices Co.",
        "--cn",
        "Lab 3 LIMS",
        "--out",
        &extra.display().to_string(),
    ])
    .await;
    // The server certificate partners and scanners see lives 90 days, as Mozilla's modern
    // configuration wants (sslyze below).
    let server = std::fs::read_to_string(out.join("gateway.pem")).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(server.as_bytes()).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let lifespan = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
    assert!(lifespan <= 91 * 24 * 3600, "{} days", lifespan / 86400);

    let mut pems: Vec<PathBuf> = std::fs::read_dir(out.join("orgs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    assert_eq!(pems.len(), 4, "one identity per sample organisation");
    pems.push(extra.with_extension("pem"));
    let openssl = probe("openssl", &["version"]).await.is_ok();
    let keytool = probe("keytool", &["-help"]).await.is_ok();
    let python = probe(
        "python3",
        &[
            "-c",
            "from cryptography.hazmat.primitives.serialization import pkcs12",
        ],
    )
    .await
    .is_ok();
    for pem in &pems {
        let p12 = pem.with_extension("p12");
        let pass = pem.with_extension("p12.pass");
        for secret in [&p12, &pass] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
        let name = p12.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            init.contains(&name) || issue.contains(&name),
            "{name} is not shown:\n{init}\n{issue}"
        );
        let cert_pem = std::fs::read_to_string(pem).unwrap();
        if openssl {
            // OpenSSL 3 opens it without its legacy provider (no RC2 or 3DES inside).
            let certs = run(
                "openssl",
                &["pkcs12", "-nokeys", "-clcerts", "-in"],
                &[&p12],
                &["-passin", &format!("file:{}", pass.display())],
            )
            .await;
            assert!(certs.contains(cert_pem.trim()), "{certs}");
        }
        if keytool {
            let list = run(
                "keytool",
                &["-list", "-storetype", "PKCS12", "-keystore"],
                &[&p12],
                &["-storepass:file", &pass.display().to_string()],
            )
            .await;
            assert!(list.contains("PrivateKeyEntry"), "{list}");
        }
        if python {
            let script = "import sys\n\
                from cryptography.hazmat.primitives.serialization import pkcs12, Encoding\n\
                password = open(sys.argv[2]).read().strip().encode()\n\
                key, cert, cas = pkcs12.load_key_and_certificates(open(sys.argv[1], 'rb').read(), password)\n\
                assert key is not None and len(cas) == 1\n\
                print(cert.public_bytes(Encoding.PEM).decode())\n";
            let printed = run("python3", &["-c", script], &[&p12, &pass], &[]).await;
            assert_eq!(printed.trim(), cert_pem.trim());
        }
    }
}

/// Runs the gateway's binary; what it printed, after checking it succeeded.
async fn hetao(args: &[&str]) -> String {
    run(env!("CARGO_BIN_EXE_hetao-gateway"), args, &[], &[]).await
}

/// Runs `program` with `args`, then `paths`, then `more`; its standard output, after checking
/// it succeeded within the time limit.
async fn run(program: &str, args: &[&str], paths: &[&Path], more: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .args(paths)
        .args(more)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHILD_TIMEOUT, out)
        .await
        .unwrap_or_else(|_| panic!("{program}: no exit within {CHILD_TIMEOUT:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// === A TLS scanner: sslyze against Mozilla's "modern" configuration ===

/// Mozilla's modern profile wants server certificates that live at most 90 days (a CA's policy,
/// not the gateway's; `certs init` issues such, the test PKI a year): the scan runs with such a
/// server certificate, put in place by a reload as an operator would, and a partner's client
/// certificate (the gateway requires one).
#[tokio::test]
async fn sslyze_finds_the_gateway_compliant_with_mozillas_modern_configuration() {
    if !available("sslyze", "python3", &["-c", "import sslyze"]).await {
        return;
    }
    let world = World::start(1000).await;
    let gw = &world.gw;
    let server = gw
        .pki
        .gateway_ca
        .issue_server(
            &["localhost".into(), "127.0.0.1".into()],
            hetao_pki::Validity::For(Duration::from_secs(90 * 24 * 3600)),
        )
        .unwrap();
    std::fs::remove_file(gw.path("gateway.pem")).unwrap();
    std::fs::remove_file(gw.path("gateway.key")).unwrap();
    std::fs::write(gw.path("gateway.pem"), &server.cert_pem).unwrap();
    common::write_secret(gw.dir.path(), "gateway.key", &server.key_pem);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, 200, "{body}");

    let out = tokio::process::Command::new("python3")
        .args(["-m", "sslyze", "--mozilla_config", "modern", "--cert"])
        .arg(world.files.join("org.pem"))
        .arg("--key")
        .arg(world.files.join("org.key"))
        .args(["--keyform", "PEM", "--certinfo_ca_file"])
        .arg(gw.path("gateway-ca.pem"))
        // The name the certificate carries, at the address the gateway listens on.
        .arg(format!("localhost:{}{{127.0.0.1}}", gw.addr.port()))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("sslyze finishes within 5 minutes")
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let verdict = report
        .lines()
        .skip_while(|l| {
            !l.to_ascii_lowercase()
                .contains("compliance against tls configuration")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success() && verdict.contains("OK - Compliant"),
        "sslyze: {verdict}\n\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
