//! TLS: PEM loading, the inbound server config (client certificates required), the upstream
//! client config, and the sender identity.

pub mod identity;
