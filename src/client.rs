//! A partner organisation's client: sends records to the gateway over mutual TLS.
//! Used by `send`, `demo` and the tests.
//! INTERFACE STUB: to be implemented (see issue 5).
