//! `hetao-gateway send`: a partner organisation sends records to the gateway and sees each
//! decision. Exit code 0 when every record was accepted (2xx), 1 when any was refused or could
//! not be sent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value;

use hetao_client::{ClientOptions, HttpVersion, RecordClient, SendAnswer};

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The gateway's records URL.
    #[arg(long, env = "HETAO_GATEWAY_URL")]
    pub url: String,
    /// Your organisation's client certificate (PEM), issued by your park's CA.
    #[arg(long)]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// CA certificate that verifies the gateway (e.g. gateway-ca.pem from `certs init`).
    #[arg(long)]
    pub ca: PathBuf,
    /// Record files (JSON envelopes), `-` for standard input, or folders (every *.json in them).
    #[arg(required = true, value_name = "RECORD.json")]
    pub records: Vec<String>,
    /// Records in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Output: one readable line per record, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
    /// HTTP version: auto (ALPN), 1.1 or 2.
    #[arg(long, default_value = "auto", value_parser = parse_http)]
    pub http: HttpVersion,
    /// Content type sent with each record.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Give each record a new `record_id` and the current `created_at` before sending (for
    /// example records and tests; the gateway refuses a `created_at` older than its window and a
    /// `record_id` it has decided before).
    #[arg(long)]
    pub fresh: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Human,
    Json,
}

fn parse_http(s: &str) -> Result<HttpVersion, String> {
    match s {
        "auto" => Ok(HttpVersion::Auto),
        "1.1" | "1" | "http1" => Ok(HttpVersion::Http1),
        "2" | "h2" | "http2" => Ok(HttpVersion::Http2),
        other => Err(format!("`{other}`: use auto, 1.1 or 2")),
    }
}

/// The record with a new lowercase `record_id` and `created_at` now (UTC, whole seconds).
fn stamp_fresh(body: &[u8]) -> anyhow::Result<Bytes> {
    let mut record: serde_json::Map<String, Value> = serde_json::from_slice(body)?;
    record.insert(
        "record_id".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    record.insert(
        "created_at".into(),
        Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    Ok(Bytes::from(serde_json::to_vec(&record)?))
}

/// One record to send: where it came from and its bytes.
struct Input {
    source: String,
    body: Bytes,
}

pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let mut inputs = collect_inputs(&args.records)?;
    if args.fresh {
        for input in &mut inputs {
            input.body = stamp_fresh(&input.body)
                .with_context(|| format!("{}: --fresh needs a JSON object", input.source))?;
        }
    }
    if inputs.is_empty() {
        anyhow::bail!("no records to send: the folders given hold no *.json files");
    }
    let options = ClientOptions {
        http: args.http,
        request_timeout: Duration::from_secs(args.timeout.max(1)),
        content_type: Some(args.content_type.clone()),
        ..ClientOptions::default()
    };
    let client = RecordClient::from_files(&args.ca, &args.cert, &args.key, options)
        .map_err(|e| anyhow::anyhow!("{e}\n  hint: {}", e.hint()))?;

    let total = inputs.len();
    let progress = if total > 1 && args.format == OutputFormat::Human {
        let pb = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records  {elapsed_precise}  {msg}",
        ) {
            pb.set_style(style);
        }
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };

    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let url: Arc<str> = Arc::from(args.url.as_str());
    let mut tasks = tokio::task::JoinSet::new();
    for input in inputs {
        let client = client.clone();
        let semaphore = semaphore.clone();
        let url = url.clone();
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = semaphore.acquire_owned().await;
            let result = client.send(&url, input.body).await;
            (input.source, result)
        });
    }

    let (mut accepted, mut refused, mut failed) = (0usize, 0usize, 0usize);
    let mut first_error_hint = None;
    while let Some(joined) = tasks.join_next().await {
        let (source, result) = joined.context("a send task stopped unexpectedly")?;
        let line = match (&result, args.format) {
            (Ok(answer), OutputFormat::Human) => describe_answer(&source, answer),
            (Ok(answer), OutputFormat::Json) => serde_json::json!({
                "source": source,
                "status": answer.status,
                "accepted": answer.accepted(),
                "answer": answer.json.clone().unwrap_or_else(||
                    Value::String(String::from_utf8_lossy(&answer.body).into_owned())),
            })
            .to_string(),
            (Err(e), OutputFormat::Human) => format!("✘ ---  {source}  {e}"),
            (Err(e), OutputFormat::Json) => serde_json::json!({
                "source": source,
                "accepted": false,
                "error": e.to_string(),
                "hint": e.hint(),
            })
            .to_string(),
        };
        match &result {
            Ok(a) if a.accepted() => accepted += 1,
            Ok(_) => refused += 1,
            Err(e) => {
                failed += 1;
                first_error_hint.get_or_insert_with(|| e.hint().to_string());
            }
        }
        progress.suspend(|| println!("{line}"));
        progress.inc(1);
        progress.set_message(format!("{accepted} accepted, {} refused", refused + failed));
    }
    progress.finish_and_clear();

    if args.format == OutputFormat::Human {
        if total > 1 {
            println!(
                "{total} records: {accepted} accepted, {refused} refused, {failed} not delivered"
            );
        }
        if let Some(hint) = first_error_hint {
            eprintln!("hint: {hint}");
        }
    }
    Ok(if accepted == total {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Expands `-` (standard input) and folders (their *.json files, sorted) and reads every file.
fn collect_inputs(args: &[String]) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let mut stdin_used = false;
    for arg in args {
        if arg == "-" {
            if stdin_used {
                anyhow::bail!("`-` (standard input) can be given only once");
            }
            stdin_used = true;
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the record from standard input")?;
            inputs.push(Input {
                source: "<stdin>".into(),
                body: Bytes::from(buf),
            });
            continue;
        }
        let path = Path::new(arg);
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list the folder {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            for file in files {
                inputs.push(read_record(&file)?);
            }
        } else {
            inputs.push(read_record(path)?);
        }
    }
    Ok(inputs)
}

fn read_record(path: &Path) -> anyhow::Result<Input> {
    let body = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "record file {} does not exist\n  hint: pass JSON envelope files, a folder of them, or - for standard input",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot read record file {}: {e}", path.display())
        }
    })?;
    Ok(Input {
        source: path.display().to_string(),
        body: Bytes::from(body),
    })
}

