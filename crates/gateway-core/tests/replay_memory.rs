//! What the replay memory costs per record id, measured: the resident memory of this process
//! before and after the memory is handed the histories of a million and more decided record ids
//! (as the audit log gives them at start). `cargo test -p hetao-gateway-core --test
//! replay_memory -- --nocapture` prints the figures (README, "Limits"). Linux only (it reads
//! `/proc/self/status`).

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

use std::time::Duration;

use hetao_gateway_core::audit::{
    record_key, Histories, LoggedEntry, RecordHistory, RecordKey, Standing,
};
use hetao_gateway_core::checkpoint::RecordWindow;
use hetao_gateway_core::replay::ReplayGuard;

/// Resident memory of this process, in bytes.
fn resident() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn uuid(i: u64) -> String {
    format!("c4e0c1a2-7d4f-4e6a-8c2b-{i:012x}")
}

fn histories(n: u64) -> Histories {
    let now = chrono::Utc::now().timestamp();
    (0..n)
        .map(|i| {
            let at = LoggedEntry {
                seq: 2 * i,
                offset: 1500 * i,
                segment: 1,
                receipt_extra: 0,
            };
            let h = RecordHistory::decided([7; 32], now, 1, Standing::Unsettled, at);
            (record_key(&uuid(i)), h)
        })
        .collect()
}

/// Heap bytes per record id of the replay memory holding `n` ids, as `ReplayGuard::new` gets
/// them from the log at start.
fn bytes_per_id(n: u64) -> f64 {
    let before = resident();
    let guard = ReplayGuard::new(
        RecordWindow {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_future: Duration::from_secs(300),
        },
        histories(n),
    );
    let after = resident();
    assert_eq!(guard.len() as u64, n);
    (after - before) as f64 / n as f64
}

/// What the map's table should take per id: a power of two of buckets, at most 7/8 full, each
/// bucket a key and its history and one control byte.
fn modelled_bytes_per_id(n: u64) -> f64 {
    let buckets = (n * 8).div_ceil(7).next_power_of_two();
    let bucket = std::mem::size_of::<(RecordKey, RecordHistory)>() as u64 + 1;
    (buckets * bucket) as f64 / n as f64
}

#[test]
fn a_record_id_costs_a_fixed_size_whatever_its_record_and_answer() {
    // A hash map holds a power of two of buckets: the cost per id is lowest just below a
    // growth (1.8 million ids fill 2^21 buckets to 7/8) and highest just after it.
    for n in [1_000_000u64, 1_800_000] {
        let measured = bytes_per_id(n);
        let modelled = modelled_bytes_per_id(n);
        println!("{n} record ids: {measured:.0} bytes each (modelled: {modelled:.0})");
        assert!(
            (measured - modelled).abs() <= modelled * 0.1,
            "measured {measured}, modelled {modelled}"
        );
    }
}
