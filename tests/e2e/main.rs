//! End-to-end tests: real PostgreSQL (a fresh database per test), the real
//! runner and worker, and loopback stub servers.

mod api_keys;
mod credentials;
mod flow;
mod for_each;
mod hardening;
mod held;
mod language;
mod marketplace_review;
mod migrations;
mod multi_step;
mod oauth;
mod paging;
mod queue;
mod retries;
mod templates;
