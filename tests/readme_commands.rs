//! Keeps the README and the deployment docs true:
//! - every `hetao-gateway` command line in a shell block parses with the real command-line parser,
//!   and every subcommand they (or inline code) mention answers `--help` with exit 0;
//! - every TOML block is a configuration `Config::parse` accepts, and the "every key at its
//!   default" block of docs/configuration.md configures exactly what the skeleton alone does;
//! - the curl, `send` and `audit` examples run against a real gateway on loopback, and the
//!   `check` examples decide their records allowed with that gateway's configuration.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use hetao_gateway::cli::demo::Zone;
use hetao_gateway::cli::Cli;
use hetao_gateway_core::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_hetao-gateway");
const DOCS: [&str; 8] = [
    "README.md",
    "docs/audit-view.md",
    "docs/deploy.md",
    "docs/configuration.md",
    "docs/audit.md",
    "docs/witness.md",
    "docs/registry.md",
    "docs/pseudonyms.md",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Fenced code blocks of a markdown text: (language, content).
fn blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some((rest.trim().to_string(), String::new())),
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(trimmed);
            text.push('\n');
        }
    }
    out
}

/// Shell lines of a block: `$ ` prompts dropped, backslash continuations joined.
fn shell_lines(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = line.strip_prefix("$ ").unwrap_or(line);
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
        } else {
            pending.push_str(line);
            out.push(std::mem::take(&mut pending));
        }
    }
    out
}

/// Splits a shell line into words (single and double quotes), stopping at a comment or at an
/// operator (`|`, `>`, `&&`, `;`).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    let end = out
        .iter()
        .position(|w| w.starts_with('#') || ["|", ">", "&&", ";", "||"].contains(&w.as_str()))
        .unwrap_or(out.len());
    out.truncate(end);
    out
}

/// The arguments after the gateway's binary (`hetao-gateway`, `/usr/local/bin/hetao-gateway`,
/// `ExecStart=...hetao-gateway`, or `cargo run ... --`), if the line runs it.
fn gateway_args(words: &[String]) -> Option<Vec<String>> {
    // The program is the first word, after `sudo [-u USER]`; a unit's `ExecStart=` counts.
    let mut i = 0;
    if words.first().map(String::as_str) == Some("sudo") {
        i = 1;
        while let Some(w) = words.get(i).filter(|w| w.starts_with('-')) {
            i += if w == "-u" { 2 } else { 1 };
        }
    }
    let program = words.get(i)?;
    let program = program.rsplit('=').next().unwrap_or(program);
    if program == "hetao-gateway" || program.ends_with("/hetao-gateway") {
        return Some(words[i + 1..].to_vec());
    }
    if program == "cargo" && words.get(i + 1).map(String::as_str) == Some("run") {
        // `cargo run --example NAME -- ...` runs an example, not the gateway.
        if words.iter().any(|w| w == "--example") {
            return None;
        }
        let dashdash = words.iter().position(|w| w == "--")?;
        return Some(words[dashdash + 1..].to_vec());
    }
    None
}

/// Every gateway command line in the docs' shell blocks and the systemd unit.
fn documented_commands() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for doc in DOCS {
        for (lang, block) in blocks(&read(doc)) {
            if !matches!(lang.as_str(), "sh" | "console" | "bash") {
                continue;
            }
            for line in shell_lines(&block) {
                if let Some(args) = gateway_args(&words(&line)) {
                    out.push((format!("{doc}: {}", line.trim()), args));
                }
            }
        }
    }
    for line in read("deploy/hetao-gateway.service").lines() {
        if !line.starts_with("Exec") {
            continue;
        }
        if let Some(args) = gateway_args(&words(line)) {
            out.push((format!("deploy/hetao-gateway.service: {line}"), args));
        }
    }
    out
}

