//! One line of the log: the entry, how its hash is computed over its exact bytes, and how a line is
//! read back and checked.
//!
//! A line is the entry serialised by serde_json from [`AuditEntry`] (fixed field order, `hash`
//! left out, `prev_hash` last), with its final `}` replaced by `,"hash":"<hex>"}` and a newline.
//! `hash = SHA-256(the bytes without the hash member)`. A reader strips the trailing hash member
//! and re-hashes the exact bytes, so no JSON canonicalisation is ever needed.

use ring::digest;
use serde::{Deserialize, Serialize};

use super::RuleRef;
use crate::tls::identity::ClientIdentity;

/// `prev_hash` of the very first entry of a log.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex + `"}`: the fixed-size tail of every line (without the newline).
const HASH_MEMBER_PREFIX: &[u8] = b",\"hash\":\"";
const HASH_TAIL_LEN: usize = HASH_MEMBER_PREFIX.len() + 64 + 2;

/// What a line of the chain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEntryType {
    /// The gateway's decision on a record, durable before anything is forwarded.
    Decision,
    /// What happened upstream to a forwarded record; `refers_to` names its decision entry.
    Outcome,
    /// An Ed25519 signature over the chain head: everything up to `covers_seq` is sealed.
    Checkpoint,
    /// A torn last line (crash mid-write) was set aside at start; the chain continues here.
    Recovery,
    /// First entry of every segment file; links to the previous segment's head.
    SegmentStart,
}

impl AuditEntryType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEntryType::Decision => "decision",
            AuditEntryType::Outcome => "outcome",
            AuditEntryType::Checkpoint => "checkpoint",
            AuditEntryType::Recovery => "recovery",
            AuditEntryType::SegmentStart => "segment_start",
        }
    }
}

/// One entry of the chain. Field order here is the order on disk and must never change: the hash
/// of every existing entry depends on it. Absent facts are left out of the line, not written as
/// `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339, UTC, microseconds: when the writer put the entry in the chain.
    pub time: String,
    #[serde(rename = "type")]
    pub entry_type: AuditEntryType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<ClientIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub obligations: Vec<String>,
    /// Allow decisions of a record forwarded again (a retry after an unknown or failed
    /// outcome): the attempt number sent to the endpoint in `x-hetao-attempt`. Absent for the
    /// first attempt (and in older entries, whose hashes stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refers_to: Option<u64>,
    /// Replay entries of a record decided on another instance of a cluster (absent otherwise,
    /// and in older entries, whose hashes stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_elsewhere: Option<Elsewhere>,
    // --- outcome: the endpoint's answer (absent in older entries, whose hashes stay as they
    // were) ---
    /// SHA-256 (hex) of the endpoint's whole answer body as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_sha256: Option<String>,
    /// Bytes of the endpoint's answer body received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_bytes: Option<u64>,
    /// The acknowledgement relayed to the sender: the declared properties only, as validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledgement: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    // --- checkpoint ---
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covers_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_head: Option<String>,
    /// Checkpoints: the signing key's id. Segment starts: the key that will sign this segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Checkpoints: the size of the log's tree they sign (the entries before them) and its root
    /// (base64), and that tree head as a C2SP checkpoint note signed by the audit key (where
    /// witnesses add cosignatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A checkpoint written by a clean shutdown.
    #[serde(default, rename = "final", skip_serializing_if = "is_false")]
    pub final_checkpoint: bool,
    // --- segment_start ---
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u64>,
    // --- recovery ---
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torn_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_file: Option<String>,
    pub prev_hash: String,
    /// Not part of the hashed bytes: appended to the line by [`seal`].
    #[serde(default, skip_serializing)]
    pub hash: String,
}

/// Where a record was decided, when not in this log: another instance of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elsewhere {
    pub instance: String,
    /// That instance's decision entry, when the registry knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl AuditEntry {
    /// An entry with only the chain fields set; callers fill in the rest.
    pub fn new(seq: u64, time: String, entry_type: AuditEntryType, prev_hash: String) -> Self {
        AuditEntry {
            seq,
            time,
            entry_type,
            record_id: None,
            kind: None,
            from: None,
            to: None,
            sender: None,
            body_sha256: None,
            decision: None,
            status: None,
            error: None,
            rules: Vec::new(),
            policy_version: None,
            policy_hash: None,
            schema_hash: None,
            obligations: Vec::new(),
            attempt: None,
            refers_to: None,
            decided_elsewhere: None,
            answer_sha256: None,
            answer_bytes: None,
            acknowledgement: None,
            latency_us: None,
            covers_seq: None,
            chain_head: None,
            key_id: None,
            signature: None,
            tree_size: None,
            tree_root: None,
            note: None,
            final_checkpoint: false,
            segment: None,
            torn_bytes: None,
            side_file: None,
            prev_hash,
            hash: String::new(),
        }
    }

    /// The entry as JSON including its `hash` (for query output).
    pub fn to_json_with_hash(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("hash".into(), serde_json::Value::String(self.hash.clone()));
        }
        v
    }
}

