//! The log's Merkle tree (RFC 6962 hashing, the tree of Go's sumdb/tlog through `tlog_tiles`):
//! one leaf per entry, in sequence order, across every segment.
//!
//! The leaf of an entry binds what a receipt states about it ([`ReceiptFacts`]): sequence, entry
//! hash (so the whole entry), record id, decision, status, body hash and policy version. A signed
//! checkpoint over (size, root) then commits to every entry before it; an inclusion proof shows
//! one entry is among them, and a consistency proof that a later tree extends an earlier one.
//!
//! The tree's stored hashes (about two per entry, 32 bytes each) live in a file beside the log,
//! `<log>.tree`: derived data, rebuilt from the log at every start (and checked against the
//! signed checkpoints as it is rebuilt), so it is a cache the gateway never trusts over the log.
//! Hashes written since the last flush are held in memory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use tlog_tiles::{Hash, HashReader};

/// Domain tag of a leaf's data.
const LEAF_DOMAIN: &str = "hetao-audit-leaf/v1";
const HASH_SIZE: u64 = 32;
/// The most entries a tree file can be asked to keep: its hash count (about twice the leaves)
/// times `HASH_SIZE` must fit a u64. Far beyond any log (2^48 entries); a first sequence past it
/// is a forged line (its hash is no secret), not a log that grew.
pub const MAX_KEPT_LEAVES: u64 = 1 << 48;

/// What a receipt states about its entry, as the entry holds it. The entry's tree leaf binds every
/// field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFacts {
    pub audit_seq: u64,
    pub entry_hash: String,
    pub record_id: String,
    /// `allow` or `deny` (other entries: their decision field, or empty).
    pub decision: String,
    /// The HTTP status the entry records for the sender's answer (200 forwarded, 403 denied).
    pub status: u16,
    /// SHA-256 (hex) of the record as received.
    pub body_sha256: String,
    pub policy_version: String,
}

impl ReceiptFacts {
    /// The facts of a sealed entry (fields it lacks are empty).
    pub fn of(entry: &super::entry::AuditEntry) -> ReceiptFacts {
        ReceiptFacts {
            audit_seq: entry.seq,
            entry_hash: entry.hash.clone(),
            record_id: entry.record_id.clone().unwrap_or_default(),
            decision: entry.decision.clone().unwrap_or_default(),
            status: entry.status.unwrap_or(0),
            body_sha256: entry.body_sha256.clone().unwrap_or_default(),
            policy_version: entry.policy_version.clone().unwrap_or_default(),
        }
    }

    /// Where `entry` (the log's entry at this receipt's sequence) differs from these facts.
    pub fn differences(&self, entry: &super::entry::AuditEntry) -> Vec<String> {
        let held = ReceiptFacts::of(entry);
        let mut out = Vec::new();
        let mut compare = |name: &str, receipt: String, log: String| {
            if receipt != log {
                out.push(format!(
                    "{name}: {log} in the log, {receipt} in the receipt"
                ));
            }
        };
        compare("hash", self.entry_hash.clone(), held.entry_hash);
        compare("record_id", self.record_id.clone(), held.record_id);
        compare("decision", self.decision.clone(), held.decision);
        compare("status", self.status.to_string(), held.status.to_string());
        compare("body_sha256", self.body_sha256.clone(), held.body_sha256);
        compare(
            "policy_version",
            self.policy_version.clone(),
            held.policy_version,
        );
        out
    }

    /// The leaf's data: the domain tag, then the facts as one compact JSON array (unambiguous
    /// whatever the strings hold).
    pub fn leaf_data(&self) -> Vec<u8> {
        let fields = serde_json::json!([
            self.audit_seq,
            self.entry_hash,
            self.record_id,
            self.decision,
            self.status,
            self.body_sha256,
            self.policy_version,
        ]);
        let mut data = format!("{LEAF_DOMAIN}\n").into_bytes();
        data.extend_from_slice(fields.to_string().as_bytes());
        data
    }