/// The subcommand path the arguments name (`["audit", "verify"]`).
fn subcommand_path(args: &[String]) -> Vec<String> {
    let mut path = Vec::new();
    let mut cmd = Cli::command();
    for arg in args {
        match cmd.find_subcommand(arg) {
            Some(sub) => {
                path.push(arg.clone());
                cmd = sub.clone();
            }
            None => break,
        }
    }
    path
}

#[test]
fn every_documented_command_line_parses() {
    let commands = documented_commands();
    assert!(
        commands.len() >= 20,
        "only {} commands found",
        commands.len()
    );
    let mut failures = Vec::new();
    for (where_, args) in &commands {
        let argv = std::iter::once("hetao-gateway".to_string()).chain(args.iter().cloned());
        if let Err(e) = <Cli as clap::Parser>::try_parse_from(argv) {
            use clap::error::ErrorKind;
            if !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                failures.push(format!("{where_}\n    {}", e.render()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_mentioned_subcommand_answers_help() {
    let mut paths: BTreeSet<Vec<String>> = documented_commands()
        .iter()
        .map(|(_, args)| subcommand_path(args))
        .collect();
    // Inline code in the prose: `hetao-gateway policy test`, `hetao-gateway send`, ...
    for doc in DOCS {
        for span in read(doc).split('`').skip(1).step_by(2) {
            if let Some(rest) = span.strip_prefix("hetao-gateway ") {
                let args: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
                let path = subcommand_path(&args);
                assert!(
                    !path.is_empty() || args.first().is_some_and(|a| a.starts_with('-')),
                    "{doc} mentions `hetao-gateway {rest}`: no such subcommand"
                );
                paths.insert(path);
            }
        }
    }
    // The README names every subcommand of the contract.
    for sub in ["serve", "demo", "certs", "send", "check", "policy", "audit"] {
        assert!(
            paths
                .iter()
                .any(|p| p.first().map(String::as_str) == Some(sub)),
            "the README does not show `hetao-gateway {sub}`"
        );
    }
    for path in paths.iter().filter(|p| !p.is_empty()) {
        let out = Command::new(BIN).args(path).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "hetao-gateway {} --help failed",
            path.join(" ")
        );
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage:"), "{help}");
    }
}

#[test]
fn answers_table_uses_the_gateways_error_codes() {
    let error_rs = read("crates/gateway-core/src/error.rs");
    let readme = read("README.md");
    let table = readme
        .split("### Answers")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has an Answers section");
    let mut codes = 0;
    for row in table.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').collect();
        // Data rows start with a status (`| 200 |`); the header names the column `error`.
        let is_data = cells
            .get(1)
            .is_some_and(|c| c.trim().starts_with(|ch: char| ch.is_ascii_digit()));
        let Some(error_cell) = cells.get(2).filter(|_| is_data) else {
            continue;
        };
        for code in error_cell.split('`').skip(1).step_by(2) {
            codes += 1;
            assert!(
                error_rs.contains(&format!("=> \"{code}\"")),
                "README answers table: `{code}` is not an error code in crates/gateway-core/src/error.rs"
            );
        }
    }
    assert!(codes >= 15, "only {codes} error codes in the answers table");
}

// === configuration blocks ===

const SKELETON: &str = r#"
[server]
listen = "127.0.0.1:8443"
cert = "gateway.pem"
key = "gateway.key"
[admin]
listen = "127.0.0.1:9443"
[upstream_client]
cert = "gateway-client.pem"
key = "gateway-client.key"
[parks.sz]
client_ca = "sz-ca.pem"
endpoint = "https://127.0.0.1:9001"
endpoint_ca = "sz-ca.pem"
crl = "sz-crl.pem"
[parks.hk]
client_ca = "hk-ca.pem"
endpoint = "https://127.0.0.1:9002"
endpoint_ca = "hk-ca.pem"
[schemas]
dir = "schemas"
[policies]
dir = "policies"
[audit]
log = "audit/audit.jsonl"
signing_key = "audit-signing.key"
"#;

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn config_of(block: &str) -> Result<Config, String> {
    let mut table: toml::Table = SKELETON.parse().map_err(|e| format!("{e}"))?;
    let over: toml::Table = block.parse().map_err(|e| format!("not TOML: {e}"))?;
    merge(&mut table, over);
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    Config::parse(&text, Path::new("/etc/hetao-gateway/gateway.toml")).map_err(|e| e.to_string())
}

#[test]
fn every_configuration_block_is_accepted() {
    let mut seen = 0;
    for doc in DOCS {
        for (lang, block) in blocks(&read(doc)) {
            // A witness's own `witness.toml` (tests/witness.rs checks those blocks), a registry
            // file (tests/registry.rs) or policy rules (docs/policies.md) are other documents.
            let other_document = block.contains("[[log]]")
                || block.contains("[[organisation]]")
                || block.contains("[[rule]]");
            if lang == "toml" && !other_document {
                seen += 1;
                if let Err(e) = config_of(&block) {
                    panic!("{doc}: a configuration block is refused: {e}\n{block}");
                }
            }
        }
    }
    assert!(seen >= 3, "only {seen} configuration blocks found");
}

#[test]
fn documented_defaults_are_the_real_defaults() {
    let doc = read("docs/configuration.md");
    let section = doc
        .split("## Every key at its default")
        .nth(1)
        .expect("docs/configuration.md has the defaults section");
    let (_, block) = blocks(section)
        .into_iter()
        .find(|(lang, _)| lang == "toml")
        .expect("a toml block in the defaults section");
    let path = Path::new("/etc/hetao-gateway/gateway.toml");
    let documented = Config::parse(&block, path).unwrap();
    let skeleton = Config::parse(SKELETON, path).unwrap();
    assert_eq!(format!("{documented:?}"), format!("{skeleton:?}"));

    // The block names every table the configuration has.
    for table in [
        "[server]",
        "[admin]",
        "[upstream_client]",
        "[parks.sz]",
        "[schemas]",
        "[policies]",
        "[audit]",
        "[limits]",
        "[upstream]",
        "[logging]",
        "[rate_limit]",
    ] {
        assert!(block.contains(table), "the defaults block lacks {table}");
    }
}

// === the examples, against a real gateway ===

/// The README's shell lines that start with `program`, as words.
fn readme_lines_starting(program: &str) -> Vec<Vec<String>> {
    blocks(&read("README.md"))
        .into_iter()
        .filter(|(lang, _)| lang == "sh")
        .flat_map(|(_, block)| shell_lines(&block))
        .map(|l| words(&l))
        .filter(|w| w.first().map(String::as_str) == Some(program))
        .collect()
}

/// `demo-out/...` → the test's folder; the README's gateway URL → the running one.
fn localise(args: &[String], demo_out: &Path, url: &str) -> Vec<String> {
    args.iter()
        .map(|a| {
            let a = a.replace("https://127.0.0.1:8443/v1/records", url);
            let a = a.replace("demo-out/", &format!("{}/", demo_out.display()));
            a.replace("@examples/", &format!("@{}/examples/", repo().display()))
        })
        .collect()
}

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_send_check_and_audit_examples_work() {
    let tmp = tempfile::tempdir().unwrap();
    let demo_out = tmp.path().join("demo-out");
    let zone = Zone::start(&demo_out, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = zone.records_url();

    // curl: the record is allowed and forwarded; its answer is kept as answer.json. The line is
    // a shell pipeline (it stamps the current time), so it runs in bash as written, with the
    // demo folder and URL of this test.
    let curls: Vec<String> = blocks(&read("README.md"))
        .into_iter()
        .filter(|(lang, _)| lang == "sh")
        .flat_map(|(_, block)| shell_lines(&block))
        .filter(|l| l.contains("curl "))
        .collect();
    assert_eq!(curls.len(), 1, "one curl example expected");
    let answer_json = tmp.path().join("answer.json");
    if curl_available() {
        let line = curls[0]
            .replace("https://127.0.0.1:8443/v1/records", &url)
            .replace("demo-out/", &format!("{}/", demo_out.display()));
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {line} --silent --show-error"))
            .current_dir(repo())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["decision"], "allow", "{answer}");
        std::fs::write(&answer_json, &out.stdout).unwrap();
    } else {
        eprintln!("curl is not installed: the curl example is not exercised (CI installs it)");
    }

    // send: every `hetao-gateway send` line of the README (exit 0: every record accepted).
    runs_every_readme_line_of("send", &demo_out, &url).await;
    // check: every `hetao-gateway check` line decides its example allowed (exit 0), with the
    // demo folder of this test. The examples carry a fixed `created_at`: a line without `--at`
    // would be refused as stale a week after the records were written.
    runs_every_readme_line_of("check", &demo_out, &url).await;

    // Stop (final checkpoint), then every `hetao-gateway audit ...` line of the README.
    zone.stop().await.unwrap();
    for audit in readme_lines_starting("hetao-gateway")
        .into_iter()
        .filter(|w| w.get(1).map(String::as_str) == Some("audit"))
    {
        let proves = audit.get(2).map(String::as_str) == Some("prove");
        if (proves || audit.iter().any(|w| w == "answer.json")) && !answer_json.exists() {
            continue;
        }
        // `audit prove` names a record: the one the curl example sent.
        let sent_id = std::fs::read(&answer_json)
            .ok()
            .and_then(|a| serde_json::from_slice::<serde_json::Value>(&a).ok())
            .and_then(|a| a["record_id"].as_str().map(String::from));
        let args: Vec<String> = localise(&audit[1..], &demo_out, &url)
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                if a == "answer.json" {
                    answer_json.display().to_string()
                } else if proves && i == 2 {
                    sent_id.clone().unwrap_or(a)
                } else if a == "evidence.json" {
                    demo_out.join("evidence.json").display().to_string()
                } else {
                    a
                }
            })
            .collect();
        if audit.get(2).map(String::as_str) == Some("serve") {
            serves_an_intact_log(&args);
            continue;
        }
        let out = Command::new(BIN)
            .args(&args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}{}",
            audit.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs every README line `hetao-gateway <subcommand> ...` (at least one) with this test's demo
/// folder and gateway, and asserts each exits 0.
async fn runs_every_readme_line_of(subcommand: &str, demo_out: &Path, url: &str) {
    let lines: Vec<Vec<String>> = readme_lines_starting("hetao-gateway")
        .into_iter()
        .filter(|w| w.get(1).map(String::as_str) == Some(subcommand))
        .collect();
    assert!(!lines.is_empty(), "no `hetao-gateway {subcommand}` line");
    for line in &lines {
        let out = tokio::process::Command::new(BIN)
            .args(localise(&line[1..], demo_out, url))
            .current_dir(repo())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}{}",
            line.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `audit serve ...` runs until stopped: start it on a free port, check the log it serves is
/// intact, stop it.
fn serves_an_intact_log(args: &[String]) {
    use std::io::{BufRead, Read, Write};
    let mut args = args.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--listen") {
        args[i + 1] = "127.0.0.1:0".into();
    }
    let mut child = Command::new(BIN)
        .args(&args)
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let addr = ready
        .trim()
        .rsplit_once("http://")
        .map(|(_, a)| a.trim_end_matches('/').to_string());
    let status = addr.as_ref().map(|addr| {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            tcp,
            "GET /api/status HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        answer
    });
    let _ = child.kill();
    let _ = child.wait();
    let status = status.unwrap_or_else(|| panic!("{}: no ready line: {ready}", args.join(" ")));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"intact\": true"), "{status}");
}

#[test]
fn deploy_guide_key_commands_work() {
    // docs/deploy.md: an Ed25519 key from openssl is a usable audit signing key.
    let Ok(out) = Command::new("openssl").arg("version").output() else {
        eprintln!("openssl is not installed: the key-generation example is not exercised");
        return;
    };
    if !out.status.success() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("audit-signing.key");
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(BIN)
        .args(["audit", "public-key", "--signing-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("BEGIN PUBLIC KEY"));
}
