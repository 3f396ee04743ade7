//! Cosignatures (c2sp.org/tlog-cosignature, Ed25519 `cosignature/v1`): a note signature line a
//! witness adds to a checkpoint,
//!
//! ```text
//! — <witness name> base64(key id[4] ‖ timestamp u64 big-endian[8] ‖ Ed25519 signature[64])
//! ```
//!
//! The key id is SHA-256(name ‖ "\n" ‖ 0x04 ‖ 32-byte public key)[:4]; the signed message is
//! `cosignature/v1\ntime <timestamp>\n` followed by the checkpoint's note text (its body lines,
//! without signature lines). The header line and the algorithm byte 0x04 (the log's own
//! signature uses 0x01) keep a cosignature and a checkpoint signature from ever standing in for
//! each other, even were one key used for both.
//!
//! The keys are the audit module's Ed25519 keys ([`AuditSigner`], [`AuditPublicKey`]), so a
//! witness key file has the same PEM formats as the audit key.

use base64::Engine;
use signed_note::{Note, NoteError, VerificationError, Verifier, Verifiers};

use crate::audit::{AuditPublicKey, AuditSigner};

/// Key id algorithm byte of Ed25519 cosignature/v1 (c2sp.org/tlog-cosignature).
const ALG_COSIGNATURE_V1: u8 = 0x04;
/// Bytes after the key id: timestamp (8) and Ed25519 signature (64).
const TIMESTAMPED_SIGNATURE_LEN: usize = 8 + 64;
/// The spec caps timestamps at 2^63 - 1.
const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// Why a note carries no valid cosignature by a witness.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    #[error("the checkpoint note is malformed")]
    MalformedNote,
    #[error("the checkpoint carries no cosignature by witness {name}")]
    Absent { name: String },
    #[error("the cosignature of witness {name} does not verify over this checkpoint")]
    Invalid { name: String },
}

/// The witness's name in note signature lines: derived from its key, so one key names one
/// witness and the name needs no configuration. (No spaces or pluses: a valid note key name.)
pub fn witness_name_of(key: &AuditPublicKey) -> String {
    format!("hetao-witness/{}", key.key_id())
}

/// The note key id of witness `name` with `key` (cosignature/v1).
fn cosigner_key_id(name: &str, key: &AuditPublicKey) -> u32 {
    crate::audit::note::note_key_id(name, ALG_COSIGNATURE_V1, key.raw())
}

/// The message a cosignature/v1 signs: header line, time line, then the checkpoint's note text.
fn signed_message(timestamp: u64, checkpoint_text: &[u8]) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    msg.extend_from_slice(checkpoint_text);
    msg
}

/// One cosignature line (newline-terminated) by `signer` as witness `name` over
/// `checkpoint_text`, the checkpoint note's TEXT (`origin\nsize\nroot\n`, no signature lines),
/// at `timestamp` (Unix seconds; values past 2^63 - 1 are capped there, as the spec requires).
pub fn cosign(signer: &AuditSigner, name: &str, checkpoint_text: &[u8], timestamp: u64) -> String {
    let timestamp = timestamp.min(MAX_TIMESTAMP);
    let id = cosigner_key_id(name, &signer.public_key());
    let signature = signer.sign_raw(&signed_message(timestamp, checkpoint_text));
    let mut blob = Vec::with_capacity(4 + TIMESTAMPED_SIGNATURE_LEN);
    blob.extend_from_slice(&id.to_be_bytes());
    blob.extend_from_slice(&timestamp.to_be_bytes());
    blob.extend_from_slice(&signature);
    format!(
        "\u{2014} {name} {}\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// A witness key as a note verifier: checks the timestamped signature over the cosigned message.
struct CosignatureVerifier<'a> {
    name: String,
    id: u32,
    key: &'a AuditPublicKey,
}

impl Verifier for CosignatureVerifier<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, text: &[u8], sig: &[u8]) -> bool {
        let Some(timestamp) = timestamp_of(sig) else {
            return false;
        };
        timestamp <= MAX_TIMESTAMP
            && self
                .key
                .verify_raw(&signed_message(timestamp, text), &sig[8..])
    }
}