    /// The RFC 6962 leaf hash: SHA-256(0x00 ‖ leaf data).
    pub fn leaf_hash(&self) -> Hash {
        tlog_tiles::record_hash(&self.leaf_data())
    }
}

/// Hashes as the log's documents write them: standard base64, as in C2SP checkpoints.
pub fn hash_to_b64(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h.0)
}

pub fn hash_from_b64(s: &str) -> Option<Hash> {
    Hash::parse_hash(s).ok()
}

/// Why the tree could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("tree file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tree: {0}")]
    Tlog(#[from] tlog_tiles::Error),
}

/// The tree's stored hashes: in a file (the gateway) or in memory only (`audit verify`).
pub struct HashStore {
    file: Option<(File, PathBuf)>,
    state: RwLock<StoreState>,
}

struct StoreState {
    /// Leaves (entries) in the tree.
    leaves: u64,
    /// Stored hashes already in the file.
    flushed: u64,
    /// The stored hashes from index `mem_base` on: everything not yet in the file, and the most
    /// recent ones that are (a new entry's proof reads its recent neighbours).
    mem_base: u64,
    pending: Vec<Hash>,
    /// Stored hashes of level [`HIGH_LEVEL`] and above (one per 64 leaves): the upper part of
    /// every proof, so a receipt's proof needs no file read.
    high: std::collections::HashMap<u64, Hash>,
}

/// Stored hashes at or above this level are kept in memory (32 bytes per 64 entries).
const HIGH_LEVEL: u8 = 6;
/// Recent stored hashes kept in memory after they are flushed (256 KiB).
const RECENT: u64 = 8192;
/// Unwritten hashes beyond which an append writes them out itself (2 MiB).
const AUTO_FLUSH: u64 = 65_536;

impl std::fmt::Debug for HashStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashStore")
            .field("leaves", &self.leaves())
            .finish_non_exhaustive()
    }
}

impl HashStore {
    /// An empty tree held in memory.
    pub fn in_memory() -> HashStore {
        HashStore {
            file: None,
            state: RwLock::new(StoreState {
                leaves: 0,
                flushed: 0,
                mem_base: 0,
                pending: Vec::new(),
                high: std::collections::HashMap::new(),
            }),
        }
    }

    /// The tree file of the log at `log`.
    pub fn path_for(log: &Path) -> PathBuf {
        let mut name = log.file_name().unwrap_or_default().to_os_string();
        name.push(".tree");
        log.with_file_name(name)
    }

