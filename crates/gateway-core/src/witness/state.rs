//! The witness's durable state: for each log origin, the last checkpoint it cosigned (size, root
//! and the note with its cosignature). Everything the witness promises rests on this file: a
//! witness that forgot its state would cosign a rollback or a fork.
//!
//! One JSON file, rewritten whole for every cosignature and made durable before the answer: a
//! temporary file in the same folder, fsync, rename over the old one, fsync the folder. A crash
//! leaves either the old state or the new one, never a torn file. A missing file is an empty
//! state (a new witness); a file that does not parse is an error, and the witness refuses to
//! start rather than start over from nothing.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use signed_note::Note;
use tlog_tiles::{Checkpoint, Hash};

use crate::audit::tree::{hash_from_b64, hash_to_b64};

/// The `format` of the state file.
const STATE_FORMAT: &str = "hetao-witness-state/v1";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("witness state {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("witness state {path} is corrupt: {message}; the witness will not start without its state (restore the file from a backup; never delete it to start over, that would let the witness cosign a rollback)")]
    Corrupt { path: PathBuf, message: String },
    #[error("witness state {path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The last checkpoint cosigned for one log.
#[derive(Debug, Clone, PartialEq)]
pub struct CosignedHead {
    pub size: u64,
    pub root: Hash,
    /// The checkpoint note as submitted, with the witness's cosignature line added.
    pub note: String,
}

/// Every log's last cosigned checkpoint, by origin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WitnessState {
    pub logs: BTreeMap<String, CosignedHead>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    logs: BTreeMap<String, HeadFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadFile {
    size: u64,
    root: String,
    note: String,
}

impl WitnessState {
    /// Reads the state at `path`; no file is an empty state.
    pub fn load(path: &Path) -> Result<WitnessState, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(WitnessState::default())
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let corrupt = |message: String| StateError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let file: StateFile =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not its JSON: {e}")))?;
        if file.format != STATE_FORMAT {
            return Err(corrupt(format!(
                "format is `{}`, expected `{STATE_FORMAT}`",
                file.format
            )));
        }
        let mut logs = BTreeMap::new();
        for (origin, head) in file.logs {
            let root = hash_from_b64(&head.root)
                .ok_or_else(|| corrupt(format!("log {origin}: root is not a base64 hash")))?;
            // The note must state what the entry says: a hand-edited size or root is caught here.
            let states = Note::from_bytes(head.note.as_bytes())
                .ok()
                .and_then(|n| Checkpoint::from_bytes(n.text()).ok())
                .is_some_and(|c| {
                    c.origin() == origin && c.size() == head.size && *c.hash() == root
                });
            if !states {
                return Err(corrupt(format!(
                    "log {origin}: the stored note is not a checkpoint of size {} and this root",
                    head.size
                )));
            }
            logs.insert(
                origin,
                CosignedHead {
                    size: head.size,
                    root,
                    note: head.note,
                },
            );
        }
        Ok(WitnessState { logs })
    }

    /// Writes the state to `path` atomically and durably (see the module comment).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let file = StateFile {
            format: STATE_FORMAT.into(),
            logs: self
                .logs
                .iter()
                .map(|(origin, head)| {
                    let entry = HeadFile {
                        size: head.size,
                        root: hash_to_b64(&head.root),
                        note: head.note.clone(),
                    };
                    (origin.clone(), entry)
                })
                .collect(),
        };
        let write_error = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| write_error(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        let temp = temp_path(path);
        let written = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            drop(out);
            std::fs::rename(&temp, path)?;
            crate::audit::writer::sync_dir(path)
        })();
        if written.is_err() {
            // Best effort: a stale temporary file is overwritten by the next save anyway.
            let _ = std::fs::remove_file(&temp);
        }
        written.map_err(write_error)
    }
}

/// The temporary file beside `path` the next state is written to before the rename.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Checks, with a probe file removed again at once, that the state's folder exists and is
/// writable: a bad `state` path stops the witness at start, not at its first cosignature.
pub fn check_writable(path: &Path) -> Result<(), StateError> {
    let temp = temp_path(path);
    let probe = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|f: File| f.sync_all());
    let _ = std::fs::remove_file(&temp);
    probe.map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::note::sign_checkpoint;
    use crate::audit::{generate_signing_key, AuditSigner};

    fn head(size: u64) -> (String, CosignedHead) {
        let (private, _) = generate_signing_key().unwrap();
        let signer = AuditSigner::from_pem(private.as_bytes(), "t").unwrap();
        let root = tlog_tiles::record_hash(&size.to_be_bytes());
        let note = sign_checkpoint(&signer, size, root);
        let origin = crate::audit::note::origin_of(&signer.public_key());
        (origin, CosignedHead { size, root, note })
    }

    #[test]
    fn a_missing_file_is_an_empty_state_and_a_saved_one_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness-state.json");
        assert_eq!(WitnessState::load(&path).unwrap(), WitnessState::default());
        let mut state = WitnessState::default();
        let (origin, h) = head(12);
        state.logs.insert(origin, h);
        state.save(&path).unwrap();
        assert_eq!(WitnessState::load(&path).unwrap(), state);
        // No temporary file left behind; the file is private to the witness.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("witness-state.json")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_or_edited_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\"format\": \"hetao-witness-state/v1\", \"logs\": ").unwrap();
        let err = WitnessState::load(&path).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("state.json"), "{err}");

        // A size edited by hand no longer matches the stored note.
        let mut state = WitnessState::default();
        let (origin, h) = head(12);
        state.logs.insert(origin, h);
        state.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"size\": 12", "\"size\": 2")).unwrap();
        let err = WitnessState::load(&path).unwrap_err();
        assert!(
            err.to_string().contains("not a checkpoint of size 2"),
            "{err}"
        );
    }

    #[test]
    fn an_unwritable_folder_is_found_before_the_first_cosignature() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("state.json")).is_ok());
        assert!(check_writable(&dir.path().join("missing/state.json")).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
