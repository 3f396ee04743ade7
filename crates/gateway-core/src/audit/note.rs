//! Checkpoints as C2SP signed notes (c2sp.org/tlog-checkpoint, c2sp.org/signed-note): the text
//! `<origin>\n<tree size>\n<base64 root>\n`, a blank line, and one signature line per key,
//! `— <key name> <base64(key id ‖ Ed25519 signature)>`. The audit key signs as the log's origin;
//! witnesses add their cosignature lines to the same note.
//!
//! The note format and parsing are the `signed_note` and `tlog_tiles` crates'; the signing and
//! verification underneath are ring's, with the gateway's audit key.

use signed_note::{Note, Signer, Verifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

use super::keys::{AuditPublicKey, AuditSigner};

/// Signature algorithm byte of Ed25519 in signed notes.
const ALG_ED25519: u8 = 0x01;

/// The log's origin (its name in checkpoints and the audit key's name in notes): derived from
/// the audit key, so one key names one log.
pub fn origin_of(key: &AuditPublicKey) -> String {
    format!("hetao-gateway/audit/{}", key.key_id())
}

/// The note key id of the 32-byte Ed25519 key `raw` named `name`, signing as algorithm `alg`
/// (0x01 plain notes, 0x04 witness cosignatures; c2sp.org/signed-note#signatures).
pub fn note_key_id(name: &str, alg: u8, raw: &[u8; 32]) -> u32 {
    let mut key = Vec::with_capacity(33);
    key.push(alg);
    key.extend_from_slice(raw);
    signed_note::key_id(name, &key)
}

/// The audit key as a note signer.
struct NoteSigner<'a> {
    name: String,
    id: u32,
    key: &'a AuditSigner,
}

impl Signer for NoteSigner<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.key.sign_raw(msg))
    }
}

/// The audit public key as a note verifier.
struct NoteVerifier {
    name: String,
    id: u32,
    key: AuditPublicKey,
}

impl Verifier for NoteVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.key.verify_raw(msg, sig)
    }
}

/// Why a checkpoint note does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteProblem {
    #[error("the checkpoint note is malformed")]
    Malformed,
    #[error("the checkpoint note carries no valid signature by the log's key ({0})")]
    NotSigned(String),
    #[error("the checkpoint is for log {found}, not {expected}")]
    WrongOrigin { expected: String, found: String },
}

/// A verified checkpoint: the tree size and root the log's key signed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeHead {
    pub size: u64,
    pub root: Hash,
}

/// Signs the checkpoint (origin, `size`, `root`) with the audit key: the whole note text.
pub fn sign_checkpoint(signer: &AuditSigner, size: u64, root: Hash) -> String {
    let public = signer.public_key();
    let origin = origin_of(&public);
    // The origin has no spaces or pluses and the extension is empty: always well-formed.
    let text = Checkpoint::new(&origin, size, root, "")
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let key = NoteSigner {
        id: note_key_id(&origin, ALG_ED25519, public.raw()),
        name: origin,
        key: signer,
    };
    match Note::new(&text, &[]) {
        Ok(mut note) => match note.add_sigs(&[&key]) {
            Ok(()) => String::from_utf8_lossy(&note.to_bytes()).into_owned(),
            Err(_) => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// Checks a checkpoint note against the log's public key: a well-formed checkpoint of this key's
/// log, signed by it. Other signature lines (witness cosignatures) are left to their checkers.
pub fn open_checkpoint(note_text: &str, key: &AuditPublicKey) -> Result<TreeHead, NoteProblem> {
    let origin = origin_of(key);
    let note = Note::from_bytes(note_text.as_bytes()).map_err(|_| NoteProblem::Malformed)?;
    let verifier = NoteVerifier {
        id: note_key_id(&origin, ALG_ED25519, key.raw()),
        name: origin.clone(),
        key: key.clone(),
    };
    let known = VerifierList::new(vec![Box::new(verifier)]);
    note.verify(&known)
        .map_err(|e| NoteProblem::NotSigned(e.to_string()))?;
    let checkpoint = Checkpoint::from_bytes(note.text()).map_err(|_| NoteProblem::Malformed)?;
    if checkpoint.origin() != origin {
        return Err(NoteProblem::WrongOrigin {
            expected: origin,
            found: checkpoint.origin().to_string(),
        });
    }
    Ok(TreeHead {
        size: checkpoint.size(),
        root: *checkpoint.hash(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::keys::generate_signing_key;

    fn signer() -> AuditSigner {
        let (private, _) = generate_signing_key().unwrap();
        AuditSigner::from_pem(private.as_bytes(), "t").unwrap()
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_states_size_and_root() {
        let s = signer();
        let root = tlog_tiles::record_hash(b"x");
        let note = sign_checkpoint(&s, 42, root);
        let origin = origin_of(&s.public_key());
        assert!(note.starts_with(&format!("{origin}\n42\n")), "{note}");
        assert!(note.contains(&format!("\n\n\u{2014} {origin} ")), "{note}");
        let head = open_checkpoint(&note, &s.public_key()).unwrap();
        assert_eq!(head, TreeHead { size: 42, root });
    }

    #[test]
    fn an_altered_or_foreign_checkpoint_does_not_open() {
        let s = signer();
        let note = sign_checkpoint(&s, 42, tlog_tiles::record_hash(b"x"));
        let altered = note.replacen("\n42\n", "\n43\n", 1);
        assert!(open_checkpoint(&altered, &s.public_key()).is_err());
        let other = signer();
        assert!(open_checkpoint(&note, &other.public_key()).is_err());
        assert_eq!(
            open_checkpoint("not a note", &s.public_key()),
            Err(NoteProblem::Malformed)
        );
    }
}
