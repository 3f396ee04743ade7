//! The witness as a park runs it: a real server on loopback with its real files (key, state,
//! config written by `witness init`), fed checkpoints signed with a real audit key over a real
//! RFC 6962 tree. Each test asserts what its name says; "never cosigned" is checked on the
//! answer, on the witness's stated size and on its state file.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hetao_gateway_core::audit::note::{origin_of, sign_checkpoint};
use hetao_gateway_core::audit::tree::{HashStore, ReceiptFacts};
use hetao_gateway_core::audit::{generate_signing_key, AuditPublicKey, AuditSigner};
use hetao_gateway_core::witness::config::{init, InitReport};
use hetao_gateway_core::witness::protocol::add_checkpoint_body;
use hetao_gateway_core::witness::{
    add_cosignatures, verify_cosignature, witness_name_of, WitnessConfig, WitnessError,
};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio::sync::watch;

// === A log ===

/// An audit log's key and tree: checkpoints are signed notes over the tree's root, as the
/// gateway's writer signs them.
struct Log {
    /// Kept so a fork can sign with the same key.
    private_pem: String,
    signer: AuditSigner,
    tree: HashStore,
    /// The tags the leaves were made from, in order.
    tags: Vec<String>,
}

impl Log {
    fn new() -> Log {
        let (private_pem, _) = generate_signing_key().unwrap();
        Log::with_key(private_pem)
    }

    fn with_key(private_pem: String) -> Log {
        Log {
            signer: AuditSigner::from_pem(private_pem.as_bytes(), "test").unwrap(),
            private_pem,
            tree: HashStore::in_memory(),
            tags: Vec::new(),
        }
    }

    /// Another tree under the same key sharing this one's first `shared` leaves: what a log
    /// showing two histories, or rewriting its past, signs. Its checkpoints are as validly
    /// signed as the original's.
    fn fork(&self, shared: usize) -> Log {
        let mut fork = Log::with_key(self.private_pem.clone());
        for tag in &self.tags[..shared] {
            fork.append(tag);
        }
        fork
    }

    fn append(&mut self, tag: &str) {
        let facts = ReceiptFacts {
            audit_seq: self.tree.leaves(),
            record_id: tag.to_string(),
            decision: "allow".into(),
            ..ReceiptFacts::default()
        };
        self.tree.append(facts.leaf_hash()).unwrap();
        self.tags.push(tag.to_string());
    }

    fn grow_to(&mut self, size: u64, tag: &str) {
        while self.tree.leaves() < size {
            let n = self.tree.leaves();
            self.append(&format!("{tag}-{n}"));
        }
    }

    fn size(&self) -> u64 {
        self.tree.leaves()
    }

    /// The signed checkpoint of the tree as it is.
    fn note(&self) -> String {
        let size = self.size();
        sign_checkpoint(&self.signer, size, self.tree.root(size).unwrap())
    }

    fn origin(&self) -> String {
        origin_of(&self.signer.public_key())
    }

    /// The body asking the witness to cosign the current checkpoint, from `old`.
    fn body(&self, old: u64) -> String {
        let proof = if old == 0 || old == self.size() {
            Vec::new()
        } else {
            self.tree.consistency_proof(self.size(), old).unwrap()
        };
        add_checkpoint_body(old, &proof, &self.note())
    }

    fn write_public_key(&self, dir: &Path) -> PathBuf {
        let path = dir.join("audit-public.pem");
        std::fs::write(&path, self.signer.public_key().to_pem()).unwrap();
        path
    }
}

fn log() -> Log {
    Log::new()
}

// === A witness ===

/// A witness set up by `witness init` in a temporary folder, served in-process on 127.0.0.1:0.
struct Witness {
    /// Held so the witness's files live as long as it does.
    _dir: tempfile::TempDir,
    report: InitReport,
    /// The witness's public key, read from `witness.pub`.
    key: AuditPublicKey,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), WitnessError>>,
}

impl Witness {
    async fn for_log(log: &Log) -> Witness {
        let dir = tempfile::tempdir().unwrap();
        let public = log.write_public_key(dir.path());
        let out = dir.path().join("witness");
        let report = init(&out, &public, "127.0.0.1:0".parse().unwrap()).unwrap();
        let (addr, stop, task) = start(&report.config).await;
        Witness {
            _dir: dir,
            key: AuditPublicKey::from_pem_file(&report.public_key).unwrap(),
            report,
            addr,
            stop,
            task,
        }
    }