/// The timestamp of a timestamped signature (the bytes after the key id), if it has the size of
/// one.
fn timestamp_of(sig: &[u8]) -> Option<u64> {
    if sig.len() != TIMESTAMPED_SIGNATURE_LEN {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&sig[..8]);
    Some(u64::from_be_bytes(ts))
}

/// Only this witness is known: every other line (the log's own signature, other witnesses) is an
/// unknown key to `Note::verify`, so it is skipped rather than taken for this cosignature.
impl Verifiers for CosignatureVerifier<'_> {
    fn verifier(&self, name: &str, id: u32) -> Result<&dyn Verifier, VerificationError> {
        if name == self.name && id == self.id {
            Ok(self)
        } else {
            Err(VerificationError::UnknownKey {
                name: name.to_string(),
                id,
            })
        }
    }
}

/// Checks that the signed note `note` (text and signature lines) carries a valid cosignature by
/// the witness with `key` (name [`witness_name_of`], matching key id) over the note's text, and
/// returns its timestamp.
pub fn verify_cosignature(note: &str, key: &AuditPublicKey) -> Result<u64, CosignatureError> {
    let name = witness_name_of(key);
    let parsed = Note::from_bytes(note.as_bytes()).map_err(|_| CosignatureError::MalformedNote)?;
    let verifier = CosignatureVerifier {
        id: cosigner_key_id(&name, key),
        name: name.clone(),
        key,
    };
    match parsed.verify(&verifier) {
        Ok((verified, _)) => verified
            .first()
            .and_then(|sig| timestamp_of(sig.signature()))
            .ok_or(CosignatureError::Absent { name }),
        Err(NoteError::UnverifiedNote) => Err(CosignatureError::Absent { name }),
        Err(NoteError::InvalidSignature { .. }) => Err(CosignatureError::Invalid { name }),
        Err(_) => Err(CosignatureError::MalformedNote),
    }
}

