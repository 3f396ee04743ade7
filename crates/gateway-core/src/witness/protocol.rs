//! The witness protocol's messages (c2sp.org/tlog-witness).
//!
//! `POST /add-checkpoint` carries `old <size>\n`, the consistency proof from that size to the
//! checkpoint's (one base64 hash a line, at most 63), an empty line, then the whole signed
//! checkpoint note. Answers:
//!
//! - 200, `text/x.tlog.signature`: the cosignature line(s);
//! - 409, `text/x.tlog.size`: the size the witness last cosigned for that log, in decimal and a
//!   newline: `old` was not that size (a client that does not know starts with `old 0` and
//!   learns it), or the checkpoint has that size and another root (a fork);
//! - 422: the consistency proof does not hold; 403: not signed by the log's key; 404: unknown
//!   log; 400: malformed; 413: body over [`MAX_BODY_BYTES`].

use tlog_tiles::Hash;

use crate::audit::tree::{hash_from_b64, hash_to_b64};

/// Where checkpoints are submitted.
pub const ADD_CHECKPOINT_PATH: &str = "/add-checkpoint";
/// Content type of a 200 answer: note signature lines.
pub const SIGNATURE_CONTENT_TYPE: &str = "text/x.tlog.signature";
/// Content type of a 409 answer: the witness's last cosigned size.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";
/// The largest request body the witness reads. A checkpoint note with a handful of signatures
/// and 63 proof lines is under 4 KiB; this leaves room for many cosignatures.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// At most this many proof lines (the spec's bound: a proof in a tree of 2^63 leaves).
pub const MAX_PROOF_LINES: usize = 63;

/// A parsed `add-checkpoint` request. The note is not checked here (the witness does, against
/// the log's key).
#[derive(Debug, Clone, PartialEq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub note: String,
}

/// Why a request body is malformed (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the first line must be `old <size>` (decimal, no leading zeroes)")]
    OldLine,
    #[error("proof line {line} is not a base64 SHA-256 hash")]
    ProofLine { line: usize },
    #[error("more than {MAX_PROOF_LINES} consistency proof lines")]
    TooManyProofLines,
    #[error("the proof must end with an empty line, followed by the checkpoint note")]
    NoCheckpoint,
}

/// The body of `POST /add-checkpoint`: old size, proof from it, empty line, the signed note.
pub fn add_checkpoint_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&hash_to_b64(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Parses an `add-checkpoint` body.
pub fn parse_add_checkpoint(body: &[u8]) -> Result<AddCheckpoint, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let (first, mut rest) = text.split_once('\n').ok_or(BodyError::OldLine)?;
    let old = first
        .strip_prefix("old ")
        .and_then(parse_decimal)
        .ok_or(BodyError::OldLine)?;
    let mut proof = Vec::new();
    loop {
        let (line, after) = rest.split_once('\n').ok_or(BodyError::NoCheckpoint)?;
        rest = after;
        if line.is_empty() {
            break;
        }
        if proof.len() == MAX_PROOF_LINES {
            return Err(BodyError::TooManyProofLines);
        }
        let hash = hash_from_b64(line).ok_or(BodyError::ProofLine {
            line: proof.len() + 2,
        })?;
        proof.push(hash);
    }
    if rest.is_empty() {
        return Err(BodyError::NoCheckpoint);
    }
    Ok(AddCheckpoint {
        old,
        proof,
        note: rest.to_string(),
    })
}

/// An ASCII decimal with no sign and no leading zeroes (`0` itself excepted), as the protocol
/// writes sizes: one size has one spelling.
fn parse_decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// The size in a 409 answer's body (`<size>\n`): where the witness stands for that log.
pub fn parse_size_body(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    parse_decimal(text.strip_suffix('\n')?)
}

/// The body of a 409 answer.
pub fn size_body(size: u64) -> String {
    format!("{size}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTE: &str = "o\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} o AAAA\n";

    #[test]
    fn a_body_round_trips() {
        let proof = vec![tlog_tiles::record_hash(b"a"), tlog_tiles::record_hash(b"b")];
        let body = add_checkpoint_body(3, &proof, NOTE);
        assert!(body.starts_with("old 3\n"), "{body}");
        assert!(body.contains("\n\no\n5\n"), "{body}");
        let parsed = parse_add_checkpoint(body.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            AddCheckpoint {
                old: 3,
                proof,
                note: NOTE.into()
            }
        );
        let empty = parse_add_checkpoint(add_checkpoint_body(0, &[], NOTE).as_bytes()).unwrap();
        assert_eq!((empty.old, empty.proof.len()), (0, 0));
    }

    #[test]
    fn malformed_bodies_are_refused_with_their_reason() {
        let hash = hash_to_b64(&tlog_tiles::record_hash(b"a"));
        let cases: Vec<(String, BodyError)> = vec![
            (format!("old 03\n\n{NOTE}"), BodyError::OldLine),
            (format!("old -1\n\n{NOTE}"), BodyError::OldLine),
            (format!("old 1 \n\n{NOTE}"), BodyError::OldLine),
            (format!("new 1\n\n{NOTE}"), BodyError::OldLine),
            ("old 1".into(), BodyError::OldLine),
            (format!("old 1\n{hash}\n"), BodyError::NoCheckpoint),
            (format!("old 1\n{hash}\n\n"), BodyError::NoCheckpoint),
            (
                format!("old 1\n{hash}\nnot-base64!\n\n{NOTE}"),
                BodyError::ProofLine { line: 3 },
            ),
            (
                format!("old 1\nAAAA\n\n{NOTE}"),
                BodyError::ProofLine { line: 2 },
            ),
            (
                format!("old 1\n{}\n{NOTE}", format!("{hash}\n").repeat(64)),
                BodyError::TooManyProofLines,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse_add_checkpoint(body.as_bytes()), Err(want), "{body:?}");
        }
        assert_eq!(
            parse_add_checkpoint(b"old 1\n\n\xff\n"),
            Err(BodyError::NotUtf8)
        );
        let sixty_three = format!("old 1\n{}\n{NOTE}", format!("{hash}\n").repeat(63));
        assert_eq!(
            parse_add_checkpoint(sixty_three.as_bytes())
                .unwrap()
                .proof
                .len(),
            63
        );
    }

    #[test]
    fn size_bodies_round_trip() {
        assert_eq!(size_body(42), "42\n");
        assert_eq!(parse_size_body(b"42\n"), Some(42));
        assert_eq!(parse_size_body(b"0\n"), Some(0));
        assert_eq!(parse_size_body(b"42"), None);
        assert_eq!(parse_size_body(b"042\n"), None);
    }
}