    fn key(&self) -> AuditPublicKey {
        self.key.clone()
    }

    fn state_file(&self) -> PathBuf {
        self.report.config.with_file_name("witness-state.json")
    }

    /// Stops the server (as SIGTERM does) and starts a new one from the same files.
    async fn restart(&mut self) {
        self.stop.send(true).unwrap();
        (&mut self.task).await.unwrap().unwrap();
        let (addr, stop, task) = start(&self.report.config).await;
        self.addr = addr;
        self.stop = stop;
        self.task = task;
    }

    async fn add(&self, body: &str) -> Answer {
        request(
            self.addr,
            "POST",
            "/add-checkpoint",
            body.as_bytes().to_vec(),
        )
        .await
    }

    /// The size the witness states it last cosigned for `origin` (`GET /checkpoints`).
    async fn stated_size(&self, origin: &str) -> u64 {
        let answer = request(self.addr, "GET", "/checkpoints", Vec::new()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(json["witness"], witness_name_of(&self.key()));
        let logs = json["logs"].as_array().unwrap();
        let log = logs.iter().find(|l| l["origin"] == origin).unwrap();
        log["size"].as_u64().unwrap()
    }

    /// The size in the state file (what a restart would start from).
    fn saved_size(&self, origin: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.state_file()).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["logs"][origin]["size"].as_u64()
    }

    /// Asserts that `answer` is a refusal and that the witness still stands at `size`.
    async fn assert_not_cosigned(&self, answer: &Answer, origin: &str, size: u64) {
        assert_ne!(answer.status, 200, "cosigned: {}", answer.body);
        assert!(!answer.body.contains('\u{2014}'), "{}", answer.body);
        assert_eq!(self.stated_size(origin).await, size);
        let saved = self.saved_size(origin);
        assert!(saved.is_none() || saved == Some(size), "{saved:?}");
    }
}

async fn start(
    config: &Path,
) -> (
    SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), WitnessError>>,
) {
    let config = WitnessConfig::load(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(hetao_gateway_core::witness::serve(
        config, listener, stopped,
    ));
    // Answering means open: key, logs and state loaded, so a test may change files after this.
    let ready = request(addr, "GET", "/checkpoints", Vec::new()).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    (addr, stop, task)
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection.
async fn request(addr: SocketAddr, method: &str, path: &str, body: Vec<u8>) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts a 200 with one cosignature line that verifies over `note` with the witness's key.
fn assert_cosigned(answer: &Answer, note: &str, witness: &AuditPublicKey) -> String {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.content_type, "text/x.tlog.signature");
    assert_eq!(answer.body.lines().count(), 1, "{}", answer.body);
    let cosigned = add_cosignatures(note, &answer.body);
    let timestamp = verify_cosignature(&cosigned, witness).unwrap();
    assert!(timestamp.abs_diff(now()) < 120, "timestamp {timestamp}");
    cosigned
}

fn assert_size_conflict(answer: &Answer, size: u64) {
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.content_type, "text/x.tlog.size");
    assert_eq!(answer.body, format!("{size}\n"));
}

// === The protocol ===

#[tokio::test]
async fn the_first_checkpoint_is_cosigned_and_its_cosignature_verifies() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    assert_eq!(w.stated_size(&log.origin()).await, 0);

    let answer = w.add(&log.body(0)).await;
    let cosigned = assert_cosigned(&answer, &log.note(), &w.key());
    assert!(answer
        .body
        .starts_with(&format!("\u{2014} {} ", w.report.name)));
    // The log's own signature still opens the cosigned note.
    let head =
        hetao_gateway_core::audit::note::open_checkpoint(&cosigned, &log.signer.public_key())
            .unwrap();
    assert_eq!(head.size, 5);
    assert_eq!(w.stated_size(&log.origin()).await, 5);
    assert_eq!(w.saved_size(&log.origin()), Some(5));
}

#[tokio::test]
async fn a_later_checkpoint_with_a_valid_consistency_proof_is_cosigned() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    let first = w.add(&log.body(0)).await;
    assert_cosigned(&first, &log.note(), &w.key());

    log.grow_to(12, "a");
    let answer = w.add(&log.body(5)).await;
    assert_cosigned(&answer, &log.note(), &w.key());
    assert_eq!(w.stated_size(&log.origin()).await, 12);
    // Each cosignature is for its own checkpoint only.
    let moved = add_cosignatures(&log.note(), &first.body);
    assert!(verify_cosignature(&moved, &w.key()).is_err());
}

