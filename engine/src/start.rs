//! Starting executions, for every way the API starts one (execute, batch
//! execute, rerun): the input check against the connector's compiled
//! `input_schema` (compiled once per connector version and cached), the
//! enqueue in one transaction (the caller's, or its own), and the enqueue
//! counter.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::connector::{Connector, ValidationError};
use crate::store::executions::{self, Enqueued, NewExecution};

/// Compiled input schemas kept at most; past it the cache starts over (a
/// recompile costs one request a few milliseconds).
const MAX_CACHED_SCHEMAS: usize = 1024;

/// A connector version's compiled `input_schema`: `None` when it does not
/// compile (save-time validation refuses that, so only old rows can).
type Compiled = Arc<Option<jsonschema::Validator>>;

/// Why executions were not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Item `index` reused an idempotency key of a different request
    /// (another connector or input); nothing was enqueued.
    #[error("item {index}: the idempotency key was already used for a different request")]
    ReusedKey {
        /// The offending item's position.
        index: usize,
    },
    /// A database error; nothing was enqueued.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

/// Starts executions. Share one per process: it caches compiled schemas.
#[derive(Default)]
pub struct Starter {
    schemas: Mutex<HashMap<(Uuid, i32), Compiled>>,
}

impl Starter {
    /// A starter with an empty schema cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `input` against version `version` of connector `id`
    /// (`connector`): it must be an object matching the `input_schema`.
    /// `prefix` locates the input in the request (`input`,
    /// `format_args!("items[{i}].input")`); it is written out only when
    /// there is a problem to name.
    ///
    /// # Errors
    ///
    /// Every problem, its path under `prefix`.
    pub fn check_input(
        &self,
        id: Uuid,
        version: i32,
        connector: &Connector,
        input: &Value,
        prefix: impl fmt::Display,
    ) -> Result<(), Vec<ValidationError>> {
        if !input.is_object() {
            return Err(vec![problem(prefix.to_string(), "must be a JSON object")]);
        }
        let Some(schema) = &connector.input_schema else {
            return Ok(());
        };
        let compiled = self.compiled(id, version, schema);
        let Some(validator) = compiled.as_ref() else {
            return Err(vec![problem(
                "input_schema",
                "the connector's input_schema is invalid",
            )]);
        };
        let mut errors = validator.iter_errors(input).peekable();
        if errors.peek().is_none() {
            return Ok(());
        }
        let prefix = prefix.to_string();
        Err(errors
            .map(|e| {
                let at = pointer_to_path(&prefix, &e.instance_path().to_string());
                problem(at, e.to_string())
            })
            .collect())
    }

    fn compiled(&self, id: Uuid, version: i32, schema: &Value) -> Compiled {
        // A poisoned lock only means another task panicked mid-insert; the
        // map is still a valid cache.
        let mut schemas = self.schemas.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = schemas.get(&(id, version)) {
            return c.clone();
        }
        if schemas.len() >= MAX_CACHED_SCHEMAS {
            schemas.clear();
        }
        let compiled = Arc::new(jsonschema::validator_for(schema).ok());
        schemas.insert((id, version), compiled.clone());
        compiled
    }

    /// Enqueues `news` in one transaction (all or none), with one INSERT
    /// statement for all of them ([`executions::enqueue_many`]), and counts
    /// the created ones in `conveyor_executions_enqueued_total`. An item
    /// whose idempotency key exists for the same request returns that
    /// execution (`created: false`).
    ///
    /// # Errors
    ///
    /// [`StartError::ReusedKey`] for the first item reusing a key for a
    /// different request, or a database error; nothing is enqueued then.
    pub async fn start(
        &self,
        pool: &PgPool,
        news: &[NewExecution],
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StartError> {
        let mut tx = pool.begin().await.map_err(crate::Error::from)?;
        let out = self.start_in(&mut tx, news, now).await?;
        tx.commit().await.map_err(crate::Error::from)?;
        count_created(&out);
        Ok(out)
    }

    /// [`start`](Self::start) inside the caller's transaction, so that
    /// what else the caller writes (an audit entry) commits with the
    /// executions, in one commit. The caller commits, then counts the
    /// created ones with [`count_created`]; on an error it drops the
    /// transaction, rolling every item back.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_in(
        &self,
        conn: &mut PgConnection,
        news: &[NewExecution],
        now: DateTime<Utc>,
    ) -> Result<Vec<Enqueued>, StartError> {
        let out = executions::enqueue_many(conn, news, now).await?;
        match out.iter().position(|e| !e.same_request) {
            Some(index) => Err(StartError::ReusedKey { index }),
            None => Ok(out),
        }
    }

