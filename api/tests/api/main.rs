//! The API's tests: one binary (one build, one link) with a module per
//! area, over the harness in `conveyor-tests` (`tests/src/api.rs`).

mod accountability;
mod admin_and_credentials;
mod admin_roles;
mod audit_log;
mod bad_input;
mod console;
mod http_api;
mod marketplace;
mod observability;
mod resilience;
mod retention;
mod usage;