#[tokio::test]
async fn a_rollback_to_a_smaller_size_is_refused_and_never_cosigned() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    let body_at_5 = log.body(0);
    assert_eq!(w.add(&body_at_5).await.status, 200);
    log.grow_to(12, "a");
    assert_eq!(w.add(&log.body(5)).await.status, 200);

    // The checkpoint of size 5 again, whatever old size the client claims.
    let origin = log.origin();
    let answer = w.add(&body_at_5).await;
    assert_size_conflict(&answer, 12);
    w.assert_not_cosigned(&answer, &origin, 12).await;
    let note_at_5 = body_at_5.split_once("\n\n").unwrap().1;
    let claiming_5 = add_checkpoint_body(5, &[], note_at_5);
    let answer = w.add(&claiming_5).await;
    assert_size_conflict(&answer, 12);
    w.assert_not_cosigned(&answer, &origin, 12).await;
    // Claiming the witness's own size: old beyond the checkpoint's size, 400.
    let claiming_12 = add_checkpoint_body(12, &[], note_at_5);
    let answer = w.add(&claiming_12).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    w.assert_not_cosigned(&answer, &origin, 12).await;
}

#[tokio::test]
async fn a_fork_of_the_same_size_is_refused_with_409_and_never_cosigned() {
    let mut log = log();
    log.grow_to(8, "a");
    let w = Witness::for_log(&log).await;
    assert_eq!(w.add(&log.body(0)).await.status, 200);

    let mut fork = log.fork(3);
    fork.grow_to(8, "b");
    assert_eq!(fork.origin(), log.origin());
    assert_ne!(fork.note(), log.note());
    for old in [8, 0] {
        let answer = w.add(&fork.body(old)).await;
        assert_size_conflict(&answer, 8);
        w.assert_not_cosigned(&answer, &log.origin(), 8).await;
    }
    // The cosigned checkpoint is still the original one, which is cosigned again.
    assert_cosigned(&w.add(&log.body(8)).await, &log.note(), &w.key());
}

#[tokio::test]
async fn a_fork_or_a_bad_consistency_proof_is_refused_with_422_and_never_cosigned() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    assert_eq!(w.add(&log.body(0)).await.status, 200);
    let origin = log.origin();

    // A rewritten log (leaves 3.. replaced) grown past the cosigned size, with its own proof.
    let mut fork = log.fork(3);
    fork.grow_to(10, "b");
    let answer = w.add(&fork.body(5)).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    w.assert_not_cosigned(&answer, &origin, 5).await;

    // The honest extension with one proof hash altered.
    log.grow_to(10, "a");
    let mut proof = log.tree.consistency_proof(10, 5).unwrap();
    proof[0].0[0] ^= 1;
    let answer = w.add(&add_checkpoint_body(5, &proof, &log.note())).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    w.assert_not_cosigned(&answer, &origin, 5).await;
    // The same extension with its real proof is cosigned: refusals leave the state as it was.
    assert_cosigned(&w.add(&log.body(5)).await, &log.note(), &w.key());
}

#[tokio::test]
async fn an_old_size_other_than_the_last_cosigned_gets_409_with_that_size() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    assert_eq!(w.add(&log.body(0)).await.status, 200);
    log.grow_to(9, "a");
    let origin = log.origin();

    let answer = w.add(&log.body(3)).await;
    assert_size_conflict(&answer, 5);
    w.assert_not_cosigned(&answer, &origin, 5).await;
    // A client that does not know where the witness stands asks with old 0 and learns it.
    let answer = w.add(&log.body(0)).await;
    assert_size_conflict(&answer, 5);
    let learned =
        hetao_gateway_core::witness::protocol::parse_size_body(answer.body.as_bytes()).unwrap();
    assert_cosigned(&w.add(&log.body(learned)).await, &log.note(), &w.key());
}

#[tokio::test]
async fn the_same_checkpoint_again_is_cosigned_again() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    assert_cosigned(&w.add(&log.body(0)).await, &log.note(), &w.key());
    assert_cosigned(&w.add(&log.body(5)).await, &log.note(), &w.key());
    assert_eq!(w.stated_size(&log.origin()).await, 5);
}

