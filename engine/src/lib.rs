//! Conveyor's engine: the domain of a durable execution engine for
//! declarative HTTP connectors.
//!
//! # Layout
//!
//! - [`connector`]: the connector definition model and its save-time
//!   validation (errors carry the JSON path of the offending field).
//! - [`template`]: `<<...>>` templates (minijinja with custom delimiters),
//!   typed substitution and escaping by destination.
//! - [`extract`]: RFC 9535 JSONPath extraction of response fields.
//! - [`crypto`]: AES-256-GCM sealing of workspace credentials.
//! - [`http`]: the HTTP step runner (render, send, classify, redact).
//! - [`json`]: reading JSON into typed values (whole floats as integers,
//!   no structs written as arrays).
//! - [`marketplace`]: connector templates: validation, install, upgrade.
//! - [`net`]: the outbound address policy (no private networks by default).
//! - [`retry`]: pure backoff delays.
//! - [`runner`]: runs one claimed execution, step by step, fenced.
//! - [`telemetry`]: trace-context propagation through the queue.
//! - [`store`]: all SQL. Nothing outside this crate writes to the database.
//!
//! Pure modules do no IO; only [`http`] and [`store`] talk to the outside.

pub mod connector;
pub mod crypto;
pub mod error;
pub mod extract;
pub mod http;
pub mod json;
pub mod marketplace;
pub mod net;
mod redact;
pub mod retry;
pub mod runner;
pub mod store;
pub mod telemetry;
pub mod template;

pub use error::{Error, Result};

/// The schema migrations under `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
