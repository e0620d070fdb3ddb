//! Conveyor's engine: the domain of a durable execution engine for
//! declarative HTTP connectors.
//!
//! # Layout
//!
//! - [`cache`]: the bounded, size-aware cache of connector definitions.
//! - [`callback`]: completion callbacks and subscription events: the URL
//!   rule, the event types, the payload, the Standard Webhooks signature
//!   headers and the 24-hour retry schedule.
//! - [`connector`]: the connector definition model and its save-time
//!   validation (errors carry the JSON path of the offending field).
//! - [`template`]: `<<...>>` templates (minijinja with custom delimiters),
//!   typed substitution and escaping by destination.
//! - [`extract`]: RFC 9535 JSONPath extraction of response fields.
//! - [`flow`]: flow control, pure: GCRA arithmetic, providers' rate-limit
//!   signals, and why a queued execution waits.
//! - [`credential_rules`]: what a stored credential may hold (name, field
//!   names, value sizes).
//! - [`crypto`]: AES-256-GCM sealing of workspace credentials.
//! - [`decide`]: what follows a step attempt (continue, succeed, retry at a
//!   time, fail with a typed error) and the output: pure, table-tested.
//! - [`http`]: the step client: renders one step, sends it, classifies the
//!   outcome and redacts what it stores.
//! - [`json`]: reading JSON into typed values (whole floats as integers,
//!   no structs written as arrays).
//! - [`marketplace`]: connector templates: validation, install, upgrade.
//! - [`net`]: the outbound address policy (no private networks by default)
//!   and the DNS resolver that enforces it.
//! - [`for_each`]: steps run once per item of an array, pure: the items,
//!   the next item due, and the fields collected over the items in item
//!   order.
//! - [`paging`]: paginated steps, pure: the next page's request, the
//!   fields accumulated across pages, and when paging ends.
//! - [`oauth`]: OAuth2 and Nango credentials: provider presets (data),
//!   PKCE, the token endpoint client and the refresh that never races.
//! - [`redact`]: decrypted [`Credentials`](redact::Credentials) and their
//!   redaction from everything stored or shown.
//! - [`retry`]: pure backoff delays.
//! - [`runner`]: runs one claimed execution, step by step, fenced (a
//!   `for_each` step's items up to its `concurrency` at once), and
//!   group-commits the steps.
//! - [`schedule`]: cron expressions in IANA zones and their fire times
//!   (DST by the wall clock): pure, table-tested.
//! - [`start`]: starts executions (input check against a cached compiled
//!   schema, enqueue, counters) for execute, batch and rerun.
//! - [`state`]: the stored states (execution status, step outcome, review
//!   status) as enums.
//! - [`telemetry`]: trace-context propagation through the queue.
//! - [`webhook`]: webhook signatures: verifying providers' schemes
//!   (Stripe, Shopify, Slack, GitHub, Standard Webhooks, generic HMAC) in
//!   constant time, signing per Standard Webhooks. Pure.
//! - [`store`]: all SQL, and the LISTEN/NOTIFY channel names. Nothing
//!   outside this crate writes to the database.
//!
//! IO happens in [`http`] and [`net`] (outbound requests, DNS), [`store`]
//! (the database), and [`runner`] and [`start`], which drive them. Every
//! other module is pure.

pub mod batch;
pub mod cache;
pub mod callback;
pub mod connector;
pub mod credential_rules;
pub mod crypto;
pub mod decide;
pub mod error;
pub mod extract;
pub mod flow;
pub mod for_each;
pub mod http;
pub mod json;
pub mod marketplace;
pub mod net;
pub mod oauth;
pub mod paging;
pub mod redact;
pub mod retry;
pub mod runner;
pub mod schedule;
pub mod start;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod webhook;

pub use error::{Error, Result};

/// The schema migrations under `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