/// The note with the cosignature lines `lines` appended after its existing signature lines:
/// what the gateway stores. Only note signature lines (starting `— `) are taken, and a line the
/// note already holds is not repeated, so the result stays a well-formed note.
pub fn add_cosignatures(note: &str, lines: &str) -> String {
    let mut out = note.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    for line in lines.lines() {
        if !line.starts_with("\u{2014} ") {
            continue;
        }
        let already = out.lines().any(|held| held == line);
        if !already {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::generate_signing_key;
    use crate::audit::note::sign_checkpoint;

    fn signer() -> AuditSigner {
        let (private, _) = generate_signing_key().unwrap();
        AuditSigner::from_pem(private.as_bytes(), "t").unwrap()
    }

    /// The note text: everything up to the blank line, newline included.
    fn text_of(note: &str) -> &str {
        let end = note.find("\n\n").unwrap();
        &note[..=end]
    }

    fn cosigned(log: &AuditSigner, witness: &AuditSigner, size: u64, leaf: &[u8]) -> String {
        let note = sign_checkpoint(log, size, tlog_tiles::record_hash(leaf));
        let name = witness_name_of(&witness.public_key());
        let line = cosign(witness, &name, text_of(&note).as_bytes(), 1_700_000_000);
        add_cosignatures(&note, &line)
    }

    #[test]
    fn a_cosignature_verifies_and_states_its_timestamp() {
        let (log, witness) = (signer(), signer());
        let note = cosigned(&log, &witness, 7, b"a");
        assert_eq!(
            verify_cosignature(&note, &witness.public_key()),
            Ok(1_700_000_000)
        );
        // The log's own signature still holds beside it.
        assert!(crate::audit::note::open_checkpoint(&note, &log.public_key()).is_ok());
    }

    #[test]
    fn the_line_has_the_spec_layout_key_id_timestamp_signature() {
        let witness = signer();
        let key = witness.public_key();
        let name = witness_name_of(&key);
        assert!(signed_note::is_key_name_valid(&name), "{name}");
        let line = cosign(&witness, &name, b"o\n1\nAAAA\n", 0x0102_0304_0506_0708);
        let rest = line.strip_prefix(&format!("\u{2014} {name} ")).unwrap();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(rest.trim_end_matches('\n'))
            .unwrap();
        assert_eq!(blob.len(), 4 + 8 + 64);
        // Key id: SHA-256(name ‖ "\n" ‖ 0x04 ‖ key)[:4], computed here independently.
        let mut preimage = format!("{name}\n").into_bytes();
        preimage.push(0x04);
        preimage.extend_from_slice(key.raw());
        let digest = ring::digest::digest(&ring::digest::SHA256, &preimage);
        assert_eq!(&blob[..4], &digest.as_ref()[..4]);
        assert_eq!(&blob[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let msg = b"cosignature/v1\ntime 72623859790382856\no\n1\nAAAA\n";
        assert!(key.verify_raw(msg, &blob[12..]));
    }

    #[test]
    fn a_cosignature_over_one_checkpoint_does_not_verify_on_another() {
        let (log, witness) = (signer(), signer());
        let first = cosigned(&log, &witness, 7, b"a");
        let line = first.lines().last().unwrap();
        let other = sign_checkpoint(&log, 8, tlog_tiles::record_hash(b"b"));
        let moved = add_cosignatures(&other, line);
        assert_eq!(
            verify_cosignature(&moved, &witness.public_key()),
            Err(CosignatureError::Invalid {
                name: witness_name_of(&witness.public_key())
            })
        );
        // Same size, other root: also refused.
        let fork = sign_checkpoint(&log, 7, tlog_tiles::record_hash(b"z"));
        assert!(verify_cosignature(&add_cosignatures(&fork, line), &witness.public_key()).is_err());
    }

    #[test]
    fn the_audit_keys_own_line_is_never_taken_for_a_cosignature() {
        let log = signer();
        let note = sign_checkpoint(&log, 3, tlog_tiles::record_hash(b"a"));
        // Even checked with the log's own key as the witness key, its checkpoint signature is
        // not a cosignature: another name, another key id algorithm, another message.
        assert!(matches!(
            verify_cosignature(&note, &log.public_key()),
            Err(CosignatureError::Absent { .. })
        ));
        // The log's signature bytes moved under the witness name and key id: refused.
        let public = log.public_key();
        let name = witness_name_of(&public);
        let sig_line = note.lines().last().unwrap();
        let b64 = sig_line.rsplit(' ').next().unwrap();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut forged = cosigner_key_id(&name, &public).to_be_bytes().to_vec();
        forged.extend_from_slice(&blob[4..]);
        let forged_line = format!(
            "\u{2014} {name} {}\n",
            base64::engine::general_purpose::STANDARD.encode(forged)
        );
        assert!(verify_cosignature(&add_cosignatures(&note, &forged_line), &public).is_err());
    }

    #[test]
    fn another_witness_key_finds_no_cosignature() {
        let (log, witness, stranger) = (signer(), signer(), signer());
        let note = cosigned(&log, &witness, 7, b"a");
        assert!(matches!(
            verify_cosignature(&note, &stranger.public_key()),
            Err(CosignatureError::Absent { .. })
        ));
        assert_eq!(
            verify_cosignature("not a note", &witness.public_key()),
            Err(CosignatureError::MalformedNote)
        );
    }

    #[test]
    fn add_cosignatures_appends_after_the_existing_lines_once() {
        let (log, w1, w2) = (signer(), signer(), signer());
        let note = sign_checkpoint(&log, 7, tlog_tiles::record_hash(b"a"));
        let text = text_of(&note).as_bytes().to_vec();
        let l1 = cosign(&w1, &witness_name_of(&w1.public_key()), &text, 1);
        let l2 = cosign(&w2, &witness_name_of(&w2.public_key()), &text, 2);
        let both = add_cosignatures(&note, &format!("{l1}{l2}not a signature line\n"));
        assert!(both.starts_with(&note), "{both}");
        assert_eq!(both, format!("{note}{l1}{l2}"));
        assert_eq!(add_cosignatures(&both, &l1), both);
        assert_eq!(verify_cosignature(&both, &w1.public_key()), Ok(1));
        assert_eq!(verify_cosignature(&both, &w2.public_key()), Ok(2));
        assert!(crate::audit::note::open_checkpoint(&both, &log.public_key()).is_ok());
    }
}