#[tokio::test]
async fn a_checkpoint_signed_by_another_key_is_refused_with_403() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    let origin = log.origin();

    // The log's checkpoint text, signed by another key under the log's name.
    let note = log.note();
    let text = &note[..=note.find("\n\n").unwrap()];
    let other = Log::new();
    let mut id_input = format!("{origin}\n").into_bytes();
    id_input.push(0x01);
    id_input.extend_from_slice(other.signer.public_key().raw());
    let digest = ring::digest::digest(&ring::digest::SHA256, &id_input);
    let mut blob = digest.as_ref()[..4].to_vec();
    blob.extend_from_slice(&other.signer.sign_raw(text.as_bytes()));
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    let forged = format!("{text}\n\u{2014} {origin} {b64}\n");
    let answer = w.add(&add_checkpoint_body(0, &[], &forged)).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    w.assert_not_cosigned(&answer, &origin, 0).await;

    // The log's own signature line, altered.
    let sig_at = note.rfind(' ').unwrap() + 1;
    let mut altered = note.clone();
    let flipped = if &note[sig_at + 8..sig_at + 9] == "A" {
        "B"
    } else {
        "A"
    };
    altered.replace_range(sig_at + 8..sig_at + 9, flipped);
    let answer = w.add(&add_checkpoint_body(0, &[], &altered)).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    w.assert_not_cosigned(&answer, &origin, 0).await;

    // Another log's own checkpoint: a log this witness does not know, 404.
    let mut stranger = Log::new();
    stranger.grow_to(5, "s");
    let answer = w.add(&stranger.body(0)).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    w.assert_not_cosigned(&answer, &origin, 0).await;
}

#[tokio::test]
async fn malformed_oversized_and_misdirected_requests_are_refused_without_cosigning() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    let origin = log.origin();
    for body in [
        "hello".to_string(),
        format!("old 01\n\n{}", log.note()),
        format!("old 0\nnot-a-hash\n\n{}", log.note()),
        "old 0\n\nnot a note\n".to_string(),
        // A proof from the empty tree: there is none.
        add_checkpoint_body(0, &log.tree.consistency_proof(5, 2).unwrap(), &log.note()),
    ] {
        let answer = w.add(&body).await;
        assert_eq!(answer.status, 400, "{body:?}: {}", answer.body);
        w.assert_not_cosigned(&answer, &origin, 0).await;
    }
    let huge = format!("old 0\n\n{}", "x".repeat(70 * 1024));
    let answer = w.add(&huge).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    let get = request(w.addr, "GET", "/add-checkpoint", Vec::new()).await;
    assert_eq!(get.status, 405);
    let elsewhere = request(w.addr, "POST", "/somewhere", log.body(0).into_bytes()).await;
    assert_eq!(elsewhere.status, 404);
    assert_eq!(w.stated_size(&origin).await, 0);
    assert_eq!(w.saved_size(&origin), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_for_one_log_cosign_exactly_one_extension() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    assert_eq!(w.add(&log.body(0)).await.status, 200);
    // Eight clients at once, each extending size 5 to a different size: once one is cosigned,
    // the others' `old 5` is stale. Checked and saved atomically, exactly one wins and the state
    // is the one it won with (never rolled back by a slower request).
    let mut bodies = Vec::new();
    for size in 6..=13 {
        log.grow_to(size, "a");
        bodies.push((size, log.body(5)));
    }
    let addr = w.addr;
    let answers = futures_join(bodies.iter().map(|(size, body)| {
        let body = body.clone();
        let size = *size;
        async move {
            (
                size,
                request(addr, "POST", "/add-checkpoint", body.into_bytes()).await,
            )
        }
    }))
    .await;
    let winners: Vec<u64> = answers
        .iter()
        .filter(|(_, a)| a.status == 200)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(winners.len(), 1, "{winners:?}");
    for (_, answer) in answers.iter().filter(|(_, a)| a.status != 200) {
        assert_size_conflict(answer, winners[0]);
    }
    assert_eq!(w.stated_size(&log.origin()).await, winners[0]);
    assert_eq!(w.saved_size(&log.origin()), Some(winners[0]));
}

/// Runs the futures concurrently on the runtime and collects their outputs in order.
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

// === State ===