    /// Opens `path` keeping the hashes of the first `keep_leaves` leaves (the entries of segments
    /// no longer beside the log; 0 rebuilds everything), or fails when the file holds fewer.
    pub fn open_file(path: &Path, keep_leaves: u64) -> Result<HashStore, TreeError> {
        let io = |source| TreeError::Io {
            path: path.to_path_buf(),
            source,
        };
        if keep_leaves > MAX_KEPT_LEAVES {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the segments present start at seq {keep_leaves}, past the most a log can hold ({MAX_KEPT_LEAVES})"
                ),
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let keep = tlog_tiles::stored_hash_count(keep_leaves);
        let have = file.metadata().map_err(io)?.len() / HASH_SIZE;
        if have < keep {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "holds {have} hashes, the {keep_leaves} entries before the segments present need {keep}"
                ),
            )));
        }
        file.set_len(keep * HASH_SIZE).map_err(io)?;
        Ok(HashStore {
            file: Some((file, path.to_path_buf())),
            state: RwLock::new(StoreState {
                leaves: keep_leaves,
                flushed: keep,
                mem_base: keep,
                pending: Vec::new(),
                high: std::collections::HashMap::new(),
            }),
        })
    }

    /// [`HashStore::open_file`] keeping the first `leaves` leaves, but only once every stored
    /// hash of them in the file has been checked: each inner node is recomputed from its two
    /// children, and the root of the whole must be `root` (a root the audit key signed and a
    /// witness cosigned). Then every hash kept is the one the log's entries give, without
    /// reading them (SHA-256 collisions aside): proofs for old entries and the new entries'
    /// hashes can be built on the file. About one SHA-256 of 65 bytes per entry, reading 64 bytes
    /// per entry. `Ok(None)` when the file does not hold that tree (missing, short, stale after a
    /// crash, or altered): the caller rebuilds it from the log.
    pub fn open_checked(
        path: &Path,
        leaves: u64,
        root: Hash,
    ) -> Result<Result<HashStore, String>, TreeError> {
        let io = |source| TreeError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err("there is no tree file".into()))
            }
            Err(e) => return Err(io(e)),
        };
        let need = tlog_tiles::stored_hash_count(leaves);
        let have = file.metadata().map_err(io)?.len() / HASH_SIZE;
        if have < need {
            return Ok(Err(format!(
                "the tree file holds {have} hashes, the {leaves} entries need {need}"
            )));
        }
        if let Some(problem) = check_stored_hashes(file, leaves, root).map_err(io)? {
            return Ok(Err(problem));
        }
        Ok(Ok(HashStore::open_file(path, leaves)?))
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, StoreState> {
        // Every update leaves the state consistent; a panic elsewhere cannot tear it.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, StoreState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries in the tree.
    pub fn leaves(&self) -> u64 {
        self.read_state().leaves
    }

    /// Adds the next leaf (the entry with sequence [`leaves`](Self::leaves)).
    pub fn append(&self, leaf: Hash) -> Result<(), TreeError> {
        let n = self.leaves();
        let new = tlog_tiles::stored_hashes_for_record_hash(n, leaf, self)?;
        let first = tlog_tiles::stored_hash_index(0, n);
        let mut state = self.write_state();
        for (i, h) in new.iter().enumerate() {
            let index = first + i as u64;
            if tlog_tiles::split_stored_hash_index(index).0 >= HIGH_LEVEL {
                state.high.insert(index, *h);
            }
        }
        state.pending.extend(new);
        state.leaves = n + 1;
        let unwritten = state.mem_base + state.pending.len() as u64 - state.flushed;
        drop(state);
        // A rebuild at start appends a whole log before anything flushes: write out as it goes,
        // so memory stays bounded whatever the log's size.
        if self.file.is_some() && unwritten >= AUTO_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Stored hashes not yet written to the tree file.
    pub fn unwritten(&self) -> u64 {
        let state = self.read_state();
        state.mem_base + state.pending.len() as u64 - state.flushed
    }

    /// Writes the pending hashes to the tree file (no fsync: the file is rebuilt at start).
    pub fn flush(&self) -> Result<(), TreeError> {
        let Some((file, path)) = &self.file else {
            return Ok(());
        };
        let (offset, bytes) = {
            let state = self.read_state();
            let unwritten = usize::try_from(state.flushed - state.mem_base).unwrap_or(usize::MAX);
            let Some(new) = state.pending.get(unwritten..).filter(|n| !n.is_empty()) else {
                return Ok(());
            };
            let bytes: Vec<u8> = new.iter().flat_map(|h| h.0).collect();
            (state.flushed, bytes)
        };
        file.write_all_at(&bytes, offset * HASH_SIZE)
            .map_err(|source| TreeError::Io {
                path: path.clone(),
                source,
            })?;
        let mut state = self.write_state();
        state.flushed += bytes.len() as u64 / HASH_SIZE;
        // Keep the most recent hashes in memory (the neighbours of new entries' proofs).
        let total = state.mem_base + state.pending.len() as u64;
        let keep_from = total.saturating_sub(RECENT).min(state.flushed);
        if keep_from > state.mem_base {
            let drop = usize::try_from(keep_from - state.mem_base).unwrap_or(usize::MAX);
            state.pending.drain(..drop);
            state.mem_base = keep_from;
        }
        Ok(())
    }

    /// The hash of leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash, TreeError> {
        let mut hashes = self.read_hashes(&[tlog_tiles::stored_hash_index(0, index)])?;
        hashes.pop().ok_or_else(|| TreeError::Tlog(bad_index()))
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, TreeError> {
        Ok(tlog_tiles::tree_hash(size, self)?)
    }

    /// The proof that leaf `index` is in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, size: u64, index: u64) -> Result<Vec<Hash>, TreeError> {
        Ok(tlog_tiles::prove_record(size, index, self)?)
    }

    /// The proof that the tree of `size` leaves extends the tree of its first `old` leaves.
    pub fn consistency_proof(&self, size: u64, old: u64) -> Result<Vec<Hash>, TreeError> {
        Ok(tlog_tiles::prove_tree(size, old, self)?)
    }
}