/// One readable line for a gateway answer. The answer's shape is read leniently: the fields
/// shown are those SPEC.md promises (decision, matched rules with reasons, receipt, error code,
/// violations with JSON pointers), wherever the gateway puts them.
pub fn describe_answer(source: &str, answer: &SendAnswer) -> String {
    let mark = if answer.accepted() { "✔" } else { "✘" };
    let Some(json) = &answer.json else {
        let text = String::from_utf8_lossy(&answer.body);
        let text = text.trim();
        return format!(
            "{mark} {}  {source}  {}",
            answer.status,
            if text.is_empty() {
                "(empty answer)"
            } else {
                text
            }
        );
    };
    let mut parts: Vec<String> = Vec::new();
    let decision = json.get("decision");
    let effect = decision
        .and_then(|d| {
            d.as_str()
                .or_else(|| d.get("effect").and_then(Value::as_str))
        })
        .map(str::to_owned);
    if let Some(effect) = &effect {
        parts.push(effect.clone());
    }
    let error_code = match json.get("error") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("code").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    if let Some(code) = &error_code {
        if effect.as_deref() != Some(code.as_str()) {
            parts.push(code.clone());
        }
    }
    parts.push(source.to_string());
    if let Some(id) = json.get("record_id").and_then(Value::as_str) {
        parts.push(format!("record {id}"));
    }

    let receipt = json.get("receipt");
    let seq = receipt
        .and_then(|r| r.get("audit_seq"))
        .or_else(|| json.get("audit_seq"));
    if let Some(seq) = seq {
        let hash = receipt
            .and_then(|r| r.get("entry_hash"))
            .and_then(Value::as_str)
            .map(|h| format!(" hash {}…", &h[..h.len().min(12)]))
            .unwrap_or_default();
        parts.push(format!("audit #{seq}{hash}"));
    }
    if let Some(up) = json.get("upstream_status") {
        parts.push(format!("upstream {up}"));
    }

    let rules = ["matched_rules", "rules", "matched"]
        .iter()
        .find_map(|k| json.get(*k))
        .or_else(|| decision.and_then(|d| d.get("matched")))
        .and_then(Value::as_array);
    if let Some(rules) = rules.filter(|r| !r.is_empty()) {
        let shown: Vec<String> = rules
            .iter()
            .map(|r| {
                let id = r.get("id").and_then(Value::as_str).unwrap_or("?");
                let effect = r
                    .get("effect")
                    .and_then(Value::as_str)
                    .map(|e| format!(" {e}"))
                    .unwrap_or_default();
                match r.get("reason").and_then(Value::as_str) {
                    Some(reason) => format!("{id}{effect}: {reason}"),
                    None => format!("{id}{effect}"),
                }
            })
            .collect();
        parts.push(format!("rules: {}", shown.join("; ")));
    }

    let violations = ["violations", "errors"]
        .iter()
        .find_map(|k| json.get(*k))
        .and_then(Value::as_array);
    if let Some(v) = violations.filter(|v| !v.is_empty()) {
        let shown: Vec<String> = v
            .iter()
            .map(|e| {
                let pointer = ["pointer", "instance_path", "path"]
                    .iter()
                    .find_map(|k| e.get(*k))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let message = e
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string());
                format!(
                    "{} {message}",
                    if pointer.is_empty() { "/" } else { pointer }
                )
            })
            .collect();
        parts.push(format!("violations: {}", shown.join("; ")));
    }
    if effect.is_none() && rules.is_none() && violations.is_none() {
        if let Some(m) = json
            .get("message")
            .or_else(|| json.get("error").and_then(|e| e.get("message")))
            .and_then(Value::as_str)
        {
            parts.push(m.to_string());
        }
    }
    format!("{mark} {}  {}", answer.status, parts.join("  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, json: Value) -> SendAnswer {
        SendAnswer {
            status,
            body: Bytes::from(json.to_string()),
            json: Some(json),
            headers: http::HeaderMap::new(),
            http_version: http::Version::HTTP_2,
        }
    }

    #[test]
    fn an_accepted_record_shows_decision_receipt_and_rules() {
        let line = describe_answer(
            "a.json",
            &answer(
                200,
                serde_json::json!({"record_id": "r1", "decision": "allow",
                "receipt": {"audit_seq": 7, "entry_hash": "abcdef0123456789"},
                "matched_rules": [{"id": "D5", "effect": "allow", "reason": "academic data"}]}),
            ),
        );
        assert!(
            line.starts_with("✔ 200  allow  a.json  record r1"),
            "{line}"
        );
        assert!(line.contains("audit #7 hash abcdef012345…"), "{line}");
        assert!(line.contains("D5 allow: academic data"), "{line}");
    }

    #[test]
    fn a_schema_violation_shows_code_and_pointers() {
        let line = describe_answer(
            "b.json",
            &answer(
                422,
                serde_json::json!({"error": "schema_violation",
                "violations": [{"pointer": "/body/data_grade", "message": "not one of the grades"}]}),
            ),
        );
        assert!(
            line.starts_with("✘ 422  schema_violation  b.json"),
            "{line}"
        );
        assert!(
            line.contains("/body/data_grade not one of the grades"),
            "{line}"
        );
    }

    #[test]
    fn a_denial_lists_every_matched_rule_with_its_reason() {
        let line = describe_answer(
            "c.json",
            &answer(
                403,
                serde_json::json!({"decision": {"effect": "deny", "matched": [
                {"id": "D1", "effect": "deny", "reason": "needs a security assessment"},
                {"id": "D3", "effect": "deny", "reason": "not a GBA city"}]}}),
            ),
        );
        assert!(line.starts_with("✘ 403  deny"), "{line}");
        assert!(
            line.contains("D1 deny: needs a security assessment; D3 deny"),
            "{line}"
        );
    }

    #[test]
    fn http_versions_parse() {
        assert_eq!(parse_http("2").unwrap(), HttpVersion::Http2);
        assert_eq!(parse_http("1.1").unwrap(), HttpVersion::Http1);
        assert!(parse_http("3").is_err());
    }
}
