//! What the API test modules share: settings without a rate limit, a real
//! background worker, planted secrets and the checks for them, row counts
//! and a minimal connector.

use std::collections::BTreeMap;
use std::sync::Arc;

use conveyor_api::ApiConfig;
use conveyor_engine::crypto::Keyring;
use conveyor_tests::api::{TestApi, WAIT};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Planted as a credential value; must never appear in a response or log.
pub(crate) const PLANTED: &str = "pl4nted-tok3n-5c81e0d2";
/// A second planted value (a password).
pub(crate) const PLANTED_2: &str = "pl4nted-passw0rd-a7f3b9";

/// Test settings: no rate limit (these tests are about other things).
pub(crate) fn config() -> ApiConfig {
    ApiConfig {
        rate_limit_per_sec: 0,
        ..ApiConfig::default()
    }
}

/// The API over a test database, with `config()`.
pub(crate) fn api(pool: PgPool) -> TestApi {
    TestApi::with_config(pool, config())
}

/// A real worker running in the background until stopped.
pub(crate) struct RunningWorker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub(crate) fn start(pool: &PgPool, keyring: &Arc<Keyring>) -> Self {
        let worker = conveyor_tests::worker(pool, keyring, conveyor_tests::test_worker_config("w"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        Self { stop, task }
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the worker stops")
            .expect("the worker task ends cleanly");
    }
}

pub(crate) fn assert_no_planted(what: &str, text: &str) {
    for planted in [PLANTED, PLANTED_2] {
        assert!(
            !text.contains(planted),
            "a planted secret appears in {what}: {text}"
        );
    }
}

/// Row counts of every table a request could write.
pub(crate) async fn row_counts(pool: &PgPool) -> BTreeMap<&'static str, i64> {
    const COUNTS: [(&str, &str); 9] = [
        ("workspaces", "SELECT count(*) FROM workspaces"),
        ("connectors", "SELECT count(*) FROM connectors"),
        (
            "connector_versions",
            "SELECT count(*) FROM connector_versions",
        ),
        (
            "connector_executions",
            "SELECT count(*) FROM connector_executions",
        ),
        ("execution_steps", "SELECT count(*) FROM execution_steps"),
        ("execution_events", "SELECT count(*) FROM execution_events"),
        (
            "workspace_api_credentials",
            "SELECT count(*) FROM workspace_api_credentials",
        ),
        (
            "workspace_api_keys",
            "SELECT count(*) FROM workspace_api_keys",
        ),
        ("audit_log", "SELECT count(*) FROM audit_log"),
    ];
    let mut counts = BTreeMap::new();
    for (table, sql) in COUNTS {
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count");
        counts.insert(table, n);
    }
    counts
}

/// A one-step connector against `base` (which need not answer).
pub(crate) fn simple_connector(base: &str) -> Value {
    json!({"name": "ping", "steps": [{"name": "ping", "method": "GET", "url": format!("{base}/ping")}]})
}

/// The field paths of a 422's errors (empty when it has none).
pub(crate) fn error_paths(reply: &Value) -> Vec<String> {
    reply["error"]["details"]["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