impl HashReader for HashStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        // Most reads are served from memory (recent and upper-level hashes). Hashes below
        // `flushed` are in the file and never change there: they are read without the lock, so
        // proofs for many receipts at once never hold up the writer's appends.
        let mut out = vec![Hash([0u8; 32]); indexes.len()];
        let mut from_file = Vec::new();
        {
            let state = self.read_state();
            for (slot, &index) in indexes.iter().enumerate() {
                if index >= state.mem_base {
                    let at = usize::try_from(index - state.mem_base).map_err(|_| bad_index())?;
                    out[slot] = *state.pending.get(at).ok_or_else(bad_index)?;
                } else if let Some(h) = state.high.get(&index) {
                    out[slot] = *h;
                } else if index < state.flushed {
                    from_file.push((slot, index));
                } else {
                    return Err(bad_index());
                }
            }
        }
        if from_file.is_empty() {
            return Ok(out);
        }
        let Some((file, _)) = &self.file else {
            return Err(bad_index());
        };
        for (slot, index) in from_file {
            let mut h = [0u8; 32];
            file.read_exact_at(&mut h, index * HASH_SIZE)
                .map_err(|_| bad_index())?;
            out[slot] = Hash(h);
        }
        Ok(out)
    }
}

fn bad_index() -> tlog_tiles::Error {
    tlog_tiles::Error::InvalidInput("stored hash index beyond the tree".into())
}

/// Reads the stored hashes of the first `leaves` leaves from `file` in order (the layout of
/// `tlog_tiles::stored_hashes`: each leaf's hash, then the hash of every subtree it completes),
/// recomputing each subtree's hash from its two halves; then the root from the complete subtrees
/// left. The first hash that is not what its children give, or a root other than `root`, is the
/// problem returned.
fn check_stored_hashes(file: File, leaves: u64, root: Hash) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut next = || -> std::io::Result<Hash> {
        let mut h = [0u8; 32];
        reader.read_exact(&mut h)?;
        Ok(Hash(h))
    };
    // The complete subtrees so far, left to right: at most one per level, so at most 64.
    let mut spine: Vec<Hash> = Vec::with_capacity(64);
    for n in 0..leaves {
        spine.push(next()?);
        for level in 0..(n + 1).trailing_zeros() {
            let (Some(right), Some(left)) = (spine.pop(), spine.pop()) else {
                return Ok(Some("the tree file's layout is broken".into()));
            };
            let computed = tlog_tiles::node_hash(left, right);
            if next()? != computed {
                return Ok(Some(format!(
                    "the tree file's hash of level {} over entry {n} is not its children's: the file was damaged or altered",
                    level + 1
                )));
            }
            spine.push(computed);
        }
    }
    let computed = match spine.split_last() {
        None => tlog_tiles::EMPTY_HASH,
        Some((last, rest)) => rest
            .iter()
            .rev()
            .fold(*last, |acc, left| tlog_tiles::node_hash(*left, acc)),
    };
    Ok((computed != root).then(|| {
        format!(
            "the tree file's {leaves} entries have root {}, not the cosigned {}",
            hash_to_b64(&computed),
            hash_to_b64(&root)
        )
    }))
}

/// Checks that `proof` shows the leaf `leaf` at `index` in the tree of `size` leaves with root
/// `root`.
pub fn check_inclusion(proof: &[Hash], size: u64, root: Hash, index: u64, leaf: Hash) -> bool {
    index < size && tlog_tiles::check_record(&proof.to_vec(), size, root, index, leaf).is_ok()
}

