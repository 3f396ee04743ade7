//! What stands between an `add-checkpoint` request and a cosignature: the checks of
//! c2sp.org/tlog-witness, in its order, then the durable update of the state, then the signature.
//!
//! A cosignature says "the largest tree I have seen of this log, consistent with everything I
//! cosigned before, has this root". So a checkpoint is cosigned only when it is signed by the
//! log's key and either extends the last one cosigned (a consistency proof from it) or is that
//! same checkpoint again. A smaller tree (rollback) or another root at the same size (fork) is
//! never cosigned, whatever `old` the client claims.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use signed_note::Note;
use tlog_tiles::Checkpoint;

use super::config::{WitnessConfig, WitnessError};
use super::cosignature::{add_cosignatures, cosign, witness_name_of};
use super::protocol::AddCheckpoint;
use super::state::{check_writable, CosignedHead, WitnessState};
use crate::audit::note::{open_checkpoint, NoteProblem};
use crate::audit::tree::check_consistency;
use crate::audit::{AuditPublicKey, AuditSigner};

/// Why a checkpoint is not cosigned. [`super::server`] maps each to its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 400: the spec's answer to `old` beyond the checkpoint's size.
    #[error("old size {old} is beyond the checkpoint's size {size}")]
    OldBeyondSize { old: u64, size: u64 },
    /// 404.
    #[error("this witness does not witness log {0}")]
    UnknownLog(String),
    /// 403.
    #[error("the checkpoint is not signed by the key of log {origin}: {reason}")]
    NotSigned { origin: String, reason: String },
    /// 409 with `latest`: the client's `old` is not where the witness stands.
    #[error("old size {old} is not the size last cosigned for this log, {latest}")]
    OldSizeMismatch { old: u64, latest: u64 },
    /// 409 with `latest`: same size as last cosigned, another root.
    #[error("fork: the checkpoint of size {size} has another root than the one cosigned")]
    Fork { size: u64 },
    /// 409 with `latest`: smaller than last cosigned. The checks before already refuse every
    /// rollback; this one stands guard in front of the signature regardless.
    #[error("rollback: size {size} is smaller than the size last cosigned, {latest}")]
    Rollback { size: u64, latest: u64 },
    /// 422.
    #[error(
        "the consistency proof from size {old} to {size} does not hold (a fork or a rewritten log)"
    )]
    Inconsistent { old: u64, size: u64 },
    /// 500: nothing was cosigned.
    #[error("cannot save the witness state: {0}")]
    Storage(String),
}

/// One witnessed log.
struct WitnessedLog {
    key: AuditPublicKey,
    /// Held from the check of `old` to the saved state: two requests for one log cannot both
    /// pass the check against the same old state (the race tlog-witness describes, where the
    /// later save rolls the state back).
    turn: Mutex<()>,
}

