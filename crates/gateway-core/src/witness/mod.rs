//! The witness: a small server a park runs that cosigns the gateway's audit checkpoints after
//! checking that each one extends the last it cosigned (c2sp.org/tlog-witness,
//! c2sp.org/tlog-cosignature). A gateway that shows one history to one park and another history
//! to the other, or rewrites its log, cannot get both cosigned by the same witness.
//!
//! - [`cosignature`]: cosignature lines (cosignature/v1): make, verify, add to a note. What the
//!   gateway and auditors use.
//! - [`protocol`]: the `POST /add-checkpoint` request body and the answers' formats.
//! - [`state`]: the last cosigned checkpoint per log, written durably before any answer.
//! - [`cosigner`]: the checks between a request and a cosignature ([`Witness`]).
//! - [`config`]: `witness.toml` and what `witness init` writes.
//! - [`server`]: the HTTP/1.1 listener.

pub mod config;
pub mod cosignature;
pub mod cosigner;
pub mod protocol;
pub mod server;
pub mod state;

pub use config::{LogConfig, WitnessConfig, WitnessError};
pub use cosignature::{
    add_cosignatures, cosign, verify_cosignature, witness_name_of, CosignatureError,
};
pub use cosigner::{Refusal, Witness};
pub use server::serve;