    /// [`start`](Self::start) for one execution.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_one(
        &self,
        pool: &PgPool,
        new: &NewExecution,
        now: DateTime<Utc>,
    ) -> Result<Enqueued, StartError> {
        let mut tx = pool.begin().await.map_err(crate::Error::from)?;
        let enqueued = enqueue(&mut tx, 0, new, now).await?;
        tx.commit().await.map_err(crate::Error::from)?;
        count_created(std::slice::from_ref(&enqueued));
        Ok(enqueued)
    }
}

/// Enqueues item `index`; a reused key of a different request is an error
/// (the caller drops the transaction, rolling every item back).
async fn enqueue(
    conn: &mut sqlx::PgConnection,
    index: usize,
    new: &NewExecution,
    now: DateTime<Utc>,
) -> Result<Enqueued, StartError> {
    let enqueued = executions::enqueue(conn, new, now).await?;
    if enqueued.same_request {
        Ok(enqueued)
    } else {
        Err(StartError::ReusedKey { index })
    }
}

/// Counts the created executions of `enqueued` in
/// `conveyor_executions_enqueued_total`, once their transaction committed.
pub fn count_created(enqueued: &[Enqueued]) {
    let created = enqueued.iter().filter(|e| e.created).count();
    metrics::counter!("conveyor_executions_enqueued_total").increment(created as u64);
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        path: path.into(),
        message: message.into(),
    }
}

/// A JSON Pointer (`/items/0/name`) under `prefix`, in the API's path
/// notation (`input.items[0].name`).
fn pointer_to_path(prefix: &str, pointer: &str) -> String {
    let mut path = prefix.to_owned();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        match token.parse::<usize>() {
            Ok(index) => crate::json::push_index(&mut path, index),
            Err(_) => crate::json::push_key(&mut path, &token),
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn connector(schema: Value) -> Connector {
        serde_json::from_value(json!({
            "name": "c",
            "input_schema": schema,
            "steps": [{"name": "a", "method": "GET", "url": "https://x.test"}],
        }))
        .expect("connector")
    }

    #[test]
    fn input_problems_are_located_under_the_prefix() {
        let starter = Starter::new();
        let c = connector(json!({
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}}},
        }));
        let id = Uuid::now_v7();
        assert_eq!(
            starter.check_input(id, 1, &c, &json!({"items": [{"n": 1}]}), "input"),
            Ok(())
        );
        let errors = starter
            .check_input(id, 1, &c, &json!({"items": [{"n": "x"}]}), "items[2].input")
            .expect_err("invalid");
        assert_eq!(errors[0].path, "items[2].input.items[0].n");
        let errors = starter
            .check_input(id, 1, &c, &json!([1]), "input")
            .expect_err("not an object");
        assert_eq!(errors, [problem("input", "must be a JSON object")]);
    }

    #[test]
    fn schema_pointers_become_api_paths() {
        assert_eq!(pointer_to_path("input", ""), "input");
        assert_eq!(pointer_to_path("input", "/o/n"), "input.o.n");
        assert_eq!(
            pointer_to_path("items[0].input", "/xs/1"),
            "items[0].input.xs[1]"
        );
        assert_eq!(pointer_to_path("input", "/a~1b/c~0d"), "input.a/b.c~d");
    }

    #[test]
    fn a_schema_is_compiled_once_per_connector_version() {
        let starter = Starter::new();
        let c = connector(json!({"type": "object"}));
        let id = Uuid::now_v7();
        let first = starter.compiled(id, 1, c.input_schema.as_ref().expect("schema"));
        let again = starter.compiled(id, 1, c.input_schema.as_ref().expect("schema"));
        assert!(Arc::ptr_eq(&first, &again));
        let other = starter.compiled(id, 2, c.input_schema.as_ref().expect("schema"));
        assert!(!Arc::ptr_eq(&first, &other));
    }

    #[test]
    fn an_uncompilable_schema_is_reported_not_skipped() {
        let starter = Starter::new();
        let c = connector(json!({"type": 5}));
        let errors = starter
            .check_input(Uuid::now_v7(), 1, &c, &json!({}), "input")
            .expect_err("invalid schema");
        assert_eq!(errors[0].path, "input_schema");
    }
}
