//! What the log says about each record id, as much as a retry needs: the body it was decided
//! for, where its decision entry (and, once delivered, its outcome entry) is, and how often it
//! was forwarded. Rebuilt from the log at start ([`note_entry`] over every entry in order) and
//! handed to the replay memory, which keeps it up to date from then on.
//!
//! An answer is not kept: a retry re-reads the two entries from the log (one `pread` each) and
//! rebuilds the answer from them. What is kept per record id is fixed in size (about 100 bytes,
//! see `RecordHistory`), whatever the record or the answer.

use std::collections::HashMap;

use super::entry::{AuditEntry, AuditEntryType};
use super::Appended;

/// A record id as the replay memory holds it: the 128 bits of its UUID. Record ids the gateway
/// decides are lowercase UUIDs (the envelope schema says so); any other id found in an older log
/// is keyed by the first 128 bits of its SHA-256, so it still counts.
pub type RecordKey = u128;

/// The key of a record id.
pub fn record_key(id: &str) -> RecordKey {
    uuid_bits(id).unwrap_or_else(|| {
        let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest.as_ref()[..16]);
        u128::from_be_bytes(first)
    })
}

/// The 128 bits of a lowercase `8-4-4-4-12` UUID.
fn uuid_bits(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut bits: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let nibble = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        bits = (bits << 4) | u128::from(nibble);
    }
    Some(bits)
}

/// Where an entry is in the log, and what its receipt was made against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedEntry {
    pub seq: u64,
    /// Byte offset of the entry's line in its segment.
    pub offset: u64,
    /// The segment's number: the active segment until it is archived as `<log>.NNNNNN`.
    pub segment: u32,
    /// How far the tree of the entry's first receipt went past the entry: that receipt proved
    /// inclusion in the tree its batch left (`seq + 1 + receipt_extra` entries). 0 when not
    /// known (rebuilt from the log after a restart): the receipt is then made for the tree of
    /// `seq + 1` entries.
    pub receipt_extra: u32,
}

impl LoggedEntry {
    /// The entry an append wrote, when the writer said where it put it.
    pub fn of(appended: &Appended) -> Option<LoggedEntry> {
        let place = appended.place?;
        let extra = appended
            .head
            .as_ref()
            .map_or(0, |h| h.size.saturating_sub(appended.seq + 1));
        Some(LoggedEntry {
            seq: appended.seq,
            offset: place.offset,
            segment: u32::try_from(place.segment).ok()?,
            receipt_extra: u32::try_from(extra).unwrap_or(0),
        })
    }

    /// Size of the tree the entry's receipt proves inclusion in.
    pub fn receipt_tree_size(&self) -> u64 {
        self.seq + 1 + u64::from(self.receipt_extra)
    }
}

/// Where a line was written: its segment and byte offset (set by the writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinePlace {
    pub segment: u64,
    pub offset: u64,
}

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Denied by policy: answered for good.
    Denied,
    /// Forwarded and taken by the endpoint (a 2xx): answered for good.
    Delivered,
    /// Allowed and forwarded (or about to be), not known taken: the last attempt failed or timed
    /// out upstream, or the gateway stopped before the outcome entry. A retry forwards it again.
    Unsettled,
}

/// One record id's history, fixed in size: 32 bytes of body hash, two entry places and a few
/// counters; 96 bytes, 112 with its key in the map (`size_of`, checked by a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHistory {
    /// SHA-256 of the body as received: a retry must be byte for byte the same record.
    pub body_sha256: [u8; 32],
    /// When the latest decision was made (Unix seconds): the id is remembered while a record
    /// with that id can still be within the `created_at` window.
    pub decided_at: i64,
    /// Forwarding attempts so far (allow decisions).
    pub attempts: u32,
    pub standing: Standing,
    /// The latest policy decision entry.
    pub decision: LoggedEntry,
    /// The outcome entry, read only when [`Standing::Delivered`] (an `Option` would cost 8 more
    /// bytes per record id).
    outcome: LoggedEntry,
}

impl RecordHistory {
    /// A record whose latest decision is `decision`, standing `standing` (a delivered record
    /// also has its outcome entry: [`RecordHistory::delivered`]).
    pub fn decided(
        body_sha256: [u8; 32],
        decided_at: i64,
        attempts: u32,
        standing: Standing,
        decision: LoggedEntry,
    ) -> RecordHistory {
        RecordHistory {
            body_sha256,
            decided_at,
            attempts,
            standing,
            decision,
            outcome: decision,
        }
    }