/// Serialises `entry`, computes its hash (stored into `entry.hash`) and returns the full line with
/// its trailing newline.
pub fn seal(entry: &mut AuditEntry) -> Result<Vec<u8>, serde_json::Error> {
    let mut bytes = serde_json::to_vec(&*entry)?;
    let hash = hex::encode(digest::digest(&digest::SHA256, &bytes));
    // serde_json always ends an object with `}`; replace it with the hash member.
    bytes.pop();
    bytes.extend_from_slice(HASH_MEMBER_PREFIX);
    bytes.extend_from_slice(hash.as_bytes());
    bytes.extend_from_slice(b"\"}\n");
    entry.hash = hash;
    Ok(bytes)
}

/// Why a line is not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not an audit entry: the line does not end with a `\"hash\"` member")]
    NoHashMember,
    #[error("hash mismatch: the entry says {stored} but its bytes hash to {computed} (the entry was altered)")]
    HashMismatch { stored: String, computed: String },
    #[error("not a valid audit entry: {0}")]
    Json(String),
}

/// Reads one line (without its newline), checks its hash over the exact bytes and parses it.
/// On a hash mismatch the parsed sequence (if any) is returned alongside, for error messages.
pub fn open_line(line: &[u8]) -> Result<AuditEntry, (LineError, Option<u64>)> {
    let n = line.len();
    if n < HASH_TAIL_LEN + 2
        || &line[n - HASH_TAIL_LEN..n - 66] != HASH_MEMBER_PREFIX
        || &line[n - 2..] != b"\"}"
    {
        return Err((LineError::NoHashMember, None));
    }
    let stored = &line[n - 66..n - 2];
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&line[..n - HASH_TAIL_LEN]);
    ctx.update(b"}");
    let computed = hex::encode(ctx.finish());
    let parsed: Result<AuditEntry, _> = serde_json::from_slice(line);
    if computed.as_bytes() != stored {
        let seq = parsed.as_ref().ok().map(|e| e.seq);
        return Err((
            LineError::HashMismatch {
                stored: String::from_utf8_lossy(stored).into_owned(),
                computed,
            },
            seq,
        ));
    }
    match parsed {
        // The hash member is the last one, but a forged line could smuggle an earlier `hash` key:
        // only accept the entry if the parsed hash is the one that was checked.
        Ok(entry) if entry.hash == computed => Ok(entry),
        Ok(entry) => Err((
            LineError::Json("duplicate `hash` member".into()),
            Some(entry.seq),
        )),
        Err(e) => Err((LineError::Json(e.to_string()), None)),
    }
}

/// A line checked without parsing it as JSON: its hash recomputed over its exact bytes, and the
/// chain fields read where the writer puts them (`seq`, `time` and `type` first, `prev_hash`
/// last). For the start's pass over entries that a cosigned checkpoint already seals
/// (`audit::startup`): a line that hashes right but is not laid out as the writer lays it out is
/// refused, so the fields read are those the hash covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashedLine<'a> {
    pub seq: u64,
    pub time: &'a str,
    /// The `type` value as written (`decision`, `outcome`, ...).
    pub entry_type: &'a str,
    /// Hex, as written.
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

