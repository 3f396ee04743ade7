//! The auditors' view of a hetao-gateway audit log (`hetao-gateway audit serve`): a read-only web
//! page and JSON API over the log, with the verification status `audit verify` gives, decisions
//! filtered and paged, one entry with its rules and evidence, the checkpoints and their
//! cosignatures, charts, and CSV/JSON exports; over a cluster's database, every instance's log at
//! once ([`database`]).
//!
//! It never writes: the log's files are only opened for reading. What a sender wrote (record ids,
//! organisation names, reasons quoting record values) is escaped in HTML by the templates and
//! neutralised in CSV ([`hetao_gateway_core::printable::csv_field`]).
#![forbid(unsafe_code)]

pub mod charts;
pub mod database;
pub mod filter;
pub mod html;
pub mod index;
pub mod server;
pub mod status;
pub mod view;

pub use database::DatabaseSource;
pub use server::{acceptor_for, run, ListenError, TlsFiles};
pub use view::{Answer, AuditView};
