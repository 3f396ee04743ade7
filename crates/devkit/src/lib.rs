//! Development tooling around hetao-gateway: the reference park endpoint (what a park's intake
//! system must do to receive records) and the one-command demo of the whole zone on loopback.
//! Nothing here runs at the boundary.
#![forbid(unsafe_code)]

pub mod demo;
pub mod endpoint;