    /// The record delivered, as `outcome` says.
    pub fn delivered(mut self, outcome: LoggedEntry) -> RecordHistory {
        self.standing = Standing::Delivered;
        self.outcome = outcome;
        self
    }

    /// The outcome entry of a delivered record.
    pub fn outcome(&self) -> Option<LoggedEntry> {
        (self.standing == Standing::Delivered).then_some(self.outcome)
    }

    /// Whether a retry gets the first answer again (rather than being decided and forwarded
    /// again).
    pub fn is_answered(&self) -> bool {
        self.standing != Standing::Unsettled
    }
}

/// Every record id's history, by key.
pub type Histories = HashMap<RecordKey, RecordHistory>;

/// The 32 bytes of a hex SHA-256; all zeros (no body matches it) when absent or malformed.
pub fn digest_of_hex(hex_digest: Option<&str>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(bytes) = hex_digest.and_then(|h| hex::decode(h).ok()) {
        if bytes.len() == 32 {
            out.copy_from_slice(&bytes);
        }
    }
    out
}

/// Folds one entry of the log, read in order at `place`, into `histories`; decisions made
/// before `since` (Unix seconds) are left out.
///
/// A decision by policy (an allow, or a deny with `policy_denied`) starts or continues a
/// history; a refusal before the policies (an origin mismatch is a `deny` too) never reserved
/// the id, so it does not after a restart either (a park cannot squat on another park's ids).
/// An allow stays unsettled until an outcome entry referring to it says `forwarded`; an
/// `upstream_failed` outcome, or none at all (a crash between forwarding and the outcome),
/// leaves it unsettled, so a retry forwards it again.
pub(crate) fn note_entry(histories: &mut Histories, e: &AuditEntry, place: LinePlace, since: i64) {
    let Some(id) = &e.record_id else { return };
    let Ok(segment) = u32::try_from(place.segment) else {
        return;
    };
    let here = LoggedEntry {
        seq: e.seq,
        offset: place.offset,
        segment,
        receipt_extra: 0,
    };
    let key = record_key(id);
    match (e.entry_type, e.decision.as_deref()) {
        (AuditEntryType::Decision, Some(decision @ ("allow" | "deny"))) => {
            let allowed = decision == "allow";
            if !allowed && e.error.as_deref() != Some("policy_denied") {
                return;
            }
            // An entry whose time does not parse is kept as decided just now: never forgotten
            // early.
            let decided_at = chrono::DateTime::parse_from_rfc3339(&e.time)
                .map(|t| t.timestamp())
                .unwrap_or_else(|_| chrono::Utc::now().timestamp());
            if decided_at < since {
                return;
            }
            let before = histories.get(&key).map_or(0, |h| h.attempts);
            let (attempts, standing) = if allowed {
                let attempt = e.attempt.unwrap_or(1).max(before.saturating_add(1));
                (attempt, Standing::Unsettled)
            } else {
                (before, Standing::Denied)
            };
            let body = digest_of_hex(e.body_sha256.as_deref());
            histories.insert(
                key,
                RecordHistory::decided(body, decided_at, attempts, standing, here),
            );
        }
        (AuditEntryType::Outcome, Some("forwarded")) => {
            if let Some(h) = histories.get_mut(&key) {
                if h.standing == Standing::Unsettled && e.refers_to == Some(h.decision.seq) {
                    *h = h.delivered(here);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::ZERO_HASH;

    const ID: &str = "6f1c2e0a-8d1b-4a55-9a39-2f6f0b6c1e11";

    fn entry(seq: u64, t: AuditEntryType, decision: &str) -> AuditEntry {
        let mut e = AuditEntry::new(seq, "2026-12-01T10:00:00Z".into(), t, ZERO_HASH.into());
        e.record_id = Some(ID.into());
        e.decision = Some(decision.into());
        e.body_sha256 = Some("ab".repeat(32));
        e
    }

    fn at(offset: u64) -> LinePlace {
        LinePlace { segment: 1, offset }
    }

    #[test]
    fn a_history_is_96_bytes_and_112_with_its_key() {
        assert_eq!(std::mem::size_of::<RecordHistory>(), 96);
        assert_eq!(std::mem::size_of::<(RecordKey, RecordHistory)>(), 112);
    }

    #[test]
    fn record_keys_are_the_uuid_bits_and_other_ids_still_get_one() {
        assert_eq!(
            record_key("00000000-0000-0000-0000-0000000000ff"),
            0xff_u128
        );
        assert_eq!(record_key(ID), 0x6f1c2e0a_8d1b_4a55_9a39_2f6f0b6c1e11_u128);
        // Not a lowercase UUID: hashed, and so different from the UUID it spells.
        assert_ne!(record_key(&ID.to_uppercase()), record_key(ID));
        assert_eq!(record_key("r-1"), record_key("r-1"));
        assert_ne!(record_key("r-1"), record_key("r-2"));
    }

    #[test]
    fn a_delivered_record_keeps_both_entries_and_a_denied_one_its_decision() {
        let mut h = Histories::new();
        note_entry(
            &mut h,
            &entry(4, AuditEntryType::Decision, "allow"),
            at(100),
            i64::MIN,
        );
        let mut out = entry(5, AuditEntryType::Outcome, "forwarded");
        out.refers_to = Some(4);
        note_entry(&mut h, &out, at(900), i64::MIN);
        let r = h[&record_key(ID)];
        assert_eq!(r.standing, Standing::Delivered);
        assert_eq!((r.decision.seq, r.decision.offset), (4, 100));
        assert_eq!(r.outcome().map(|o| (o.seq, o.offset)), Some((5, 900)));
        assert_eq!(r.attempts, 1);
        assert_eq!(r.body_sha256, [0xab; 32]);
        assert_eq!(r.decision.receipt_tree_size(), 5);

        let mut h = Histories::new();
        let mut deny = entry(7, AuditEntryType::Decision, "deny");
        deny.error = Some("policy_denied".into());
        note_entry(&mut h, &deny, at(0), i64::MIN);
        assert_eq!(h[&record_key(ID)].standing, Standing::Denied);
        assert!(h[&record_key(ID)].is_answered());
    }

    #[test]
    fn an_allow_without_a_forwarded_outcome_stays_unsettled_and_counts_its_attempts() {
        let mut h = Histories::new();
        note_entry(
            &mut h,
            &entry(1, AuditEntryType::Decision, "allow"),
            at(0),
            i64::MIN,
        );
        let mut failed = entry(2, AuditEntryType::Outcome, "upstream_failed");
        failed.refers_to = Some(1);
        note_entry(&mut h, &failed, at(10), i64::MIN);
        assert_eq!(h[&record_key(ID)].standing, Standing::Unsettled);
        // The second attempt: a crash before its outcome entry.
        let mut second = entry(3, AuditEntryType::Decision, "allow");
        second.attempt = Some(2);
        note_entry(&mut h, &second, at(20), i64::MIN);
        let r = h[&record_key(ID)];
        assert_eq!(
            (r.standing, r.attempts, r.decision.seq),
            (Standing::Unsettled, 2, 3)
        );
        // A late outcome of the first attempt does not settle the second.
        let mut late = entry(4, AuditEntryType::Outcome, "forwarded");
        late.refers_to = Some(1);
        note_entry(&mut h, &late, at(30), i64::MIN);
        assert_eq!(h[&record_key(ID)].standing, Standing::Unsettled);
    }

    #[test]
    fn decisions_before_the_horizon_are_left_out() {
        let mut h = Histories::new();
        let old = entry(1, AuditEntryType::Decision, "allow");
        let since = chrono::DateTime::parse_from_rfc3339(&old.time)
            .unwrap()
            .timestamp()
            + 1;
        note_entry(&mut h, &old, at(0), since);
        assert!(h.is_empty());
        note_entry(&mut h, &old, at(0), since - 1);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn refusals_before_the_policies_and_replays_reserve_nothing() {
        let mut h = Histories::new();
        let mut squat = entry(1, AuditEntryType::Decision, "deny");
        squat.error = Some("origin_mismatch".into());
        note_entry(&mut h, &squat, at(0), i64::MIN);
        note_entry(
            &mut h,
            &entry(2, AuditEntryType::Decision, "invalid"),
            at(10),
            i64::MIN,
        );
        note_entry(
            &mut h,
            &entry(3, AuditEntryType::Decision, "replay"),
            at(20),
            i64::MIN,
        );
        assert!(h.is_empty());
    }
}
