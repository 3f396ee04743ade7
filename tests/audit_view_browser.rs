//! The auditors' view in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs) loads the pages of a log written by a real gateway run (the demo), as an auditor
//! would. A filter shows only the entries it names, an entry page shows its rules' reasons, and
//! the main pages render (screenshots; with `HETAO_SCREENSHOTS=DIR` they are kept in DIR, which
//! is how `docs/images/` is made).
//!
//! Without Chromium the test says why and passes, except under CI (`CI` set), where a missing
//! browser is a failure: `.ci/run` installs it.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use common::chromium::{chromium, chromium_or_skip, is_png, unescape};
use hetao_auditview::AuditView;
use hetao_gateway::cli::demo::{run as demo, DemoArgs};
use hetao_gateway_core::audit::{query_logs, AuditEntryType, AuditPublicKey, QueryFilter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_a_filtered_view_and_an_entry_with_its_reasons() {
    let Some(browser) =
        chromium_or_skip("chromium_shows_a_filtered_view_and_an_entry_with_its_reasons")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let args = DemoArgs {
        dir: Some(dir.clone()),
        records: 120,
        concurrency: 4,
        quiet: true,
        listen: "127.0.0.1:0".parse().unwrap(),
        keep_running: false,
    };
    assert_eq!(demo(args).await.unwrap(), ExitCode::SUCCESS);
    let log = dir.join("audit/audit.jsonl");
    let key = AuditPublicKey::from_pem_file(&dir.join("audit-signing.pub")).unwrap();
    let witnesses = ["witness-sz", "witness-hk"]
        .map(|w| AuditPublicKey::from_pem_file(&dir.join(w).join("witness.pub")).unwrap())
        .to_vec();
    let view = AuditView::open(vec![log.clone()], key, witnesses).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(hetao_auditview::run(listener, view, None, async move {
        let _ = stopped.await;
    }));
    let profile = tmp.path().join("chromium-profile");

    // A filter: the deny decisions only, as the form submits it.
    let denies = query_logs(
        std::slice::from_ref(&log),
        &QueryFilter {
            entry_type: Some(AuditEntryType::Decision),
            decision: Some("deny".into()),
            ..QueryFilter::default()
        },
    )
    .unwrap();
    assert!(!denies.is_empty());
    let dom = chromium(
        &browser,
        &profile,
        &[
            "--dump-dom",
            &format!("{base}/?type=decision&decision=deny"),
        ],
    )
    .await;
    assert!(
        dom.contains("Intact: every hash, link, tree root and signature verifies"),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<strong id=\"total\">{}</strong>", denies.len())),
        "{dom}"
    );
    let shown = dom.matches("<td class=\"deny\">deny</td>").count();
    assert_eq!(shown, denies.len().min(50));
    assert!(
        !dom.contains("<td class=\"allow\">"),
        "an allow in a deny view"
    );
    assert!(dom.contains("value=\"deny\""), "the form keeps the filter");
    assert!(dom.contains("<svg class=\"chart\""));

    // One entry: every matched rule with its reason.
    let newest = denies.last().unwrap();
    let dom = chromium(
        &browser,
        &profile,
        &["--dump-dom", &format!("{base}/entry/{}", newest.seq)],
    )
    .await;
    let text = unescape(&dom);
    assert!(!newest.rules.is_empty());
    for rule in &newest.rules {
        assert!(text.contains(&rule.id), "rule {} not shown", rule.id);
        assert!(
            text.contains(&rule.reason),
            "reason of {} not shown",
            rule.id
        );
    }
    assert!(dom.contains("id=\"evidence\""));

    // The main pages render; kept in HETAO_SCREENSHOTS when asked.
    let shots = std::env::var_os("HETAO_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    for (name, page) in [
        ("audit-view-decisions.png", "/".to_string()),
        ("audit-view-entry.png", format!("/entry/{}", newest.seq)),
        ("audit-view-checkpoints.png", "/checkpoints".to_string()),
    ] {
        let file = shots.join(name);
        chromium(
            &browser,
            &profile,
            &[
                &format!("--screenshot={}", file.display()),
                &format!("{base}{page}"),
            ],
        )
        .await;
        assert!(is_png(&file), "{} is not a screenshot", file.display());
    }
    let _ = stop.send(());
}
