//! The API's tests: one binary (one build, one link) with a module per
//! area, over the harness in `conveyor-tests` (`tests/src/api.rs`); what
//! the modules share beyond it is in `support`.

mod accountability;
mod admin_and_credentials;
mod admin_roles;
mod audit_log;
mod authentication;
mod bad_input;
mod callbacks;
mod console;
mod console_forms;
mod console_live;
mod console_oauth;
mod end_to_end;
mod for_each_steps;
mod idempotency;
mod input_edges;
mod isolation;
mod language;
mod marketplace;
mod membership;
mod metrics;
mod observability;
mod openapi_document;
mod outbox;
mod paged_steps;
mod pagination;
mod resilience;
mod retention;
mod schedules;
mod secrets;
mod subscriptions;
mod support;
mod triggers;
mod usage;
