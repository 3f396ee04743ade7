//! Headless Chromium (Debian's `chromium`, which `.ci/run` installs) for the tests of the
//! auditors' view: the DOM a page renders, and screenshots.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium with `args` and returns what it printed.
pub async fn chromium(browser: &Path, profile: &Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(browser)
            .args([
                "--headless",
                // The tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--force-device-scale-factor=1",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within two minutes")
    .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM's text with the entities its serialisation uses turned back into characters.
pub fn unescape(dom: &str) -> String {
    dom.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

pub fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 10_000)
}

/// The browser, or `None` (with the reason printed) when it is missing outside CI; under CI
/// (`CI` set) a missing browser fails the test: `.ci/run` installs it.
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed: .ci/run installs Debian's `chromium` package");
        }
        eprintln!(
            "SKIPPED {test}: no chromium on PATH (install it with `apt-get install chromium`, as \
             .ci/run does)"
        );
    }
    found
}
