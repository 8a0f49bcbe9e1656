//! pgsluice: a PostgreSQL connection pooler.
//!
//! How one query travels:
//! listener ([`net::listener`], accepted by [`frontend::serve`]) → the client's task
//! ([`frontend::task`]) → startup and login ([`frontend::handshake`], [`frontend::authenticate`] over
//! the exchanges of [`auth`]; or the admin console, [`admin`]) → idle and requests ([`frontend::session`]) → at the start of a transaction a server is checked out of its
//! pool ([`pool`], opened by [`backend::connect`] when none is idle) → bytes are relayed both ways
//! unchanged ([`relay`]) while the scanner ([`proto::scan`]) watches for ReadyForQuery → the server goes
//! back to the pool when it is idle and clean (transaction and statement mode) or when the client leaves
//! (session mode).
//!
//! Counters and probes for Prometheus and Kubernetes are served by [`metrics`].
//!
//! Protocol code in [`proto`] and the SCRAM exchange in [`auth::scram`] are sans-IO and fuzzed.

#![forbid(unsafe_code)]
// Functions stop growing back: past 80 lines, split along a seam.
#![warn(clippy::too_many_lines)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod clients;
pub mod config;
pub mod discovery;
pub mod error;
pub mod frontend;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod peers;
pub mod pool;
pub mod prepared;
pub mod process;
pub mod proto;
pub mod relay;
pub mod run;
pub mod shutdown;