/// Checks that `proof` shows the tree (`size`, `root`) extends the tree (`old`, `old_root`).
pub fn check_consistency(proof: &[Hash], size: u64, root: Hash, old: u64, old_root: Hash) -> bool {
    old <= size && tlog_tiles::check_tree(&proof.to_vec(), size, root, old, old_root).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's reference roots for the first leaves of its test data, as Certificate
    /// Transparency's and Go's tlog tests use them (leaves: "", 0x00, 0x10, 0x2021, 0x3031,
    /// 0x40414243, 0x5051525354555657, 0x606162636465666768696a6b6c6d6e6f).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_rfc_6962_test_vectors() {
        let store = HashStore::in_memory();
        for (i, leaf) in LEAVES.iter().enumerate() {
            store
                .append(tlog_tiles::record_hash(&hex::decode(leaf).unwrap()))
                .unwrap();
            let root = store.root(i as u64 + 1).unwrap();
            assert_eq!(hex::encode(root.0), ROOTS[i], "size {}", i + 1);
        }
    }

    #[test]
    fn a_file_backed_tree_keeps_answering_once_hashes_leave_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = HashStore::open_file(&dir.path().join("big.tree"), 0).unwrap();
        let memory = HashStore::in_memory();
        let n = 20_000u64;
        let leaves: Vec<Hash> = (0..n)
            .map(|i| tlog_tiles::record_hash(&i.to_be_bytes()))
            .collect();
        for (i, leaf) in leaves.iter().enumerate() {
            file.append(*leaf).unwrap();
            memory.append(*leaf).unwrap();
            if i % 100 == 99 {
                file.flush().unwrap();
            }
        }
        assert!(file.read_state().mem_base > 0, "nothing left memory");
        for size in [1u64, 777, 12_345, n] {
            let root = memory.root(size).unwrap();
            assert_eq!(file.root(size).unwrap(), root, "size {size}");
            for index in [0, size / 2, size - 1] {
                let proof = file.inclusion_proof(size, index).unwrap();
                assert_eq!(proof, memory.inclusion_proof(size, index).unwrap());
                assert!(check_inclusion(
                    &proof,
                    size,
                    root,
                    index,
                    leaves[index as usize]
                ));
            }
        }
    }

    #[test]
    fn proofs_from_a_file_backed_tree_check_and_fail_when_altered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.tree");
        let store = HashStore::open_file(&path, 0).unwrap();
        let leaves: Vec<Hash> = (0..37u32)
            .map(|i| tlog_tiles::record_hash(&i.to_be_bytes()))
            .collect();
        for (i, leaf) in leaves.iter().enumerate() {
            store.append(*leaf).unwrap();
            if i % 5 == 0 {
                store.flush().unwrap();
            }
        }
        for size in [1u64, 2, 7, 16, 37] {
            let root = store.root(size).unwrap();
            for index in 0..size {
                let proof = store.inclusion_proof(size, index).unwrap();
                let leaf = leaves[index as usize];
                assert!(check_inclusion(&proof, size, root, index, leaf));
                let other = leaves[((index + 1) % 37) as usize];
                assert!(!check_inclusion(&proof, size, root, index, other));
            }
            for old in 1..=size {
                let proof = store.consistency_proof(size, old).unwrap();
                let old_root = store.root(old).unwrap();
                assert!(check_consistency(&proof, size, root, old, old_root));
                if old > 1 {
                    let wrong = store.root(old - 1).unwrap();
                    assert!(!check_consistency(&proof, size, root, old, wrong));
                }
            }
        }
        // Reopened keeping a prefix: the same roots.
        store.flush().unwrap();
        let root_20 = store.root(20).unwrap();
        drop(store);
        let reopened = HashStore::open_file(&path, 20).unwrap();
        assert_eq!(reopened.root(20).unwrap(), root_20);
        assert!(HashStore::open_file(&dir.path().join("empty.tree"), 5).is_err());
    }
}
