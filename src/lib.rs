//! The `hetao-gateway` command line: one binary with every subcommand. The gateway itself lives in
//! `hetao-gateway-core`; the tooling (`certs`, `send`, `demo`) in `hetao-pki`, `hetao-client` and
//! `hetao-devkit`. This library exists so tests drive the same code as the binary.
#![forbid(unsafe_code)]

pub mod cli;
