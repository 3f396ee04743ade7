//! hetao-gateway: the mutual-TLS checkpoint between the Shenzhen and Hong Kong parks of the Hetao
//! co-operation zone. A record arrives over mTLS, is validated against the schema of its kind,
//! decided against the declared flow policies, written to the tamper-evident audit log, forwarded
//! over mTLS to the destination park, and answered with a signed receipt.
//!
//! The data flow reads top to bottom in [`pipeline`]; the decision itself is one pure function,
//! [`checkpoint::Checkpoint::examine`], shared with `check`, `policy test` and the benches.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod causes;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod connection_activity;
pub mod envelope;
pub mod error;
pub mod json_limits;
pub mod key_file;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod policy_cases;
pub mod printable;
pub mod rate_limit;
pub mod registry;
pub mod replay;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod witness;
