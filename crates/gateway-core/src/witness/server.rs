//! The witness's HTTP/1.1 listener: `POST /add-checkpoint` (c2sp.org/tlog-witness) and
//! `GET /` or `GET /checkpoints` (each log's last cosigned size, for operators' health checks).
//!
//! Plain HTTP: nothing here is secret, and what a witness answers is checked by its key, not by
//! the channel. Bounded like every listener that strangers can reach: a connection cap, a
//! timeout on request heads (which also closes idle keep-alive connections) and on bodies, a
//! body size limit. This is the one place that turns a [`Refusal`] into an HTTP answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::config::{WitnessConfig, WitnessError};
use super::cosigner::{Refusal, Witness};
use super::protocol::{
    parse_add_checkpoint, size_body, ADD_CHECKPOINT_PATH, MAX_BODY_BYTES, SIGNATURE_CONTENT_TYPE,
    SIZE_CONTENT_TYPE,
};
use crate::audit::tree::hash_to_b64;
use crate::shutdown::stop_requested;

/// Connections open at once: a witness serves a gateway or two and an operator's checks.
const MAX_CONNECTIONS: usize = 256;
/// The longest a request head may take, and a keep-alive connection may sit idle.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may finish after shutdown is requested.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Opens the witness from `config` (key, logs, state: a corrupt state is an error here) and
/// serves on `listener` until `shutdown` turns true.
pub async fn serve(
    config: WitnessConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WitnessError> {
    let witness = Arc::new(Witness::open(&config)?);
    run(witness, listener, shutdown).await;
    Ok(())
}

/// Serves an opened witness on `listener` until `shutdown` turns true, then lets requests in
/// flight finish for a short grace period.
pub async fn run(
    witness: Arc<Witness>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(target: "hetao::witness", %addr, name = witness.name(),
            logs = witness.status().len(), "witness listening");
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, remote)) = accepted else {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!(target: "hetao::witness", %remote, max = MAX_CONNECTIONS,
                        "connection refused: connection cap reached");
                    continue;
                };
                let witness = witness.clone();
                let service = service_fn(move |req| route(witness.clone(), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = conn.await {
                        tracing::debug!(target: "hetao::witness", %remote, error = %e,
                            "connection ended with an error");
                    }
                });
            }
            _ = stop_requested(&mut shutdown) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(target: "hetao::witness", "grace period over: open connections cut off");
    }
    tracing::info!(target: "hetao::witness", "witness stopped");
}

async fn route(
    witness: Arc<Witness>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::POST, ADD_CHECKPOINT_PATH) => add_checkpoint(witness, req).await,
        (&Method::GET, "/" | "/checkpoints") => checkpoints(&witness),
        (_, ADD_CHECKPOINT_PATH | "/" | "/checkpoints") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

async fn add_checkpoint(
    witness: Arc<Witness>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was too slow\n",
            )
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {MAX_BODY_BYTES} bytes\n"),
            )
        }
        Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "the request body did not arrive\n"),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let request = match parse_add_checkpoint(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Checking, saving and signing run to completion in their own task, whatever happens to the
    // connection: a state saved but not held in memory would let a later request be checked
    // against a stale state.
    let decided = {
        let request = request.clone();
        tokio::task::spawn_blocking(move || witness.add_checkpoint(&request, now)).await
    };
    match decided {
        Ok(Ok(line)) => {
            tracing::info!(target: "hetao::witness", old = request.old, "checkpoint cosigned");
            let mut r = text(StatusCode::OK, &line);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(SIGNATURE_CONTENT_TYPE),
            );
            r
        }
        Ok(Err(refusal)) => refused(&refusal, &request.note),
        Err(e) => {
            tracing::error!(target: "hetao::witness", error = %e, "add-checkpoint task failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; nothing was cosigned\n",
            )
        }
    }
}

/// The answer to a refused checkpoint. Forks and failed proofs are logged with the checkpoint:
/// signed by the log's key, it is evidence that the log misbehaved.
fn refused(refusal: &Refusal, note: &str) -> Response<Full<Bytes>> {
    let size_answer = |latest: u64| {
        let mut r = text(StatusCode::CONFLICT, &size_body(latest));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(SIZE_CONTENT_TYPE),
        );
        r
    };
    match refusal {
        Refusal::Fork { .. } | Refusal::Rollback { .. } | Refusal::Inconsistent { .. } => {
            tracing::warn!(target: "hetao::witness", reason = %refusal, checkpoint = note,
                "checkpoint refused: the log may have forked or been rewritten");
        }
        Refusal::Storage(_) => {
            tracing::error!(target: "hetao::witness", error = %refusal, "nothing cosigned");
        }
        _ => tracing::info!(target: "hetao::witness", reason = %refusal, "checkpoint refused"),
    }
    match refusal {
        Refusal::Malformed(_) | Refusal::OldBeyondSize { .. } => {
            text(StatusCode::BAD_REQUEST, &format!("{refusal}\n"))
        }
        Refusal::UnknownLog(_) => text(StatusCode::NOT_FOUND, &format!("{refusal}\n")),
        Refusal::NotSigned { .. } => text(StatusCode::FORBIDDEN, &format!("{refusal}\n")),
        Refusal::OldSizeMismatch { latest, .. } | Refusal::Rollback { latest, .. } => {
            size_answer(*latest)
        }
        Refusal::Fork { size } => size_answer(*size),
        Refusal::Inconsistent { .. } => {
            text(StatusCode::UNPROCESSABLE_ENTITY, &format!("{refusal}\n"))
        }
        // The detail (a path, an OS error) is in the log, not in the answer.
        Refusal::Storage(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the witness cannot save its state; nothing was cosigned\n",
        ),
    }
}

/// Each log's last cosigned checkpoint.
fn checkpoints(witness: &Witness) -> Response<Full<Bytes>> {
    let logs: Vec<_> = witness
        .status()
        .into_iter()
        .map(|log| match log.head {
            Some(head) => json!({
                "origin": log.origin,
                "size": head.size,
                "root": hash_to_b64(&head.root),
            }),
            None => json!({"origin": log.origin, "size": 0, "root": null}),
        })
        .collect();
    crate::error::json_response(
        StatusCode::OK,
        &json!({"witness": witness.name(), "logs": logs}),
    )
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
