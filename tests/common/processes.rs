//! The real gateway binary as a child process, for tests that kill it (SIGKILL) or run several:
//! its park endpoints from a development PKI, a free port, and a plain HTTP GET on its admin
//! listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hetao_devkit::endpoint::{EndpointBehaviour, EndpointOptions, ParkEndpoint, RunningEndpoint};
use hetao_pki::DevPkiFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free loopback port (bound and released; the gateway binds it with SO_REUSEADDR).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A park's endpoint in this process (so it survives the gateway's kills), with the
/// development PKI's certificates; it accepts every record.
pub async fn start_dev_endpoint(files: &DevPkiFiles, park: &str) -> RunningEndpoint {
    let p = files.park(park).unwrap();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    ParkEndpoint::start(EndpointOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_pem: read(&p.endpoint_cert),
        key_pem: read(&p.endpoint_key),
        client_ca_pem: read(&files.gateway_ca_cert),
        behaviour: EndpointBehaviour::Accept,
        log_file: None,
    })
    .await
    .unwrap()
}

/// Starts `serve --config CONFIG` (its stderr appended to `log`) and waits until `/readyz` on
/// `admin` answers 200, at most `within`; `what` names the start in a failure, which shows the log.
pub async fn start_gateway(
    config: &Path,
    admin: SocketAddr,
    log: PathBuf,
    within: Duration,
    what: &str,
) -> GatewayProcess {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hetao-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    let mut gw = GatewayProcess { child, log };
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            panic!(
                "{what}: the gateway exited with {status}. Its log:\n{}",
                gw.log_text()
            );
        }
        if admin_get(admin, "/readyz").await.map(|r| r.0) == Some(200) {
            return gw;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the gateway was not ready within {within:?}. Its log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The gateway binary, killed (SIGKILL) when dropped, so a failing test leaves nothing running.
pub struct GatewayProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl GatewayProcess {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (what `Child::kill` sends on Unix), by this process's own id, then reap it.
    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends a signal (`"STOP"`, `"CONT"`, `"TERM"`, ...) to this process, by its own id.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// SIGTERM: drain and final checkpoint; waits for the exit, at most `limit`.
    pub async fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not stop within {limit:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP GET on an admin listener: status and body, `None` when it does not answer
/// (yet) within 5 s.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}