/// Checks `line` (without its newline) as [`open_line`] does, without parsing the JSON.
pub fn hash_line(line: &[u8]) -> Result<HashedLine<'_>, LineError> {
    const PREV: &[u8] = b",\"prev_hash\":\"";
    let n = line.len();
    if n < HASH_TAIL_LEN + PREV.len() + 64 + 2
        || &line[n - HASH_TAIL_LEN..n - 66] != HASH_MEMBER_PREFIX
        || &line[n - 2..] != b"\"}"
    {
        return Err(LineError::NoHashMember);
    }
    let stored = &line[n - 66..n - 2];
    let body = &line[..n - HASH_TAIL_LEN];
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(body);
    ctx.update(b"}");
    let computed = hex::encode(ctx.finish());
    if computed.as_bytes() != stored {
        return Err(LineError::HashMismatch {
            stored: String::from_utf8_lossy(stored).into_owned(),
            computed,
        });
    }
    let layout = || LineError::Json("not laid out as the writer writes entries".into());
    let text = std::str::from_utf8(line).map_err(|_| layout())?;
    let prev_at = body.len().checked_sub(PREV.len() + 65).ok_or_else(layout)?;
    if &body[prev_at..prev_at + PREV.len()] != PREV || body.last() != Some(&b'"') {
        return Err(layout());
    }
    let rest = text.strip_prefix("{\"seq\":").ok_or_else(layout)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let seq = rest[..digits].parse::<u64>().map_err(|_| layout())?;
    let rest = rest[digits..]
        .strip_prefix(",\"time\":\"")
        .ok_or_else(layout)?;
    let (time, rest) = rest.split_once('"').ok_or_else(layout)?;
    let rest = rest.strip_prefix(",\"type\":\"").ok_or_else(layout)?;
    let (entry_type, _) = rest.split_once('"').ok_or_else(layout)?;
    Ok(HashedLine {
        seq,
        time,
        entry_type,
        prev_hash: &text[prev_at + PREV.len()..prev_at + PREV.len() + 64],
        hash: &text[n - 66..n - 2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_line_reopens_to_the_same_entry() {
        let mut e = AuditEntry::new(
            7,
            "2024-05-01T10:00:00.000000Z".into(),
            AuditEntryType::Decision,
            ZERO_HASH.into(),
        );
        e.record_id = Some("r-1".into());
        e.decision = Some("allow".into());
        let line = seal(&mut e).unwrap();
        assert!(line.ends_with(b"\"}\n"));
        let back = open_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.hash.len(), 64);
    }

    #[test]
    fn hash_covers_the_bytes_without_the_hash_member() {
        let mut e = AuditEntry::new(
            0,
            "t".into(),
            AuditEntryType::SegmentStart,
            ZERO_HASH.into(),
        );
        let line = seal(&mut e).unwrap();
        let without = serde_json::to_vec(&e).unwrap();
        assert_eq!(
            e.hash,
            hex::encode(digest::digest(&digest::SHA256, &without))
        );
        let text = String::from_utf8(line).unwrap();
        assert!(text.starts_with("{\"seq\":0,\"time\":\"t\",\"type\":\"segment_start\""));
    }

    /// The answer fields came later: an entry without them is written (and so hashed) exactly
    /// as before they existed, and one with them reopens to the same entry.
    #[test]
    fn answer_fields_are_left_out_when_absent_and_kept_when_present() {
        let mut e = AuditEntry::new(2, "t".into(), AuditEntryType::Outcome, ZERO_HASH.into());
        e.decision = Some("forwarded".into());
        e.refers_to = Some(1);
        let line = String::from_utf8(seal(&mut e).unwrap()).unwrap();
        assert_eq!(
            line,
            format!(
                "{{\"seq\":2,\"time\":\"t\",\"type\":\"outcome\",\"decision\":\"forwarded\",\
                 \"refers_to\":1,\"prev_hash\":\"{ZERO_HASH}\",\"hash\":\"{}\"}}\n",
                e.hash
            )
        );
        e.answer_sha256 = Some("ab".repeat(32));
        e.answer_bytes = Some(40);
        e.acknowledgement = Some(serde_json::json!({"accepted": true, "reference": "R-1"}));
        let line = seal(&mut e).unwrap();
        let back = open_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, e);
        let text = String::from_utf8(line).unwrap();
        assert!(
            text.contains(",\"refers_to\":1,\"answer_sha256\":"),
            "{text}"
        );
    }

    #[test]
    fn a_hashed_line_gives_the_fields_open_line_gives_and_refuses_what_open_line_refuses() {
        let mut e = AuditEntry::new(
            41,
            "2026-12-02T10:00:00.000001Z".into(),
            AuditEntryType::Outcome,
            "ab".repeat(32),
        );
        e.record_id = Some("r-\"quoted\"".into());
        e.decision = Some("forwarded".into());
        let line = seal(&mut e).unwrap();
        let content = &line[..line.len() - 1];
        let h = hash_line(content).unwrap();
        assert_eq!(
            (h.seq, h.time, h.entry_type, h.prev_hash, h.hash),
            (
                41,
                e.time.as_str(),
                "outcome",
                e.prev_hash.as_str(),
                e.hash.as_str()
            )
        );
        let altered = String::from_utf8(content.to_vec())
            .unwrap()
            .replace("forwarded", "forwardex");
        assert!(matches!(
            hash_line(altered.as_bytes()),
            Err(LineError::HashMismatch { .. })
        ));
        assert!(matches!(
            hash_line(b"{\"seq\":1}"),
            Err(LineError::NoHashMember)
        ));
    }

    #[test]
    fn altered_line_is_a_hash_mismatch_naming_its_seq() {
        let mut e = AuditEntry::new(3, "t".into(), AuditEntryType::Decision, ZERO_HASH.into());
        e.decision = Some("deny".into());
        let line = seal(&mut e).unwrap();
        let text = String::from_utf8(line).unwrap().replace("deny", "allo");
        let err = open_line(text.trim_end().as_bytes()).unwrap_err();
        assert!(matches!(err.0, LineError::HashMismatch { .. }));
        assert_eq!(err.1, Some(3));
    }
}
