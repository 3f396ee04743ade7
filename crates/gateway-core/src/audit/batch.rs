//! Receipts signed once per group commit.
//!
//! An Ed25519 signature per receipt was the largest single cost of a request (~25 µs of ~100 µs
//! of pipeline work on the benchmark machine). Instead, each batch the writer commits gets one
//! Merkle tree over its entries' receipt leaves and one signature over the tree's root; a receipt
//! carries its leaf's path to that root. A sender checks it offline with the public key alone,
//! exactly as before: recompute the leaf from what the receipt states (sequence, entry hash,
//! record id, decision, status, body hash, policy version), fold the path, compare the root,
//! verify the signature. This is the "signed tree head" of Certificate
//! Transparency (RFC 6962), applied per batch.
//!
//! Leaves and inner nodes are domain-separated (`0x00` / `0x01` prefixes) so a node can never be
//! passed off as a leaf; the leaf binds every fact the receipt states, so changing the decision,
//! status, body hash or policy version in a saved receipt breaks it.

use std::sync::Arc;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use super::keys::AuditSigner;

const LEAF_DOMAIN: &str = "hetao-audit-receipt-leaf/v2";

/// Which side of the path the sibling hash sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Left,
    Right,
}

/// One step of a receipt's path from its leaf to the batch root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    pub side: Side,
    /// The sibling's hash, lowercase hex.
    pub hash: String,
}

/// What a receipt states about its entry, as the entry holds it. The receipt leaf binds every
/// field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFacts {
    pub audit_seq: u64,
    pub entry_hash: String,
    pub record_id: String,
    /// `allow` or `deny`.
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
}

/// The receipt leaf of one entry. The facts are encoded as one JSON array: unambiguous whatever
/// the strings hold.
pub fn leaf(facts: &ReceiptFacts) -> [u8; 32] {
    let fields = serde_json::json!([
        facts.audit_seq,
        facts.entry_hash,
        facts.record_id,
        facts.decision,
        facts.status,
        facts.body_sha256,
        facts.policy_version,
    ]);
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(LEAF_DOMAIN.as_bytes());
    ctx.update(b"\n");
    ctx.update(fields.to_string().as_bytes());
    to_array(ctx.finish().as_ref())
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    to_array(ctx.finish().as_ref())
}

fn to_array(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

/// The root a leaf and its path lead to; `None` if a step's hash is not 32 bytes of hex.
pub fn fold(leaf: [u8; 32], proof: &[ProofStep]) -> Option<[u8; 32]> {
    let mut h = leaf;
    for step in proof {
        let bytes = hex::decode(&step.hash).ok()?;
        if bytes.len() != 32 {
            return None;
        }
        let sibling = to_array(&bytes);
        h = match step.side {
            Side::Left => node(&sibling, &h),
            Side::Right => node(&h, &sibling),
        };
    }
    Some(h)
}

/// One committed batch: its tree and the signature over its root.
pub struct BatchSeal {
    pub first_seq: u64,
    pub last_seq: u64,
    pub signature: String,
    /// `levels[0]` are the leaves; the last level holds the root alone.
    levels: Vec<Vec<[u8; 32]>>,
}

impl BatchSeal {
    /// Builds the tree over `leaves` (in sequence order) and signs its root. An odd node at the
    /// end of a level is carried up unchanged.
    pub fn seal(
        first_seq: u64,
        last_seq: u64,
        leaves: Vec<[u8; 32]>,
        signer: &AuditSigner,
    ) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = &levels[levels.len() - 1];
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node(l, r),
                    [single] => *single,
                    _ => unreachable_pair(),
                })
                .collect();
            levels.push(above);
        }
        let root = levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or([0u8; 32]);
        let signature = signer.sign_batch(first_seq, last_seq, &hex::encode(root));
        BatchSeal {
            first_seq,
            last_seq,
            signature,
            levels,
        }
    }

    pub fn root_hex(&self) -> String {
        hex::encode(
            self.levels
                .last()
                .and_then(|l| l.first())
                .copied()
                .unwrap_or([0u8; 32]),
        )
    }

    /// The path from leaf `index` to the root.
    pub fn proof(&self, index: usize) -> Vec<ProofStep> {
        let mut steps = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            let sibling = i ^ 1;
            if let Some(h) = level.get(sibling) {
                steps.push(ProofStep {
                    side: if i % 2 == 1 { Side::Left } else { Side::Right },
                    hash: hex::encode(h),
                });
            }
            i /= 2;
        }
        steps
    }
}

/// `chunks(2)` yields one or two items; this arm cannot be reached.
fn unreachable_pair() -> [u8; 32] {
    [0u8; 32]
}

/// Where an appended entry's receipt leaf sits: its batch and its index in it.
#[derive(Clone)]
pub struct BatchRef {
    pub seal: Arc<BatchSeal>,
    pub index: usize,
}

impl PartialEq for BatchRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.seal, &other.seal) && self.index == other.index
    }
}

impl Eq for BatchRef {}

impl std::fmt::Debug for BatchRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRef")
            .field("first_seq", &self.seal.first_seq)
            .field("last_seq", &self.seal.last_seq)
            .field("index", &self.index)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> AuditSigner {
        let (private, _) = super::super::keys::generate_signing_key().unwrap();
        AuditSigner::from_pem(private.as_bytes(), "test").unwrap()
    }

    fn facts(seq: u64) -> ReceiptFacts {
        ReceiptFacts {
            audit_seq: seq,
            entry_hash: format!("{seq:064x}"),
            record_id: "r".into(),
            decision: "deny".into(),
            status: 403,
            body_sha256: "c".repeat(64),
            policy_version: "2026.12".into(),
        }
    }

    #[test]
    fn every_leaf_of_batches_of_every_size_folds_to_the_signed_root() {
        let signer = signer();
        let key = signer.public_key();
        for n in 1..=17u64 {
            let leaves: Vec<_> = (0..n).map(|i| leaf(&facts(100 + i))).collect();
            let seal = BatchSeal::seal(100, 100 + n - 1, leaves.clone(), &signer);
            assert!(key.verify_batch(100, 100 + n - 1, &seal.root_hex(), &seal.signature));
            for (i, l) in leaves.iter().enumerate() {
                let root = fold(*l, &seal.proof(i)).unwrap();
                assert_eq!(hex::encode(root), seal.root_hex(), "n={n} i={i}");
            }
        }
    }

    #[test]
    fn a_leaf_does_not_fold_to_the_root_with_another_leafs_path() {
        let signer = signer();
        let leaves: Vec<_> = (0..4u64).map(|i| leaf(&facts(i))).collect();
        let seal = BatchSeal::seal(0, 3, leaves.clone(), &signer);
        let root = fold(leaves[0], &seal.proof(1)).unwrap();
        assert_ne!(hex::encode(root), seal.root_hex());
    }

    #[test]
    fn the_leaf_binds_every_fact_of_the_receipt() {
        let base = facts(1);
        let changes: Vec<fn(&mut ReceiptFacts)> = vec![
            |f| f.audit_seq = 2,
            |f| f.entry_hash = "b".repeat(64),
            |f| f.record_id = "s".into(),
            |f| f.decision = "allow".into(),
            |f| f.status = 200,
            |f| f.body_sha256 = "d".repeat(64),
            |f| f.policy_version = "2026.13".into(),
        ];
        for change in changes {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(leaf(&base), leaf(&changed), "{changed:?}");
        }
    }
}