/// A witness: its key, the logs it witnesses, and its state.
pub struct Witness {
    signer: AuditSigner,
    name: String,
    logs: BTreeMap<String, WitnessedLog>,
    state_path: PathBuf,
    /// What the state file holds. Locked only for a read or an assignment, never across a save,
    /// so `GET /checkpoints` never waits for an fsync.
    state: Mutex<WitnessState>,
    /// Held across a save: the file holds every log, so saves for two logs must not cross.
    saving: Mutex<()>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("name", &self.name)
            .field("logs", &self.logs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The lock's data stays consistent through a panic elsewhere (every update is one assignment
/// after the save), so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One log's view for the health check.
#[derive(Debug, Clone, PartialEq)]
pub struct LogStatus {
    pub origin: String,
    /// The last cosigned checkpoint, if any.
    pub head: Option<CosignedHead>,
}

impl Witness {
    /// Loads the key, the logs' keys and the state. Refuses a corrupt state, a log key that does
    /// not match its origin, and a state folder it cannot write to.
    pub fn open(config: &WitnessConfig) -> Result<Witness, WitnessError> {
        let signer = config.load_signer()?;
        let logs = config
            .load_log_keys()?
            .into_iter()
            .map(|(origin, key)| {
                let log = WitnessedLog {
                    key,
                    turn: Mutex::new(()),
                };
                (origin, log)
            })
            .collect();
        let state = WitnessState::load(&config.state)?;
        check_writable(&config.state)?;
        Ok(Witness {
            name: witness_name_of(&signer.public_key()),
            signer,
            logs,
            state_path: config.state.clone(),
            state: Mutex::new(state),
            saving: Mutex::new(()),
        })
    }

    /// The witness's name in cosignature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> AuditPublicKey {
        self.signer.public_key()
    }

    /// Every configured log with its last cosigned checkpoint.
    pub fn status(&self) -> Vec<LogStatus> {
        let state = lock(&self.state);
        self.logs
            .keys()
            .map(|origin| LogStatus {
                origin: origin.clone(),
                head: state.logs.get(origin).cloned(),
            })
            .collect()
    }

    /// Checks a request and, when it passes, saves the new state and returns the cosignature
    /// line, timestamped `now` (Unix seconds). Blocking (it fsyncs): call it off the async
    /// threads.
    pub fn add_checkpoint(&self, request: &AddCheckpoint, now: u64) -> Result<String, Refusal> {
        let malformed = |what: &str| Refusal::Malformed(what.to_string());
        let note = Note::from_bytes(request.note.as_bytes())
            .map_err(|_| malformed("the checkpoint is not a signed note"))?;
        let checkpoint = Checkpoint::from_bytes(note.text())
            .map_err(|_| malformed("the note's text is not a checkpoint"))?;
        let origin = checkpoint.origin().to_string();
        let log = self
            .logs
            .get(&origin)
            .ok_or_else(|| Refusal::UnknownLog(origin.clone()))?;
        let head = open_checkpoint(&request.note, &log.key).map_err(|problem| match problem {
            NoteProblem::Malformed => malformed("the checkpoint note is malformed"),
            other => Refusal::NotSigned {
                origin: origin.clone(),
                reason: other.to_string(),
            },
        })?;
        let (old, size, root) = (request.old, head.size, head.root);
        if old > size {
            return Err(Refusal::OldBeyondSize { old, size });
        }
        // RFC 6962 has no proof from the empty tree: it is a prefix of every tree.
        if old == 0 && !request.proof.is_empty() {
            return Err(malformed("the proof must be empty when old is 0"));
        }

        let _turn = lock(&log.turn);
        let latest = lock(&self.state).logs.get(&origin).cloned();
        let latest_size = latest.as_ref().map_or(0, |l| l.size);
        if old != latest_size {
            return Err(Refusal::OldSizeMismatch {
                old,
                latest: latest_size,
            });
        }
        match &latest {
            // Never cosigned: the first checkpoint is taken on the log's signature alone (trust
            // on first use, as in tlog-witness).
            None => {}
            Some(latest) if size == latest.size => {
                if root != latest.root {
                    return Err(Refusal::Fork { size });
                }
                if !request.proof.is_empty() {
                    return Err(Refusal::Inconsistent { old, size });
                }
            }
            Some(latest) => {
                // old == latest.size < size here; from an empty tree there is nothing to prove.
                let extends = latest.size == 0
                    || check_consistency(&request.proof, size, root, latest.size, latest.root);
                if !extends {
                    return Err(Refusal::Inconsistent { old, size });
                }
            }
        }
        if let Some(latest) = &latest {
            if size < latest.size {
                return Err(Refusal::Rollback {
                    size,
                    latest: latest.size,
                });
            }
        }

        let line = cosign(&self.signer, &self.name, note.text(), now);
        let cosigned = CosignedHead {
            size,
            root,
            note: add_cosignatures(&request.note, &line),
        };
        // Saved before the cosignature leaves: a witness that answered and then lost the state
        // could later cosign a fork of what it answered.
        let _saving = lock(&self.saving);
        let mut next = lock(&self.state).clone();
        next.logs.insert(origin, cosigned);
        next.save(&self.state_path)
            .map_err(|e| Refusal::Storage(e.to_string()))?;
        // Only saves change the state, and `saving` is still held: nothing changed since the
        // clone.
        *lock(&self.state) = next;
        Ok(line)
    }
}