#[tokio::test(flavor = "multi_thread")]
async fn state_survives_a_restart_and_the_rollback_is_still_refused() {
    let mut log = log();
    log.grow_to(5, "a");
    let mut w = Witness::for_log(&log).await;
    let body_at_5 = log.body(0);
    assert_eq!(w.add(&body_at_5).await.status, 200);
    let mut fork = log.fork(5);
    log.grow_to(12, "a");
    assert_eq!(w.add(&log.body(5)).await.status, 200);

    w.restart().await;
    let origin = log.origin();
    assert_eq!(w.stated_size(&origin).await, 12);
    let answer = w.add(&body_at_5).await;
    assert_size_conflict(&answer, 12);
    w.assert_not_cosigned(&answer, &origin, 12).await;
    fork.grow_to(12, "b");
    let answer = w.add(&fork.body(12)).await;
    assert_size_conflict(&answer, 12);
    w.assert_not_cosigned(&answer, &origin, 12).await;
    // And the honest log goes on.
    log.grow_to(20, "a");
    assert_cosigned(&w.add(&log.body(12)).await, &log.note(), &w.key());
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_witness_from_starting() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    assert_eq!(w.add(&log.body(0)).await.status, 200);
    w.stop.send(true).unwrap();
    let state = w.state_file();
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();

    let config = WitnessConfig::load(&w.report.config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_stop, stopped) = watch::channel(false);
    let err = hetao_gateway_core::witness::serve(config, listener, stopped)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("corrupt"), "{message}");
    assert!(message.contains("witness-state.json"), "{message}");
}

#[tokio::test]
async fn a_state_that_cannot_be_saved_gets_500_and_nothing_is_cosigned() {
    let mut log = log();
    log.grow_to(5, "a");
    let w = Witness::for_log(&log).await;
    // The folder of the state file disappears under the running witness.
    std::fs::remove_dir_all(w.report.config.parent().unwrap()).unwrap();
    let answer = w.add(&log.body(0)).await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    // The answer names no path: the detail is in the witness's log.
    assert!(!answer.body.contains('/'), "{}", answer.body);
    w.assert_not_cosigned(&answer, &log.origin(), 0).await;
}

// === The command line ===

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The witness binary, killed when dropped, so a failing test leaves nothing running.
struct WitnessProcess(Child);

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn witness_init_then_serve_through_the_binary_answers() {
    for sub in ["init", "serve"] {
        let help = bin().args(["witness", sub, "--help"]).output().unwrap();
        assert!(help.status.success());
        assert!(stdout(&help).contains("Usage:"), "{}", stdout(&help));
    }
    let mut log = log();
    log.grow_to(5, "a");
    let dir = tempfile::tempdir().unwrap();
    let public = log.write_public_key(dir.path());
    let out = dir.path().join("witness");
    // A free port, released for the witness to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let init_args = [
        "witness",
        "init",
        "--out",
        out.to_str().unwrap(),
        "--log-public-key",
        public.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    let o = bin().args(init_args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let witness_pub = out.join("witness.pub");
    let key = AuditPublicKey::from_pem_file(&witness_pub).unwrap();
    let printed = stdout(&o);
    assert!(printed.contains(&witness_name_of(&key)), "{printed}");
    assert!(printed.contains(witness_pub.to_str().unwrap()), "{printed}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("witness.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let toml = std::fs::read_to_string(out.join("witness.toml")).unwrap();
    assert!(
        toml.contains(&format!("origin = \"{}\"", log.origin())),
        "{toml}"
    );
    // Never over an existing witness.
    let key_before = std::fs::read(out.join("witness.key")).unwrap();
    let again = bin().args(init_args).output().unwrap();
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read(out.join("witness.key")).unwrap(), key_before);

    let child = bin()
        .args(["witness", "serve", "--config"])
        .arg(out.join("witness.toml"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut process = WitnessProcess(child);
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(process.0.try_wait().unwrap().is_none(), "witness exited");
        assert!(Instant::now() < deadline, "witness not listening");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = request(addr, "GET", "/", Vec::new()).await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(status.body.contains(&log.origin()), "{}", status.body);
    let answer = request(addr, "POST", "/add-checkpoint", log.body(0).into_bytes()).await;
    assert_cosigned(&answer, &log.note(), &key);

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(process.0.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(exit.success(), "{exit}");
    let state = std::fs::read_to_string(out.join("witness-state.json")).unwrap();
    assert!(state.contains(&log.origin()), "{state}");
}

// === The documentation ===

#[test]
fn the_witness_configs_in_the_docs_are_accepted() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/witness.md"))
            .unwrap();
    let mut seen = 0;
    for block in doc.split("```toml\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let path = Path::new("/etc/hetao-witness/witness.toml");
        if let Err(e) = WitnessConfig::parse(block, path) {
            panic!("docs/witness.md: a configuration block is refused: {e}\n{block}");
        }
        seen += 1;
    }
    assert!(seen >= 1, "no configuration block in docs/witness.md");
}
