//! The committed fuzz corpora (`fuzz/corpus/<target>/`, minimised with `cargo fuzz cmin`) run in
//! every `cargo test`, on stable, through the very checks the fuzz targets make (`fuzz_checks/`):
//! what a fuzz run found interesting, including any input that once crashed, stays covered
//! without nightly or libFuzzer.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

mod fuzz_checks;

use std::path::PathBuf;

use fuzz_checks::loaders::{
    audit_log_verdicts_are_exact, config_parses_or_is_refused, policy_file_loads_or_is_refused,
};
use fuzz_checks::{examine_from_every_sender, json_layer_is_consistent, repo_root};

/// The corpus files of a fuzz target, in name order (there must be some: an empty corpus would
/// make the test pass on nothing).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: {} files",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `check` on every file, naming the file that fails.
fn each(target: &str, check: fn(&[u8])) {
    each_nth(target, check, 1);
}

/// Runs `check` on every `n`th file (in name order, which is content-hash order: an arbitrary
/// but fixed sample), naming the file that fails.
fn each_nth(target: &str, check: fn(&[u8]), n: usize) {
    for (path, bytes) in corpus(target).into_iter().step_by(n) {
        let outcome = std::panic::catch_unwind(|| check(&bytes));
        assert!(
            outcome.is_ok(),
            "{} fails the {target} checks",
            path.display()
        );
    }
}

#[test]
fn the_examine_corpus_gets_classified_answers_from_every_sender() {
    each("examine", examine_from_every_sender);
}

#[test]
fn the_json_limits_corpus_keeps_the_json_layer_consistent() {
    each("json_limits", json_layer_is_consistent);
}

#[test]
fn the_audit_log_corpus_gets_exact_verdicts() {
    each("audit_log", audit_log_verdicts_are_exact);
}

/// One file in eight: each input loads a whole policy set and decides records with it, about
/// 0.15 s in a debug build, so the whole corpus (below, `--ignored`) takes 40 s.
#[test]
fn a_sample_of_the_policy_loader_corpus_loads_or_is_refused() {
    each_nth("policy_loader", policy_file_loads_or_is_refused, 8);
}

#[test]
#[ignore = "40 s in a debug build; the sample above runs every time"]
fn the_policy_loader_corpus_loads_or_is_refused() {
    each("policy_loader", policy_file_loads_or_is_refused);
}

#[test]
fn the_config_loader_corpus_parses_or_is_refused() {
    each("config_loader", config_parses_or_is_refused);
}

/// Not a test: writes the `audit_log` seeds (a log from the real writer and tamperings of it)
/// into `$HETAO_FUZZ_SEEDS/audit_log/`; `fuzz/seeds.py` writes the other targets' seeds
/// (fuzz/README.md, "Commands").
#[test]
#[ignore = "writes fuzz seeds when asked"]
fn write_audit_log_seeds() {
    let out = std::env::var_os("HETAO_FUZZ_SEEDS").expect("HETAO_FUZZ_SEEDS=<corpus folder>");
    fuzz_checks::loaders::write_audit_seeds(&PathBuf::from(out).join("audit_log"));
}
